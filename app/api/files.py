"""Chunked file uploads API: create an upload, send chunks, complete, poll and download.

``POST /api/files`` fixes the chunk plan; ``PUT /api/files/<id>/chunks/<n>`` takes a
chunk's raw bytes (or, on S3, the client PUTs to the presigned URL it was given);
``POST /api/files/<id>/complete`` writes ``MERGING`` and the merge's outbox event in one
transaction (published when it commits); ``GET /api/files/<id>`` reports progress and, once
``COMPLETED``, a presigned download URL. A file is visible only to the client that made it (``app.api.ownership``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, g, request, url_for
from pydantic import BaseModel, Field
from spectree import Response
from sqlalchemy.orm import Session

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.ownership import owned, owner
from app.api.spec import BEARER, ViewResult, spec
from app.db import session_scope
from app.models.files import COMPLETED, File
from app.services.files import (
    FileError,
    FileLimits,
    complete_upload,
    create_upload,
    download_url,
    expected_chunk_size,
    receive_chunk,
    received_chunks,
    upload_url,
)
from app.storage import Storage, get_storage

bp = Blueprint("files", __name__)

CHECKSUM_HEADER = "X-Chunk-SHA256"


class FileCreate(BaseModel):
    filename: str = Field(min_length=1, max_length=1024, description="Name to download the file as; sanitized.")
    size: int = Field(ge=1, description="Exact size of the whole file in bytes; at most FILES_MAX_SIZE (else 413).")
    content_type: str | None = Field(
        None, max_length=255, description="MIME type of the file. Omitted: guessed from the filename."
    )
    chunk_size: int | None = Field(
        None, description="Bytes per chunk (every chunk but the last), 5 MiB to FILES_MAX_CHUNK_SIZE. "
        "Omitted: FILES_CHUNK_SIZE."
    )


class ChunkTarget(BaseModel):
    index: int
    offset: int = Field(description="Where the chunk starts in the file.")
    size: int = Field(description="Exact length the chunk must have.")
    method: str = "PUT"
    url: str = Field(description="Where to PUT the bytes: a presigned S3 URL (no Authorization header), "
                     "or the API path (with the bearer key).")
    api_path: str = Field(description="The API path for this chunk; works with every backend.")


class FilePlan(BaseModel):
    """What every answer about a file starts with: its name, size and chunk plan."""

    id: str
    filename: str
    content_type: str
    size: int
    chunk_size: int
    total_chunks: int
    status: str


class FileCreated(FilePlan):
    status_url: str
    complete_url: str
    chunks: list[ChunkTarget]


class ChunkStored(BaseModel):
    file_id: str
    index: int
    size: int
    md5: str
    sha256: str
    chunks_received: int


class FileAccepted(BaseModel):
    id: str
    status: str
    status_url: str
    enqueued: bool = Field(description="False when the file was already merging or merged: nothing new queued.")


class FileOut(FilePlan):
    chunks_received: int
    missing_chunks: list[int]
    failure_reason: str | None
    final_size: int | None
    checksum: str | None = Field(description="S3-style ETag: MD5 of the part MD5s and the part count.")
    sha256: str | None = Field(description="SHA-256 of the whole file when the merge computed it (local backend).")
    merge_attempts: int
    merge_parts_done: int
    merge_bytes_received: int | None = Field(
        description="Bytes the merging worker received from S3 (responses, headers included); chunk bytes never do."
    )
    download_url: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


def _storage() -> Storage:
    return get_storage(current_app.config["SETTINGS"])


def _api_error(exc: FileError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


def _chunk_path(file_id: str, index: int) -> str:
    return url_for("files.put_chunk", file_id=file_id, index=index)


#: The status document's fields that are not columns of the file.
_COMPUTED = frozenset({"chunks_received", "missing_chunks", "download_url"})


def file_out(session: Session, storage: Storage, file: File) -> dict[str, Any]:
    """The status document of a file: its columns, what has arrived, and the download URL."""
    received = received_chunks(session, storage, file)
    have = set(received)
    missing = [] if file.status == COMPLETED else [i for i in range(file.total_chunks) if i not in have]
    columns = {name: getattr(file, name) for name in FileOut.model_fields.keys() - _COMPUTED}
    document = FileOut(**columns, chunks_received=len(received), missing_chunks=missing,
                       download_url=download_url(storage, file))
    return document.model_dump(mode="json")


@bp.post("/api/files")
@spec.validate(
    json=FileCreate,
    resp=Response(HTTP_201=FileCreated, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_413=ErrorResponse),
    tags=["files"], security=BEARER,
)
@require_api_key
def create(json: FileCreate) -> ViewResult:
    """Start a chunked upload: the answer says how to cut the file and where each chunk goes."""
    settings = current_app.config["SETTINGS"]
    storage = _storage()
    try:
        with session_scope() as session:
            file = create_upload(
                session, filename=json.filename, size=json.size, content_type=json.content_type,
                chunk_size=json.chunk_size, limits=FileLimits.from_settings(settings), api_key_id=g.api_key_id,
                client_id=owner(),
            )
            chunks = []
            for index in range(file.total_chunks):
                path = _chunk_path(file.id, index)
                chunks.append({
                    "index": index, "offset": index * file.chunk_size, "size": expected_chunk_size(file, index),
                    "method": "PUT", "url": upload_url(storage, file, index, path), "api_path": path,
                })
            body = {
                "id": file.id, "filename": file.filename, "content_type": file.content_type, "size": file.size,
                "chunk_size": file.chunk_size, "total_chunks": file.total_chunks, "status": file.status,
                "status_url": url_for("files.get_status", file_id=file.id),
                "complete_url": url_for("files.complete", file_id=file.id),
                "chunks": chunks,
            }
    except FileError as exc:
        raise _api_error(exc) from None
    return body, 201


@bp.put("/api/files/<file_id>/chunks/<int(signed=True):index>")
@spec.validate(
    resp=Response(HTTP_200=ChunkStored, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse,
                  HTTP_409=ErrorResponse, HTTP_413=ErrorResponse, HTTP_503=ErrorResponse),
    tags=["files"], security=BEARER,
    path_parameter_descriptions={"file_id": "The upload's id.", "index": "Chunk number, from 0."},
)
@require_api_key
def put_chunk(file_id: str, index: int) -> ViewResult:
    """Store one chunk (the raw request body); sending a chunk again replaces it.

    The body must be exactly the chunk's size (400 `wrong_chunk_size`); an optional
    `X-Chunk-SHA256` header (hex) is checked against the body (400 `checksum_mismatch`).
    """
    with session_scope() as session:
        owned(session, File, file_id, "file")
    try:
        receipt = receive_chunk(
            session_scope, _storage(), file_id=file_id, index=index, stream=request.stream,
            content_length=request.content_length, sha256_hex=request.headers.get(CHECKSUM_HEADER),
        )
    except FileError as exc:
        raise _api_error(exc) from None
    return {
        "file_id": receipt.file_id, "index": receipt.index, "size": receipt.size, "md5": receipt.checksum,
        "sha256": receipt.sha256, "chunks_received": receipt.chunks_received,
    }, 200


@bp.post("/api/files/<file_id>/complete")
@spec.validate(
    resp=Response(HTTP_202=FileAccepted, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse, HTTP_409=ErrorResponse,
                  HTTP_503=ErrorResponse),
    tags=["files"], security=BEARER, path_parameter_descriptions={"file_id": "The upload's id."},
)
@require_api_key
def complete(file_id: str) -> ViewResult:
    """Every chunk is sent: merge them (asynchronously). 409 `chunks_missing` lists what is not there."""
    try:
        with session_scope() as session:
            owned(session, File, file_id, "file", lock=True)
            file, enqueued = complete_upload(session, _storage(), file_id)
            status = file.status
    except FileError as exc:
        raise _api_error(exc) from None
    return {"id": file_id, "status": status, "enqueued": enqueued,
            "status_url": url_for("files.get_status", file_id=file_id)}, 202


@bp.get("/api/files/<file_id>")
@spec.validate(
    resp=Response(HTTP_200=FileOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse, HTTP_503=ErrorResponse),
    tags=["files"], security=BEARER, path_parameter_descriptions={"file_id": "The upload's id."},
)
@require_api_key
def get_status(file_id: str) -> ViewResult:
    """Status, chunks received, and a presigned download URL once `COMPLETED`."""
    storage = _storage()
    try:
        with session_scope() as session:
            return file_out(session, storage, owned(session, File, file_id, "file"))
    except FileError as exc:
        raise _api_error(exc) from None
