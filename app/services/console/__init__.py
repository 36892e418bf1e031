"""The operator console's logic: the job ledger, job details, bulk actions, operators and
their audit log, queues, schedules and workers. Plain functions that receive their
session and clients (a Celery app's ``control``, a Redis client); no Flask, no Celery import."""
