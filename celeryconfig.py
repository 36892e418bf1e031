"""Celery configuration: every queue, every route and the reliability defaults, in one place.

Queues are declared up front and ``task_create_missing_queues`` is off, so a task routed
to a misspelt queue fails when it is sent (and ``app.celery_app.check_routes`` fails at
start-up), instead of silently creating a queue nobody consumes.
"""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab
from kombu import Exchange, Queue

from app.services import jobs
from app.settings import FAMILIES, QUEUES, get_settings

_settings = get_settings()

broker_url = _settings.celery_broker_url
result_backend = _settings.celery_result_backend

# --- queues and routes -----------------------------------------------------
task_queues = tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)
task_default_queue = "default"
task_default_exchange = "default"
task_default_routing_key = "default"
task_create_missing_queues = False

#: Route by task module: ``app.tasks.<family>.*`` goes to the family's queue (app.settings.FAMILIES).
FAMILY_QUEUES = {f"app.tasks.{module}": queue for queue, module in FAMILIES.items()}
task_routes = {f"{module}.*": {"queue": queue} for module, queue in FAMILY_QUEUES.items()}

# --- serialization -----------------------------------------------------------
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# --- reliability -------------------------------------------------------------
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
task_soft_time_limit = _settings.task_soft_time_limit
task_time_limit = _settings.task_time_limit
result_expires = _settings.result_expires
worker_max_tasks_per_child = _settings.worker_max_tasks_per_child
broker_connection_retry_on_startup = True
broker_connection_max_retries = None  # keep trying while the broker is down
broker_transport_options = {
    # Redis redelivers an unacknowledged task after this long; it must exceed the
    # longest task, or a slow task would run twice.
    "visibility_timeout": _settings.broker_visibility_timeout,
    "socket_timeout": _settings.redis_socket_timeout,
    "socket_connect_timeout": _settings.redis_socket_timeout,
}
result_backend_transport_options = {"visibility_timeout": _settings.broker_visibility_timeout}
redis_socket_timeout = _settings.redis_socket_timeout
redis_socket_connect_timeout = _settings.redis_socket_timeout
worker_send_task_events = True  # Flower
task_send_sent_event = True
worker_hijack_root_logger = False
worker_cancel_long_running_tasks_on_connection_loss = False

# --- beat ------------------------------------------------------------------------
# One entry per beat job, named as the job (app.services.jobs: the entry, its lock and its
# ``job_runs`` record share the name), sending the task ``jobs.BEAT_JOBS`` names for it.
# Every entry has ``expires`` no longer than its interval, so a backlog never piles up.


def _every(seconds: float) -> dict[str, Any]:
    return {"schedule": seconds, "options": {"expires": seconds}}


def _daily_at(hour: int) -> dict[str, Any]:
    # A daily run missed by 12 h is dropped.
    return {"schedule": crontab(hour=hour, minute=0), "options": {"expires": 12 * 3600}}


_WHEN: dict[str, dict[str, Any]] = {
    jobs.OUTBOX_RELAY: _every(_settings.outbox_relay_interval),
    # Abandoned chunked uploads, daily at 02:00 UTC.
    jobs.UPLOAD_GC: _daily_at(2),
    # Stored originals past their retention (RETENTION_*), daily at 03:00 UTC.
    jobs.RETENTION_GC: _daily_at(3),
    # Scans whose worker died go back to the queue (or fail); stray containers go.
    jobs.SCAN_SWEEP: _every(_settings.scan_sweep_interval),
    # Voice jobs whose holder's lease ran out go back to pending (or fail after the last attempt).
    jobs.VOICE_LEASE_SWEEP: _every(_settings.voice_sweep_interval),
    # The `schedules` queue's jobs (docs/schedules.md).
    jobs.CAMPAIGNS: _every(_settings.campaign_interval),
    jobs.REMINDERS: _every(_settings.lead_reminder_interval),
    jobs.CALLS: _every(_settings.call_scheduler_interval),
    jobs.TRIALS: _every(_settings.trial_expiration_interval),
    jobs.CALL_CLEANUP: _every(_settings.call_cleanup_interval),
}
beat_schedule: dict[str, dict[str, Any]] = {job: {"task": task, **_WHEN[job]} for job, task in jobs.BEAT_JOBS.items()}
timezone = "UTC"
enable_utc = True

# RedBeat keeps the schedule and each entry's last run in Redis, and only the beat holding
# its lock sends: two beat processes can run, one active, the other taking over within
# BEAT_LOCK_TIMEOUT of the active one's death, continuing from the same last-run times.
beat_scheduler = "app.beat:HABeatScheduler"
beat_max_loop_interval = _settings.beat_max_loop_interval
redbeat_redis_url = _settings.redis_url
redbeat_key_prefix = "redbeat:"
redbeat_lock_timeout = _settings.beat_lock_timeout
redbeat_redis_options = {
    "retry_period": -1,  # a beat waits out a Redis outage instead of exiting
    "socket_timeout": _settings.redis_socket_timeout,
    "socket_connect_timeout": _settings.redis_socket_timeout,
}
