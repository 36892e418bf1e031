"""Per-client request rate limits and unfinished-job quotas of the API.

Rate limits: ``check_rate_limit()`` runs right after a client's API key is accepted and
counts the request against RATE_LIMIT_DEFAULT (or the family's RATE_LIMITS override),
per client and per family (the blueprint: ``scans``, ``voice``, ``ocr`` ...). The
windows are kept in Redis by the ``limits`` library (moving window), so every API process
and host shares them: its two Lua scripts, the one that counts the hit and the one that
reads the window for the headers, go to Redis in one pipeline (one round trip a request
instead of two; the same scripts, keys and semantics as ``MovingWindowRateLimiter.hit``
then ``get_window_stats``). A batch (``POST /api/messages/batch``) counts each of its
items: one with the request, the others once the body is read (``charge_rate_limit``).
Over the limit the request is answered
429 ``rate_limited`` with Retry-After; every limited response carries ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (IETF draft names). The admin credential
(no client: ``app.api.ownership.owner()`` is None) is not limited. If Redis does not answer, the request goes through
with a logged warning: availability comes before limiting.

Quotas: ``@job_quota("scans")`` under ``@require_api_key`` on a submit view refuses the
submission with 429 ``quota_exceeded`` while the client already has QUOTA_<FAMILY>
unfinished jobs (``app.services.quotas``).

Why ``limits`` and not Flask-Limiter: Flask-Limiter decides in a ``before_request`` hook,
before the route's authentication has said who the client is, and its decorators count
per route rather than per family; ``limits`` gives the same storage and strategies to
call at the one point where the client is known.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import redis
from flask import Flask, Response, current_app, g, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from app.api.errors import ApiError
from app.api.ownership import owner
from app.api.spec import guarded
from app.db import get_engine
from app.services.quotas import FAMILIES, unfinished_jobs

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Prefix of the window keys in Redis: ``rate:LIMITER/<family>/<client id>/<limit>``.
KEY_PREFIX = "rate"

_limiter: MovingWindowRateLimiter | None = None


def limiter() -> MovingWindowRateLimiter:
    """The process's limiter on a Redis storage built from REDIS_URL (created on first
    use, so each gunicorn worker makes its own after the fork)."""
    global _limiter
    if _limiter is None:
        settings = current_app.config["SETTINGS"]
        pool = redis.ConnectionPool.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
            health_check_interval=30,
        )
        storage = RedisStorage("redis://", connection_pool=pool, key_prefix=KEY_PREFIX, wrap_exceptions=True)
        _limiter = MovingWindowRateLimiter(storage)
    return _limiter


def reset_limiter() -> None:
    """Forget the process's limiter (tests that change REDIS_URL)."""
    global _limiter
    _limiter = None


def limit_for(family: str) -> RateLimitItem | None:
    """The rate limit of ``family`` under the current settings; None when it has none."""
    settings = current_app.config["SETTINGS"]
    notation = settings.rate_limits.get(family, settings.rate_limit_default)
    return parse(notation) if notation else None


@dataclass(frozen=True)
class RateState:
    """The outcome of this request's rate check, kept on ``g`` for the response headers."""

    limit: RateLimitItem
    allowed: bool
    remaining: int
    reset: int  # seconds until a request is allowed again (moving window: the oldest hit ages out)

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.limit.amount), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


def check_rate_limit() -> None:
    """Count this request for its client and family; 429 ``rate_limited`` over the limit.

    Idempotent within a request (the validation hooks may run the authentication check
    before the view does): the request is counted once."""
    state: RateState | None = g.get("_rate_state")
    if state is None:
        client_id = owner()
        family = request.blueprint or "api"
        item = limit_for(family) if client_id is not None else None
        if item is None:
            return
        state = _hit(item, family, str(client_id))
        if state is None:
            return
        g._rate_state = state
    if not state.allowed:
        raise ApiError(
            429, "rate_limited",
            f"rate limit of {state.limit} for {request.blueprint} exceeded; retry in {state.reset} s",
            {"limit": str(state.limit), "family": request.blueprint, "retry_after": state.reset},
            headers={"Retry-After": str(state.reset), **state.headers()},
        )


def charge_rate_limit(cost: int) -> None:
    """Count ``cost`` more requests of this request's client and family (a batch's items
    beyond the one counted with the request); 429 ``rate_limited`` over the limit."""
    client_id = owner()
    family = request.blueprint or "api"
    item = limit_for(family) if client_id is not None else None
    if item is None or cost <= 0:
        return
    state = _hit(item, family, str(client_id), cost)
    if state is None:
        return
    g._rate_state = state
    check_rate_limit()


def _hit(item: RateLimitItem, family: str, client: str, cost: int = 1) -> RateState | None:
    try:
        allowed, (window_start, in_window) = _acquire_and_read(item, family, client, cost)
    except (StorageError, redis.RedisError, OSError) as exc:
        logger.warning("rate limiter unavailable, request not limited",
                       extra={"error": str(exc)[:200], "family": family, "client_id": client})
        return None
    reset = max(1, math.ceil(window_start + item.get_expiry() - time.time()))
    if not allowed:
        logger.info("rate limit exceeded", extra={"family": family, "client_id": client, "limit": str(item)})
    return RateState(item, allowed, item.amount - in_window, reset)


def _acquire_and_read(item: RateLimitItem, family: str, client: str, cost: int) -> tuple[bool, tuple[float, int]]:
    """The moving window's hit and its window read in one Redis round trip: the ``limits``
    storage's own scripts (``acquire_entry`` then ``get_moving_window``), pipelined."""
    storage = limiter().storage
    assert isinstance(storage, RedisStorage)
    key = storage.prefixed_key(item.key_for(family, client))
    expiry, now = item.get_expiry(), time.time()
    scripts = (storage.lua_acquire_moving_window, storage.lua_moving_window)
    connection = cast(redis.Redis, storage.get_connection())
    for attempt in (1, 2):
        pipe = connection.pipeline(transaction=False)
        pipe.evalsha(scripts[0].sha, 1, key, now, item.amount, expiry, cost)
        pipe.evalsha(scripts[1].sha, 1, key, now - expiry, item.amount)
        try:
            acquired, window = pipe.execute()
        except redis.exceptions.NoScriptError:
            if attempt == 2:
                raise
            for script in scripts:  # a restarted Redis forgot them
                connection.script_load(script.script)
            continue
        break
    return bool(acquired), ((float(window[0]), int(window[1])) if window else (now, 0))


def _rate_limit_headers(response: Response) -> Response:
    state: RateState | None = g.get("_rate_state")
    if state is not None:
        response.headers.update(state.headers())
    return response


def init_app(app: Flask) -> None:
    """Add the RateLimit-* response headers; refuse RATE_LIMITS naming no API family."""
    unknown = sorted(set(app.config["SETTINGS"].rate_limits) - set(app.blueprints))
    if unknown:
        raise ValueError(f"RATE_LIMITS names unknown API families: {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(app.blueprints))})")
    app.after_request(_rate_limit_headers)


def check_job_quota(session: Session, family: str) -> None:
    """429 ``quota_exceeded`` when the caller already has QUOTA_<FAMILY> unfinished jobs
    of ``family`` (``scans``, ``ocr``, ``voice``). The admin credential has no quota.

    The count is taken before the new job is written, so submissions racing each other
    can pass it together: the quota may be overshot by the number in flight at once."""
    settings = current_app.config["SETTINGS"]
    quota = getattr(settings, f"quota_{family}")
    client_id = owner()
    if not quota or client_id is None:
        return
    window = timedelta(seconds=settings.presign_expiry_seconds)
    count = unfinished_jobs(session, family, client_id, uploaded_counts_for=window)
    if count >= quota:
        wait = settings.quota_retry_after
        logger.info("job quota reached", extra={"family": family, "client_id": client_id, "unfinished": count})
        raise ApiError(
            429, "quota_exceeded",
            f"quota of {quota} unfinished {family} jobs reached ({count}); retry when one has finished",
            {"family": family, "quota": quota, "unfinished": count, "retry_after": wait},
            headers={"Retry-After": str(wait)},
        )


@contextmanager
def read_only_session() -> Iterator[Session]:
    """A session on a connection in autocommit mode, for a lone read: one round trip to
    the database instead of three (no BEGIN, no COMMIT). Nothing it would write is kept
    transactional, so it is for reads only."""
    with get_engine().connect() as connection, Session(
            connection.execution_options(isolation_level="AUTOCOMMIT")) as session:
        yield session


def job_quota(family: str) -> Callable[[F], F]:
    """Decorator for a submit view, placed under ``@require_api_key``: check the caller's
    quota of ``family`` before the view runs."""
    if family not in FAMILIES:
        raise ValueError(f"no job quota for {family!r}; families: {', '.join(FAMILIES)}")

    def check() -> None:
        with read_only_session() as session:
            check_job_quota(session, family)

    def decorator(view: F) -> F:
        return guarded(view, check)

    return decorator
