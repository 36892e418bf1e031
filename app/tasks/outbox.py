"""The outbox relay on the ``outbox`` queue: publishes due events to their target tasks.

Triggered by beat every ``OUTBOX_RELAY_INTERVAL`` seconds (with ``expires``) and nudged
right after each commit that added an event due now (``nudge``, the outbox's commit hook
in the API and in the workers). One run drains batches for up to
``OUTBOX_RELAY_BUDGET`` seconds (``app.services.outbox.drain``). On SQLite, which has no
SKIP LOCKED, a Redis lock makes the relay single-runner; on PostgreSQL any number of
relays run side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import signals
from kombu.exceptions import OperationalError

from app.celery_app import celery_app
from app.db import get_engine, session_scope
from app.locks import named_lock, redis_client
from app.metrics import OUTBOX_FAILED, OUTBOX_PUBLISHED
from app.models.outbox import OutboxEvent
from app.services import outbox as outbox_service
from app.services.outbox import (
    PUBSUB_CHANNEL,
    BrokerUnavailable,
    RelayPolicy,
    RelayResult,
    event_message,
    task_id_for,
    task_kwargs,
    trace_headers,
)
from app.settings import Settings, get_settings
from app.tasks.base import HandBackRetry
from app.tracing import restored

logger = logging.getLogger(__name__)

RELAY_TASK = "app.tasks.outbox.relay"


class RelayTicksAtDebug(logging.Filter):
    """Celery's own lines about the relay (beat sending it, a worker receiving it or
    discarding an expired one, its success) at DEBUG: the relay runs every OUTBOX_RELAY_INTERVAL, so at INFO they were
    three lines a second of an idle stack. A run that publishes, fails or redelivers
    still says so at INFO ("outbox relayed"); a failed run's error is not touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not _about_relay(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _about_relay(record: logging.LogRecord) -> bool:
    data = getattr(record, "data", None)  # the worker's "received" and "succeeded" lines
    if isinstance(data, dict):
        return data.get("name") == RELAY_TASK
    return isinstance(record.args, tuple) and RELAY_TASK in record.args  # beat's "Sending due task"


_RELAY_AT_DEBUG = RelayTicksAtDebug()
for _name in ("celery.beat", "celery.worker.strategy", "celery.worker.request", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_RELAY_AT_DEBUG)


class UnknownTargetTask(Exception):
    """The event names a task this application does not have."""


def _publisher(producer: Any) -> Callable[[OutboxEvent], None]:
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


def _policy(settings: Settings, budget: float | None) -> RelayPolicy:
    return RelayPolicy(
        batch_size=settings.outbox_batch_size, max_attempts=settings.outbox_max_attempts,
        backoff_base=settings.outbox_backoff_base, redeliver_after=settings.outbox_redeliver_after,
        budget=settings.outbox_relay_budget if budget is None else budget,
    )


def _count(result: RelayResult) -> None:
    OUTBOX_PUBLISHED.inc(result.published)
    OUTBOX_FAILED.inc(result.failed)


def drain(budget: float | None = None) -> dict[str, int]:
    """Publish due events batch after batch until none is left or the budget is spent."""
    celery_app.loader.import_default_modules()  # know every target task, in any process
    with celery_app.producer_or_acquire() as producer:
        return outbox_service.drain(session_scope, _publisher(producer), _policy(get_settings(), budget),
                                    notify=_notify, on_batch=_count)


@celery_app.task(bind=True, name=RELAY_TASK, ignore_result=True)
def relay(self: HandBackRetry) -> dict[str, int]:
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


# --- the nudge: a relay run right after a commit that added events -----------------------------

_wake = threading.Event()
_nudger: threading.Thread | None = None
_nudger_lock = threading.Lock()


def nudge() -> None:
    """Ask for a relay run soon; returns at once (the outbox's commit hook).

    Only sets a flag: one background thread per process sends at most one relay task per
    wake-up, so a burst of commits costs one broker message, and a broker outage costs the
    committing code nothing but a log line (beat's periodic relay covers the gap).
    """
    global _nudger
    _wake.set()
    if _nudger is None or not _nudger.is_alive():
        with _nudger_lock:
            if _nudger is None or not _nudger.is_alive():
                _nudger = threading.Thread(target=_send_relays, name="outbox-nudger", daemon=True)
                _nudger.start()


def _send_relays() -> None:
    expires = max(1.0, get_settings().outbox_relay_interval * 5)
    while True:
        _wake.wait()
        _wake.clear()
        try:
            relay.apply_async(expires=expires, retry=False)
        except Exception as exc:  # broker down: the periodic relay publishes later
            logger.warning("outbox nudge failed", extra={"error": str(exc)[:200]})


def relay_after_commits() -> None:
    """Nudge the relay after every commit of this process that added an event due now
    (set in the API's ``create_app`` and in every worker)."""
    outbox_service.set_commit_hook(nudge)


@signals.worker_init.connect
def _relay_after_worker_commits(**_kwargs: object) -> None:
    # A task's follow-up events (a requeue, a recovery, a suspension) go out at once too;
    # in the main process, before the pool forks: each pool process starts its own nudger.
    relay_after_commits()
