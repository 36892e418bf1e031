"""What the pages and the JSON API both do: read the console's figures and run its
actions, each action recorded in the audit log (refusals too)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from flask import current_app

from app.api.console import Actor
from app.api.errors import ApiError
from app.db import session_scope
from app.models.base import utcnow
from app.services.console import actions, details, ledger, operators, queues, schedules


def job_detail(session: Any, family: str, job_id: str) -> details.JobDetail:
    """One job of the ledger, or 404 (an unknown family too)."""
    try:
        detail = details.job_detail(session, family, job_id)
    except ledger.FilterError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    if detail is None:
        raise ApiError(404, "not_found", f"no {family} job {job_id}")
    return detail


def celery() -> Any:
    from app.celery_app import celery_app

    return celery_app


def redis() -> Any:
    from app.locks import redis_client

    return redis_client()


def _task_queues() -> dict[str, str]:
    import celeryconfig

    return dict(celeryconfig.FAMILY_QUEUES)


def audit(actor: Actor, action: str, **fields: Any) -> None:
    with session_scope() as session:
        operators.record(session, actor.name, action, **fields)


def overview() -> dict[str, Any]:
    """Queues (waiting + reserved, oldest waiting), the last hour by family, workers alive."""
    from app.settings import QUEUES

    since = utcnow() - timedelta(hours=1)
    replies = queues.inspect_all(celery(), ("active_queues", "active", "reserved", "stats"))
    with session_scope() as session:
        states = queues.queue_states(celery(), redis(), session, QUEUES, _task_queues(), replies["active_queues"])
        hour = ledger.summary(session, since)
        done = ledger.summary(session, since, finished=True)
    workers = queues.workers(celery(), replies=replies)
    return {"queues": [asdict(q) | {"depth": q.depth} for q in states], "last_hour": hour,
            "throughput_last_hour": sum(v.get("succeeded", 0) for v in done.values()),
            "failures_last_hour": sum(v.get("failed", 0) + v.get("dead", 0) for v in done.values()),
            "workers_alive": len(workers)}


def bulk(actor: Actor, action: str, params: dict[str, Any], dry_run: bool,
         expected: int | None = None) -> dict[str, Any]:
    """Plan (dry run) or execute a bulk action by filter; refusals are 400 and audited."""
    cap = current_app.config["SETTINGS"].console_bulk_max
    try:
        f = ledger.parse_filter(params)
        if dry_run:
            with session_scope() as session:
                plan = actions.plan(session, action, f, cap)
            return {"action": action, "dry_run": True, "count": plan.count, "description": plan.description,
                    "filter": plan.filter.as_dict()}
        outcome = actions.execute(session_scope, action, f, cap, actor.name, expected)
    except (ledger.FilterError, actions.BulkRefused) as exc:
        if not dry_run:
            audit(actor, f"bulk.{action}", filter=dict(params), outcome="refused", detail=str(exc))
        raise ApiError(400, "bulk_refused" if isinstance(exc, actions.BulkRefused) else "bad_filter", str(exc)) from None
    audit(actor, f"bulk.{action}", target=outcome.plan.description, filter=outcome.plan.filter.as_dict(),
          count=outcome.done, outcome="ok" if not outcome.errors else "failed",
          detail=f"{outcome.skipped} skipped" + (f"; errors: {'; '.join(outcome.errors[:5])}" if outcome.errors else ""))
    return {"action": action, "dry_run": False, "count": outcome.done, "skipped": outcome.skipped,
            "errors": outcome.errors, "description": outcome.plan.description}


def _known_queue(queue: str) -> None:
    from app.settings import QUEUES

    if queue not in QUEUES:
        raise ApiError(404, "not_found", f"no queue named {queue!r}; queues: {', '.join(QUEUES)}")


def queue_action(actor: Actor, queue: str, action: str, confirm: str | None = None) -> dict[str, Any]:
    """pause | resume | purge (purge needs the queue's name typed as ``confirm``)."""
    _known_queue(queue)
    if action == "pause":
        workers = queues.pause(celery(), redis(), queue)
        audit(actor, "queue.pause", target=queue, count=len(workers), detail=f"workers: {', '.join(workers) or 'none'}")
        return {"queue": queue, "paused_on": workers}
    if action == "resume":
        workers = queues.resume(celery(), redis(), queue)
        audit(actor, "queue.resume", target=queue, count=len(workers), detail=f"workers: {', '.join(workers) or 'none'}")
        return {"queue": queue, "resumed_on": workers}
    if confirm != queue:
        audit(actor, "queue.purge", target=queue, outcome="refused", detail="confirmation did not match")
        raise ApiError(400, "confirmation_required", f"type the queue's name ({queue}) to confirm the purge")
    purged = queues.purge(celery(), queue)
    audit(actor, "queue.purge", target=queue, count=purged)
    return {"queue": queue, "purged": purged}


def schedule_action(actor: Actor, name: str, action: str) -> dict[str, Any]:
    """pause | resume | run (now)."""
    try:
        if action == "run":
            task_id = schedules.run_now(celery(), name)
            audit(actor, "schedule.run", target=name, count=1, detail=f"task {task_id}")
            return {"schedule": name, "task_id": task_id}
        schedules.set_enabled(celery(), name, action == "resume")
    except schedules.UnknownSchedule as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    audit(actor, f"schedule.{action}", target=name)
    return {"schedule": name, "enabled": action == "resume"}


def schedule_list() -> list[dict[str, Any]]:
    with session_scope() as session:
        return [asdict(s) for s in schedules.list_schedules(celery(), session)]


def remote_workers() -> list[dict[str, Any]]:
    from app.services.voice import workers as voice_workers

    seconds = current_app.config["SETTINGS"].voice_worker_active_seconds
    with session_scope() as session:
        return [{"id": v.worker.id, "name": v.worker.name, "instance": v.worker.instance, "active": v.active,
                 "last_active_at": v.last_active_at, "revoked": v.worker.revoked_at is not None,
                 "tasks_completed": v.worker.tasks_completed, "tasks_failed": v.worker.tasks_failed}
                for v in voice_workers.list_workers(session, seconds)]
