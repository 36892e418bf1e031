"""Voice API for clients: submit a clip or transcript, read the job."""

from __future__ import annotations

import json as jsonlib
from datetime import datetime
from typing import Any, Literal

from flask import g, request, url_for
from pydantic import BaseModel, ConfigDict, Field, field_validator
from spectree import Response
from spectree.model_adapter.pydantic_adapter import BaseFile

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.jsonfields import BoundedObject, check_bounded
from app.api.limits import job_quota
from app.api.ownership import owned, owner
from app.api.spec import BEARER, ViewResult, spec
from app.api.voice import MAX_METADATA_BYTES, MAX_TRANSCRIPT_CHARS, _bad, _settings, bp
from app.db import session_scope
from app.models.voice import VoiceJob, VoiceJobStatus
from app.services.voice import jobs as voice_jobs
from app.storage import get_storage


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


class VoiceJobOut(BaseModel):
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


def _job_out(task: VoiceJob) -> dict[str, Any]:
    return VoiceJobOut(
        id=task.id, status=task.status, target=task.target, result=task.result if task.status == VoiceJobStatus.COMPLETED else None,
        error=task.error if task.status == VoiceJobStatus.FAILED else None, attempts=task.attempts, metadata=task.meta or {},
        has_audio=bool(task.audio_key or task.audio_url), created_at=task.created_at, updated_at=task.updated_at,
        finished_at=task.finished_at,
    ).model_dump(mode="json")



@bp.post("/api/voice")
@spec.validate(
    json=VoiceJson, form=VoiceForm,
    resp=Response(HTTP_202=VoiceAccepted, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_413=ErrorResponse),
    tags=["voice"], security=BEARER,
)
@require_api_key
@job_quota("voice")
def submit(json: VoiceJson, form: VoiceForm) -> ViewResult:
    """Accept a call for scam scoring: multipart ``audio`` and/or ``transcript``, or JSON with a
    ``storage_key`` / ``audio_url`` and/or ``transcript``. 202 with the status URL."""
    settings = _settings()
    storage = get_storage(settings)
    task_id = voice_jobs.new_job_id()
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
            audio_key = voice_jobs.audio_key_for(task_id)
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
                    exists = voice_jobs.key_in_voice_area(session, json.storage_key, owner())
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
        task = voice_jobs.create_job(session, task_id=task_id, target=target, audio_key=audio_key,
                                       audio_url=audio_url, transcript=transcript, meta=meta,
                                       api_key_id=g.api_key_id, client_id=owner())
        status = task.status
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
@spec.validate(resp=Response(HTTP_200=VoiceJobOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["voice"], security=BEARER)
@require_api_key
def get_task(task_id: str) -> ViewResult:
    """Status of a voice task; the result when completed, the reason when failed."""
    with session_scope() as session:
        return _job_out(owned(session, VoiceJob, task_id, "voice task"))
