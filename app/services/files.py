"""Chunked file uploads: accept chunks, merge them into one object, hand out download URLs.

The protocol (see docs/files.md): ``create_upload`` fixes the chunk plan; chunks arrive
through the API (``receive_chunk``) or, on S3, straight to S3 with presigned PUT URLs;
``complete_upload`` checks every chunk is there and enqueues the merge through the
outbox; ``merge_file`` (the ``files`` queue) assembles the object.

On S3 the merge is a multipart upload with one ``UploadPartCopy`` per chunk, so chunk
bytes never pass through the worker (``S3TrafficMeter`` measures what does). The result
is verified against the chunks as they were uploaded: every part copy must report the
chunk's MD5, and the object's size and ETag (MD5 of the part MD5s, S3's algorithm) must
be what the chunks add up to. Chunks are deleted only after that, and after the
``COMPLETED`` commit. On the local backend the same function concatenates the files.

A merge claims its file by a conditional UPDATE that sets a token and a lease, renews
the lease after every part, and finishes with an UPDATE guarded by the token, so two
deliveries of the same task never both work on one file. A rerun after a crash aborts
the multipart upload the dead attempt left behind and starts again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.filenames import sanitize_filename
from app.models.base import utcnow
from app.models.files import COMPLETED, FAILED, MERGING, UPLOADING, File, FileChunk
from app.services.outbox import add_event
from app.storage import S3_MAX_COPY_BYTES, S3_MAX_PARTS, S3_MIN_PART_BYTES, S3Storage, Storage, guess_content_type

logger = logging.getLogger(__name__)

Scope = Callable[[], AbstractContextManager[Session]]

MERGE_TASK = "app.tasks.files.merge"
MIB = 1024 * 1024
_READ_BLOCK = MIB
_SPOOL_IN_MEMORY = 8 * MIB
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*(\s*;.*)?$")


# --- errors ------------------------------------------------------------------------------
class FileError(Exception):
    """A request about a file that cannot be done; ``status`` and ``code`` map it to HTTP."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class FileNotFound(FileError):
    status, code = 404, "not_found"


class FileTooLarge(FileError):
    status, code = 413, "file_too_large"


class InvalidChunkSize(FileError):
    code = "invalid_chunk_size"


class ChunkIndexOutOfRange(FileError):
    code = "chunk_index_out_of_range"


class WrongChunkSize(FileError):
    code = "wrong_chunk_size"


class ChecksumMismatch(FileError):
    code = "checksum_mismatch"


class WrongState(FileError):
    status, code = 409, "wrong_state"


class ChunksMissing(FileError):
    status, code = 409, "chunks_missing"


class StorageUnavailable(FileError):
    status, code = 503, "storage_unavailable"


class MergeBusy(Exception):
    """Another delivery holds the file's claim; try again in ``retry_in`` seconds."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"merge claim held for another {retry_in:.1f}s")
        self.retry_in = retry_in


class TransientMergeError(Exception):
    """Object storage failed in a way that may pass (timeout, 5xx): retry the merge."""


class PermanentMergeError(Exception):
    """The merge cannot succeed as things are (chunk gone or changed, access denied)."""


class LostClaim(Exception):
    """Our lease ran out and another delivery took the file over."""


# --- limits and naming -----------------------------------------------------------------------
@dataclass(frozen=True)
class FileLimits:
    """What an upload may ask for (from settings)."""

    max_size: int
    default_chunk_size: int
    max_chunk_size: int

    @classmethod
    def from_settings(cls, settings: Any) -> FileLimits:
        # Chunks may travel through the API, so none may exceed the request size limit.
        max_chunk = max(S3_MIN_PART_BYTES, min(settings.files_max_chunk_size, settings.max_request_bytes))
        return cls(
            max_size=settings.files_max_size,
            default_chunk_size=min(settings.files_chunk_size, max_chunk),
            max_chunk_size=max_chunk,
        )



def plan_chunks(size: int, chunk_size: int | None, limits: FileLimits) -> tuple[int, int]:
    """(chunk size, number of chunks) for a file of ``size`` bytes.

    Every chunk but the last is at least 5 MiB, S3's smallest multipart part, so the
    chunks can be merged server-side. Without an explicit chunk size the default grows
    when needed to stay within S3's 10,000 parts.
    """
    if size > limits.max_size:
        raise FileTooLarge(f"file of {size} bytes exceeds the limit of {limits.max_size} bytes",
                           {"size": size, "max_size": limits.max_size})
    if chunk_size is None:
        chunk_size = max(limits.default_chunk_size, math.ceil(size / S3_MAX_PARTS))
        chunk_size = math.ceil(chunk_size / MIB) * MIB
        if chunk_size > limits.max_chunk_size:
            raise FileTooLarge(
                f"file of {size} bytes needs more than {S3_MAX_PARTS} chunks of at most {limits.max_chunk_size} bytes",
                {"size": size, "max_chunk_size": limits.max_chunk_size},
            )
    elif not S3_MIN_PART_BYTES <= chunk_size <= limits.max_chunk_size:
        raise InvalidChunkSize(
            f"chunk_size must be between {S3_MIN_PART_BYTES} and {limits.max_chunk_size} bytes",
            [{"loc": ["chunk_size"], "msg": f"between {S3_MIN_PART_BYTES} and {limits.max_chunk_size}",
              "type": "out_of_range"}],
        )
    total = math.ceil(size / chunk_size)
    if total > S3_MAX_PARTS:
        raise InvalidChunkSize(
            f"{total} chunks exceed S3's {S3_MAX_PARTS} parts; use a chunk_size of at least "
            f"{math.ceil(size / S3_MAX_PARTS)} bytes",
            [{"loc": ["chunk_size"], "msg": "too small for this file", "type": "out_of_range"}],
        )
    return chunk_size, total


def object_key(file_id: str) -> str:
    """Deterministic key of the merged object: a rerun writes the same object."""
    return f"files/{file_id}/data"


def chunk_prefix(file_id: str) -> str:
    """Prefix under which every chunk of a file lives (listed by complete, GC and clean-up)."""
    return f"files/{file_id}/chunks/"


def chunk_key(file_id: str, index: int) -> str:
    """Deterministic key of chunk ``index``: a re-upload replaces the same object."""
    return f"{chunk_prefix(file_id)}{index:05d}"


def expected_chunk_size(file: File, index: int) -> int:
    """Every chunk is ``chunk_size`` long except the last, which holds the rest."""
    if not 0 <= index < file.total_chunks:
        raise ChunkIndexOutOfRange(
            f"chunk index {index} is out of range: this file has chunks 0 to {file.total_chunks - 1}",
            {"index": index, "total_chunks": file.total_chunks},
        )
    if index < file.total_chunks - 1:
        return file.chunk_size
    return file.size - file.chunk_size * (file.total_chunks - 1)


def s3_etag(md5s: Sequence[str]) -> str:
    """The ETag S3 gives an object made of parts with these MD5s (hex)."""
    if len(md5s) == 1:
        return md5s[0]
    return hashlib.md5(b"".join(bytes.fromhex(m) for m in md5s)).hexdigest() + f"-{len(md5s)}"


def _etag(value: str) -> str:
    return value.strip('"').lower()


# --- creating an upload ------------------------------------------------------------------------
def create_upload(
    session: Session,
    *,
    filename: str,
    size: int,
    content_type: str | None,
    chunk_size: int | None,
    limits: FileLimits,
    api_key_id: int | None = None,
    client_id: int | None = None,
) -> File:
    """Add a new ``UPLOADING`` file of ``client_id`` (made with key ``api_key_id``) with its
    chunk plan to the caller's transaction."""
    if size < 1:
        raise FileError("size must be at least 1 byte", [{"loc": ["size"], "msg": "at least 1", "type": "out_of_range"}])
    size_chunk, total = plan_chunks(size, chunk_size, limits)
    clean = sanitize_filename(filename, default="file")
    if content_type is not None and not _CONTENT_TYPE_RE.match(content_type):
        raise FileError(f"content_type {content_type!r} is not a MIME type",
                        [{"loc": ["content_type"], "msg": "expected type/subtype", "type": "value_error"}])
    now = utcnow()
    file = File(
        id=uuid.uuid4().hex,
        api_key_id=api_key_id,
        client_id=client_id,
        filename=clean,
        content_type=content_type or guess_content_type(clean),
        size=size,
        chunk_size=size_chunk,
        total_chunks=total,
        status=UPLOADING,
        merge_attempts=0,
        merge_parts_done=0,
        last_activity_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(file)
    session.flush()
    return file


def upload_url(storage: Storage, file: File, index: int, api_path: str, expires_in: int | None = None) -> str:
    """Where the client PUTs chunk ``index``: a presigned S3 URL, or the API path."""
    if isinstance(storage, S3Storage):
        return storage.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": storage.bucket, "Key": chunk_key(file.id, index)},
            ExpiresIn=expires_in or storage.default_expiry,
        )
    return api_path


def get_file(session: Session, file_id: str, *, lock: bool = False) -> File:
    """The file, if it exists (the API checks its owner first, ``app.api.ownership``)."""
    stmt = select(File).where(File.id == file_id)
    if lock:
        stmt = stmt.with_for_update()
    file = session.scalars(stmt).first()
    if file is None:
        raise FileNotFound(f"file {file_id!r} does not exist")
    return file


# --- receiving chunks through the API ----------------------------------------------------------
@dataclass
class ChunkReceipt:
    file_id: str
    index: int
    size: int
    checksum: str
    sha256: str
    chunks_received: int


def _check_accepts_chunks(file: File) -> None:
    if file.status == UPLOADING:
        return
    if file.status == FAILED and file.chunks_purged_at is None:
        return  # a failed merge keeps its chunks; a re-upload and a new complete may fix it
    raise WrongState(f"file {file.id} is {file.status} and no longer accepts chunks", {"status": file.status})


def receive_chunk(
    scope: Scope,
    storage: Storage,
    *,
    file_id: str,
    index: int,
    stream: IO[bytes],
    content_length: int | None,
    sha256_hex: str | None,
) -> ChunkReceipt:
    """Store chunk ``index`` from ``stream``, replacing any earlier upload of it.

    The body is spooled and hashed first (no transaction is open meanwhile); a wrong
    size or checksum is refused before anything is stored. The object write and the
    row happen under a lock on the file row, which ``complete_upload`` takes too, so no
    chunk changes once the merge is enqueued.
    """
    if sha256_hex is not None:
        sha256_hex = sha256_hex.strip().lower()
        if not _SHA256_RE.match(sha256_hex):
            raise ChecksumMismatch("the X-Chunk-SHA256 header must be 64 hex digits")
    with scope() as session:
        file = get_file(session, file_id)
        expected = expected_chunk_size(file, index)
        _check_accepts_chunks(file)
    if content_length is not None and content_length != expected:
        raise WrongChunkSize(f"chunk {index} must be {expected} bytes, the request declares {content_length}",
                             {"index": index, "expected": expected, "received": content_length})

    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        while True:
            block = stream.read(min(_READ_BLOCK, expected + 1 - size))
            if not block:
                break
            size += len(block)
            md5.update(block)
            sha.update(block)
            spool.write(block)
            if size > expected:
                break
        if size != expected:
            raise WrongChunkSize(
                f"chunk {index} must be {expected} bytes, received {'more' if size > expected else size}",
                {"index": index, "expected": expected, "received": size if size <= expected else None},
            )
        digest = sha.hexdigest()
        if sha256_hex is not None and sha256_hex != digest:
            raise ChecksumMismatch(f"chunk {index}: SHA-256 of the body is {digest}, the header says {sha256_hex}",
                                   {"index": index, "expected": sha256_hex, "actual": digest})
        md5_hex = md5.hexdigest()
        key = chunk_key(file_id, index)
        now = utcnow()
        with scope() as session:
            file = get_file(session, file_id, lock=True)
            _check_accepts_chunks(file)
            spool.seek(0)
            _store_chunk(storage, key, spool, size, md5_hex)
            row = session.scalars(
                select(FileChunk).where(FileChunk.file_id == file_id, FileChunk.index == index)
            ).first()
            if row is None:
                session.add(FileChunk(file_id=file_id, index=index, key=key, size=size, checksum=md5_hex,
                                      sha256=digest, uploaded_at=now))
            else:
                row.key, row.size, row.checksum, row.sha256, row.uploaded_at = key, size, md5_hex, digest, now
            if file.status == FAILED:
                file.status, file.failure_reason = UPLOADING, None
            file.last_activity_at = now
            session.flush()
            received = len(received_chunks(session, storage, file))
    return ChunkReceipt(file_id, index, size, md5_hex, digest, received)


def _store_chunk(storage: Storage, key: str, body: IO[bytes], size: int, md5_hex: str) -> None:
    if isinstance(storage, S3Storage):
        # One PUT with Content-MD5: S3 checks the bytes on arrival, and the ETag is the
        # MD5 the merge later compares every part copy against.
        try:
            result = storage.client.put_object(
                Bucket=storage.bucket, Key=key, Body=body, ContentLength=size,
                ContentMD5=base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii"),
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable(f"object storage refused the chunk: {exc}") from exc
        if _etag(result.get("ETag", "")) != md5_hex:
            raise StorageUnavailable(f"object storage stored chunk {key} with ETag {result.get('ETag')}, not its MD5")
    else:
        storage.put_stream(key, body)


# --- what has arrived -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredChunk:
    index: int
    key: str
    size: int
    etag: str
    last_modified: datetime | None


def list_stored_chunks(storage: S3Storage, file_id: str) -> dict[int, StoredChunk]:
    """The chunk objects S3 holds for a file (uploads through presigned URLs included)."""
    prefix = chunk_prefix(file_id)
    found: dict[int, StoredChunk] = {}
    try:
        for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                suffix = obj["Key"][len(prefix):]
                if suffix.isdigit() and len(suffix) == 5:
                    found[int(suffix)] = StoredChunk(int(suffix), obj["Key"], int(obj["Size"]), _etag(obj["ETag"]),
                                                     obj.get("LastModified"))
    except (ClientError, BotoCoreError) as exc:
        raise StorageUnavailable(f"cannot list the chunks in object storage: {exc}") from exc
    return found


def received_chunks(session: Session, storage: Storage, file: File) -> list[int]:
    """Indexes of the chunks that have arrived with the right size."""
    if file.status == COMPLETED:
        return list(range(file.total_chunks))
    if file.chunks_purged_at is not None:
        return []
    if isinstance(storage, S3Storage) and file.status in (UPLOADING, FAILED):
        stored = list_stored_chunks(storage, file.id)
        return sorted(i for i, c in stored.items()
                      if i < file.total_chunks and c.size == expected_chunk_size(file, i))
    rows = session.scalars(select(FileChunk).where(FileChunk.file_id == file.id)).all()
    return sorted(r.index for r in rows if r.index < file.total_chunks and r.size == expected_chunk_size(file, r.index))


def _sync_chunks_from_s3(session: Session, storage: S3Storage, file: File) -> list[dict[str, Any]]:
    """Make the chunk rows match what S3 holds; return the chunks that are unusable."""
    stored = list_stored_chunks(storage, file.id)
    rows = {r.index: r for r in session.scalars(select(FileChunk).where(FileChunk.file_id == file.id))}
    invalid: list[dict[str, Any]] = []
    for index in range(file.total_chunks):
        obj, row = stored.get(index), rows.get(index)
        expected = expected_chunk_size(file, index)
        problem = None
        if obj is None:
            pass
        elif obj.size != expected:
            problem = {"index": index, "problem": "wrong_size", "size": obj.size, "expected": expected}
        elif not _MD5_RE.match(obj.etag):
            problem = {"index": index, "problem": "not_single_put",
                       "detail": "uploaded in several parts; upload the chunk with one PUT"}
        if obj is None or problem is not None:
            if row is not None:
                session.delete(row)
            if problem is not None:
                invalid.append(problem)
            continue
        if row is None:
            session.add(FileChunk(file_id=file.id, index=index, key=obj.key, size=obj.size, checksum=obj.etag,
                                  sha256=None, uploaded_at=obj.last_modified or utcnow()))
        elif row.checksum != obj.etag or row.size != obj.size:
            # Replaced through a presigned URL since the API saw it.
            row.size, row.checksum, row.sha256, row.key = obj.size, obj.etag, None, obj.key
            row.uploaded_at = obj.last_modified or utcnow()
    session.flush()
    return invalid


# --- completing -------------------------------------------------------------------------------------
def complete_upload(session: Session, storage: Storage, file_id: str) -> tuple[File, bool]:
    """Check every chunk is there, set ``MERGING`` and add the merge's outbox event.

    Returns the file and whether a merge was enqueued now (False: already merging or
    completed, nothing new). A FAILED file whose chunks are kept may be completed again.
    """
    file = get_file(session, file_id, lock=True)
    if file.status in (MERGING, COMPLETED):
        return file, False
    if file.status == FAILED and file.chunks_purged_at is not None:
        raise WrongState(f"file {file.id} is FAILED and its chunks were deleted: {file.failure_reason}",
                         {"status": file.status, "failure_reason": file.failure_reason})
    invalid: list[dict[str, Any]] = []
    if isinstance(storage, S3Storage):
        invalid = _sync_chunks_from_s3(session, storage, file)
    rows = {r.index: r for r in session.scalars(select(FileChunk).where(FileChunk.file_id == file.id))}
    missing = []
    for index in range(file.total_chunks):
        row = rows.get(index)
        if any(p["index"] == index for p in invalid):
            continue
        if row is None or (not isinstance(storage, S3Storage) and not storage.exists(row.key)):
            missing.append(index)
        elif row.size != expected_chunk_size(file, index):
            invalid.append({"index": index, "problem": "wrong_size", "size": row.size,
                            "expected": expected_chunk_size(file, index)})
    if missing or invalid:
        parts = []
        if missing:
            parts.append(f"missing chunks: {_ranges(missing)}")
        if invalid:
            parts.append("unusable chunks: " + ", ".join(f"{p['index']} ({p['problem']})" for p in invalid))
        raise ChunksMissing(f"cannot complete file {file.id}: " + "; ".join(parts),
                            {"missing": missing, "invalid": invalid, "total_chunks": file.total_chunks})
    now = utcnow()
    file.status = MERGING
    file.failure_reason = None
    file.merge_token = None
    file.merge_lease_until = None
    file.merge_parts_done = 0
    file.last_activity_at = now
    add_event(session, aggregate_type="file", aggregate_id=file.id, event_type="file.completed",
              task_name=MERGE_TASK, payload={"file_id": file.id})
    session.flush()
    return file, True


def _ranges(indexes: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2, 5"``: a short way to name many missing chunks."""
    out: list[str] = []
    start = prev = None
    for i in indexes:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


def download_url(storage: Storage, file: File, expires_in: int | None = None) -> str | None:
    """A presigned URL of the merged object, once the file is ``COMPLETED``."""
    if file.status != COMPLETED or not file.object_key:
        return None
    return storage.presigned_get_url(file.object_key, expires_in=expires_in, filename=file.filename)


# --- measuring S3 traffic ---------------------------------------------------------------------------
class S3TrafficMeter:
    """Counts the bytes the S3 client sends and receives in this thread while active.

    Hooks botocore's ``before-send`` (request headers + body length) and
    ``before-parse`` (response headers + body; streaming bodies are wrapped so bytes
    are counted as they are read) events of the given client. Every HTTP attempt is
    counted, retries included, so this is the traffic on the wire, not a model of it.
    """

    _active = threading.local()

    def __init__(self, client: Any) -> None:
        self.received = 0
        self.sent = 0
        self.requests = 0
        events = client.meta.events
        # unique_id makes registration idempotent on a shared client.
        events.register("before-send.s3", _meter_request, unique_id="files-meter-send")
        events.register("before-parse.s3", _meter_response, unique_id="files-meter-recv")

    def __enter__(self) -> S3TrafficMeter:
        stack = getattr(self._active, "stack", None)
        if stack is None:
            stack = self._active.stack = []
        stack.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._active.stack.remove(self)

    @classmethod
    def current(cls) -> list[S3TrafficMeter]:
        """The meters active in this thread (nested ones all count)."""
        return list(getattr(cls._active, "stack", None) or ())


def _header_bytes(headers: Any) -> int:
    return sum(len(str(k)) + len(str(v)) + 4 for k, v in headers.items()) + 2


def _meter_request(request: Any, **_kwargs: Any) -> None:
    meters = S3TrafficMeter.current()
    if not meters:
        return None
    body = request.body
    if isinstance(body, (bytes, bytearray)):
        length = len(body)
    elif isinstance(body, str):
        length = len(body.encode())
    else:
        length = int(request.headers.get("Content-Length") or 0)
    n = len(request.method) + len(request.url) + 12 + _header_bytes(request.headers) + length
    for m in meters:
        m.sent += n
        m.requests += 1
    return None


def _meter_response(response_dict: dict[str, Any], **_kwargs: Any) -> None:
    meters = S3TrafficMeter.current()
    if not meters:
        return
    n = 17 + _header_bytes(response_dict.get("headers") or {})
    body = response_dict.get("body")
    if isinstance(body, (bytes, bytearray)):
        n += len(body)
    elif body is not None:
        response_dict["body"] = _CountingBody(body, meters)
    for m in meters:
        m.received += n


class _CountingBody(io.RawIOBase):
    """A streaming response body that adds what is read from it to the meters."""

    def __init__(self, body: Any, meters: list[S3TrafficMeter]) -> None:
        super().__init__()
        self._body = body
        self._meters = meters

    def readable(self) -> bool:
        return True

    def read(self, amt: int | None = None) -> bytes:  # type: ignore[override]
        data = self._body.read(amt) if amt is not None and amt >= 0 else self._body.read()
        for m in self._meters:
            m.received += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def iter_chunks(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        while True:
            data = self.read(chunk_size)
            if not data:
                return
            yield data

    def close(self) -> None:
        self._body.close()
        super().close()


# --- the merge itself ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartRef:
    """One chunk as the merge sees it: where it is, how long, and its MD5 at upload."""

    index: int
    key: str
    size: int
    md5: str


@dataclass
class MergeResult:
    key: str
    size: int
    checksum: str
    sha256: str | None = None
    aborted_uploads: int = 0


@dataclass
class MergeOutcome:
    file_id: str
    result: str  # completed | already_completed | skipped | missing | failed | lost
    status: str | None = None
    reason: str | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    aborted_uploads: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id, "result": self.result, "status": self.status, "reason": self.reason,
            "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent,
            "aborted_uploads": self.aborted_uploads,
        }


_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                    "Throttling", "ThrottlingException", "OperationAborted"}


def _s3_call(what: str, call: Callable[[], Any]) -> Any:
    """Run one S3 call, sorting its failure into transient (retry) or permanent (FAILED)."""
    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if status >= 500 or status == 429 or code in _TRANSIENT_CODES:
            raise TransientMergeError(message) from exc
        raise PermanentMergeError(message) from exc
    except (BotoConnectionError, BotoCoreError) as exc:
        # Timeouts, refused connections, truncated responses: the network, not the request.
        raise TransientMergeError(f"{what}: {type(exc).__name__}: {exc}") from exc


def abort_multipart_uploads(client: Any, bucket: str, key: str) -> int:
    """Abort every incomplete multipart upload of exactly ``key``; how many there were."""
    aborted = 0
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page = _s3_call("list multipart uploads", lambda: client.list_multipart_uploads(**args))
        for upload in page.get("Uploads", ()):
            if upload["Key"] != key:
                continue
            try:
                _s3_call("abort multipart upload",
                         lambda u=upload: client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=u["UploadId"]))
                aborted += 1
            except PermanentMergeError as exc:
                if "NoSuchUpload" not in str(exc):  # aborted meanwhile by someone else: fine
                    raise
        if not page.get("IsTruncated"):
            return aborted
        args.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))


def s3_compose(
    client: Any,
    bucket: str,
    dest_key: str,
    parts: Sequence[PartRef],
    content_type: str | None,
    *,
    on_started: Callable[[str], None] | None = None,
    on_part: Callable[[int], None] | None = None,
) -> str:
    """Assemble ``parts`` into ``dest_key`` inside S3 and return the object's ETag.

    One part: ``CopyObject``. Several: a multipart upload with one ``UploadPartCopy``
    per part. Each copy must report the part's recorded MD5, so a chunk replaced after
    it was checked is caught. On any error the multipart upload is aborted; a process
    that dies leaves it for the next attempt (or the garbage collector) to abort.
    """
    for part in parts[:-1]:
        if part.size < S3_MIN_PART_BYTES:
            raise PermanentMergeError(f"chunk {part.index} is {part.size} bytes, under S3's 5 MiB part minimum")
    for part in parts:
        if part.size > S3_MAX_COPY_BYTES:
            raise PermanentMergeError(f"chunk {part.index} exceeds S3's 5 GiB copy limit")
    extra = {"ContentType": content_type} if content_type else {}
    if len(parts) == 1:
        part = parts[0]
        if on_started is not None:
            on_started("")
        result = _s3_call(f"copy chunk {part.index}", lambda: client.copy_object(
            Bucket=bucket, Key=dest_key, CopySource={"Bucket": bucket, "Key": part.key},
            MetadataDirective="REPLACE", **extra))
        etag = _etag(result["CopyObjectResult"]["ETag"])
        if etag != part.md5:
            _s3_call("delete bad result", lambda: client.delete_object(Bucket=bucket, Key=dest_key))
            raise PermanentMergeError(f"chunk {part.index} changed since it was checked (MD5 {etag}, "
                                      f"expected {part.md5}); upload it again and complete again")
        if on_part is not None:
            on_part(1)
        return etag

    upload_id = _s3_call("create multipart upload",
                         lambda: client.create_multipart_upload(Bucket=bucket, Key=dest_key, **extra))["UploadId"]
    try:
        if on_started is not None:
            on_started(upload_id)
        done = []
        for number, part in enumerate(parts, start=1):
            result = _s3_call(f"copy chunk {part.index}", lambda p=part, n=number: client.upload_part_copy(
                Bucket=bucket, Key=dest_key, UploadId=upload_id, PartNumber=n,
                CopySource={"Bucket": bucket, "Key": p.key}))
            etag = _etag(result["CopyPartResult"]["ETag"])
            if etag != part.md5:
                raise PermanentMergeError(f"chunk {part.index} changed since it was checked (MD5 {etag}, "
                                          f"expected {part.md5}); upload it again and complete again")
            done.append({"ETag": result["CopyPartResult"]["ETag"], "PartNumber": number})
            if on_part is not None:
                on_part(number)
        result = _s3_call("complete multipart upload", lambda: client.complete_multipart_upload(
            Bucket=bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": done}))
        return _etag(result["ETag"])
    except BaseException:
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=dest_key, UploadId=upload_id)
        except Exception:
            logger.warning("could not abort multipart upload", extra={"key": dest_key, "upload_id": upload_id},
                           exc_info=True)
        raise


def _merge_s3(storage: S3Storage, file: File, parts: Sequence[PartRef], heartbeat: Callable[..., None]) -> MergeResult:
    client, bucket = storage.client, storage.bucket
    dest = object_key(file.id)
    # A crashed attempt may have left its multipart upload behind: abort it first,
    # so exactly one upload of this key exists and nothing orphaned is billed.
    aborted = abort_multipart_uploads(client, bucket, dest)
    if aborted:
        logger.info("aborted stale multipart uploads", extra={"file_id": file.id, "count": aborted})
    s3_compose(client, bucket, dest, parts, file.content_type,
               on_started=lambda upload_id: heartbeat(0, upload_id=upload_id or None),
               on_part=lambda n: heartbeat(n))
    expected = s3_etag([p.md5 for p in parts])
    head = _s3_call("head merged object", lambda: client.head_object(Bucket=bucket, Key=dest))
    size, etag = int(head["ContentLength"]), _etag(head["ETag"])
    if size != file.size or etag != expected:
        _s3_call("delete bad result", lambda: client.delete_object(Bucket=bucket, Key=dest))
        raise PermanentMergeError(f"merged object does not verify: {size} bytes with ETag {etag}, "
                                  f"expected {file.size} bytes with ETag {expected}")
    return MergeResult(dest, size, etag, None, aborted)


class _HashingReader(io.RawIOBase):
    """Reads the chunks in order, hashing each (MD5) and the whole (SHA-256) on the way."""

    def __init__(self, storage: Storage, parts: Sequence[PartRef], on_part: Callable[[int], None]) -> None:
        super().__init__()
        self._storage = storage
        self._parts = list(parts)
        self._on_part = on_part
        self._pos = -1
        self._cm: Any = None
        self._f: IO[bytes] | None = None
        self._md5 = hashlib.md5()
        self._got = 0
        self.md5s: list[str] = []
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            part = self._parts[self._pos]
            digest = self._md5.hexdigest()
            if self._got != part.size or digest != part.md5:
                raise PermanentMergeError(f"chunk {part.index} changed since it was checked ({self._got} bytes, "
                                          f"MD5 {digest}; expected {part.size}, {part.md5})")
            self.md5s.append(digest)
            self._on_part(self._pos + 1)
            self._cm = self._f = None
        self._pos += 1
        if self._pos >= len(self._parts):
            return False
        part = self._parts[self._pos]
        self._cm = self._storage.open(part.key)
        try:
            self._f = self._cm.__enter__()
        except Exception as exc:
            self._cm = None
            raise PermanentMergeError(f"chunk {part.index} is missing from storage: {exc}") from exc
        self._md5, self._got = hashlib.md5(), 0
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        while True:
            if self._f is None and not self._next():
                return b""
            assert self._f is not None
            data = self._f.read(size if size and size > 0 else _READ_BLOCK)
            if data:
                self._md5.update(data)
                self.sha256.update(data)
                self._got += len(data)
                return data
            if not self._next():
                return b""

    def close(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = self._f = None
        super().close()


def _merge_local(storage: Storage, file: File, parts: Sequence[PartRef], heartbeat: Callable[..., None]) -> MergeResult:
    dest = object_key(file.id)
    reader = _HashingReader(storage, parts, lambda n: heartbeat(n))
    try:
        # Temp file + rename: all or nothing. The reader checks each chunk as it passes
        # its end, the last one included, before put_stream sees the end of the stream.
        storage.put_stream(dest, reader, file.content_type)
    except BaseException:
        reader.close()
        raise
    reader.close()
    if len(reader.md5s) != len(parts):
        storage.delete(dest)
        raise PermanentMergeError(f"only {len(reader.md5s)} of {len(parts)} chunks were read")
    # Read the result back: what is stored must be what was read from the chunks.
    check = hashlib.sha256()
    size = 0
    with storage.open(dest) as f:
        while block := f.read(_READ_BLOCK):
            check.update(block)
            size += len(block)
    if size != file.size or check.hexdigest() != reader.sha256.hexdigest():
        storage.delete(dest)
        raise PermanentMergeError(f"merged file does not verify: {size} bytes (expected {file.size}), "
                                  f"SHA-256 {check.hexdigest()} (read {reader.sha256.hexdigest()})")
    return MergeResult(dest, size, s3_etag(reader.md5s), check.hexdigest(), 0)


def merge_file(
    scope: Scope,
    storage: Storage,
    file_id: str,
    *,
    lease_seconds: float,
    final_attempt: bool = False,
    attempt_note: str = "",
) -> MergeOutcome:
    """Merge a ``MERGING`` file's chunks into its object; idempotent and crash-safe.

    ``COMPLETED`` already: nothing to do (an interrupted chunk clean-up is finished).
    Claim held by a live delivery: ``MergeBusy``. Transient storage errors raise
    ``TransientMergeError`` (the claim is released) unless ``final_attempt``, when the
    file is FAILED instead. Other failures end ``FAILED`` with the reason; the chunks
    are kept so the client can complete again.
    """
    token = uuid.uuid4().hex
    now = utcnow()
    with scope() as session:
        file = session.get(File, file_id)
        if file is None:
            return MergeOutcome(file_id, "missing")
        if file.status == COMPLETED:
            status = file.status
            pending_cleanup = file.chunks_purged_at is None
        elif file.status != MERGING:
            return MergeOutcome(file_id, "skipped", file.status, file.failure_reason)
        else:
            claimed = session.execute(
                update(File)
                .where(File.id == file_id, File.status == MERGING,
                       or_(File.merge_lease_until.is_(None), File.merge_lease_until < now))
                .values(merge_token=token, merge_lease_until=now + timedelta(seconds=lease_seconds),
                        merge_attempts=File.merge_attempts + 1, merge_parts_done=0),
                execution_options={"synchronize_session": False},
            ).rowcount
            if not claimed:
                session.refresh(file)
                if file.status == MERGING and file.merge_lease_until is not None:
                    raise MergeBusy(max(0.5, (file.merge_lease_until - now).total_seconds()))
                return MergeOutcome(file_id, "skipped", file.status, file.failure_reason)
    if file.status == COMPLETED:
        if pending_cleanup:
            purge_chunks(scope, storage, file_id)
        return MergeOutcome(file_id, "already_completed", status)

    with scope() as session:
        file = session.get(File, file_id)
        assert file is not None
        rows = session.scalars(select(FileChunk).where(FileChunk.file_id == file_id).order_by(FileChunk.index)).all()
        parts = [PartRef(r.index, r.key, r.size, r.checksum) for r in rows]
        session.expunge(file)

    def heartbeat(parts_done: int, upload_id: str | None = None) -> None:
        values: dict[str, Any] = {
            "merge_lease_until": utcnow() + timedelta(seconds=lease_seconds), "merge_parts_done": parts_done,
        }
        if upload_id is not None:
            values["upload_id"] = upload_id
        with scope() as session:
            renewed = session.execute(
                update(File).where(File.id == file_id, File.merge_token == token, File.status == MERGING)
                .values(**values),
                execution_options={"synchronize_session": False},
            ).rowcount
        if not renewed:
            raise LostClaim(f"file {file_id}: claim lost")

    meter = S3TrafficMeter(storage.client) if isinstance(storage, S3Storage) else None
    started = time.perf_counter()
    try:
        if [p.index for p in parts] != list(range(file.total_chunks)) or any(
            p.size != expected_chunk_size(file, p.index) for p in parts
        ):
            raise PermanentMergeError("the chunk rows do not match the upload's chunk plan; complete again")
        if meter is not None:
            assert isinstance(storage, S3Storage)
            with meter:
                result = _merge_s3(storage, file, parts, heartbeat)
        else:
            result = _merge_local(storage, file, parts, heartbeat)
    except LostClaim:
        logger.warning("merge lost its claim", extra={"file_id": file_id})
        return MergeOutcome(file_id, "lost")
    except TransientMergeError as exc:
        if final_attempt:
            reason = f"object storage kept failing{attempt_note}: {exc}"
            _fail(scope, file_id, token, reason)
            return MergeOutcome(file_id, "failed", FAILED, reason)
        _release(scope, file_id, token)
        raise
    except PermanentMergeError as exc:
        _fail(scope, file_id, token, str(exc))
        return MergeOutcome(file_id, "failed", FAILED, str(exc))
    except (OperationalError, InterfaceError):
        # The database is unreachable (a restart): not the merge's fault. The caller
        # retries; this attempt's claim lapses with its lease.
        raise
    except Exception as exc:
        # A bug or a time limit: still a readable terminal state, chunks kept.
        _fail(scope, file_id, token, f"merge error: {type(exc).__name__}: {exc}")
        raise

    received = meter.received if meter is not None else None
    sent = meter.sent if meter is not None else None
    now = utcnow()
    with scope() as session:
        done = session.execute(
            update(File).where(File.id == file_id, File.merge_token == token, File.status == MERGING)
            .values(status=COMPLETED, object_key=result.key, final_size=result.size, checksum=result.checksum,
                    sha256=result.sha256, merge_token=None, merge_lease_until=None, upload_id=None,
                    merge_parts_done=len(parts), merge_bytes_received=received, completed_at=now,
                    last_activity_at=now, failure_reason=None),
            execution_options={"synchronize_session": False},
        ).rowcount
    if not done:
        return MergeOutcome(file_id, "lost")
    logger.info("file merged", extra={"file_id": file_id, "size": result.size, "parts": len(parts),
                                      "seconds": round(time.perf_counter() - started, 3),
                                      "bytes_received": received})
    purge_chunks(scope, storage, file_id)
    return MergeOutcome(file_id, "completed", COMPLETED, None, received, sent, result.aborted_uploads,
                        {"checksum": result.checksum})


def _fail(scope: Scope, file_id: str, token: str, reason: str) -> None:
    now = utcnow()
    with scope() as session:
        session.execute(
            update(File).where(File.id == file_id, File.merge_token == token, File.status == MERGING)
            .values(status=FAILED, failure_reason=reason[:2000], merge_token=None, merge_lease_until=None,
                    upload_id=None, last_activity_at=now),
            execution_options={"synchronize_session": False},
        )
    logger.warning("file merge failed", extra={"file_id": file_id, "reason": reason[:500]})


def _release(scope: Scope, file_id: str, token: str) -> None:
    # Let the retry claim at once instead of waiting for the lease.
    with scope() as session:
        session.execute(
            update(File).where(File.id == file_id, File.merge_token == token)
            .values(merge_token=None, merge_lease_until=None),
            execution_options={"synchronize_session": False},
        )


# --- deleting chunks -----------------------------------------------------------------------------------
def purge_chunks(scope: Scope, storage: Storage, file_id: str) -> tuple[int, int]:
    """Delete a file's chunk objects, then its chunk rows; (objects, rows) deleted.

    Objects are listed by prefix, so chunks that reached S3 through a presigned URL
    without ever getting a row are deleted too. Idempotent.
    """
    prefix = chunk_prefix(file_id)
    objects = 0
    if isinstance(storage, S3Storage):
        keys = storage.list(prefix)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            result = storage.client.delete_objects(
                Bucket=storage.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
            errors = result.get("Errors") or []
            if errors:
                raise StorageUnavailable(f"could not delete {len(errors)} chunk objects of {file_id}: {errors[0]}")
            objects += len(batch)
    else:
        for key in storage.list(prefix):
            storage.delete(key)
            objects += 1
        path_for = getattr(storage, "path_for", None)
        if path_for is not None:
            try:
                os.rmdir(path_for(prefix.rstrip("/")))  # only if empty; a stray file keeps it
            except OSError:
                pass
    with scope() as session:
        rows = session.execute(delete(FileChunk).where(FileChunk.file_id == file_id),
                               execution_options={"synchronize_session": False}).rowcount
        session.execute(update(File).where(File.id == file_id).values(chunks_purged_at=utcnow()),
                        execution_options={"synchronize_session": False})
    return objects, rows
