"""Tasks of the ``messages`` queue: route one message to its channels.

The task is thin: it hands the router its dependencies (session scope, channel
clients, the Redis dedup store, pub/sub) and turns "come back later" into a retry: a
channel's 5xx, 429 or timeout after the wait of ``channel_retry()`` (or the channel's
``Retry-After``; those attempts are counted per delivery in the database), an
unreachable database (a restart, a failover) by the database policy
(``DB_UNAVAILABLE``), so the message is not left ``queued`` by a task that gave up.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from app.celery_app import celery_app
from app.db import session_scope
from app.locks import redis_client
from app.metrics import MESSAGES_ROUTED
from app.services.channels import make_channels
from app.services.messages import STATUS_CHANNEL, RouteDeps, route_message
from app.settings import get_settings
from app.tasks.base import DB_UNAVAILABLE, HandBackRetry, RetryPolicy, http_session

logger = logging.getLogger(__name__)


def _notify(message_id: str, status: str, detail: str | None) -> None:
    try:
        redis_client().publish(STATUS_CHANNEL, json.dumps({"id": message_id, "status": status, "detail": detail}))
    except Exception:  # listeners are best effort; the status is in the database
        logger.warning("status publish failed", extra={"message_id": message_id})


def channel_retry() -> RetryPolicy:
    """A channel send's retries: their number is the router's (``MESSAGE_MAX_RETRIES``,
    counted per delivery in the database), their wait this policy's."""
    settings = get_settings()
    return RetryPolicy(transient=(), max_retries=settings.message_max_retries, base=settings.message_retry_backoff,
                       cap=settings.message_retry_backoff_max, jitter="equal")


def _backoff(attempt: int) -> float:
    """The wait after a delivery's ``attempt``-th failed send (jitter spreads the retries of a burst)."""
    return channel_retry().delay(attempt - 1)


@celery_app.task(bind=True, name="app.tasks.messages.route")
def route(self: HandBackRetry, message_id: str, db_retries: int = 0, replay: int | None = None) -> dict[str, Any]:
    """Send a message to its channels once; retries are counted per delivery in the database.

    ``db_retries`` counts retries after database errors so far (carried across retries);
    ``replay`` is the dead letter a replay comes from (its own dedup key).
    """
    settings = get_settings()
    deps = RouteDeps(
        scope=session_scope,
        channels=make_channels(settings, http_session()),
        dedup=redis_client(),
        notify=_notify,
        backoff=_backoff,
        max_retries=settings.message_max_retries,
        lease_seconds=settings.channel_timeout * 2 + 5,
        dedup_ttl=settings.message_dedup_ttl,
    )
    try:
        outcome = route_message(deps, message_id, self.request.id, replay)
    except DB_UNAVAILABLE.transient as exc:
        # The same task id: the router's dedup claim still recognises this delivery.
        raise self.retry_for(DB_UNAVAILABLE, exc) from None
    MESSAGES_ROUTED.labels(result=outcome.result).inc()
    if outcome.result == "pending":
        raise self.retry(countdown=outcome.retry_in)
    return {"message_id": message_id, "result": outcome.result, "status": outcome.status}
