"""A voice task's ``audio_url`` is fetched under the outbound address policy.

Submitted through the API, scored by the task code called directly (``score_batch``, as
a voice worker runs it), read back through GET /api/voice/<id>, against the real test
database. The local listeners record every request that reaches them: a refused URL
must reach none. VOICE_FETCH_ALLOW stays empty unless a test names one endpoint.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.settings import get_settings, load_settings, set_settings


class _Listener(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        if self.path.startswith("/to?url="):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to?url="):])
            self.end_headers()
            return
        body = b"RIFF-not-a-clip" if self.path == "/clip.wav" else b"internal admin page"
        self.send_response(200 if self.path == "/clip.wav" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Listener:
    """An HTTP server on 127.0.0.1 and the request paths that reached it."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
        self.requests: list[str] = []
        self.server.requests = self.requests  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listeners() -> Iterator[tuple[Listener, Listener]]:
    pair = (Listener(), Listener())
    yield pair
    for listener in pair:
        listener.close()


def _settings(**overrides: Any) -> None:
    # The process-wide settings the task reads; restored after the test (tests/conftest.py).
    set_settings(load_settings(**overrides))


def _submit_and_score(api, audio_url: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from app.tasks import voice
    from app.tasks.batching import BatchItem

    resp = api.post("/api/voice", json={"audio_url": audio_url, "target": "celery"})
    assert resp.status_code == 202, resp.get_json()
    task_id = resp.get_json()["id"]
    [(_, outcome)] = voice.score_batch([BatchItem(id="m1", kwargs={"task_id": task_id}, hostname="w@test")])
    assert outcome["task_id"] == task_id
    status = api.get(f"/api/voice/{task_id}")
    assert status.status_code == 200, status.get_json()
    return status.get_json()


def _assert_blocked(body: dict[str, Any]) -> None:
    assert body["status"] == "failed" and body["error"] == "blocked_address" and body["result"] is None
    assert body["attempts"] == 1  # terminal: not retried


def test_the_policy_is_off_by_default_in_tests() -> None:
    assert get_settings().voice_fetch_allow == ""


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"])
def test_audio_url_on_loopback_is_refused_and_nothing_reaches_it(api, listeners, host) -> None:  # type: ignore[no-untyped-def]
    local, _ = listeners
    body = _submit_and_score(api, f"http://{host}:{local.port}/clip.wav")
    _assert_blocked(body)
    assert local.requests == []


def test_metadata_address_is_refused_before_any_connection(api, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Even with its whole network allow-listed; and no socket may be opened to find out.
    _settings(voice_fetch_allow="169.254.0.0/16")
    attempts: list[Any] = []

    def connect(address, *_a, **_k):  # type: ignore[no-untyped-def]
        attempts.append(address)
        raise OSError("no connection may be attempted")

    monkeypatch.setattr(socket, "create_connection", connect)
    body = _submit_and_score(api, "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    _assert_blocked(body)
    assert attempts == []


def test_redirect_from_an_allowed_server_to_loopback_is_refused(api, listeners) -> None:  # type: ignore[no-untyped-def]
    # Only the first server's exact endpoint is allowed; the redirect target, the same
    # address on another port, is not.
    allowed, local = listeners
    _settings(voice_fetch_allow=f"127.0.0.1:{allowed.port}")
    target = f"http://127.0.0.1:{local.port}/clip.wav"
    body = _submit_and_score(api, f"http://127.0.0.1:{allowed.port}/to?url={target}")
    _assert_blocked(body)
    assert allowed.requests == [f"/to?url={target}"] and local.requests == []


def test_allowed_endpoint_is_fetched(listeners) -> None:  # type: ignore[no-untyped-def]
    """The control of the test above: with its endpoint allowed, the clip is read."""
    from app.outbound import parse_allow
    from app.services.voice import jobs as voice_jobs

    allowed, _ = listeners
    data = voice_jobs.read_audio(None, f"http://127.0.0.1:{allowed.port}/clip.wav", None, timeout=5,
                                  max_bytes=1 << 20, allow=parse_allow(f"127.0.0.1:{allowed.port}"))
    assert data == b"RIFF-not-a-clip" and allowed.requests == ["/clip.wav"]


@pytest.mark.parametrize("path", ["/admin", None])
def test_fetch_failures_reach_the_client_as_one_generic_reason(api, listeners, path) -> None:  # type: ignore[no-untyped-def]
    """An internal port's HTTP 404 and a refused connection read the same to the client."""
    allowed, _ = listeners
    if path is None:  # a port nothing listens on
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/clip.wav"
    else:
        port, url = allowed.port, f"http://127.0.0.1:{allowed.port}{path}"
    _settings(voice_fetch_allow=f"127.0.0.1:{port}", voice_max_attempts=1)
    body = _submit_and_score(api, url)
    assert body["status"] == "failed" and body["error"].startswith("audio_fetch_failed")
    assert "404" not in body["error"] and "refused" not in body["error"].lower()


def test_the_allow_list_is_refused_in_production_and_checked_everywhere() -> None:
    from app.settings import SettingsError

    with pytest.raises(SettingsError, match="VOICE_FETCH_ALLOW"):
        load_settings(environment="production", voice_fetch_allow="127.0.0.1:8081")
    with pytest.raises(SettingsError, match="VOICE_FETCH_ALLOW"):
        load_settings(voice_fetch_allow="localhost:8081")
    assert load_settings(voice_fetch_allow=" 127.0.0.1:8081,[::1]:8081 ").voice_fetch_allow == "127.0.0.1:8081,[::1]:8081"


def test_a_remote_worker_is_never_handed_a_refused_audio_url(api, listeners) -> None:  # type: ignore[no-untyped-def]
    """The pull protocol judges a client's audio_url before handing it over: a refused one
    fails its task with blocked_address, and the worker gets the next task instead."""
    from app.db import session_scope
    from app.services.voice import workers

    local, _ = listeners
    with session_scope() as session:
        _, token = workers.create_worker(session, "pull-policy", get_settings().signing_key(), token_days=1)
    worker = {"Authorization": f"Bearer {token}"}
    while api.client.get("/api/v1/worker/tasks/next", headers=worker).status_code == 200:
        pass  # tasks other tests left pending
    refused = api.post("/api/voice", json={"audio_url": f"http://127.0.0.1:{local.port}/clip.wav",
                                           "target": "remote"}).get_json()["id"]
    fine = api.post("/api/voice", json={"transcript": "hello there", "target": "remote"}).get_json()["id"]
    pulled = api.client.get("/api/v1/worker/tasks/next", headers=worker)
    assert pulled.status_code == 200 and pulled.get_json()["task_id"] == fine
    _assert_blocked(api.get(f"/api/voice/{refused}").get_json())
    assert local.requests == []
