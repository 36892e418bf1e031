"""Voice scam scoring API.

- ``POST /api/voice``, ``GET /api/voice/<id>`` (client API key): submit a call recording
  and/or its transcript; poll the status and result.
- ``/api/v1/worker/...`` (worker token): the HTTP pull protocol of remote workers —
  next task, status, complete, fail, heartbeat — exactly the old worker's endpoints.
- ``/api/admin/workers`` (ADMIN_TOKEN): create (token shown once), list, revoke workers.
- ``/admin/workers``: the same as a server-rendered page (``app.api.voice_admin``).
"""

from __future__ import annotations

import json as jsonlib
import logging
from datetime import datetime
from functools import wraps
from typing import Any, Callable, Literal, TypeVar

from flask import Blueprint, current_app, g, request, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator
from spectree import Response
from spectree.model_adapter.pydantic_adapter import BaseFile

from app.api.auth import AUTH_ATTR, _bearer, limited, require_admin, require_api_key
from app.api.ownership import owned, owner
from app.api.limits import job_quota
from app.api.errors import ApiError, ErrorResponse
from app.api.jsonfields import BoundedExtras, BoundedObject, check_bounded
from app.api.nudge import nudge_relay
from app.api.spec import ADMIN, BEARER, spec
from app.db import session_scope
from app.models.voice import VoiceTask
from app import outbound
from app.services import voice_tasks, workers
from app.storage import LocalStorage, get_storage

logger = logging.getLogger(__name__)

bp = Blueprint("voice", __name__, template_folder="templates")

F = TypeVar("F", bound=Callable[..., Any])

MAX_TRANSCRIPT_CHARS = 20_000
MAX_METADATA_BYTES = 16 * 1024
#: Worker routes take a worker token as their bearer credential.
WORKER = BEARER
_MULTIPART_OVERHEAD = 64 * 1024


def _settings():  # type: ignore[no-untyped-def]
    return current_app.config["SETTINGS"]


@bp.before_request
def _guard_size() -> None:
    """Refuse an oversized clip from Content-Length, before the body is spooled."""
    limit = _settings().voice_max_audio_bytes
    if request.endpoint == "voice.submit" and request.content_length \
            and request.content_length > limit + _MULTIPART_OVERHEAD:
        raise ApiError(413, "audio_too_large", f"the request is {request.content_length:,} bytes; audio is limited "
                       f"to {limit:,} bytes", {"limit": limit})


# --- client API -------------------------------------------------------------------------

class VoiceForm(BaseModel):
    """``multipart/form-data``: the clip in ``audio`` and/or the text in ``transcript``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    audio: BaseFile | None = Field(None, description="WAV, FLAC, OGG or MP3 (other codecs need ffmpeg on the worker).")
    transcript: str | None = Field(None, max_length=MAX_TRANSCRIPT_CHARS, description="The call's words, if known.")
    metadata: str | None = Field(None, description="A JSON object kept with the task (caller id, campaign, …); "
                                 "at most JSON_FIELD_MAX_BYTES and JSON_FIELD_MAX_DEPTH.")
    target: Literal["celery", "remote"] | None = Field(None, description="Celery queue or remote pull; default "
                                                       "VOICE_DEFAULT_TARGET.")

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: str | None) -> str | None:
        if value:
            try:
                parsed = jsonlib.loads(value)
            except RecursionError:
                raise ValueError("nested too deeply") from None
            except ValueError:
                return value  # named by the view's own parse
            check_bounded(parsed)
        return value


class VoiceJson(BaseModel):
    """JSON body: a clip already in storage, a clip at a URL, and/or a transcript."""

    storage_key: str | None = Field(None, max_length=1024, description="Key of a clip in this deployment's storage.")
    audio_url: str | None = Field(None, max_length=4096, pattern=r"^https?://", description="http(s) URL of a clip.")
    transcript: str | None = Field(None, max_length=MAX_TRANSCRIPT_CHARS)
    metadata: BoundedObject | None = Field(None, description="Kept with the task; at most JSON_FIELD_MAX_BYTES "
                                           "and JSON_FIELD_MAX_DEPTH.")
    target: Literal["celery", "remote"] | None = None


class VoiceAccepted(BaseModel):
    id: str
    status: str
    target: str
    status_url: str


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


class VoiceTaskOut(BaseModel):
    id: str
    status: str = Field(description="pending, claimed, processing, completed or failed")
    target: str
    result: dict[str, Any] | None = Field(None, description="When completed: scam_score, risk_level, reasons, "
                                          "confidence, model_version, model_sha256, …")
    error: str | None = Field(None, description="When failed: the reason.")
    attempts: int
    metadata: dict[str, Any]
    has_audio: bool
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _task_out(task: VoiceTask) -> dict[str, Any]:
    return VoiceTaskOut(
        id=task.id, status=task.status, target=task.target, result=task.result if task.status == "completed" else None,
        error=task.error if task.status == "failed" else None, attempts=task.attempts, metadata=task.meta or {},
        has_audio=bool(task.audio_key or task.audio_url), created_at=task.created_at, updated_at=task.updated_at,
        finished_at=task.finished_at,
    ).model_dump(mode="json")


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", f"invalid request: {field}: {message}",
                    [{"loc": [field], "msg": message, "type": "value_error"}])


@bp.post("/api/voice")
@spec.validate(
    json=VoiceJson, form=VoiceForm,
    resp=Response(HTTP_202=VoiceAccepted, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_413=ErrorResponse),
    tags=["voice"], security=BEARER,
)
@require_api_key
@job_quota("voice")
def submit(json: VoiceJson, form: VoiceForm):  # type: ignore[no-untyped-def]
    """Accept a call for scam scoring: multipart ``audio`` and/or ``transcript``, or JSON with a
    ``storage_key`` / ``audio_url`` and/or ``transcript``. 202 with the status URL."""
    settings = _settings()
    storage = get_storage(settings)
    task_id = voice_tasks.new_task_id()
    audio_key = audio_url = None
    if request.mimetype == "multipart/form-data":
        transcript, target = request.form.get("transcript") or None, request.form.get("target") or None
        meta = _parse_metadata(request.form.get("metadata"))
        file = request.files.get("audio")
        if file is not None:
            data = file.stream.read(settings.voice_max_audio_bytes + 1)
            if len(data) > settings.voice_max_audio_bytes:
                raise ApiError(413, "audio_too_large", f"audio is limited to {settings.voice_max_audio_bytes:,} bytes")
            # Even an empty or undecodable file is kept and queued: the worker fails it
            # with the specific reason, visible on the status URL.
            audio_key = voice_tasks.audio_key_for(task_id)
            storage.put_bytes(audio_key, data, content_type=file.mimetype or "application/octet-stream")
    else:
        if json is None:
            raise _bad("body", "send multipart/form-data or JSON")
        transcript, target, meta = json.transcript, json.target, json.metadata or {}
        audio_url = json.audio_url
        if json.storage_key:
            try:
                exists = storage.exists(json.storage_key)
            except ValueError as exc:
                raise _bad("storage_key", str(exc)) from None
            if exists:  # only the caller's own clips and files; another's reads as missing
                with session_scope() as session:
                    exists = voice_tasks.key_in_voice_area(session, json.storage_key, owner())
            if not exists:
                raise _bad("storage_key", f"no object at storage key {json.storage_key!r}")
            audio_key = json.storage_key
        if audio_key and audio_url:
            raise _bad("audio_url", "give storage_key or audio_url, not both")
    if transcript is not None and len(transcript) > MAX_TRANSCRIPT_CHARS:
        raise _bad("transcript", f"at most {MAX_TRANSCRIPT_CHARS} characters")
    if transcript is not None and not transcript.strip():
        transcript = None
    if not (audio_key or audio_url or transcript):
        raise _bad("audio", "nothing to score: send audio, a storage_key, an audio_url or a transcript")
    if target not in (None, "celery", "remote"):
        raise _bad("target", "must be celery or remote")
    target = target or settings.voice_default_target
    with session_scope() as session:
        task = voice_tasks.create_task(session, task_id=task_id, target=target, audio_key=audio_key,
                                       audio_url=audio_url, transcript=transcript, meta=meta,
                                       api_key_id=g.api_key_id, client_id=owner())
        status = task.status
    if target == "celery":
        nudge_relay()
    return {"id": task_id, "status": status, "target": target,
            "status_url": url_for("voice.get_task", task_id=task_id)}, 202


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    if not raw:
        return {}
    if len(raw) > MAX_METADATA_BYTES:
        raise _bad("metadata", f"at most {MAX_METADATA_BYTES} bytes")
    try:
        value = jsonlib.loads(raw)
    except ValueError:
        raise _bad("metadata", "not valid JSON") from None
    if not isinstance(value, dict):
        raise _bad("metadata", "must be a JSON object")
    return value


@bp.get("/api/voice/<task_id>")
@spec.validate(resp=Response(HTTP_200=VoiceTaskOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["voice"], security=BEARER)
@require_api_key
def get_task(task_id: str):  # type: ignore[no-untyped-def]
    """Status of a voice task; the result when completed, the reason when failed."""
    with session_scope() as session:
        return _task_out(owned(session, VoiceTask, task_id, "voice task"))


# --- remote worker protocol ----------------------------------------------------------------

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


def require_worker(view: F) -> F:
    """Authenticate a remote worker by its bearer token (401 when unknown, revoked or expired).

    Defined here rather than with ``protected``: spectree evaluates the view's string
    annotations in the wrapper's module globals, which must be this module's.
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _check_worker()
        return view(*args, **kwargs)

    setattr(wrapper, AUTH_ATTR, _check_worker)
    return wrapper  # type: ignore[return-value]


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


def _audio_url_for(task: VoiceTask) -> str | None:
    if task.audio_url:
        return task.audio_url
    if not task.audio_key:
        return None
    storage = get_storage(_settings())
    url = storage.presigned_get_url(task.audio_key, expires_in=int(_settings().voice_lease_seconds) + 300)
    if isinstance(storage, LocalStorage) and url.startswith(storage.base_url):
        # The worker reaches the API at the address it used for this request.
        url = request.host_url.rstrip("/") + url[len(storage.base_url):]
    return url


def _conflict(exc: voice_tasks.NotHolder) -> ApiError:
    return ApiError(409, "not_task_holder", str(exc), {"status": exc.status})


@bp.get("/api/v1/worker/tasks/next")
@spec.validate(resp=Response("HTTP_204", HTTP_200=WorkerTask, HTTP_401=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def next_task():  # type: ignore[no-untyped-def]
    """Claim the oldest pending task with a lease and return its payload; 204 when there is none."""
    settings = _settings()
    targets = settings.voice_remote_targets.split(",")
    with session_scope() as session:
        task = voice_tasks.claim_next(session, g.worker_holder, targets, settings.voice_lease_seconds)
        # A client's audio_url goes to the remote worker only if the address policy lets it
        # through (as for the Celery workers); a refused one fails its task at once.
        while task is not None and task.audio_url and _blocked(task.audio_url):
            voice_tasks.fail(session, task.id, g.worker_holder, "blocked_address", retryable=False,
                             max_attempts=settings.voice_max_attempts)
            logger.info("voice task audio_url refused", extra={"task_id": task.id})
            task = voice_tasks.claim_next(session, g.worker_holder, targets, settings.voice_lease_seconds)
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
def update_status(task_id: str, json: StatusUpdate):  # type: ignore[no-untyped-def]
    """Report progress on a held task (renews its lease); 409 if this worker does not hold it."""
    try:
        with session_scope() as session:
            task = voice_tasks.start(session, task_id, g.worker_holder, _settings().voice_lease_seconds)
            return TaskState(task_id=task.id, status=task.status, lease_expires_at=task.lease_until).model_dump(mode="json")
    except voice_tasks.TaskNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_tasks.NotHolder as exc:
        raise _conflict(exc) from None


@bp.post("/api/v1/worker/tasks/<task_id>/complete")
@spec.validate(json=VoiceResult, resp=Response(HTTP_200=TaskState, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                               HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def complete_task(task_id: str, json: VoiceResult):  # type: ignore[no-untyped-def]
    """Record the result of a held task (validated: score and confidence in [0, 1], a known
    risk level, reasons a list of strings); 409 if this worker does not hold it."""
    result = json.model_dump(mode="json") | {"scored_by": g.worker_holder}
    try:
        with session_scope() as session:
            task = voice_tasks.complete(session, task_id, g.worker_holder, result)
            workers.count(session, g.worker_id, completed=1)
            body = TaskState(task_id=task.id, status=task.status).model_dump(mode="json")
    except voice_tasks.TaskNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_tasks.NotHolder as exc:
        raise _conflict(exc) from None
    logger.info("voice task completed", extra={"task_id": task_id, "worker_id": g.worker_id,
                                               "risk_level": json.risk_level})
    return body


@bp.post("/api/v1/worker/tasks/<task_id>/fail")
@spec.validate(json=FailReport, resp=Response(HTTP_200=TaskState, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                              HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def fail_task(task_id: str, json: FailReport):  # type: ignore[no-untyped-def]
    """Report that a held task could not be scored: it goes back to ``pending`` while attempts
    remain (VOICE_MAX_ATTEMPTS) and ``retryable`` is true, else it is ``failed``."""
    try:
        with session_scope() as session:
            task = voice_tasks.fail(session, task_id, g.worker_holder, json.reason, retryable=json.retryable,
                                    max_attempts=_settings().voice_max_attempts)
            workers.count(session, g.worker_id, failed=1)
            body = TaskState(task_id=task.id, status=task.status).model_dump(mode="json")
            requeued = task.status == "pending" and task.target == "celery"
    except voice_tasks.TaskNotFound:
        raise ApiError(404, "not_found", f"voice task {task_id!r} does not exist") from None
    except voice_tasks.NotHolder as exc:
        raise _conflict(exc) from None
    if requeued:
        nudge_relay()
    return body


@bp.post("/api/v1/worker/heartbeat")
@spec.validate(json=Heartbeat, resp=Response(HTTP_200=HeartbeatAck, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["voice workers"], security=WORKER)
@require_worker
def heartbeat(json: Heartbeat):  # type: ignore[no-untyped-def]
    """The worker is alive (sent at start — registration — and every 60 s)."""
    from app.models.base import utcnow
    from app.models.voice import RemoteWorker

    info = json.model_dump(mode="json", exclude={"worker_id"}, exclude_none=True)
    with session_scope() as session:
        worker = session.get(RemoteWorker, g.worker_id)
        assert worker is not None
        workers.heartbeat(worker, json.worker_id, info)
    return {"ok": True, "worker": g.worker_id, "server_time": utcnow().isoformat(), "heartbeat_interval": 60}


# --- admin API ----------------------------------------------------------------------------

class WorkerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="What the worker is, e.g. `worker-01`.")


class WorkerOut(BaseModel):
    id: str
    name: str
    instance: str | None = Field(description="The WORKER_ID it reported in its heartbeat.")
    created_at: datetime
    revoked_at: datetime | None
    last_heartbeat_at: datetime | None
    last_active_at: datetime | None
    active: bool
    tasks_completed: int
    tasks_failed: int
    tasks_processed: int


class WorkerCreated(WorkerOut):
    token: str = Field(description="The worker's bearer token; shown once, store it now.")


class WorkerList(BaseModel):
    active_count: int
    total: int
    items: list[WorkerOut]


def worker_out(view: workers.WorkerView) -> dict[str, Any]:
    w = view.worker
    return WorkerOut(id=w.id, name=w.name, instance=w.instance, created_at=w.created_at, revoked_at=w.revoked_at,
                     last_heartbeat_at=w.last_heartbeat_at, last_active_at=view.last_active_at, active=view.active,
                     tasks_completed=w.tasks_completed, tasks_failed=w.tasks_failed,
                     tasks_processed=w.tasks_completed + w.tasks_failed).model_dump(mode="json")


@bp.post("/api/admin/workers")
@spec.validate(json=WorkerCreate, resp=Response(HTTP_201=WorkerCreated, HTTP_400=ErrorResponse,
                                                HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def create_worker(json: WorkerCreate):  # type: ignore[no-untyped-def]
    """Create a remote worker; the answer carries its token, shown this once."""
    settings = _settings()
    with session_scope() as session:
        worker, token = workers.create_worker(session, json.name, settings.signing_key(),
                                              settings.voice_worker_token_days)
        body = worker_out(workers.WorkerView(worker, False)) | {"token": token}
    return body, 201


@bp.get("/api/admin/workers")
@spec.validate(resp=Response(HTTP_200=WorkerList, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def list_workers():  # type: ignore[no-untyped-def]
    """Every remote worker: active or not, tasks processed, last active."""
    with session_scope() as session:
        views = workers.list_workers(session, _settings().voice_worker_active_seconds)
        return {"active_count": sum(v.active for v in views), "total": len(views),
                "items": [worker_out(v) for v in views]}


@bp.delete("/api/admin/workers/<worker_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def revoke_worker(worker_id: str):  # type: ignore[no-untyped-def]
    """Revoke a worker's token: its next call gets 401."""
    with session_scope() as session:
        if workers.revoke_worker(session, worker_id) is None:
            raise ApiError(404, "not_found", f"remote worker {worker_id!r} does not exist")
    return "", 204



# --- admin page (server-rendered) -----------------------------------------------------------
# A browser cannot send a bearer header, so the page asks for ADMIN_TOKEN once and keeps a
# signed, HttpOnly, SameSite=Strict cookie bound to that token (rotating ADMIN_TOKEN logs
# every browser out). Each form carries a CSRF token derived from the cookie.

page = Blueprint("workers_page", __name__, template_folder="templates")

_COOKIE = "workers_admin"
_COOKIE_MAX_AGE = 8 * 3600


def _page_serializer():  # type: ignore[no-untyped-def]
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(_settings().signing_key(), salt="voice.workers-admin")


def _token_tag() -> str:
    import hashlib

    return hashlib.sha256(_settings().admin_token.get_secret_value().encode()).hexdigest()[:16]


def _page_session() -> str | None:
    """The cookie value when it is a valid session for the current ADMIN_TOKEN."""
    from itsdangerous import BadSignature

    raw = request.cookies.get(_COOKIE)
    if not raw or not _settings().admin_token.get_secret_value():
        return None
    try:
        value = _page_serializer().loads(raw, max_age=_COOKIE_MAX_AGE)
    except BadSignature:
        return None
    return raw if value == {"t": _token_tag()} else None


def _csrf_for(cookie: str) -> str:
    import hashlib
    import hmac

    return hmac.new(_settings().signing_key(), b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def _check_csrf(cookie: str) -> None:
    import hmac

    if not hmac.compare_digest(request.form.get("csrf", ""), _csrf_for(cookie)):
        raise ApiError(400, "csrf_failed", "the form has expired; reload the page and try again")


def _render_page(cookie: str, status: int = 200, **context: Any):  # type: ignore[no-untyped-def]
    from flask import render_template

    with session_scope() as session:
        views = workers.list_workers(session, _settings().voice_worker_active_seconds)
        rows = [worker_out(v) for v in views]
    return render_template("voice/workers.html", workers=rows, active_count=sum(r["active"] for r in rows),
                           csrf=_csrf_for(cookie), **context), status


def _render_login(status: int = 200, error: str | None = None):  # type: ignore[no-untyped-def]
    from flask import render_template

    disabled = not _settings().admin_token.get_secret_value()
    return render_template("voice/login.html", error=error, disabled=disabled), 403 if disabled else status


@page.get("/admin/workers")
def workers_page():  # type: ignore[no-untyped-def]
    """The Workers admin page: list, add (token shown once), revoke."""
    cookie = _page_session()
    if cookie is None:
        return _render_login()
    return _render_page(cookie, revoked=request.args.get("revoked"))


@page.post("/admin/login")
def workers_login():  # type: ignore[no-untyped-def]
    """Check ADMIN_TOKEN from the form and start a page session."""
    import hmac

    from flask import redirect

    from app.api.auth import client_address, failure_limiter

    expected = _settings().admin_token.get_secret_value()
    if not expected:
        return _render_login()
    # The sign-in form guesses ADMIN_TOKEN like a bearer header would: same limiter.
    limiter = failure_limiter()
    wait = limiter.retry_after(client_address())
    if wait is not None:
        body, status = _render_login(429, f"Too many failed sign-ins; try again in {wait} s.")
        return body, status, {"Retry-After": str(wait)}
    if not hmac.compare_digest(request.form.get("token", "").encode(), expected.encode()):
        limiter.record_failure(client_address())
        return _render_login(401, "Wrong admin token.")
    resp = redirect(url_for("voice.workers_page.workers_page"), code=303)
    resp.set_cookie(_COOKIE, _page_serializer().dumps({"t": _token_tag()}), max_age=_COOKIE_MAX_AGE,
                    httponly=True, samesite="Strict", secure=request.is_secure, path="/admin")
    return resp


@page.post("/admin/logout")
def workers_logout():  # type: ignore[no-untyped-def]
    """End the page session."""
    from flask import redirect

    resp = redirect(url_for("voice.workers_page.workers_page"), code=303)
    resp.delete_cookie(_COOKIE, path="/admin")
    return resp


@page.post("/admin/workers")
def workers_page_add():  # type: ignore[no-untyped-def]
    """Create a worker and show its token in this response only (a reload does not show it)."""
    cookie = _page_session()
    if cookie is None:
        return _render_login(401, "Please sign in again.")
    _check_csrf(cookie)
    name = (request.form.get("name") or "").strip()
    if not name or len(name) > 200:
        return _render_page(cookie, 400, error="A worker needs a name of 1 to 200 characters.")
    settings = _settings()
    with session_scope() as session:
        worker, token = workers.create_worker(session, name, settings.signing_key(), settings.voice_worker_token_days)
        created = {"id": worker.id, "name": worker.name}
    return _render_page(cookie, 201, created=created, new_token=token)


@page.post("/admin/workers/<worker_id>/revoke")
def workers_page_revoke(worker_id: str):  # type: ignore[no-untyped-def]
    """Revoke a worker, then show the list again."""
    from flask import redirect

    cookie = _page_session()
    if cookie is None:
        return _render_login(401, "Please sign in again.")
    _check_csrf(cookie)
    with session_scope() as session:
        if workers.revoke_worker(session, worker_id) is None:
            return _render_page(cookie, 404, error=f"No worker {worker_id}.")
    return redirect(url_for("voice.workers_page.workers_page", revoked=worker_id), code=303)


bp.register_blueprint(page)
