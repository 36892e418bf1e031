"""Chunked file uploads: accept chunks, merge them into one object, hand out download URLs.

The protocol (see docs/files.md): ``create_upload`` fixes the chunk plan; chunks arrive
through the API (``receive_chunk``) or, on S3, straight to S3 with presigned PUT URLs;
``complete_upload`` checks every chunk is there and enqueues the merge through the
outbox; ``merge_file`` (the ``files`` queue) assembles the object.

The merge is the storage's verified ``compose`` of the chunks (``app.storage``): on S3 a
multipart upload with one ``UploadPartCopy`` per chunk, so chunk bytes never pass through
the worker (``Storage.traffic`` measures what does), on the local backend a
concatenation. The result is verified against the chunks as they were uploaded: every
chunk must still have its recorded MD5, and the object's size and ETag (MD5 of the part
MD5s, S3's algorithm) must be what the chunks add up to. Chunks are deleted only after
that, and after the ``COMPLETED`` commit.

A merge claims its file by a conditional UPDATE that sets a token and a lease, renews
the lease after every part, and finishes with an UPDATE guarded by the token, so two
deliveries of the same task never both work on one file. A rerun after a crash aborts
the multipart upload the dead attempt left behind and starts again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.filenames import sanitize_filename
from app.models.base import utcnow
from app.models.files import COMPLETED, FAILED, MERGING, UPLOADING, File, FileChunk
from app.services.outbox import add_event
from app.storage import (
    S3_MAX_PARTS,
    S3_MIN_PART_BYTES,
    Composed,
    ComposeRejected,
    ObjectInfo,
    Part,
    Storage,
    StorageError,
    StorageUnavailable,
    Traffic,
    guess_content_type,
)

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


class ChunkStorageUnavailable(FileError):
    """Object storage failed while storing or listing chunks."""

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
    """Where the client PUTs chunk ``index``: the storage's presigned URL, or the API path
    where the storage has none."""
    return storage.presigned_put_url(chunk_key(file.id, index), expires_in) or api_path


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

    with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
        size, md5_hex, digest = _spool_chunk(stream, spool, index, expected)
        if sha256_hex is not None and sha256_hex != digest:
            raise ChecksumMismatch(f"chunk {index}: SHA-256 of the body is {digest}, the header says {sha256_hex}",
                                   {"index": index, "expected": sha256_hex, "actual": digest})
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


def _spool_chunk(stream: IO[bytes], spool: IO[bytes], index: int, expected: int) -> tuple[int, str, str]:
    """Copy the body into ``spool``, hashing it; (size, MD5, SHA-256) in hex.
    ``WrongChunkSize`` as soon as it is longer than ``expected``, or at its end if shorter."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
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
    return size, md5.hexdigest(), sha.hexdigest()


def _store_chunk(storage: Storage, key: str, body: IO[bytes], size: int, md5_hex: str) -> None:
    try:
        storage.put_part(key, body, size, md5_hex)
    except StorageError as exc:
        raise ChunkStorageUnavailable(f"object storage refused the chunk: {exc}") from exc


# --- what has arrived -------------------------------------------------------------------------------
def stored_chunks(storage: Storage, file_id: str) -> dict[int, ObjectInfo]:
    """The chunk objects the store holds for a file, by index (uploads through presigned
    URLs included)."""
    prefix = chunk_prefix(file_id)
    try:
        objects = storage.list_info(prefix)
    except StorageError as exc:
        raise ChunkStorageUnavailable(f"cannot list the chunks in object storage: {exc}") from exc
    found: dict[int, ObjectInfo] = {}
    for obj in objects:
        suffix = obj.key[len(prefix):]
        if suffix.isdigit() and len(suffix) == 5:
            found[int(suffix)] = obj
    return found


def received_chunks(session: Session, storage: Storage, file: File) -> list[int]:
    """Indexes of the chunks that have arrived with the right size."""
    if file.status == COMPLETED:
        return list(range(file.total_chunks))
    if file.chunks_purged_at is not None:
        return []
    if storage.direct_uploads and file.status in (UPLOADING, FAILED):
        stored = stored_chunks(storage, file.id)
        return sorted(i for i, c in stored.items()
                      if i < file.total_chunks and c.size == expected_chunk_size(file, i))
    rows = session.scalars(select(FileChunk).where(FileChunk.file_id == file.id)).all()
    return sorted(r.index for r in rows if r.index < file.total_chunks and r.size == expected_chunk_size(file, r.index))


def _sync_chunks_from_store(session: Session, storage: Storage, file: File) -> list[dict[str, Any]]:
    """Make the chunk rows match what the store holds (clients PUT chunks straight to it);
    return the chunks that are unusable."""
    stored = stored_chunks(storage, file.id)
    rows = {r.index: r for r in session.scalars(select(FileChunk).where(FileChunk.file_id == file.id))}
    invalid: list[dict[str, Any]] = []
    for index in range(file.total_chunks):
        obj, row = stored.get(index), rows.get(index)
        expected = expected_chunk_size(file, index)
        etag = (obj.etag or "") if obj is not None else ""
        problem = None
        if obj is None:
            pass
        elif obj.size != expected:
            problem = {"index": index, "problem": "wrong_size", "size": obj.size, "expected": expected}
        elif not _MD5_RE.match(etag):
            problem = {"index": index, "problem": "not_single_put",
                       "detail": "uploaded in several parts; upload the chunk with one PUT"}
        if obj is None or problem is not None:
            if row is not None:
                session.delete(row)
            if problem is not None:
                invalid.append(problem)
            continue
        if row is None:
            session.add(FileChunk(file_id=file.id, index=index, key=obj.key, size=obj.size, checksum=etag,
                                  sha256=None, uploaded_at=obj.modified or utcnow()))
        elif row.checksum != etag or row.size != obj.size:
            # Replaced through a presigned URL since the API saw it.
            row.size, row.checksum, row.sha256, row.key = obj.size, etag, None, obj.key
            row.uploaded_at = obj.modified or utcnow()
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
    if storage.direct_uploads:
        invalid = _sync_chunks_from_store(session, storage, file)
    rows = {r.index: r for r in session.scalars(select(FileChunk).where(FileChunk.file_id == file.id))}
    missing = []
    for index in range(file.total_chunks):
        row = rows.get(index)
        if any(p["index"] == index for p in invalid):
            continue
        if row is None or (not storage.direct_uploads and not storage.exists(row.key)):
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


# --- the merge itself ----------------------------------------------------------------------------------
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


@dataclass
class _Claimed:
    """A merge this delivery may run: the file (detached), its chunks in order, our token."""

    file: File
    indexes: list[int]
    parts: list[Part]
    token: str


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
    claimed = _claim_merge(scope, storage, file_id, lease_seconds)
    if isinstance(claimed, MergeOutcome):
        return claimed
    token = claimed.token
    heartbeat = _heartbeat(scope, file_id, token, lease_seconds)
    started = time.perf_counter()
    try:
        result, traffic = _compose(storage, claimed, heartbeat)
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
    return _record_merged(scope, storage, claimed, result, traffic, time.perf_counter() - started)


def _claim_merge(scope: Scope, storage: Storage, file_id: str, lease_seconds: float) -> _Claimed | MergeOutcome:
    """Take the file with a conditional UPDATE (token and lease) and load its chunks; or
    the outcome when there is nothing for this delivery to merge."""
    token = uuid.uuid4().hex
    with scope() as session:
        file = session.get(File, file_id)
        if file is None:
            return MergeOutcome(file_id, "missing")
        if file.status == COMPLETED:
            pending_cleanup = file.chunks_purged_at is None
        elif file.status != MERGING:
            return MergeOutcome(file_id, "skipped", file.status, file.failure_reason)
        else:
            if not _take(session, file, token, lease_seconds):
                return MergeOutcome(file_id, "skipped", file.status, file.failure_reason)
            rows = session.scalars(
                select(FileChunk).where(FileChunk.file_id == file_id).order_by(FileChunk.index)).all()
            session.expunge(file)
            return _Claimed(file, [r.index for r in rows], [Part(r.key, r.size, r.checksum) for r in rows], token)
    if pending_cleanup:  # an interrupted clean-up: finish it, outside the transaction
        purge_chunks(scope, storage, file_id)
    return MergeOutcome(file_id, "already_completed", COMPLETED)


def _take(session: Session, file: File, token: str, lease_seconds: float) -> bool:
    """The conditional UPDATE that claims a ``MERGING`` file whose lease is free (the file
    is refreshed after it); ``MergeBusy`` while another delivery's lease runs."""
    now = utcnow()
    claimed = rows_changed(
        session,
        update(File)
        .where(File.id == file.id, File.status == MERGING,
               or_(File.merge_lease_until.is_(None), File.merge_lease_until < now))
        .values(merge_token=token, merge_lease_until=now + timedelta(seconds=lease_seconds),
                merge_attempts=File.merge_attempts + 1, merge_parts_done=0),
        synchronize=False,
    )
    session.refresh(file)
    if not claimed and file.status == MERGING and file.merge_lease_until is not None:
        raise MergeBusy(max(0.5, (file.merge_lease_until - now).total_seconds()))
    return bool(claimed)


def _heartbeat(scope: Scope, file_id: str, token: str, lease_seconds: float) -> Callable[..., None]:
    """Renew the lease and record progress (``compose``'s ``on_progress``); ``LostClaim``
    once another delivery holds the file."""

    def heartbeat(parts_done: int, upload_id: str | None = None) -> None:
        values: dict[str, Any] = {
            "merge_lease_until": utcnow() + timedelta(seconds=lease_seconds), "merge_parts_done": parts_done,
        }
        if upload_id is not None:
            values["upload_id"] = upload_id
        with scope() as session:
            renewed = rows_changed(
                session,
                update(File).where(File.id == file_id, File.merge_token == token, File.status == MERGING)
                .values(**values),
                synchronize=False,
            )
        if not renewed:
            raise LostClaim(f"file {file_id}: claim lost")

    return heartbeat


def _compose(storage: Storage, claimed: _Claimed, heartbeat: Callable[..., None]) -> tuple[Composed, Traffic]:
    """The storage's verified compose of the chunks, metered; its errors sorted into
    transient (retry) and permanent (FAILED, naming the chunk at fault)."""
    file = claimed.file
    if claimed.indexes != list(range(file.total_chunks)) or any(
        p.size != expected_chunk_size(file, i) for i, p in zip(claimed.indexes, claimed.parts, strict=True)
    ):
        raise PermanentMergeError("the chunk rows do not match the upload's chunk plan; complete again")
    try:
        with storage.traffic() as traffic:
            result = storage.compose(object_key(file.id), claimed.parts, file.content_type, on_progress=heartbeat)
    except StorageUnavailable as exc:
        raise TransientMergeError(str(exc)) from exc
    except ComposeRejected as exc:
        if exc.position is None:
            raise PermanentMergeError(f"merged object {exc.detail}") from exc
        raise PermanentMergeError(f"chunk {claimed.indexes[exc.position]} {exc.detail}; "
                                  "upload it again and complete again") from exc
    except StorageError as exc:
        raise PermanentMergeError(str(exc)) from exc
    if result.aborted_uploads:
        logger.info("aborted stale multipart uploads", extra={"file_id": file.id, "count": result.aborted_uploads})
    return result, traffic


def _record_merged(scope: Scope, storage: Storage, claimed: _Claimed, result: Composed, traffic: Traffic,
                   seconds: float) -> MergeOutcome:
    """``COMPLETED`` with the result, guarded by our token; then the chunks go."""
    file_id = claimed.file.id
    received = traffic.received if traffic.measured else None
    sent = traffic.sent if traffic.measured else None
    now = utcnow()
    with scope() as session:
        done = rows_changed(
            session,
            update(File).where(File.id == file_id, File.merge_token == claimed.token, File.status == MERGING)
            .values(status=COMPLETED, object_key=result.key, final_size=result.size, checksum=result.etag,
                    sha256=result.sha256, merge_token=None, merge_lease_until=None, upload_id=None,
                    merge_parts_done=len(claimed.parts), merge_bytes_received=received, completed_at=now,
                    last_activity_at=now, failure_reason=None),
            synchronize=False,
        )
    if not done:
        return MergeOutcome(file_id, "lost")
    logger.info("file merged", extra={"file_id": file_id, "size": result.size, "parts": len(claimed.parts),
                                      "seconds": round(seconds, 3), "bytes_received": received})
    purge_chunks(scope, storage, file_id)
    return MergeOutcome(file_id, "completed", COMPLETED, None, received, sent, result.aborted_uploads,
                        {"checksum": result.etag})


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

    Objects are deleted by prefix, so chunks that reached the store through a presigned
    URL without ever getting a row are deleted too. Idempotent.
    """
    objects = storage.delete_prefix(chunk_prefix(file_id))
    with scope() as session:
        rows = rows_changed(session, delete(FileChunk).where(FileChunk.file_id == file_id),
                               synchronize=False)
        session.execute(update(File).where(File.id == file_id).values(chunks_purged_at=utcnow()),
                        execution_options={"synchronize_session": False})
    return objects, rows
