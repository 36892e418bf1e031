"""Bearer authentication: client API keys for /api routes, ADMIN_TOKEN for admin routes.

Every check is wrapped by ``limited``: an address with too many recent authentication
failures is refused with 429 before its credential is even looked at (so a correct
guess made while blocked teaches nothing), and each 401 counts one more failure
(``app.services.ratelimit``).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request

from app.api.errors import ApiError
from app.api.limits import check_rate_limit
from app.api.spec import guarded
from app.db import session_scope
from app.services.auth import verify_api_key_cached
from app.services.ratelimit import FailureLimiter

F = TypeVar("F", bound=Callable[..., Any])


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token in the Authorization header")
    return token.strip()


#: Attribute carrying a route's authentication check; it survives ``functools.wraps``
#: (which copies ``__dict__``), so the request-validation hook can authenticate first.
AUTH_ATTR = "_authenticate"


def protected(authenticate: Callable[[], None]) -> Callable[[F], F]:
    """Decorator factory: run ``authenticate()`` (raising ``ApiError``) before the view."""

    def decorator(view: F) -> F:
        wrapper = guarded(view, authenticate)
        setattr(wrapper, AUTH_ATTR, authenticate)
        return wrapper

    return decorator


def authenticate_route(view: Callable[..., Any] | None) -> None:
    """Run the route's authentication check, if it has one: before the request body is
    read or validated (``create_app``'s before-request hook), so an unauthenticated caller
    costs no parsing and learns nothing about the schema."""
    check = getattr(view, AUTH_ATTR, None)
    if check is not None:
        check()


def failure_limiter() -> FailureLimiter:
    """The limiter configured by AUTH_FAILURE_LIMIT / AUTH_FAILURE_WINDOW."""
    from app.locks import redis_client

    settings = current_app.config["SETTINGS"]
    return FailureLimiter(redis_client(), settings.auth_failure_limit, settings.auth_failure_window)


def client_address() -> str:
    """The address failures are counted for: the peer, or behind TRUSTED_PROXY_HOPS
    reverse proxies the client address they forwarded (``create_app`` applies ProxyFix)."""
    return request.remote_addr or "unknown"


def refuse_if_blocked() -> None:
    """429 with Retry-After when this client address is over its failure limit."""
    if g.get("_auth_not_blocked"):
        return
    wait = failure_limiter().retry_after(client_address())
    if wait is not None:
        raise ApiError(429, "too_many_auth_failures",
                       f"too many failed authentications from this address; retry in {wait} s",
                       {"retry_after": wait}, headers={"Retry-After": str(wait)})
    g._auth_not_blocked = True


def limited(check: Callable[[], None]) -> Callable[[], None]:
    """Wrap an authentication check with the failure limiter (see the module docstring)."""

    @wraps(check)
    def guarded() -> None:
        # Once per request: the app's before-request hook authenticates the route before
        # the body is read, and the view's own decorator must not look the credential up again.
        done = g.setdefault("_auth_passed", set())
        if check in done:
            return
        refuse_if_blocked()
        try:
            check()
        except ApiError as exc:
            if exc.status == 401:
                failure_limiter().record_failure(client_address())
            raise
        done.add(check)

    return guarded


def _matches(token: str, setting: str) -> bool:
    """Whether ``token`` is the secret of ``setting`` (never when that is empty)."""
    expected = getattr(current_app.config["SETTINGS"], setting).get_secret_value()
    return bool(expected) and hmac.compare_digest(token.encode(), expected.encode())


def _is_admin_token(token: str) -> bool:
    return _matches(token, "admin_token")


@limited
def _check_api_key() -> None:
    """A client's key sets ``g.client_id``, the owner every read, list and action is
    scoped to (``app.api.ownership``); ADMIN_TOKEN is accepted too and sees every client."""
    token = _bearer()
    if _is_admin_token(token):
        g.api_key_id, g.api_key_name, g.client_id, g.is_admin = None, "admin", None, True
        return
    # A key verified by this process less than AUTH_KEY_CACHE_SECONDS ago is not read again.
    key = verify_api_key_cached(session_scope, token, current_app.config["SETTINGS"].auth_key_cache_seconds)
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    g.api_key_id, g.api_key_name, g.client_id, g.is_admin = key.id, key.name, key.client_id, False
    check_rate_limit()


@limited
def _check_admin() -> None:
    expected = current_app.config["SETTINGS"].admin_token.get_secret_value()
    if not expected:
        raise ApiError(403, "admin_disabled", "admin routes are disabled: ADMIN_TOKEN is not set")
    if not _is_admin_token(_bearer()):
        raise ApiError(401, "unauthorized", "wrong admin token")


#: Reject the request with 401 unless it carries an active client API key (or ADMIN_TOKEN).
require_api_key = protected(_check_api_key)
#: Reject the request unless it carries ADMIN_TOKEN (403 when none is configured).
require_admin = protected(_check_admin)


@limited
def _check_metrics_token() -> None:
    if not _matches(_bearer(), "metrics_token"):
        raise ApiError(401, "unauthorized", "wrong metrics token")


@limited
def check_operator_token() -> None:
    """The bearer is ADMIN_TOKEN or METRICS_TOKEN (``/health`` details); a wrong one is a
    failed authentication like any other."""
    token = _bearer()
    if not (_matches(token, "admin_token") or _matches(token, "metrics_token")):
        raise ApiError(401, "unauthorized", "the dependency details need ADMIN_TOKEN or METRICS_TOKEN")


def check_metrics_token() -> None:
    """/metrics: open when METRICS_TOKEN is empty, else the bearer must equal it."""
    if current_app.config["SETTINGS"].metrics_token.get_secret_value():
        _check_metrics_token()
