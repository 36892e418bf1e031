"""Celery configuration: every queue, every route and the reliability defaults, in one place.

Queues are declared up front and ``task_create_missing_queues`` is off, so a task routed
to a misspelt queue fails when it is sent (and ``app.celery_app.check_routes`` fails at
start-up), instead of silently creating a queue nobody consumes.
"""

from __future__ import annotations

from celery.schedules import crontab
from kombu import Exchange, Queue

from app.settings import QUEUES, get_settings

_settings = get_settings()

broker_url = _settings.celery_broker_url
result_backend = _settings.celery_result_backend

# --- queues and routes -----------------------------------------------------
task_queues = tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)
task_default_queue = "default"
task_default_exchange = "default"
task_default_routing_key = "default"
task_create_missing_queues = False

#: Route by task module: ``app.tasks.<family>.*`` goes to the family's queue.
FAMILY_QUEUES = {
    "app.tasks.ocr": "ocr",
    "app.tasks.scans": "scans",
    "app.tasks.voice": "voice",
    "app.tasks.outbox": "outbox",
    "app.tasks.messages": "messages",
    "app.tasks.files": "files",
    "app.tasks.gc": "gc",
    "app.tasks.schedules": "schedules",
    "app.tasks.system": "default",
}
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
# Every entry has ``expires`` no longer than its interval, so a backlog never piles up.
beat_schedule: dict[str, dict] = {
    "outbox-relay": {
        "task": "app.tasks.outbox.relay",
        "schedule": _settings.outbox_relay_interval,
        "options": {"expires": _settings.outbox_relay_interval},
    },
    # Abandoned chunked uploads, daily at 02:00 UTC; a run missed by 12 h is dropped.
    "upload-gc": {
        "task": "app.tasks.gc.collect_uploads",
        "schedule": crontab(hour=2, minute=0),
        "options": {"expires": 12 * 3600},
    },
    # Stored originals past their retention (RETENTION_*), daily at 03:00 UTC; dropped after 12 h.
    "retention-gc": {
        "task": "app.tasks.gc.purge_expired",
        "schedule": crontab(hour=3, minute=0),
        "options": {"expires": 12 * 3600},
    },
    # (ocr entries go here)
    # Scans whose worker died go back to the queue (or fail); stray containers go.
    "scan-sweep": {
        "task": "app.tasks.scans.sweep",
        "schedule": _settings.scan_sweep_interval,
        "options": {"expires": _settings.scan_sweep_interval},
    },
    # Voice tasks whose holder's lease ran out go back to pending (or fail after the last attempt).
    "voice-lease-sweep": {
        "task": "app.tasks.voice.sweep_leases",
        "schedule": _settings.voice_sweep_interval,
        "options": {"expires": _settings.voice_sweep_interval},
    },
    # (schedules entries go here)
    # Scheduled jobs of the `schedules` queue; each takes its own named lock (docs/schedules.md).
    "campaign-scheduler": {
        "task": "app.tasks.schedules.dispatch_campaigns",
        "schedule": _settings.campaign_interval,
        "options": {"expires": _settings.campaign_interval},
    },
    "lead-reminder-scheduler": {
        "task": "app.tasks.schedules.lead_reminders",
        "schedule": _settings.lead_reminder_interval,
        "options": {"expires": _settings.lead_reminder_interval},
    },
    "call-scheduler": {
        "task": "app.tasks.schedules.schedule_calls",
        "schedule": _settings.call_scheduler_interval,
        "options": {"expires": _settings.call_scheduler_interval},
    },
    "trial-expiration": {
        "task": "app.tasks.schedules.expire_trials",
        "schedule": _settings.trial_expiration_interval,
        "options": {"expires": _settings.trial_expiration_interval},
    },
    "call-cleanup": {
        "task": "app.tasks.schedules.cleanup_calls",
        "schedule": _settings.call_cleanup_interval,
        "options": {"expires": _settings.call_cleanup_interval},
    },
}
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
