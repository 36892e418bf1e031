"""The retention purge (``app.services.gc.purge_expired_objects``) against the test
PostgreSQL database and real storage: expired originals, voice clips, never-completed
uploads and failed jobs' objects are deleted and recorded on their rows; live and
unexpired ones are kept; and the ``retention-gc`` beat entry (its task through a real
``gc`` worker is in tests/integration/test_gc_retention.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.db import session_scope
from app.models.ocr import Upload
from app.models.voice import VoiceJob
from app.services.gc import RetentionPolicy, purge_expired_objects
from app.services.ocr import storage_key
from app.services.voice.jobs import audio_key_for
from app.settings import Settings, get_settings
from app.storage import Storage, get_storage

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(originals=timedelta(days=30), failed=timedelta(days=7), incomplete=timedelta(hours=24))


def _upload(storage: Storage, status: str, *, age: timedelta, stored: bool = True) -> str:
    """An upload in ``status`` created ``age`` before NOW (finished then, if it finished)."""
    upload_id = uuid.uuid4().hex
    at = NOW - age
    finished = at if status in ("ready", "failed") else None
    with session_scope() as session:
        session.add(Upload(id=upload_id, filename="card.png", storage_key=storage_key(upload_id), status=status,
                           created_at=at, updated_at=at, finished_at=finished,
                           error="unreadable" if status == "failed" else None))
    if stored:
        storage.put_bytes(storage_key(upload_id), b"original bytes")
    return upload_id


def _voice(storage: Storage, status: str, *, age: timedelta, key: str | None = None) -> str:
    task_id = uuid.uuid4().hex
    at = NOW - age
    key = key or audio_key_for(task_id)
    with session_scope() as session:
        session.add(VoiceJob(id=task_id, audio_key=key, target="celery", status=status, meta={},
                              created_at=at, updated_at=at,
                              finished_at=at if status in ("completed", "failed") else None))
    storage.put_bytes(key, b"RIFF clip")
    return task_id


def _upload_row(upload_id: str) -> Upload:
    with session_scope() as session:
        row = session.get(Upload, upload_id)
        assert row is not None
        session.expunge(row)
        return row


def _voice_row(task_id: str) -> VoiceJob:
    with session_scope() as session:
        row = session.get(VoiceJob, task_id)
        assert row is not None
        session.expunge(row)
        return row


def _scenario(storage: Storage) -> dict[str, str]:
    day = timedelta(days=1)
    return {
        "ready_old": _upload(storage, "ready", age=31 * day),
        "ready_young": _upload(storage, "ready", age=29 * day),
        "failed_old": _upload(storage, "failed", age=8 * day),
        "failed_young": _upload(storage, "failed", age=6 * day),
        "incomplete_old": _upload(storage, "uploaded", age=timedelta(hours=25)),
        "incomplete_young": _upload(storage, "uploaded", age=timedelta(hours=23)),
        "queued_old": _upload(storage, "queued", age=60 * day),
        "processing_old": _upload(storage, "processing", age=60 * day),
        "voice_done_old": _voice(storage, "completed", age=31 * day),
        "voice_done_young": _voice(storage, "completed", age=29 * day),
        "voice_failed_old": _voice(storage, "failed", age=8 * day),
        "voice_pending_old": _voice(storage, "pending", age=60 * day),
    }


def _check(storage: Storage, ids: dict[str, str], counts: dict[str, int]) -> None:
    assert counts == {"ocr_incomplete_failed": 1, "ocr_originals_deleted": 1, "ocr_failed_deleted": 1,
                      "voice_audio_deleted": 2, "errors": 0}
    for name in ("ready_old", "failed_old", "incomplete_old"):
        assert not storage.exists(storage_key(ids[name])), name
        assert _upload_row(ids[name]).original_purged_at is not None, name
    for name in ("ready_young", "failed_young", "incomplete_young", "queued_old", "processing_old"):
        assert storage.exists(storage_key(ids[name])), name
        row = _upload_row(ids[name])
        assert row.original_purged_at is None, name
    ready = _upload_row(ids["ready_old"])
    assert ready.status == "ready"  # the result stays; only the original went
    abandoned = _upload_row(ids["incomplete_old"])
    assert abandoned.status == "failed"
    assert abandoned.error == "abandoned: the upload was not completed within 24 h; its file was deleted"
    assert (_upload_row(ids["queued_old"]).status, _upload_row(ids["processing_old"]).status) == (
        "queued", "processing")
    assert _upload_row(ids["incomplete_young"]).status == "uploaded"
    for name in ("voice_done_old", "voice_failed_old"):
        assert not storage.exists(audio_key_for(ids[name])), name
        assert _voice_row(ids[name]).audio_key is None, name
    for name in ("voice_done_young", "voice_pending_old"):
        assert storage.exists(audio_key_for(ids[name])), name
        assert _voice_row(ids[name]).audio_key == audio_key_for(ids[name]), name


def _run(storage: Storage, batch_size: int = 100) -> dict[str, int]:
    return purge_expired_objects(session_scope, storage, now=NOW, policy=POLICY, batch_size=batch_size).as_dict()


@pytest.fixture
def clean_rows(pg_database) -> None:  # type: ignore[no-untyped-def]
    """The purge looks at every row: start from none, so other tests' rows do not count."""
    from sqlalchemy import delete

    with session_scope() as session:
        session.execute(delete(Upload))
        session.execute(delete(VoiceJob))


def test_purge_deletes_expired_objects_and_keeps_live_ones_local(clean_rows) -> None:  # type: ignore[no-untyped-def]
    storage = get_storage(get_settings())
    ids = _scenario(storage)
    _check(storage, ids, _run(storage, batch_size=2))  # several batches per kind
    # A second run finds nothing more to do.
    assert _run(storage) == {"ocr_incomplete_failed": 0, "ocr_originals_deleted": 0, "ocr_failed_deleted": 0,
                             "voice_audio_deleted": 0, "errors": 0}


def test_purge_deletes_expired_objects_and_keeps_live_ones_s3(clean_rows, s3_settings) -> None:  # type: ignore[no-untyped-def]
    storage = get_storage(s3_settings)
    ids = _scenario(storage)
    _check(storage, ids, _run(storage))


def test_a_voice_task_naming_someone_elses_object_does_not_get_it_deleted(clean_rows) -> None:  # type: ignore[no-untyped-def]
    storage = get_storage(get_settings())
    owner = _voice(storage, "pending", age=timedelta(days=60))
    # A finished task whose client pointed its storage_key at another task's clip.
    borrower = _voice(storage, "completed", age=timedelta(days=60), key=audio_key_for(owner))
    assert _run(storage)["voice_audio_deleted"] == 0
    assert storage.exists(audio_key_for(owner))
    assert _voice_row(borrower).audio_key == audio_key_for(owner)


def test_the_purge_refuses_a_presign_that_outlives_the_incomplete_retention() -> None:
    with pytest.raises(ValueError, match="RETENTION_INCOMPLETE_HOURS must exceed PRESIGN_EXPIRY_SECONDS"):
        Settings(retention_incomplete_hours=1, presign_expiry_seconds=7200)


def test_retention_beat_entry_runs_daily_on_the_gc_queue() -> None:
    from celery.schedules import crontab

    import celeryconfig

    entry = celeryconfig.beat_schedule["retention-gc"]
    assert entry["task"] == "app.tasks.gc.purge_expired"
    assert entry["schedule"] == crontab(hour=3, minute=0)
    assert entry["options"]["expires"] <= 24 * 3600
    from app.celery_app import celery_app

    assert celery_app.amqp.router.route({}, "app.tasks.gc.purge_expired")["queue"].name == "gc"

