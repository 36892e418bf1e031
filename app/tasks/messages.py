"""Tasks of the ``messages`` queue: route one message to its channels.

The task is thin: it hands the router its dependencies (session scope, channel
clients, the Redis dedup store, pub/sub) and turns "come back later" into Celery's own
``retry`` with exponential backoff and jitter (or the channel's ``Retry-After``). An
unreachable database (a restart, a failover) is retried the same way, so the message is
not left ``queued`` by a task that gave up.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any

import requests
from celery.utils.time import get_exponential_backoff_interval

from app.celery_app import celery_app
from app.db import TRANSIENT_DB, session_scope
from app.locks import redis_client
from app.metrics import MESSAGES_ROUTED
from app.services.channels import make_channels
from app.services.messages import STATUS_CHANNEL, RouteDeps, route_message
from app.settings import get_settings
from app.tasks.base import ping_payload

logger = logging.getLogger(__name__)

_http: requests.Session | None = None

#: Retries after database errors (backoff of up to a minute each: several minutes in all).
DB_MAX_RETRIES = 12


def _session() -> requests.Session:
    # One connection pool per worker process.
    global _http
    if _http is None:
        _http = requests.Session()
    return _http


@celery_app.task(bind=True, name="app.tasks.messages.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


def _notify(message_id: str, status: str, detail: str | None) -> None:
    try:
        redis_client().publish(STATUS_CHANNEL, json.dumps({"id": message_id, "status": status, "detail": detail}))
    except Exception:  # listeners are best effort; the status is in the database
        logger.warning("status publish failed", extra={"message_id": message_id})


def _backoff(attempt: int) -> float:
    settings = get_settings()
    ceiling = get_exponential_backoff_interval(
        factor=settings.message_retry_backoff,
        retries=attempt - 1,
        maximum=settings.message_retry_backoff_max,
        full_jitter=False,
    )
    return ceiling * random.uniform(0.5, 1.0)  # jitter spreads retries of a burst


@celery_app.task(bind=True, name="app.tasks.messages.route", max_retries=None)
def route(self, message_id: str, db_retries: int = 0, replay: int | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Send a message to its channels once; retries are counted per delivery in the database.

    ``db_retries`` counts retries after database errors so far (carried across retries);
    ``replay`` is the dead letter a replay comes from (its own dedup key).
    """
    settings = get_settings()
    deps = RouteDeps(
        scope=session_scope,
        channels=make_channels(settings, _session()),  # type: ignore[arg-type]
        dedup=redis_client(),
        notify=_notify,
        backoff=_backoff,
        max_retries=settings.message_max_retries,
        lease_seconds=settings.channel_timeout * 2 + 5,
        dedup_ttl=settings.message_dedup_ttl,
    )
    try:
        outcome = route_message(deps, message_id, self.request.id, replay)
    except TRANSIENT_DB as exc:
        if db_retries >= DB_MAX_RETRIES:
            raise
        countdown = get_exponential_backoff_interval(factor=1, retries=db_retries, maximum=60, full_jitter=True)
        logger.warning("database unavailable; retrying", extra={"message_id": message_id, "error": str(exc)[:200],
                                                                "countdown": countdown})
        # The same task id: the router's dedup claim still recognises this delivery.
        raise self.retry(kwargs={"message_id": message_id, "db_retries": db_retries + 1, "replay": replay},
                         countdown=max(0.5, countdown)) from None
    MESSAGES_ROUTED.labels(result=outcome.result).inc()
    if outcome.result == "pending":
        raise self.retry(countdown=outcome.retry_in)
    return {"message_id": message_id, "result": outcome.result, "status": outcome.status}
