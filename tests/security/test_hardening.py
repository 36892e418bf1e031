"""Hardening, as tests: authentication before the body is read, the client address
behind a trusted reverse proxy, no placeholder secrets in production, size caps on
free-form JSON fields, a credential-free /health that says only the overall status, and
DLQ replays that a stale dedup key cannot drop. docs/security.md "Hardening" lists them.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.security.conftest import ROOT, Served

MIB = 1024 * 1024


# --- 1. authenticate before the body is read ----------------------------------------------

def _post_raw(url: str, body_size: int, content_type: str, headers: dict[str, str] | None = None,
              chunk: bytes = b"{") -> tuple[int, bytes, float, int]:
    """POST ``body_size`` bytes (``chunk`` repeated) over a raw socket, reading the answer
    while the body is still being sent. Returns the status, the response body, the seconds
    until the status line arrived and how many body bytes had been sent by then."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Type: {content_type}",
            f"Content-Length: {body_size}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    sent = [0]

    def send_body() -> None:
        block = chunk * (64 * 1024 // len(chunk))
        try:
            while sent[0] < body_size:
                piece = block[: body_size - sent[0]]
                sock.sendall(piece)
                sent[0] += len(piece)
        except OSError:  # the server answered and closed: the rest is never read
            pass

    started = time.monotonic()
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    received = b""
    elapsed = None
    sent_then = 0
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            if elapsed is None:
                elapsed, sent_then = time.monotonic() - started, sent[0]
            received += data
    except OSError:
        pass
    finally:
        sock.close()
        sender.join(timeout=10)
    status = int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/") else 0
    return status, received.partition(b"\r\n\r\n")[2], elapsed if elapsed is not None else float("inf"), sent_then


@pytest.mark.parametrize("path", ["/api/messages", "/api/voice"])
def test_an_unauthenticated_10_mib_body_is_refused_401_before_it_is_read(served_api: Served, path: str) -> None:
    url = served_api.url(path)
    for headers in ({}, {"Authorization": "Bearer ak_wrong"}):
        # Not JSON at all: had the body been parsed this would be a 400.
        status, body, elapsed, sent = _post_raw(url, 10 * MIB, "application/json", headers)
        assert status == 401, body[:300]
        assert b'"unauthorized"' in body
        assert elapsed < 1.0, f"401 after {elapsed:.2f} s"
        assert sent < 10 * MIB, "the whole body was sent before the answer: it was read"
    # Larger than MAX_REQUEST_BYTES (50 MiB) or the voice route's own size guard: 401, not 413.
    status, body, elapsed, _ = _post_raw(url, 60 * MIB, "application/json")
    assert status == 401 and elapsed < 1.0, (status, body[:300])
    # The same route with its credential does read the body: invalid JSON is a 400.
    status, body, _, _ = _post_raw(url, 1024, "application/json", served_api.client)
    assert status == 400 and b"not valid JSON" in body, body[:300]


# --- 2. the client address behind TRUSTED_PROXY_HOPS reverse proxies ---------------------

def _app_behind(hops: int):  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    return create_app(get_settings().model_copy(update={
        "auth_failure_limit": 3, "auth_failure_window": 60, "trusted_proxy_hops": hops})).test_client()


def _fail_from(client, proxy: str, forwarded: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return client.get("/api/me", headers={"Authorization": "Bearer ak_wrong", "X-Forwarded-For": forwarded,
                                          **(headers or {})}, environ_base={"REMOTE_ADDR": proxy})


def test_without_trusted_proxies_x_forwarded_for_is_ignored(pg_database, api, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = _app_behind(0)
    peer = f"198.51.100.{secrets.randbelow(200) + 1}"
    claimed = [f"203.0.113.{n}" for n in (11, 12, 13, 14)]
    redis_client.delete(f"authfail:{peer}", *(f"authfail:{a}" for a in claimed))
    # A client that makes up a new X-Forwarded-For for every guess is still counted as itself.
    for address in claimed[:3]:
        assert _fail_from(client, peer, address).status_code == 401
    assert int(redis_client.get(f"authfail:{peer}")) == 3
    assert all(redis_client.get(f"authfail:{a}") is None for a in claimed)
    blocked = client.get("/api/me", headers=api.headers | {"X-Forwarded-For": claimed[3]},
                         environ_base={"REMOTE_ADDR": peer})
    assert blocked.status_code == 429


def test_behind_one_trusted_proxy_failures_count_for_the_forwarded_client(pg_database, api, redis_client) -> None:  # type: ignore[no-untyped-def]
    client = _app_behind(1)
    proxy = f"10.9.{secrets.randbelow(200)}.{secrets.randbelow(200) + 1}"
    attacker, bystander = f"198.51.100.{secrets.randbelow(200) + 1}", "192.0.2.77"
    redis_client.delete(f"authfail:{proxy}", f"authfail:{attacker}", f"authfail:{bystander}")
    for _ in range(3):
        # The proxy appends the peer it saw; the left-most (client-supplied) entry is not trusted.
        assert _fail_from(client, proxy, f"6.6.6.6, {attacker}").status_code == 401
    assert int(redis_client.get(f"authfail:{attacker}")) == 3
    assert redis_client.get(f"authfail:{proxy}") is None and redis_client.get("authfail:6.6.6.6") is None
    # The attacker is blocked, even with a correct key...
    resp = client.get("/api/me", headers=api.headers | {"X-Forwarded-For": attacker}, environ_base={"REMOTE_ADDR": proxy})
    assert resp.status_code == 429
    # ...while another client behind the same proxy is not.
    resp = client.get("/api/me", headers=api.headers | {"X-Forwarded-For": bystander}, environ_base={"REMOTE_ADDR": proxy})
    assert resp.status_code == 200, resp.get_json()


# --- 3. no placeholder secrets in production -----------------------------------------------

def _strong() -> dict[str, str]:
    return {"secret_key": secrets.token_urlsafe(32), "admin_token": secrets.token_urlsafe(32),
            "flower_password": secrets.token_urlsafe(32), "metrics_token": secrets.token_urlsafe(32)}


def _production(**secret_values: str):  # type: ignore[no-untyped-def]
    from app.settings import load_settings

    return load_settings(environment="production", **secret_values)


def test_production_refuses_each_placeholder_or_short_secret_by_name() -> None:
    from app.settings import SettingsError

    shipped = dict(line.split("=", 1) for line in (ROOT / "deploy" / "systemd" / "app.env.example").read_text()
                   .splitlines() if line and not line.startswith("#"))
    for name in ("SECRET_KEY", "ADMIN_TOKEN", "FLOWER_PASSWORD", "METRICS_TOKEN"):
        field = name.lower()
        bad_values = {shipped[name], "changeme", "secret", "password", "test-" + "x" * 40, "dev-" + "x" * 40,
                      "Change_Me" + "x" * 30, secrets.token_urlsafe(16)}
        if field != "admin_token":  # an empty ADMIN_TOKEN only turns the admin routes off
            bad_values.add("")
        for bad in bad_values:
            with pytest.raises(SettingsError) as refused:
                _production(**(_strong() | {field: bad}))
            message = str(refused.value)
            assert name in message, (name, bad, message)
            assert len(bad) < 10 or bad not in message  # the value itself is never echoed
            others = {"SECRET_KEY", "ADMIN_TOKEN", "FLOWER_PASSWORD", "METRICS_TOKEN"} - {name}
            assert not any(f"{other} is" in message for other in others), message
    # All four at once are all named.
    with pytest.raises(SettingsError) as refused:
        _production(secret_key="change-me", admin_token="change-me", flower_password="change-me",
                    metrics_token="change-me")
    assert all(f"{n} is a placeholder" in str(refused.value)
               for n in ("SECRET_KEY", "ADMIN_TOKEN", "FLOWER_PASSWORD", "METRICS_TOKEN"))


def test_production_starts_with_strong_secrets_and_dev_and_test_are_unaffected() -> None:
    from app.settings import load_settings

    strong = _strong()
    settings = _production(**strong)
    assert settings.secret_key.get_secret_value() == strong["secret_key"]
    assert _production(**(strong | {"admin_token": ""})).admin_token.get_secret_value() == ""
    for environment in ("development", "test"):
        loaded = load_settings(environment=environment, secret_key="change-me", admin_token="test-admin-token",
                               flower_password="", metrics_token="")
        assert loaded.environment == environment


# --- 4. size caps on free-form JSON fields -------------------------------------------------

RESULT = {"scam_score": 0.1, "risk_level": "LOW", "reasons": ["no scam signals found"], "confidence": 0.8}


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def _refused(resp, field: str) -> None:  # type: ignore[no-untyped-def]
    body = resp.get_json()
    assert resp.status_code == 400, body
    assert body["error"]["code"] == "validation_error" and field in body["error"]["message"], body
    assert any("JSON_FIELD_MAX" in (d.get("msg") or "") for d in body["error"]["details"]), body


def test_voice_metadata_is_capped_in_size_and_depth(api) -> None:  # type: ignore[no-untyped-def]
    from app.settings import get_settings

    cap = get_settings().json_field_max_bytes
    assert cap == 8192
    _refused(api.post("/api/voice", json={"transcript": "hello", "metadata": {"note": "x" * cap}}), "metadata")
    _refused(api.post("/api/voice", json={"transcript": "hello", "metadata": _nested(9)}), "metadata")
    # The multipart form's metadata (a JSON string) is capped the same way.
    form = {"transcript": "hello", "metadata": __import__("json").dumps({"note": "x" * cap})}
    _refused(api.post("/api/voice", data=form, content_type="multipart/form-data"), "metadata")
    # Under the caps the task is accepted and keeps its metadata.
    fine = {"caller": "+15550001", "tags": ["a", "b"], "deep": _nested(7)}
    accepted = api.post("/api/voice", json={"transcript": "hello", "metadata": fine})
    assert accepted.status_code == 202, accepted.get_json()
    assert api.get(accepted.get_json()["status_url"]).get_json()["metadata"] == fine


@pytest.fixture
def worker_headers(api) -> dict[str, str]:  # type: ignore[no-untyped-def]
    resp = api.client.post("/api/admin/workers", json={"name": "hardening"}, headers=api.admin)
    assert resp.status_code == 201, resp.get_json()
    return {"Authorization": f"Bearer {resp.get_json()['token']}"}


def test_worker_result_and_heartbeat_extra_fields_are_capped(api, worker_headers) -> None:  # type: ignore[no-untyped-def]
    complete = "/api/v1/worker/tasks/no-such-task/complete"
    big = "x" * 9000
    _refused(api.client.post(complete, json=RESULT | {"features": big}, headers=worker_headers), "features")
    _refused(api.client.post(complete, json=RESULT | {"debug": _nested(9)}, headers=worker_headers), "debug")
    # Within the caps the result passes validation (and reaches the view: no such task).
    assert api.client.post(complete, json=RESULT | {"features": [1, 2]}, headers=worker_headers).status_code == 404
    heartbeat = "/api/v1/worker/heartbeat"
    _refused(api.client.post(heartbeat, json={"gpu": big}, headers=worker_headers), "gpu")
    # Many extra fields each under the cap, together over it: refused as the body's.
    many = {f"k{i}": "y" * 1000 for i in range(10)}
    _refused(api.client.post(heartbeat, json=many, headers=worker_headers), "body")
    ok = api.client.post(heartbeat, json={"worker_id": "w1", "gpu": "none", "load": [0.1, 0.2]}, headers=worker_headers)
    assert ok.status_code == 200, ok.get_json()


# --- 5. /health: the overall status for anyone, details with a token, cached ---------------

def test_health_without_credentials_answers_only_the_overall_status(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    metrics_token = secrets.token_urlsafe(32)
    settings = get_settings().model_copy(update={"metrics_token": type(get_settings().admin_token)(metrics_token)})
    client = create_app(settings).test_client()
    anonymous = client.get("/health")
    assert anonymous.status_code == 200 and anonymous.get_json() == {"status": "ok"}
    for token in (settings.admin_token.get_secret_value(), metrics_token):
        detailed = client.get("/health", headers={"Authorization": f"Bearer {token}"})
        body = detailed.get_json()
        assert detailed.status_code == 200 and body["environment"] == "test"
        assert {"database", "broker", "redis", "storage"} <= {d["name"] for d in body["dependencies"]}
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic YTpi"}):
        refused = client.get("/health", headers=headers)
        assert refused.status_code == 401 and "dependencies" not in refused.get_json()
    # Degraded: still only the status, and 503.
    bad = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "broker_url": "redis://127.0.0.1:1/0",
                                      "health_timeout": 1.0})
    down = create_app(bad).test_client().get("/health")
    assert down.status_code == 503 and down.get_json() == {"status": "degraded"}


def test_a_flood_of_health_probes_runs_the_checks_once_per_cache_period(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.api import create_app
    from app.settings import get_settings

    app = create_app(get_settings().model_copy(update={"health_cache_seconds": 1.5}))
    client = app.test_client()
    started = time.monotonic()
    statuses = {client.get("/health").status_code for _ in range(50)}
    statuses.add(client.get("/health", headers={"Authorization": "Bearer test-admin-token"}).status_code)
    assert statuses == {200} and time.monotonic() - started < 1.5
    assert app.extensions["health"].runs == 1  # 51 probes, one run of the dependency checks
    time.sleep(1.6)
    assert client.get("/health").status_code == 200
    assert app.extensions["health"].runs == 2


# --- 6. a DLQ replay is never dropped as a duplicate ----------------------------------------

class _Channel:
    """A channel whose first sends fail for good (to dead-letter the message), then succeed."""

    name = "whatsapp"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[str] = []

    def send(self, message) -> str:  # type: ignore[no-untyped-def]
        from app.services.channels import PermanentChannelError

        if self.failures:
            self.failures -= 1
            raise PermanentChannelError("HTTP 400 from the provider")
        self.sent.append(message.id)
        return f"wamid.{len(self.sent)}"


def _route_deps(channel: _Channel, dedup):  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.services.messages import RouteDeps

    return RouteDeps(scope=session_scope, channels={"whatsapp": channel}, dedup=dedup, notify=lambda *a: None,
                     backoff=lambda attempt: 0.1, max_retries=0, lease_seconds=30, dedup_ttl=600)


def _dead_lettered(channel: _Channel, redis_client) -> tuple[str, int, str]:  # type: ignore[no-untyped-def]
    """A message whose first route dead-lettered it: (message id, dead letter id, first task id)."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models.messages import DeadLetter
    from app.services.messages import dedup_key, route_message, submit_message

    with session_scope() as session:
        message, _ = submit_message(session, conversation_id="c", channel="whatsapp", recipient="+15550001",
                                    content="hello", message_id=f"sys:hardening-{secrets.token_hex(4)}")
        message_id = message.id
    first_task = f"first-{secrets.token_hex(4)}"
    assert route_message(_route_deps(channel, redis_client), message_id, first_task).status == "failed"
    assert redis_client.get(dedup_key(message_id)) == first_task.encode()  # set for 24 h
    with session_scope() as session:
        dead = session.scalars(select(DeadLetter).where(DeadLetter.message_id == message_id)).one()
        return message_id, dead.id, first_task


def _forget_events(message_id: str) -> None:
    """Leave no pending outbox event of the message for a later test's relay to publish."""
    from sqlalchemy import delete

    from app.db import session_scope
    from app.models.outbox import OutboxEvent

    with session_scope() as session:
        session.execute(delete(OutboxEvent).where(OutboxEvent.aggregate_id == message_id))


def _replay_event(message_id: str) -> tuple[str, dict]:  # type: ignore[type-arg]
    """The replay's outbox event as the relay would publish it: (task id, kwargs)."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.models.outbox import OutboxEvent
    from app.services.outbox import task_id_for, task_kwargs

    with session_scope() as session:
        event = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_id == message_id,
                                                          OutboxEvent.event_type == "message.replayed")).one()
        return task_id_for(event.id), task_kwargs(event)


def test_a_replay_is_delivered_when_the_dedup_key_cannot_be_deleted(api, redis_client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import redis

    from app.services.messages import dedup_key, route_message

    channel = _Channel(failures=1)
    message_id, dead_letter_id, first_task = _dead_lettered(channel, redis_client)

    def refuse(self, *names):  # type: ignore[no-untyped-def]
        raise redis.ConnectionError("Redis went away")

    with monkeypatch.context() as patched:
        patched.setattr(redis.Redis, "delete", refuse)
        resp = api.client.post(f"/api/dlq/{dead_letter_id}/replay", headers=api.admin)
    assert resp.status_code == 202, resp.get_json()
    assert redis_client.get(dedup_key(message_id)) == first_task.encode()  # the first router's key is still set
    task_id, kwargs = _replay_event(message_id)
    assert kwargs == {"message_id": message_id, "replay": dead_letter_id}
    outcome = route_message(_route_deps(channel, redis_client), task_id=task_id, **kwargs)
    assert (outcome.result, outcome.status) == ("done", "delivered")
    assert channel.sent == [message_id]
    _forget_events(message_id)


def test_a_replay_racing_the_relay_is_routed_exactly_once(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.services.messages import NotReplayable, dedup_key, replay_dead_letter, route_message

    channel = _Channel(failures=1)
    message_id, dead_letter_id, first_task = _dead_lettered(channel, redis_client)
    with session_scope() as session:
        replay_dead_letter(session, dead_letter_id)
    # The relay publishes and the router runs at once: nothing has touched the first key.
    task_id, kwargs = _replay_event(message_id)
    deps = _route_deps(channel, redis_client)
    assert route_message(deps, task_id=task_id, **kwargs).status == "delivered"
    assert redis_client.get(dedup_key(message_id)) == first_task.encode()
    assert redis_client.get(dedup_key(message_id, dead_letter_id)) == task_id.encode()
    # The same replay delivered twice (a re-publish under another id, or the old router
    # coming back) sends nothing more; nor does a second replay of the same dead letter.
    assert route_message(deps, task_id=f"other-{secrets.token_hex(3)}", **kwargs).result == "duplicate"
    assert route_message(deps, message_id, first_task).result in ("done", "duplicate")
    with pytest.raises(NotReplayable), session_scope() as session:
        replay_dead_letter(session, dead_letter_id)
    assert channel.sent == [message_id]
    _forget_events(message_id)
