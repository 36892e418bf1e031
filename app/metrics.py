"""Prometheus metrics of every process (prometheus-client in multiprocess mode).

Families define their metrics here so names stay unique and documented in one place
(docs/operations.md lists them).

Prefork pool processes and gunicorn workers each count in their own process, so the
values live in prometheus-client's multiprocess files. Their directory must be private
to one process tree (a worker and its pool children, or a gunicorn master and its
workers) and must be chosen before ``prometheus_client`` is first imported. So a fresh
interpreter importing this module makes its own directory under ``METRICS_DIR`` and
points ``PROMETHEUS_MULTIPROC_DIR`` at it; forked children inherit the imported module
and share it. The Celery worker imports this module in ``worker_init`` (before the pool
forks) and gunicorn in its config module (in the master). The owner removes the
directory at exit, and directories of owners that died without doing so are removed by
the next process that starts.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from app.settings import get_settings

if TYPE_CHECKING:
    from celery import Celery
    from prometheus_client.metrics_core import Metric
    from sqlalchemy import Engine

logger = logging.getLogger(__name__)

_OWNER_PID = os.getpid()
_DIR_NAME = re.compile(r"^(\d+)-")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _make_private_dir() -> Path:
    # Per user by default: users of one machine (root running `check`, `app` running the
    # workers) never share, nor block each other from, the base directory.
    base = Path(get_settings().metrics_dir or Path(tempfile.gettempdir()) / f"app-metrics-{os.getuid()}")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in base.iterdir():  # left behind by owners that were killed
        match = _DIR_NAME.match(entry.name)
        if match and entry.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_OWNER_PID}-", dir=base))


MULTIPROC_DIR = _make_private_dir()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(MULTIPROC_DIR)


@atexit.register
def _remove_private_dir() -> None:
    # Forked children run atexit handlers too (gunicorn workers): only the owner cleans.
    if os.getpid() == _OWNER_PID:
        shutil.rmtree(MULTIPROC_DIR, ignore_errors=True)


if "prometheus_client" in sys.modules:
    # Imported before the directory was set: switch the value class for every metric
    # created from here on (ours all are).
    from prometheus_client import values as _values

    _values.ValueClass = _values.get_value_class()

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402

UPLOADS_CLEANED = Counter(
    "uploads_cleaned_total", "Abandoned chunked uploads removed by the garbage collector."
)
JOB_RUNS = Counter("job_runs_total", "Scheduled job runs by job and outcome.", ["job", "outcome"])

# --- tasks (every queue; counted by the signal handlers in app.celery_app) -----------
TASK_LABELS = ["task", "queue"]
TASKS_RECEIVED = Counter("celery_tasks_received_total", "Tasks a worker received, by task name and queue.", TASK_LABELS)
TASKS_SUCCEEDED = Counter("celery_tasks_succeeded_total", "Tasks that returned, by task name and queue.", TASK_LABELS)
TASKS_FAILED = Counter("celery_tasks_failed_total", "Tasks that raised (terminal), by task name and queue.", TASK_LABELS)
TASKS_RETRIED = Counter("celery_tasks_retried_total", "Task retries scheduled, by task name and queue.", TASK_LABELS)
TASK_RUNTIME = Histogram(
    "celery_task_runtime_seconds",
    "Wall time of one task run, by task name and queue.",
    TASK_LABELS,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)

# --- families --------------------------------------------------------------------------
OCR_PAGES = Counter("ocr_pages_total", "Pages OCRed in uploads that became ready.")
OCR_UPLOADS = Counter(
    "ocr_uploads_total", "OCR task runs by result (ready, failed, already_done, missing, superseded).", ["result"]
)
SCANS = Counter("scans_total", "Finished URL scans by final state and verdict.", ["state", "verdict"])
VOICE_RISK = Counter("voice_scores_total", "Scored voice clips by risk level.", ["risk_level"])
OUTBOX_PUBLISHED = Counter("outbox_events_published_total", "Outbox events the relay published.")
OUTBOX_FAILED = Counter("outbox_publish_failures_total", "Failed publishes of outbox events (each charges an attempt).")
MESSAGES_ROUTED = Counter("messages_routed_total", "Runs of the message router by result.", ["result"])


def task_labels(task_name: str | None, delivery_info: dict | None) -> tuple[str, str]:
    """The (task, queue) label values of a task; the queue is the routing key it came by."""
    info = delivery_info or {}
    return task_name or "unknown", str(info.get("routing_key") or info.get("queue") or "unknown")


class StateCollector:
    """Sizes read at scrape time: broker queue depth, outbox pending/dead, dead letters.

    Each source has a short timeout (``METRICS_SCRAPE_TIMEOUT``) and reports
    ``metrics_source_up{source}`` 0 instead of failing the scrape when it is down.
    """

    def __init__(self) -> None:
        self._engine: Engine | None = None

    def describe(self) -> list:
        return []  # no collect() at registration time

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("metrics_source_up", "Whether a scrape-time source answered.", labels=["source"])
        try:
            yield self._queue_lengths()
            up.add_metric(["broker"], 1)
        except Exception as exc:
            logger.warning("queue depth unavailable", extra={"error": str(exc)[:200]})
            up.add_metric(["broker"], 0)
        try:
            yield from self._database()
            up.add_metric(["database"], 1)
        except Exception as exc:
            logger.warning("outbox/DLQ sizes unavailable", extra={"error": str(exc)[:200]})
            up.add_metric(["database"], 0)
        yield up

    def _queue_lengths(self) -> GaugeMetricFamily:
        from kombu import Connection

        from app.settings import QUEUES

        settings = get_settings()
        timeout = settings.metrics_scrape_timeout
        family = GaugeMetricFamily("celery_queue_length", "Messages waiting in a broker queue.", labels=["queue"])
        options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
        with Connection(settings.celery_broker_url, connect_timeout=timeout, transport_options=options) as conn:
            conn.ensure_connection(max_retries=0, timeout=timeout)
            channel = conn.channel()
            try:
                for queue in QUEUES:
                    try:
                        _, count, _ = channel.queue_declare(queue=queue, passive=True)
                    except conn.channel_errors:
                        # Redis: an empty queue has no key; AMQP: not declared yet. The
                        # failed passive declare closes an AMQP channel: take a new one.
                        count = 0
                        channel.close()
                        channel = conn.channel()
                    family.add_metric([queue], float(count))
            finally:
                channel.close()
        return family

    def _database(self) -> Iterator[Metric]:
        from sqlalchemy import func, select, text

        from app.models.messages import DeadLetter
        from app.models.outbox import OutboxEvent

        timeout = get_settings().metrics_scrape_timeout
        with self._get_engine().connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {max(1, int(timeout * 1000))}"))
            pending = conn.scalar(
                select(func.count()).select_from(OutboxEvent)
                .where(OutboxEvent.published_at.is_(None), OutboxEvent.dead.is_(False))
            )
            dead = conn.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.dead.is_(True)))
            dlq = conn.scalar(select(func.count()).select_from(DeadLetter).where(DeadLetter.replayed_at.is_(None)))
        yield GaugeMetricFamily("outbox_events_pending", "Outbox events not yet published (live).", value=pending or 0)
        yield GaugeMetricFamily("outbox_events_dead", "Outbox events that ran out of attempts (replayable).", value=dead or 0)
        yield GaugeMetricFamily("dlq_messages", "Dead letters of the messages family not replayed yet.", value=dlq or 0)

    def _get_engine(self) -> Engine:
        # A small engine of its own with a short connect timeout: a scrape must not wait
        # behind the application's pool, nor for a database that does not answer.
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        from app.db import get_engine

        settings = get_settings()
        url = make_url(settings.database_url)
        if url.get_backend_name() != "postgresql":
            return get_engine()
        if self._engine is None:
            timeout = settings.metrics_scrape_timeout
            self._engine = create_engine(url, pool_size=1, max_overflow=1, pool_timeout=timeout, pool_pre_ping=True,
                                         connect_args={"connect_timeout": max(1, round(timeout))})
        return self._engine


def reap_dead_processes(path: Path | None = None) -> list[int]:
    """``mark_process_dead`` for every process that left files here and is gone.

    Pool processes replaced after ``worker_max_tasks_per_child`` or killed leave their
    files; their counters stay (totals must not drop), their live gauges are removed.
    """
    path = Path(path or MULTIPROC_DIR)
    pids = set()
    for file in path.glob("*.db"):
        match = re.search(r"_(\d+)\.db$", file.name)
        if match:
            pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not _pid_alive(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return dead


def build_registry(with_state: bool) -> CollectorRegistry:
    """A registry merging every process of this tree; ``with_state`` adds the scrape-time
    sizes (queue depth, outbox, DLQ) that the API serves."""
    reap_dead_processes()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(MULTIPROC_DIR))
    if with_state:
        registry.register(_state_collector())
        registry.register(QueueDepthCollector())
    return registry


_STATE: StateCollector | None = None


def _state_collector() -> StateCollector:
    global _STATE
    if _STATE is None:
        _STATE = StateCollector()
    return _STATE


def render(with_state: bool) -> tuple[bytes, str]:
    """The text exposition of this process tree: body and content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(build_registry(with_state)), CONTENT_TYPE_LATEST


def serve_worker_metrics(host: str, port: int) -> None:
    """Serve this worker's metrics (all its pool processes) on ``host:port`` from a thread."""
    from prometheus_client.exposition import start_wsgi_server

    class _Registry:
        # Re-merged at every scrape, so new pool processes are included.
        def collect(self) -> Iterable[Metric]:
            return build_registry(with_state=False).collect()

    start_wsgi_server(port, addr=host, registry=_Registry())
    logger.info("worker metrics served", extra={"host": host, "port": port})

# --- schedules ---------------------------------------------------------------------------
from prometheus_client import Gauge  # noqa: E402

SCHEDULE_ITEMS = Counter(
    "schedule_items_total", "Items handled by scheduled jobs (emails, reminders, calls, tenants), by job and result.",
    ["job", "result"],
)
JOB_LAST_RUN = Gauge(
    "job_last_run_timestamp_seconds", "Unix time a scheduled job last finished a run (ok or failed).", ["job"],
    multiprocess_mode="max",
)

# --- operator console / autoscalers: queue depth with reserved messages (docs/console.md) ---


class QueueDepthCollector:
    """Per queue, at scrape time: ``celery_queue_waiting``, ``celery_queue_reserved``
    (delivered to a worker, not acknowledged), ``celery_queue_depth`` (their sum: what an
    autoscaler should scale on) and ``celery_queue_oldest_waiting_seconds`` (from the
    outbox). Read through ``app.services.console.queues``, as the console's pages are."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[Metric]:
        from app.services.console import queues as console_queues
        from app.settings import QUEUES

        labels = ["queue"]
        waiting = GaugeMetricFamily("celery_queue_waiting", "Messages ready in a broker queue.", labels=labels)
        reserved = GaugeMetricFamily("celery_queue_reserved", "Messages of a queue delivered to workers and not "
                                     "acknowledged yet (prefetched or running).", labels=labels)
        depth = GaugeMetricFamily("celery_queue_depth", "Waiting plus reserved messages of a queue.", labels=labels)
        oldest = GaugeMetricFamily("celery_queue_oldest_waiting_seconds", "Age of the oldest job published to a "
                                   "queue that no worker has started (from the outbox).", labels=labels)
        try:
            app = _broker_app()
            ready = console_queues.waiting_counts(app, QUEUES, get_settings().metrics_scrape_timeout)
            held = console_queues.reserved_counts(app, QUEUES, get_settings().metrics_scrape_timeout)
        except Exception as exc:
            logger.warning("queue depth with reserved unavailable", extra={"error": str(exc)[:200]})
            return
        ages = _oldest_waiting()
        for queue in QUEUES:
            waiting.add_metric([queue], float(ready.get(queue, 0)))
            reserved.add_metric([queue], float(held.get(queue, 0)))
            depth.add_metric([queue], float(ready.get(queue, 0) + held.get(queue, 0)))
            oldest.add_metric([queue], ages.get(queue, 0.0) if ready.get(queue) else 0.0)
        yield from (waiting, reserved, depth, oldest)


def _broker_app() -> Celery:
    """The project's Celery app, or a bare one on BROKER_URL when the settings changed since
    it was made (its control API and connections are all the collector uses)."""
    from celery import Celery

    from app.celery_app import celery_app

    url = get_settings().celery_broker_url
    if celery_app.conf.broker_url == url:
        return celery_app
    app = Celery(broker=url)
    app.conf.broker_transport_options = dict(celery_app.conf.broker_transport_options or {})
    return app


def _oldest_waiting() -> dict[str, float]:
    import celeryconfig
    from app.db import session_scope
    from app.services.console.queues import oldest_waiting

    try:
        with session_scope() as session:
            return oldest_waiting(session, dict(celeryconfig.FAMILY_QUEUES))
    except Exception as exc:
        logger.warning("oldest waiting age unavailable", extra={"error": str(exc)[:200]})
        return {}
