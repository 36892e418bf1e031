"""OCR uploads API: upload a scorecard (multipart, or a presigned PUT on S3), queue it for
OCR through the outbox, and poll its status, progress and parsed preview.

``ENABLE_OCR=false`` answers every route here with 503 ``ocr_disabled``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, request, url_for
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response
from spectree.model_adapter.pydantic_adapter import BaseFile

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.limits import job_quota
from app.api.ownership import not_found, owned, owner
from app.api.spec import BEARER, ViewResult, spec
from app.db import session_scope
from app.models.ocr import Upload
from app.services.ocr import (
    OcrLimits,
    UploadStateError,
    complete_upload,
    create_upload,
    start_direct_upload,
)
from app.storage import get_storage

logger = logging.getLogger(__name__)

bp = Blueprint("ocr", __name__)

#: Room for the multipart framing around the file when judging Content-Length.
_MULTIPART_OVERHEAD = 64 * 1024


@bp.before_request
def _guard() -> None:
    """The feature flag, and the size limit judged from Content-Length before the body is
    parsed (request validation would otherwise spool the whole body first)."""
    settings = current_app.config["SETTINGS"]
    if not settings.enable_ocr:
        raise ApiError(503, "ocr_disabled", "OCR uploads are turned off on this server (ENABLE_OCR=false)")
    limit = settings.ocr_max_file_bytes
    if request.endpoint == "ocr.create" and request.content_length \
            and request.content_length > limit + _MULTIPART_OVERHEAD:
        raise _too_large(request.content_length, limit)


class UploadForm(BaseModel):
    """``multipart/form-data`` with the scorecard in the ``file`` field."""

    # ``file`` is checked by the view (400 naming it) and only marked required in the
    # document: when spectree itself reports it missing, it fails to serialize the other
    # form parts it echoes back (FileStorage objects) and answers 500.
    model_config = ConfigDict(arbitrary_types_allowed=True, json_schema_extra={"required": ["file"]})

    file: BaseFile | None = Field(None, description="PNG, JPEG, TIFF, WebP or PDF; the type is read from the bytes.")


class DirectUploadRequest(BaseModel):
    """JSON body that starts a direct upload to object storage (S3 backend only)."""

    filename: str = Field(min_length=1, max_length=1024, description="The file's name, for display only.")


class UploadCreated(BaseModel):
    id: str
    filename: str
    status: str = Field(description="`uploaded`, or `failed` when the bytes were refused (see `error`).")
    content_type: str | None = Field(None, description="Detected from the bytes; unknown yet for a direct upload.")
    size: int | None
    error: str | None = None
    status_url: str
    complete_url: str
    upload_url: str | None = Field(None, description="Direct upload only: PUT the file here, then call complete.")
    upload_method: str | None = None
    expires_in: int | None = Field(None, description="Seconds the upload_url stays valid.")


class UploadQueued(BaseModel):
    id: str
    status: str
    status_url: str
    duplicate: bool = Field(description="True when the upload was already queued; nothing new was queued.")


class Progress(BaseModel):
    pages_done: int
    pages_total: int | None
    percent: float | None


class UploadStatus(BaseModel):
    id: str
    filename: str
    content_type: str | None
    size: int | None
    status: str
    progress: Progress
    page_confidences: list[float | None] | None = Field(None, description="Mean word confidence (0–100) per page.")
    parsed_preview: dict[str, Any] | None = Field(None, description="Present when `ready`; schema in docs/ocr.md.")
    text: str | None = Field(None, description="Raw OCR text when `ready`; pages separated by form feeds.")
    error: str | None = Field(None, description="Why it failed, when `failed`.")
    attempts: int
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


def _limits() -> OcrLimits:
    return OcrLimits.from_settings(current_app.config["SETTINGS"])


def _created(upload: Upload, **extra: Any) -> dict[str, Any]:
    return UploadCreated(
        id=upload.id, filename=upload.filename, status=upload.status, content_type=upload.content_type,
        size=upload.size, error=upload.error,
        status_url=url_for("ocr.upload_status", upload_id=upload.id),
        complete_url=url_for("ocr.complete", upload_id=upload.id), **extra,
    ).model_dump(mode="json")


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "file_too_large", f"the file is {size:,} bytes, over the limit of {limit:,} bytes",
                    {"limit": limit, "size": size})


@bp.post("/api/uploads")
@spec.validate(
    json=DirectUploadRequest, form=UploadForm,
    resp=Response(HTTP_201=UploadCreated, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_413=ErrorResponse,
                  HTTP_503=ErrorResponse),
    tags=["ocr"], security=BEARER,
)
@require_api_key
@job_quota("ocr")
def create(json: DirectUploadRequest, form: UploadForm) -> ViewResult:
    """Upload a scorecard (multipart ``file``), or start a direct upload to S3 (JSON ``filename``).

    Multipart: the file is stored and 201 returned with its id; call ``complete`` to OCR it.
    An empty file or one whose bytes are not an allowed type comes back ``failed`` with
    the reason. A file over OCR_MAX_FILE_BYTES is refused with 413.
    """
    settings = current_app.config["SETTINGS"]
    limits = _limits()
    storage = get_storage(settings)
    if request.mimetype == "multipart/form-data":
        file = request.files.get("file")
        if file is None or not hasattr(file, "stream"):
            raise ApiError(400, "validation_error", "invalid request: file",
                           [{"loc": ["file"], "msg": "Field required", "type": "missing"}])
        stream = file.stream
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(0)
        if size > limits.max_file_bytes:
            raise _too_large(size, limits.max_file_bytes)
        with session_scope() as session:
            upload = create_upload(session, storage, filename=file.filename, stream=stream, size=size, limits=limits,
                                   client_id=owner())
            body = _created(upload)
        return body, 201
    assert json is not None
    try:
        with session_scope() as session:
            upload, url = start_direct_upload(session, storage, filename=json.filename,
                                              expires_in=settings.presign_expiry_seconds, client_id=owner())
            body = _created(upload, upload_url=url, upload_method="PUT", expires_in=settings.presign_expiry_seconds)
    except UploadStateError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    return body, 201


@bp.post("/api/uploads/<upload_id>/complete")
@spec.validate(
    resp=Response(HTTP_202=UploadQueued, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse, HTTP_409=ErrorResponse,
                  HTTP_503=ErrorResponse),
    tags=["ocr"], security=BEARER,
)
@require_api_key
def complete(upload_id: str) -> ViewResult:
    """Queue the upload for OCR; 202 with the status URL. Calling it again queues nothing more."""
    storage = get_storage(current_app.config["SETTINGS"])
    try:
        with session_scope() as session:
            owned(session, Upload, upload_id, "upload", lock=True)
            upload, queued_now = complete_upload(session, storage, upload_id, _limits())
            status, error = upload.status, upload.error
    except LookupError:
        raise not_found("upload", upload_id) from None
    except UploadStateError as exc:
        raise ApiError(409, exc.code, exc.message) from None
    if status == "failed":  # a direct upload whose bytes were refused just now
        raise ApiError(409, "upload_failed", f"upload {upload_id} has failed: {error}")
    return {"id": upload_id, "status": status, "duplicate": not queued_now,
            "status_url": url_for("ocr.upload_status", upload_id=upload_id)}, 202


@bp.get("/api/uploads/<upload_id>/status")
@spec.validate(resp=Response(HTTP_200=UploadStatus, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse,
                             HTTP_503=ErrorResponse),
               tags=["ocr"], security=BEARER)
@require_api_key
def upload_status(upload_id: str) -> ViewResult:
    """Status, progress (pages done of total), the parsed preview when ready, the reason when failed."""
    with session_scope() as session:
        upload = owned(session, Upload, upload_id, "upload")
        total = upload.pages_total
        ready = upload.status == "ready"
        return UploadStatus(
            id=upload.id, filename=upload.filename, content_type=upload.content_type, size=upload.size,
            status=upload.status,
            progress=Progress(pages_done=upload.pages_done, pages_total=total,
                              percent=round(100 * upload.pages_done / total, 1) if total else None),
            page_confidences=upload.page_confidences,
            parsed_preview=upload.parsed_preview if ready else None,
            text=upload.text if ready else None,
            error=upload.error if upload.status == "failed" else None,
            attempts=upload.attempts, created_at=upload.created_at, updated_at=upload.updated_at,
            queued_at=upload.queued_at, started_at=upload.started_at, finished_at=upload.finished_at,
        ).model_dump(mode="json")
