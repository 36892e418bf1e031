"""The remote pull protocol over real HTTP: the standalone remote worker process against
the running API (registers, heartbeats, pulls, scores, completes; revoked → 401 and it
stops; SIGTERM finishes the current task), and an expired lease handed to another worker
that completes the task once."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from app.db import session_scope
from app.dev.voice_clips import ClipStyle, synthesize_wav, tools_available
from app.models.voice import VoiceJob
from tests.conftest import need
from tests.fixtures.services import wait_for
from tests.voice_support import ADMIN, ApiServer, RemoteWorkerProcess

SCAM = ("This is officer Brooks from the Internal Revenue Service. There is a warrant for your arrest. "
        "You must pay the penalty today with Google Play gift cards. Do not tell anyone about this call.")
BENIGN = "Hey mom, it's me. Are we still on for dinner on Friday? Call me back when you get a chance. Love you, bye."
LEASE = 2.0
GOOD = {"scam_score": 0.1, "risk_level": "LOW", "reasons": ["no scam signals found"], "confidence": 0.8}


@pytest.fixture(scope="module")
def server(pg_database) -> Iterator[ApiServer]:  # type: ignore[no-untyped-def]
    srv = ApiServer(voice_lease_seconds=LEASE).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client_headers(server: ApiServer) -> dict[str, str]:
    return server.api_key()


def _status(task_id: str) -> VoiceJob:
    with session_scope() as session:
        task = session.get(VoiceJob, task_id)
        assert task is not None
        return task


def _submit(server: ApiServer, headers: dict[str, str], audio: bytes | None, transcript: str | None) -> str:
    if audio is not None:
        data = {"target": "remote"} | ({"transcript": transcript} if transcript else {})
        resp = requests.post(f"{server.url}/api/voice", data=data, files={"audio": ("call.wav", audio, "audio/wav")},
                             headers=headers, timeout=10)
    else:
        resp = requests.post(f"{server.url}/api/voice", json={"transcript": transcript, "target": "remote"},
                             headers=headers, timeout=10)
    assert resp.status_code == 202, resp.text
    return resp.json()["id"]


def _drain(server: ApiServer) -> None:
    # Pending remote tasks of earlier tests would be pulled first; take them out of the way
    # for good (completed: a task merely held would come back when its lease runs out).
    _, token = server.create_worker("drain")
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{server.url}/api/v1/worker/tasks"
    while (resp := requests.get(f"{url}/next", headers=auth, timeout=10)).status_code == 200:
        done = requests.post(f"{url}/{resp.json()['task_id']}/complete", json=GOOD, headers=auth, timeout=10)
        assert done.status_code == 200, done.text
    for w in requests.get(f"{server.url}/api/admin/workers", headers=ADMIN, timeout=10).json()["items"]:
        if w["revoked_at"] is None:
            requests.delete(f"{server.url}/api/admin/workers/{w['id']}", headers=ADMIN, timeout=10)


def test_remote_worker_registers_pulls_scores_and_stops_when_revoked(server, client_headers) -> None:  # type: ignore[no-untyped-def]
    need(tools_available(), "espeak-ng and sox")
    _drain(server)
    worker_id, token = server.create_worker("worker-01")
    worker = RemoteWorkerProcess(server.url, token, "worker-01").start()
    try:
        worker.wait_log("Worker worker-01 started")
        clip = synthesize_wav(SCAM, ClipStyle(voice="en-us", speed=165))
        task_id = _submit(server, client_headers, clip, SCAM)
        wait_for(lambda: _status(task_id).status == "completed", timeout=60, message="remote worker completed")
        result = requests.get(f"{server.url}/api/voice/{task_id}", headers=client_headers, timeout=10).json()["result"]
        assert result["risk_level"] in ("HIGH", "CRITICAL"), result
        assert result["scored_by"] == f"remote:{worker_id}" and result["duration_seconds"] > 5
        assert any("gift cards" in r for r in result["reasons"]), result["reasons"]
        log = worker.log()
        assert f"Received task {task_id}" in log
        assert f"Task {task_id} completed with risk level: {result['risk_level']}" in log

        listing = requests.get(f"{server.url}/api/admin/workers", headers=ADMIN, timeout=10).json()
        assert listing["active_count"] == 1
        mine = next(w for w in listing["items"] if w["id"] == worker_id)
        assert mine["active"] and mine["instance"] == "worker-01"
        assert mine["tasks_processed"] == 1 and mine["tasks_completed"] == 1 and mine["last_heartbeat_at"]

        assert requests.delete(f"{server.url}/api/admin/workers/{worker_id}", headers=ADMIN, timeout=10).status_code == 204
        resp = requests.get(f"{server.url}/api/v1/worker/tasks/next", headers={"Authorization": f"Bearer {token}"},
                            timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
        assert worker.wait_exit(timeout=20) == 3  # its own next poll was refused too
        assert "token rejected by the server" in worker.log()
    finally:
        worker.close()


def test_sigterm_lets_the_current_task_finish(server, client_headers) -> None:  # type: ignore[no-untyped-def]
    need(tools_available(), "espeak-ng and sox")
    _drain(server)
    _, token = server.create_worker("worker-02")
    worker = RemoteWorkerProcess(server.url, token, "worker-02").start()
    try:
        worker.wait_log("Worker worker-02 started")
        # Audio alone: speech recognition keeps the task busy long enough to signal mid-task.
        task_id = _submit(server, client_headers, synthesize_wav(BENIGN, ClipStyle(voice="en-gb", speed=150)), None)
        worker.wait_log(f"Received task {task_id}", timeout=30)
        worker.terminate()
        assert worker.wait_exit(timeout=30) == 0
        task = _status(task_id)
        assert task.status == "completed", (task.status, task.error, worker.log())
        assert task.result["risk_level"] == "LOW" and task.result["transcript_source"] == "asr"
        assert "stopping after the current task" in worker.log() and "Worker worker-02 stopped" in worker.log()
    finally:
        worker.close()


def test_expired_lease_goes_back_and_another_worker_completes_it_once(server, client_headers) -> None:  # type: ignore[no-untyped-def]
    from app.tasks.voice import sweep_leases

    _drain(server)
    _, token_a = server.create_worker("slow")
    _, token_b = server.create_worker("spare")
    a, b = ({"Authorization": f"Bearer {t}"} for t in (token_a, token_b))
    task_id = _submit(server, client_headers, None, BENIGN)
    url = f"{server.url}/api/v1/worker/tasks"
    assert requests.get(f"{url}/next", headers=a, timeout=10).json()["task_id"] == task_id
    assert requests.get(f"{url}/next", headers=b, timeout=10).status_code == 204  # held by a
    time.sleep(LEASE + 0.5)
    # The beat task's body, called directly (it also takes back any other lapsed lease).
    assert sweep_leases()["returned"] >= 1
    back = _status(task_id)
    assert back.status == "pending" and back.claimed_by is None and back.attempts == 1

    pulled = requests.get(f"{url}/next", headers=b, timeout=10).json()
    assert pulled["task_id"] == task_id and pulled["attempt"] == 2
    late = requests.post(f"{url}/{task_id}/complete", json=GOOD | {"reasons": ["from a"]}, headers=a, timeout=10)
    assert late.status_code == 409 and late.json()["error"]["code"] == "not_task_holder"
    done = requests.post(f"{url}/{task_id}/complete", json=GOOD | {"reasons": ["from b"]}, headers=b, timeout=10)
    assert done.status_code == 200
    again = requests.post(f"{url}/{task_id}/complete", json=GOOD, headers=b, timeout=10)
    assert again.status_code == 409  # completed once; a second completion is refused
    task = _status(task_id)
    assert task.status == "completed" and task.result["reasons"] == ["from b"] and task.attempts == 2
