"""The outbox relay on the ``outbox`` queue: publishes due events to their target tasks.

Triggered by beat every ``OUTBOX_RELAY_INTERVAL`` seconds (with ``expires``) and nudged by
the API right after each commit. One run drains batches for up to
``OUTBOX_RELAY_BUDGET`` seconds. On SQLite, which has no SKIP LOCKED, a Redis lock makes
the relay single-runner; on PostgreSQL any number of relays run side by side.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kombu.exceptions import OperationalError

from app.celery_app import celery_app
from app.db import get_engine, session_scope
from app.locks import named_lock, redis_client
from app.models.outbox import OutboxEvent
from app.services.outbox import (
    PUBSUB_CHANNEL,
    BrokerUnavailable,
    event_message,
    redeliver_unconsumed,
    relay_batch,
    task_id_for,
    task_kwargs,
    trace_headers,
)
from app.metrics import OUTBOX_FAILED, OUTBOX_PUBLISHED
from app.settings import get_settings
from app.tasks.base import ping_payload
from app.tracing import restored

logger = logging.getLogger(__name__)


class UnknownTargetTask(Exception):
    """The event names a task this application does not have."""


@celery_app.task(bind=True, name="app.tasks.outbox.ping")
def ping(self) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Probe: answers with the queue and worker that consumed it."""
    return ping_payload(self)


def _publisher(producer: Any):  # type: ignore[no-untyped-def]
    def publish(event: OutboxEvent) -> None:
        if event.task_name not in celery_app.tasks:
            raise UnknownTargetTask(f"no task named {event.task_name!r}")
        try:
            # Published inside the trace of the request that added the event.
            with restored(trace_headers(event)):
                celery_app.send_task(
                    event.task_name,
                    kwargs=task_kwargs(event),
                    task_id=task_id_for(event.id),
                    producer=producer,
                    retry=False,
                    # The saved context also travels as is, for a relay without the
                    # Celery instrumentation; with it, the publish span replaces it.
                    headers={"outbox_event_id": event.id, **trace_headers(event)},
                )
        except (OperationalError, ConnectionError, TimeoutError, OSError) as exc:
            raise BrokerUnavailable(str(exc)) from exc

    return publish


def _notify(events: list[OutboxEvent]) -> None:
    pipe = redis_client().pipeline(transaction=False)
    for event in events:
        pipe.publish(PUBSUB_CHANNEL, event_message(event))
    pipe.execute()


def drain(budget: float | None = None) -> dict[str, int]:
    """Publish due events batch after batch until none is left or the budget is spent."""
    settings = get_settings()
    budget = settings.outbox_relay_budget if budget is None else budget
    deadline = time.monotonic() + budget
    totals = {"published": 0, "failed": 0, "dead": 0, "redelivered": 0}
    celery_app.loader.import_default_modules()  # know every target task, in any process
    with session_scope() as session:
        # Published events the broker lost become due again, and go out in this run.
        totals["redelivered"] = len(redeliver_unconsumed(session, settings.outbox_redeliver_after,
                                                         settings.outbox_batch_size))
    with celery_app.producer_or_acquire() as producer:
        publish = _publisher(producer)
        while time.monotonic() < deadline:
            with session_scope() as session:
                result = relay_batch(
                    session,
                    publish,
                    batch_size=settings.outbox_batch_size,
                    max_attempts=settings.outbox_max_attempts,
                    backoff_base=settings.outbox_backoff_base,
                    notify=_notify,
                )
            totals["published"] += result.published
            totals["failed"] += result.failed
            OUTBOX_PUBLISHED.inc(result.published)
            OUTBOX_FAILED.inc(result.failed)
            totals["dead"] += result.dead
            if result.broker_down or result.published + result.failed < settings.outbox_batch_size:
                break
    return totals


@celery_app.task(bind=True, name="app.tasks.outbox.relay", ignore_result=True)
def relay(self) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Drain the outbox (see module docstring)."""
    settings = get_settings()
    if get_engine().dialect.name == "sqlite":
        with named_lock("outbox-relay", ttl=settings.outbox_relay_budget + 60) as lock:
            if not lock.acquired:
                return {"published": 0, "failed": 0, "dead": 0, "redelivered": 0, "skipped": 1}
            totals = drain()
    else:
        totals = drain()
    if totals["published"] or totals["failed"] or totals["redelivered"]:
        logger.info("outbox relayed", extra=totals)
    return totals
