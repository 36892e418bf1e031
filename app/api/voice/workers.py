"""The HTTP pull protocol of remote voice workers (worker bearer token)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import g, request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from spectree import Response

from app import outbound
from app.api.auth import _bearer, limited, protected
from app.api.errors import ApiError, ErrorResponse
from app.api.jsonfields import BoundedExtras
from app.api.spec import ViewResult, spec
from app.api.voice import MAX_TRANSCRIPT_CHARS, WORKER, _settings, bp, logger
from app.db import session_scope
from app.models.voice import VoiceJob
from app.services.voice import jobs as voice_jobs
from app.services.voice import workers
from app.storage import get_storage


class VoiceResult(BoundedExtras):
    """What a worker reports; the schema is in docs/voice.md. Extra fields are kept,
    bounded like any free-form JSON field."""

    model_config = ConfigDict(extra="allow")

    scam_score: float = Field(ge=0, le=1, allow_inf_nan=False)
    risk_level: Literal["LOW", "MEDIUM", "HIGH", "CRITICAL"]
    reasons: list[str] = Field(max_length=50)
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)
    mock: bool = False
    model_version: str | None = Field(None, max_length=200)
    model_sha256: str | None = Field(None, max_length=64)
    transcript: str | None = Field(None, max_length=MAX_TRANSCRIPT_CHARS)

    @field_validator("reasons")
    @classmethod
    def _short_reasons(cls, value: list[str]) -> list[str]:
        if any(len(r) > 1000 for r in value):
            raise ValueError("each reason is at most 1000 characters")
        return value


@limited
def _check_worker() -> None:
    """Authenticate a remote worker by its bearer token (401 when unknown, revoked or expired)."""
    token = _bearer()
    with session_scope() as session:
        try:
            worker = workers.authenticate(session, token, _settings().signing_key())
        except workers.TokenRejected as exc:
            raise ApiError(401, "unauthorized", str(exc)) from None
        g.worker_id = worker.id
        g.worker_holder = workers.holder_of(worker)


#: Authenticate a remote worker by its bearer token (401 when unknown, revoked or expired).
require_worker = protected(_check_worker)


class WorkerTask(BaseModel):
    task_id: str
    audio_url: str | None = Field(description="Where to GET the clip (a signed link); null: transcript only.")
    transcript: str | None
    metadata: dict[str, Any]
    attempt: int
    lease_expires_at: datetime
    created_at: datetime


class StatusUpdate(BaseModel):
    status: Literal["processing"] = Field(description="`processing`: scoring has started; renews the lease.")
    progress: float | None = Field(None, ge=0, le=100)
    message: str | None = Field(None, max_length=500)


class FailReport(BaseModel):
    reason: str = Field(min_length=1, max_length=2000, description="Why the task could not be scored.")
    retryable: bool = Field(True, description="False when another attempt cannot help (bad audio): fail at once.")


class TaskState(BaseModel):
    task_id: str
    status: str
    lease_expires_at: datetime | None = None


class Heartbeat(BoundedExtras):
    """Extra fields are kept as the worker's info, bounded like any free-form JSON field."""

    model_config = ConfigDict(extra="allow")

    worker_id: str | None = Field(None, max_length=200, description="The worker's WORKER_ID (its host name by default).")
    status: str | None = Field(None, max_length=50)
    version: str | None = Field(None, max_length=100)
    current_task: str | None = Field(None, max_length=64)


class HeartbeatAck(BaseModel):
    ok: bool
    worker: str
    server_time: datetime
    heartbeat_interval: int


def _blocked(url: str) -> bool:
    try:
        outbound.judge(url, allow=outbound.parse_allow(_settings().voice_fetch_allow), timeout=2.0)
    except outbound.Refused:
        return True
    return False


def _audio_url_for(task: VoiceJob) -> str | None:
    if task.audio_url:
        return task.audio_url
    if not task.audio_key:
        return None
    storage = get_storage(_settings())
    url = storage.presigned_get_url(task.audio_key, expires_in=int(_settings().voice_lease_seconds) + 300)
    base = storage.link_base_url
    if base is not None and url.startswith(base):
        # The worker reaches the API at the address it used for this request.
        url = request.host_url.rstrip("/") + url[len(base):]
    return url


def _conflict(exc: voice_jobs.NotHolder) -> ApiError:
    return ApiError(409, "not_task_holder", str(exc), {"status": exc.status})


@bp.get("/api/v1/worker/tasks/next")
@spec.validate(resp=Response("HTTP_204", HTTP_200=WorkerTask, HTTP_401=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def next_task() -> ViewResult:
    """Claim the oldest pending task with a lease and return its payload; 204 when there is none."""
    settings = _settings()
    targets = settings.voice_remote_targets.split(",")
    with session_scope() as session:
        task = voice_jobs.claim_next(session, g.worker_holder, targets, settings.voice_lease_seconds)
        # A client's audio_url goes to the remote worker only if the address policy lets it
        # through (as for the Celery workers); a refused one fails its task at once.
        while task is not None and task.audio_url and _blocked(task.audio_url):
            voice_jobs.fail(session, task.id, g.worker_holder, "blocked_address", retryable=False,
                             max_attempts=settings.voice_max_attempts)
            logger.info("voice task audio_url refused", extra={"task_id": task.id})
            task = voice_jobs.claim_next(session, g.worker_holder, targets, settings.voice_lease_seconds)
        if task is None:
            return "", 204
        body = WorkerTask(task_id=task.id, audio_url=_audio_url_for(task), transcript=task.transcript,
                          metadata=task.meta or {}, attempt=task.attempts, lease_expires_at=task.lease_until,
                          created_at=task.created_at).model_dump(mode="json")
    logger.info("voice task pulled", extra={"task_id": body["task_id"], "worker_id": g.worker_id})
    return body


@bp.patch("/api/v1/worker/tasks/<task_id>/status")
@spec.validate(json=StatusUpdate, resp=Response(HTTP_200=TaskState, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                                HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def update_status(task_id: str, json: StatusUpdate) -> ViewResult:
    """Report progress on a held task (renews its lease); 409 if this worker does not hold it."""
    try:
        with session_scope() as session:
            task = voice_jobs.start(session, task_id, g.worker_holder, _settings().voice_lease_seconds)
            return TaskState(task_id=task.id, status=task.status, lease_expires_at=task.lease_until).model_dump(mode="json")
    except voice_jobs.JobNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_jobs.NotHolder as exc:
        raise _conflict(exc) from None


@bp.post("/api/v1/worker/tasks/<task_id>/complete")
@spec.validate(json=VoiceResult, resp=Response(HTTP_200=TaskState, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                               HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def complete_task(task_id: str, json: VoiceResult) -> ViewResult:
    """Record the result of a held task (validated: score and confidence in [0, 1], a known
    risk level, reasons a list of strings); 409 if this worker does not hold it."""
    result = json.model_dump(mode="json") | {"scored_by": g.worker_holder}
    try:
        with session_scope() as session:
            task = voice_jobs.complete(session, task_id, g.worker_holder, result)
            workers.count(session, g.worker_id, completed=1)
            body = TaskState(task_id=task.id, status=task.status).model_dump(mode="json")
    except voice_jobs.JobNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_jobs.NotHolder as exc:
        raise _conflict(exc) from None
    logger.info("voice task completed", extra={"task_id": task_id, "worker_id": g.worker_id,
                                               "risk_level": json.risk_level})
    return body


@bp.post("/api/v1/worker/tasks/<task_id>/fail")
@spec.validate(json=FailReport, resp=Response(HTTP_200=TaskState, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                              HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def fail_task(task_id: str, json: FailReport) -> ViewResult:
    """Report that a held task could not be scored: it goes back to ``pending`` while attempts
    remain (VOICE_MAX_ATTEMPTS) and ``retryable`` is true, else it is ``failed``."""
    try:
        with session_scope() as session:
            task = voice_jobs.fail(session, task_id, g.worker_holder, json.reason, retryable=json.retryable,
                                    max_attempts=_settings().voice_max_attempts)
            workers.count(session, g.worker_id, failed=1)
            body = TaskState(task_id=task.id, status=task.status).model_dump(mode="json")
    except voice_jobs.JobNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_jobs.NotHolder as exc:
        raise _conflict(exc) from None
    return body


@bp.post("/api/v1/worker/heartbeat")
@spec.validate(json=Heartbeat, resp=Response(HTTP_200=HeartbeatAck, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def heartbeat(json: Heartbeat) -> ViewResult:
    """The worker is alive (sent at start — registration — and every 60 s)."""
    from app.models.base import utcnow
    from app.models.voice import RemoteWorker

    info = json.model_dump(mode="json", exclude={"worker_id"}, exclude_none=True)
    with session_scope() as session:
        worker = session.get(RemoteWorker, g.worker_id)
        assert worker is not None
        workers.heartbeat(worker, json.worker_id, info)
    return {"ok": True, "worker": g.worker_id, "server_time": utcnow().isoformat(), "heartbeat_interval": 60}
