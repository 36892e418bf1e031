"""Chunked-file services against real databases and real storage (local directory, moto S3).

Merge and garbage collection are called directly here; tests/integration/test_files_*.py
run them through real worker processes.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models.base import utcnow
from app.models.files import COMPLETED, FAILED, MERGING, UPLOADING, File, FileChunk
from app.models.jobs import JobRun
from app.services import files as svc
from app.services.gc import collect_abandoned_uploads
from app.settings import Settings
from app.storage import LocalStorage, S3Storage, get_storage, make_s3_client, s3_etag

MIB = 1024 * 1024
LIMITS = svc.FileLimits(max_size=64 * MIB, default_chunk_size=5 * MIB, max_chunk_size=32 * MIB)


def _data(size: int, seed: int = 1) -> bytes:
    # Distinct, incompressible-looking bytes, so a misplaced chunk changes every hash.
    block = hashlib.sha256(f"seed-{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def sqlite_scope(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A session scope on a fresh, migrated SQLite database of this test alone."""
    from alembic import command

    from app.db import make_engine
    from app.migrate import alembic_config

    settings = Settings(database_url=f"sqlite:///{tmp_path}/files.db")
    engine = make_engine(settings)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    factory = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def scope() -> Iterator[Session]:
        session = factory()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    yield scope
    engine.dispose()


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects", b"k", "http://testserver", 3600)


@pytest.fixture
def s3_storage(s3_settings: Settings) -> S3Storage:
    storage = get_storage(s3_settings)
    assert isinstance(storage, S3Storage)
    return storage


def _upload(scope, storage, data: bytes, *, chunk_size: int = 5 * MIB, name: str = "f.bin") -> File:  # type: ignore[no-untyped-def]
    """Create an upload and send every chunk through ``receive_chunk``."""
    with scope() as session:
        file = svc.create_upload(session, filename=name, size=len(data), content_type=None,
                                 chunk_size=chunk_size, limits=LIMITS)
    for i in range(file.total_chunks):
        body = data[i * file.chunk_size:(i + 1) * file.chunk_size]
        svc.receive_chunk(scope, storage, file_id=file.id, index=i, stream=io.BytesIO(body),
                          content_length=len(body), sha256_hex=hashlib.sha256(body).hexdigest())
    return file


def _complete(scope, storage, file_id: str) -> None:  # type: ignore[no-untyped-def]
    with scope() as session:
        _, enqueued = svc.complete_upload(session, storage, file_id)
        assert enqueued


def _file(scope, file_id: str) -> File:  # type: ignore[no-untyped-def]
    with scope() as session:
        file = session.get(File, file_id)
        assert file is not None
        session.expunge(file)
        return file


def _chunk_rows(scope, file_id: str) -> list[FileChunk]:  # type: ignore[no-untyped-def]
    with scope() as session:
        return list(session.scalars(select(FileChunk).where(FileChunk.file_id == file_id)))


def _read(storage, key: str) -> bytes:  # type: ignore[no-untyped-def]
    with storage.open(key) as f:
        return f.read()


# --- naming and planning -------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "clean"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system.ini", "system.ini"),
    ("..", "file"),
    ("   ", "file"),
    (".bashrc", "bashrc"),
    ("report\x00\x1b[31m.pdf", "report[31m.pdf"),
    ("tab\there.txt", "tab here.txt"),
    ("Résumé 2024.pdf", "Résumé 2024.pdf"),
])
def test_sanitize_filename(raw: str, clean: str) -> None:
    assert svc.sanitize_filename(raw) == clean


def test_sanitize_filename_bounds_length_and_keeps_extension() -> None:
    name = svc.sanitize_filename("a" * 400 + ".tar.gz")
    assert len(name) == 255 and name.endswith(".gz")


def test_plan_chunks() -> None:
    assert svc.plan_chunks(17 * MIB, 5 * MIB, LIMITS) == (5 * MIB, 4)
    assert svc.plan_chunks(100, None, LIMITS) == (5 * MIB, 1)
    with pytest.raises(svc.InvalidChunkSize):
        svc.plan_chunks(17 * MIB, 4 * MIB, LIMITS)  # under S3's 5 MiB part minimum
    with pytest.raises(svc.InvalidChunkSize):
        svc.plan_chunks(17 * MIB, 33 * MIB, LIMITS)
    with pytest.raises(svc.FileTooLarge):
        svc.plan_chunks(64 * MIB + 1, None, LIMITS)
    big = svc.FileLimits(max_size=10**12, default_chunk_size=5 * MIB, max_chunk_size=512 * MIB)
    size, total = svc.plan_chunks(100 * 1024**3, None, big)  # 100 GiB would need 20,480 chunks of 5 MiB
    assert total <= 10_000 and size % MIB == 0 and size >= 5 * MIB


# --- chunks -------------------------------------------------------------------------------------
def test_receive_chunk_checks_size_index_and_checksum(pg_database, local_storage: LocalStorage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    with session_scope() as session:
        file = svc.create_upload(session, filename="x", size=6 * MIB, content_type=None, chunk_size=5 * MIB,
                                 limits=LIMITS)
    kwargs = dict(file_id=file.id, content_length=None, sha256_hex=None)
    with pytest.raises(svc.WrongChunkSize):
        svc.receive_chunk(session_scope, local_storage, index=1, stream=io.BytesIO(b"x" * 10), **kwargs)
    with pytest.raises(svc.WrongChunkSize):  # longer than the chunk: refused, not truncated
        svc.receive_chunk(session_scope, local_storage, index=1, stream=io.BytesIO(b"x" * (MIB + 1)), **kwargs)
    with pytest.raises(svc.ChunkIndexOutOfRange):
        svc.receive_chunk(session_scope, local_storage, index=2, stream=io.BytesIO(b"x" * MIB), **kwargs)
    with pytest.raises(svc.ChecksumMismatch):
        svc.receive_chunk(session_scope, local_storage, index=1, stream=io.BytesIO(b"x" * MIB),
                          **(kwargs | {"sha256_hex": "0" * 64}))
    assert local_storage.list(svc.chunk_prefix(file.id)) == []  # nothing refused was stored
    assert _chunk_rows(session_scope, file.id) == []

    first = svc.receive_chunk(session_scope, local_storage, index=1, stream=io.BytesIO(b"a" * MIB), **kwargs)
    again = svc.receive_chunk(session_scope, local_storage, index=1, stream=io.BytesIO(b"b" * MIB), **kwargs)
    assert first.chunks_received == again.chunks_received == 1
    rows = _chunk_rows(session_scope, file.id)
    assert len(rows) == 1 and rows[0].checksum == hashlib.md5(b"b" * MIB).hexdigest()
    assert _read(local_storage, svc.chunk_key(file.id, 1)) == b"b" * MIB


# --- merge -------------------------------------------------------------------------------------------
def test_local_merge_concatenates_verifies_and_cleans_up(pg_database, local_storage: LocalStorage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    data = _data(17 * MIB)
    file = _upload(session_scope, local_storage, data)
    assert file.total_chunks == 4
    _complete(session_scope, local_storage, file.id)
    outcome = svc.merge_file(session_scope, local_storage, file.id, lease_seconds=30)
    assert outcome.result == "completed", outcome
    done = _file(session_scope, file.id)
    assert done.status == COMPLETED and done.final_size == len(data)
    assert done.sha256 == hashlib.sha256(data).hexdigest()
    md5s = [hashlib.md5(data[i * 5 * MIB:(i + 1) * 5 * MIB]).hexdigest() for i in range(4)]
    assert done.checksum == s3_etag(md5s)
    assert _read(local_storage, done.object_key) == data
    assert local_storage.list(svc.chunk_prefix(file.id)) == []
    assert not local_storage.path_for(f"files/{file.id}/chunks").exists()
    assert _chunk_rows(session_scope, file.id) == []

    again = svc.merge_file(session_scope, local_storage, file.id, lease_seconds=30)
    assert again.result == "already_completed"
    assert _file(session_scope, file.id).merge_attempts == 1


def test_s3_merge_copies_server_side_and_receives_no_chunk_bytes(pg_database, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    data = _data(17 * MIB, seed=2)
    file = _upload(session_scope, s3_storage, data)
    _complete(session_scope, s3_storage, file.id)
    outcome = svc.merge_file(session_scope, s3_storage, file.id, lease_seconds=30)
    assert outcome.result == "completed", outcome
    done = _file(session_scope, file.id)
    assert done.status == COMPLETED
    assert 0 < done.merge_bytes_received < 64 * 1024
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key=done.object_key)
    assert head["ETag"].strip('"') == done.checksum and head["ETag"].endswith('-4"')
    assert head["ContentType"] == "application/octet-stream"
    assert hashlib.sha256(_read(s3_storage, done.object_key)).hexdigest() == hashlib.sha256(data).hexdigest()
    assert s3_storage.list(f"files/{file.id}/") == [done.object_key]
    assert _chunk_rows(session_scope, file.id) == []


def test_s3_tiny_file_is_one_copy(pg_database, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    data = b"hello, tiny file\n"
    file = _upload(session_scope, s3_storage, data, name="tiny.txt")
    assert file.total_chunks == 1
    _complete(session_scope, s3_storage, file.id)
    assert svc.merge_file(session_scope, s3_storage, file.id, lease_seconds=30).result == "completed"
    done = _file(session_scope, file.id)
    assert done.checksum == hashlib.md5(data).hexdigest() and done.content_type == "text/plain"
    assert _read(s3_storage, done.object_key) == data
    assert s3_storage.list(f"files/{file.id}/") == [done.object_key]


def test_rerun_after_crash_aborts_the_stale_multipart_upload(pg_database, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    data = _data(11 * MIB, seed=3)
    file = _upload(session_scope, s3_storage, data)
    _complete(session_scope, s3_storage, file.id)
    client, bucket, key = s3_storage.client, s3_storage.bucket, svc.object_key(file.id)
    # What a worker killed mid-merge leaves: a claim whose lease ran out, an open upload with a part.
    stale = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    client.upload_part_copy(Bucket=bucket, Key=key, UploadId=stale, PartNumber=1,
                            CopySource={"Bucket": bucket, "Key": svc.chunk_key(file.id, 0)})
    with session_scope() as session:
        row = session.get(File, file.id)
        row.merge_token, row.upload_id, row.merge_attempts = "dead", stale, 1
        row.merge_lease_until = utcnow() - timedelta(seconds=1)

    outcome = svc.merge_file(session_scope, s3_storage, file.id, lease_seconds=30)
    assert outcome.result == "completed" and outcome.aborted_uploads == 1
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert s3_storage.list(f"files/{file.id}/") == [key]
    assert _read(s3_storage, key) == data
    assert _file(session_scope, file.id).merge_attempts == 2


def test_merge_waits_for_a_live_claim(pg_database, local_storage: LocalStorage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    file = _upload(session_scope, local_storage, b"abc")
    _complete(session_scope, local_storage, file.id)
    with session_scope() as session:
        row = session.get(File, file.id)
        row.merge_token, row.merge_lease_until = "someone", utcnow() + timedelta(seconds=20)
    with pytest.raises(svc.MergeBusy) as busy:
        svc.merge_file(session_scope, local_storage, file.id, lease_seconds=30)
    assert 15 < busy.value.retry_in <= 20
    assert _file(session_scope, file.id).status == MERGING
    assert local_storage.exists(svc.chunk_key(file.id, 0)) and not local_storage.exists(svc.object_key(file.id))


def test_chunk_replaced_after_complete_fails_keeps_chunks_and_can_be_retried(pg_database, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    data = _data(12 * MIB, seed=4)
    file = _upload(session_scope, s3_storage, data)
    _complete(session_scope, s3_storage, file.id)
    # Someone overwrites chunk 1 with other bytes of the same size (e.g. its presigned URL).
    s3_storage.put_bytes(svc.chunk_key(file.id, 1), b"z" * (5 * MIB))

    outcome = svc.merge_file(session_scope, s3_storage, file.id, lease_seconds=30)
    assert outcome.result == "failed"
    failed = _file(session_scope, file.id)
    assert failed.status == FAILED and "chunk 1 changed" in failed.failure_reason
    client = s3_storage.client
    assert client.list_multipart_uploads(Bucket=s3_storage.bucket).get("Uploads", []) == []
    assert not s3_storage.exists(svc.object_key(file.id))
    assert len(s3_storage.list(svc.chunk_prefix(file.id))) == 3  # kept for a retry
    assert len(_chunk_rows(session_scope, file.id)) == 3

    # The client sends the right chunk 1 again and completes again.
    body = data[5 * MIB:10 * MIB]
    svc.receive_chunk(session_scope, s3_storage, file_id=file.id, index=1, stream=io.BytesIO(body),
                      content_length=len(body), sha256_hex=None)
    assert _file(session_scope, file.id).status == UPLOADING
    _complete(session_scope, s3_storage, file.id)
    assert svc.merge_file(session_scope, s3_storage, file.id, lease_seconds=30).result == "completed"
    assert _read(s3_storage, svc.object_key(file.id)) == data


def _dead_endpoint_storage(bucket: str) -> S3Storage:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(storage_backend="s3", s3_endpoint_url=f"http://127.0.0.1:{port}", s3_bucket=bucket,
                        s3_access_key_id="testing", s3_secret_access_key="testing", s3_timeout=1)  # type: ignore[arg-type]
    return S3Storage(bucket, make_s3_client(settings))


def test_unreachable_storage_is_transient_then_failed_on_the_last_attempt(pg_database, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    file = _upload(session_scope, s3_storage, b"some bytes")
    _complete(session_scope, s3_storage, file.id)
    down = _dead_endpoint_storage(s3_storage.bucket)
    with pytest.raises(svc.TransientMergeError):
        svc.merge_file(session_scope, down, file.id, lease_seconds=30)
    after = _file(session_scope, file.id)
    assert after.status == MERGING and after.merge_lease_until is None  # released for the retry

    outcome = svc.merge_file(session_scope, down, file.id, lease_seconds=30, final_attempt=True,
                             attempt_note=" (6 attempts)")
    assert outcome.result == "failed"
    failed = _file(session_scope, file.id)
    assert failed.status == FAILED and "kept failing (6 attempts)" in failed.failure_reason
    assert s3_storage.exists(svc.chunk_key(file.id, 0))  # chunks kept


# --- garbage collection ----------------------------------------------------------------------------
def _set_activity(scope, file_id: str, delta: timedelta) -> None:  # type: ignore[no-untyped-def]
    with scope() as session:
        row = session.get(File, file_id)
        row.last_activity_at = utcnow() + delta


def test_gc_cleans_abandoned_uploads_in_batches_and_leaves_fresh_ones(sqlite_scope, local_storage: LocalStorage) -> None:  # type: ignore[no-untyped-def]
    scope = sqlite_scope
    abandoned = [_upload(scope, local_storage, b"old %d" % i) for i in range(5)]
    fresh = _upload(scope, local_storage, b"fresh")
    merged = _upload(scope, local_storage, b"merged")
    _complete(scope, local_storage, merged.id)
    assert svc.merge_file(scope, local_storage, merged.id, lease_seconds=30).result == "completed"
    for f in abandoned:
        _set_activity(scope, f.id, -timedelta(hours=30))
    _set_activity(scope, fresh.id, -timedelta(hours=20))
    # A temp file of a write killed long ago, and one of a write in progress.
    old_tmp = local_storage.path_for(f"files/{abandoned[0].id}/data").parent / ".tmp-killed"
    old_tmp.write_bytes(b"x")
    os.utime(old_tmp, (time.time() - 30 * 3600,) * 2)
    new_tmp = old_tmp.with_name(".tmp-live")
    new_tmp.write_bytes(b"y")

    now = utcnow()
    result = collect_abandoned_uploads(scope, local_storage, now=now, retention=timedelta(hours=24), batch_size=2)
    assert (result.abandoned, result.uploads_cleaned, result.chunk_rows_deleted) == (5, 5, 5)
    assert result.batches == 3 and result.temp_files_removed == 1 and result.errors == 0
    for f in abandoned:
        row = _file(scope, f.id)
        assert row.status == FAILED and row.failure_reason.startswith("abandoned")
        assert local_storage.list(f"files/{f.id}/") == [] and _chunk_rows(scope, f.id) == []
    assert not old_tmp.exists() and new_tmp.exists()
    assert _file(scope, fresh.id).status == UPLOADING
    assert local_storage.exists(svc.chunk_key(fresh.id, 0)) and len(_chunk_rows(scope, fresh.id)) == 1
    assert _read(local_storage, svc.object_key(merged.id)) == b"merged"

    second = collect_abandoned_uploads(scope, local_storage, now=now, retention=timedelta(hours=24), batch_size=2)
    assert second.uploads_cleaned == 0 and second.abandoned == 0 and second.temp_files_removed == 0


def test_gc_expires_chunks_kept_by_a_failed_merge(sqlite_scope, local_storage: LocalStorage) -> None:  # type: ignore[no-untyped-def]
    scope = sqlite_scope
    file = _upload(scope, local_storage, b"will fail")
    _complete(scope, local_storage, file.id)
    local_storage.put_bytes(svc.chunk_key(file.id, 0), b"changed!!")  # same size, other bytes
    assert svc.merge_file(scope, local_storage, file.id, lease_seconds=30).result == "failed"
    assert local_storage.exists(svc.chunk_key(file.id, 0))
    now = utcnow()
    kept = collect_abandoned_uploads(scope, local_storage, now=now, retention=timedelta(hours=24), batch_size=10)
    assert kept.uploads_cleaned == 0 and local_storage.exists(svc.chunk_key(file.id, 0))
    later = collect_abandoned_uploads(scope, local_storage, now=now + timedelta(hours=25),
                                      retention=timedelta(hours=24), batch_size=10)
    assert later.expired_failed == 1 and not local_storage.exists(svc.chunk_key(file.id, 0))
    assert "changed" in _file(scope, file.id).failure_reason


def test_gc_aborts_stale_multipart_uploads_but_not_a_live_merge(sqlite_scope, s3_storage: S3Storage) -> None:  # type: ignore[no-untyped-def]
    scope = sqlite_scope
    client, bucket = s3_storage.client, s3_storage.bucket
    live = _upload(scope, s3_storage, b"live")
    _complete(scope, s3_storage, live.id)
    with scope() as session:
        row = session.get(File, live.id)
        row.merge_token, row.merge_lease_until = "live", utcnow() + timedelta(minutes=5)
    live_upload = client.create_multipart_upload(Bucket=bucket, Key=svc.object_key(live.id))["UploadId"]
    client.create_multipart_upload(Bucket=bucket, Key="files/gone/data")
    # moto reports every upload as initiated in 2010, so both are "old"; the live claim protects one.
    result = collect_abandoned_uploads(scope, s3_storage, now=utcnow(), retention=timedelta(hours=24), batch_size=10)
    assert result.multipart_aborted == 1
    remaining = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["UploadId"] for u in remaining] == [live_upload]


def test_gc_task_records_a_skip_when_the_lock_is_held(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.locks import named_lock
    from app.tasks.gc import JOB, collect_uploads

    with named_lock(JOB, ttl=30) as held:
        assert held.acquired
        assert collect_uploads(now=utcnow().isoformat()) == {"skipped": True}
    with session_scope() as session:
        last = session.scalars(select(JobRun).where(JobRun.job == JOB).order_by(JobRun.id.desc())).first()
        assert last is not None and last.outcome == "skipped" and "lock" in last.detail
