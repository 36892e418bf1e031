"""Voice scoring end to end through real worker processes: API → outbox → relay → the
`voice` Celery worker (models loaded once per process) → result on the API; bad audio;
redelivery; and a Celery worker racing a remote worker for the same tasks."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import soundfile as sf

from app.db import session_scope
from app.dev.voice_clips import ClipStyle, synthesize_wav, tools_available
from app.models.voice import VoiceJob
from tests.conftest import need
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker
from tests.voice_support import ApiServer, RemoteWorkerProcess

SCAM = ("Hello, this is the fraud department at your bank. Someone is trying to take money from your account. "
        "Please read me the one time password we just sent to your phone, and do not tell anyone at the branch about "
        "this call. You need to act right now or the money will be gone.")
BENIGN = ("Hi, this is Maria from Bright Smile Dental. You have an appointment on Thursday at two o'clock. "
          "Please arrive ten minutes early. See you then, bye.")
WORKER_ENV = {"HF_HUB_OFFLINE": "1", "VOICE_ASR_THREADS": "1"}


@pytest.fixture(scope="module")
def voice_worker(pg_database, redis_client) -> Iterator[Worker]:  # type: ignore[no-untyped-def]
    """One real worker on `outbox` + `voice` for the module (model loading costs a second)."""
    worker = Worker(["outbox", "voice"], name="voice", pool="prefork", concurrency=2, extra_env=WORKER_ENV).start()
    try:
        worker.wait_ready()
        yield worker
    finally:
        code = worker.stop()
        assert code == 0, worker.log_tail()


def _task(task_id: str) -> VoiceJob:
    with session_scope() as session:
        task = session.get(VoiceJob, task_id)
        assert task is not None
        return task


def _wait_done(task_id: str, timeout: float = 90) -> VoiceJob:
    wait_for(lambda: _task(task_id).status in ("completed", "failed"), timeout=timeout,
             message=f"voice task {task_id} finished")
    return _task(task_id)


def _submit_audio(api, data: bytes, name: str = "call.wav", **fields: str) -> str:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", data={"audio": (io.BytesIO(data), name), **fields}, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.get_json()
    return resp.get_json()["id"]


def test_scam_clip_scores_high_and_benign_clip_low_from_audio_alone(api, voice_worker) -> None:  # type: ignore[no-untyped-def]
    need(tools_available(), "espeak-ng and sox")
    scam_id = _submit_audio(api, synthesize_wav(SCAM, ClipStyle(voice="en-us", speed=160, telephone=True)))
    benign_id = _submit_audio(api, synthesize_wav(BENIGN, ClipStyle(voice="en-gb", speed=150)))

    scam = _wait_done(scam_id)
    assert scam.status == "completed", scam.error
    body = api.get(f"/api/voice/{scam_id}").get_json()
    result = body["result"]
    assert result["risk_level"] in ("HIGH", "CRITICAL"), result
    assert result["transcript_source"] == "asr" and result["model_version"] == "scam-v2"
    reasons = " | ".join(result["reasons"])
    assert "one-time code" in reasons and "password" in reasons, reasons  # the phrase heard is quoted
    assert result["scored_by"].startswith("celery:") and body["attempts"] == 1

    benign = _wait_done(benign_id)
    assert benign.status == "completed", benign.error
    assert benign.result["risk_level"] == "LOW", benign.result
    # Loaded once per pool process at start, never per task.
    assert voice_worker.log_tail(400).count("voice models loaded") == 2


def _bad_inputs() -> dict[str, tuple[bytes, str]]:
    header_only = io.BytesIO()
    sf.write(header_only, np.zeros(0, dtype=np.float32), 16000, format="WAV", subtype="PCM_16")
    two_hours = io.BytesIO()
    sf.write(two_hours, np.zeros(2 * 3600 * 8000, dtype=np.int16), 8000, format="FLAC")
    random_bytes = b"\x00" + np.random.default_rng(1).integers(0, 256, 8191, dtype=np.uint8).tobytes()
    m4a = struct.pack(">I", 24) + b"ftypM4A " + b"\x00" * 4 + b"M4A isom" + b"\x00" * 512
    return {
        "empty_audio": (b"", "empty.wav"),
        "not_audio": (random_bytes, "noise.bin"),
        "no_samples": (header_only.getvalue(), "header.wav"),
        "audio_too_long": (two_hours.getvalue(), "silence.flac"),
        "unsupported_codec": (m4a, "call.m4a"),
    }


def test_bad_audio_fails_with_a_specific_reason(api, voice_worker) -> None:  # type: ignore[no-untyped-def]
    from app.services.voice.features import ffmpeg_available

    ids = {code: _submit_audio(api, data, name) for code, (data, name) in _bad_inputs().items()
           if not (code == "unsupported_codec" and ffmpeg_available())}
    for code, task_id in ids.items():
        task = _wait_done(task_id, timeout=60)
        body = api.get(f"/api/voice/{task_id}").get_json()
        assert body["status"] == "failed", (code, body)
        assert body["error"].startswith(f"{code}: "), (code, body["error"])
        assert task.attempts == 1 and task.lease_until is None  # failed at once, nothing left held
    assert "7,200.0 s" in _task(ids["audio_too_long"]).error  # type: ignore[operator]


def test_a_redelivered_score_message_changes_nothing(api, voice_worker) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/voice", json={"transcript": BENIGN})
    task_id = resp.get_json()["id"]
    first = _wait_done(task_id)
    assert first.status == "completed"
    again = voice_worker.client.signature("app.tasks.voice.score", kwargs={"task_id": task_id}).apply_async()
    assert again.get(timeout=30) == {"task_id": task_id, "result": "not_claimed", "status": "completed"}
    after = _task(task_id)
    assert after.attempts == 1 and after.result == first.result and after.version == first.version


def test_celery_and_a_remote_worker_racing_score_each_task_once(voice_worker) -> None:  # type: ignore[no-untyped-def]
    from celery.result import AsyncResult
    from sqlalchemy import select

    from app.models.outbox import OutboxEvent

    server = ApiServer(voice_remote_targets="remote,celery").start()
    remote = None
    try:
        worker_id, token = server.create_worker("racer")
        remote = RemoteWorkerProcess(server.url, token, "racer-01", POLL_INTERVAL="0.05").start()
        remote.wait_log("Worker racer-01 started")
        headers = server.api_key()
        ids = []
        for n in range(8):
            text = SCAM if n % 2 else BENIGN
            resp = requests.post(f"{server.url}/api/voice", json={"transcript": text, "target": "celery"},
                                 headers=headers, timeout=10)
            assert resp.status_code == 202, resp.text
            ids.append(resp.json()["id"])
        tasks = [_wait_done(task_id) for task_id in ids]
        assert all(t.status == "completed" for t in tasks), [(t.status, t.error) for t in tasks]
        assert all(t.attempts == 1 for t in tasks)  # one successful claim each

        by_remote = {t.id for t in tasks if t.result["scored_by"] == f"remote:{worker_id}"}
        by_celery = {t.id for t in tasks if t.result["scored_by"].startswith("celery:")}
        assert by_remote | by_celery == set(ids) and not by_remote & by_celery
        # Every Celery message ran: it scored exactly the tasks it claimed and stood down on the rest.
        with session_scope() as session:
            events = {e.aggregate_id: e.id for e in session.scalars(
                select(OutboxEvent).where(OutboxEvent.aggregate_id.in_(ids)))}
        for task_id in ids:
            outcome = AsyncResult(f"outbox-{events[task_id]}", app=voice_worker.client).get(timeout=60)
            assert outcome["result"] == ("completed" if task_id in by_celery else "not_claimed"), outcome
        listing = requests.get(f"{server.url}/api/admin/workers", headers={"Authorization": "Bearer test-admin-token"},
                               timeout=10).json()
        mine = next(w for w in listing["items"] if w["id"] == worker_id)
        assert mine["tasks_completed"] == len(by_remote)
        assert remote.log().count("completed with risk level") == len(by_remote)
        assert "lease lost" not in remote.log()
    finally:
        if remote is not None:
            remote.close()
        server.stop()
