"""The console's JSON API (``/console/api/...``): the same service calls as the pages, in
the OpenAPI document. Authenticated by ``Authorization: Bearer <ADMIN_TOKEN>`` or the
console's session cookie (then a POST carries ``X-CSRF-Token``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal

from flask import request
from pydantic import BaseModel, Field
from spectree import Response

from app.api.auth import protected
from app.api.console import bp, check_csrf, need, ops
from app.api.errors import ApiError, ErrorResponse
from app.api.spec import ADMIN, spec
from app.db import session_scope
from app.services.console import ledger, operators

TAGS = ["console"]


def _role(role: str) -> Any:
    def check() -> None:
        need(role)
        if request.method == "POST":
            check_csrf()

    return protected(check)


class JobsQuery(BaseModel):
    family: str | None = Field(None, description="Comma-separated families (ocr, scans, voice, messages, files, "
                               "campaigns, calls, outbox).")
    state: str | None = Field(None, description="Comma-separated ledger states (pending, queued, running, "
                              "succeeded, failed, dead).")
    client_id: int | None = Field(None, ge=1, le=2**31 - 1)
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = Field(None, max_length=200, description="A job id (exact).")
    error: str | None = Field(None, max_length=200, description="A part of the last error (case-insensitive).")
    limit: int = Field(50, ge=1, le=200)
    after: str | None = Field(None, max_length=400, description="The previous page's `next_cursor`.")


class JobRow(BaseModel):
    family: str
    id: str
    client_id: int | None
    status: str
    state: str
    attempts: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    last_error: str | None
    trace_id: str | None


class JobPage(BaseModel):
    items: list[JobRow]
    next_cursor: str | None


class JobDetailOut(BaseModel):
    job: JobRow
    timeline: list[dict[str, Any]]
    result: dict[str, Any]
    events: list[dict[str, Any]]


class BulkIn(BaseModel):
    action: Literal["replay", "cancel"]
    filter: dict[str, Any] = Field(description="The ledger filter, as the jobs list takes it.")
    dry_run: bool = Field(True, description="Count only (the default); false acts.")
    expected: int | None = Field(None, ge=0, le=2**31 - 1, description="The dry run's count: refused if the filter now selects more.")


class BulkOut(BaseModel):
    action: str
    dry_run: bool
    count: int
    description: str
    skipped: int | None = None
    errors: list[str] | None = None
    filter: dict[str, Any] | None = None


class QueueActionIn(BaseModel):
    confirm: str | None = Field(None, description="Purge only: the queue's name, typed again.")


class AnyOut(BaseModel):
    model_config = {"extra": "allow"}


class AuditQuery(BaseModel):
    limit: int = Field(100, ge=1, le=500)
    before: int | None = Field(None, ge=1, le=2**63 - 1)
    actor: str | None = Field(None, max_length=100)


_ERR = dict(HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse)


@bp.get("/console/api/jobs")
@spec.validate(query=JobsQuery, resp=Response(HTTP_200=JobPage, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_jobs(query: JobsQuery) -> Any:
    """The ledger: jobs of every family, newest first, filtered, keyset-paginated."""
    params = query.model_dump(exclude={"limit", "after"}, exclude_none=True)
    try:
        with session_scope() as session:
            page = ledger.list_jobs(session, ledger.parse_filter(params), query.limit, query.after)
    except ledger.FilterError as exc:
        raise ApiError(400, "bad_filter", str(exc)) from None
    return {"items": [JobRow(**r).model_dump(mode="json") for r in page.rows], "next_cursor": page.next_cursor}


@bp.get("/console/api/jobs/<family>/<job_id>")
@spec.validate(resp=Response(HTTP_200=JobDetailOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_job(family: str, job_id: str) -> Any:
    """One job: its ledger row, state timeline, readable result and outbox events."""
    with session_scope() as session:
        d = ops.job_detail(session, family, job_id)
        out = JobDetailOut(job=JobRow(**d.row), timeline=[asdict(s) for s in d.timeline], result=d.result,
                           events=d.events)
        return out.model_dump(mode="json")


@bp.post("/console/api/bulk")
@spec.validate(json=BulkIn, resp=Response(HTTP_200=BulkOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("operator")
def api_bulk(json: BulkIn) -> Any:
    """Replay failed / dead-lettered jobs or cancel queued ones by filter: a dry run
    (count and description) unless ``dry_run`` is false. Refused: an empty filter, one
    selecting more than CONSOLE_BULK_MAX jobs, or more than ``expected``."""
    from app.api.console import current_actor

    return ops.bulk(current_actor(), json.action, json.filter, json.dry_run, json.expected)  # type: ignore[arg-type]


@bp.get("/console/api/overview")
@spec.validate(resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_overview() -> Any:
    """Per queue waiting + reserved and oldest waiting; the last hour by family; workers alive."""
    return ops.overview()


@bp.post("/console/api/queues/<queue>/<action>")
@spec.validate(json=QueueActionIn, resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("operator")
def api_queue_action(queue: str, action: str, json: QueueActionIn) -> Any:
    """``pause`` / ``resume`` consumption on every worker of the queue; ``purge`` (admin) with ``confirm``."""
    from app.api.console import current_actor

    if action not in ("pause", "resume", "purge"):
        raise ApiError(404, "not_found", f"no queue action {action!r}; pause, resume or purge")
    if action == "purge":
        need("admin")
    return ops.queue_action(current_actor(), queue, action, json.confirm)  # type: ignore[arg-type]


@bp.get("/console/api/schedules")
@spec.validate(resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_schedules() -> Any:
    """Every beat entry: enabled, last run, its recorded result, next run."""
    return {"items": ops.schedule_list()}


@bp.post("/console/api/schedules/<name>/<action>")
@spec.validate(resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("operator")
def api_schedule_action(name: str, action: str) -> Any:
    """``pause`` / ``resume`` a beat entry (obeyed by the active and the standby beat) or ``run`` it now."""
    from app.api.console import current_actor

    if action not in ("pause", "resume", "run"):
        raise ApiError(404, "not_found", f"no schedule action {action!r}; pause, resume or run")
    return ops.schedule_action(current_actor(), name, action)  # type: ignore[arg-type]


@bp.get("/console/api/workers")
@spec.validate(resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_workers() -> Any:
    """Celery workers (control API) and remote voice workers."""
    from app.services.console.queues import workers

    return {"celery": workers(ops.celery()), "remote": ops.remote_workers()}


@bp.get("/console/api/audit")
@spec.validate(query=AuditQuery, resp=Response(HTTP_200=AnyOut, **_ERR), tags=TAGS, security=ADMIN)
@_role("viewer")
def api_audit(query: AuditQuery) -> Any:
    """The audit log, newest first (``before``: an entry id, to page back)."""
    with session_scope() as session:
        entries = operators.audit_log(session, query.limit, query.before, query.actor)
        return {"items": [{"id": e.id, "at": e.created_at.isoformat(), "actor": e.actor, "action": e.action,
                           "target": e.target, "filter": e.filter, "count": e.count, "outcome": e.outcome,
                           "detail": e.detail} for e in entries]}
