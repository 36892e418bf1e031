"""Messages end to end: API → outbox → relay → router → the channel server over HTTP,
through real worker processes on real Redis and PostgreSQL."""

from __future__ import annotations

import os
import signal

from sqlalchemy import func, select

from app.db import session_scope
from app.models.messages import DeadLetter, Message, MessageDelivery
from tests.fixtures.services import wait_for

FAST = {"MESSAGE_RETRY_BACKOFF": "0.2", "MESSAGE_RETRY_BACKOFF_MAX": "2"}


def _workers(start_worker, channel_server, **env):  # type: ignore[no-untyped-def]
    extra = channel_server.env | FAST | env
    relay = start_worker(["outbox"], name="relay", pool="threads", concurrency=2, extra_env=extra)
    router = start_worker(["messages"], name="router", pool="prefork", concurrency=1, extra_env=extra)
    relay.wait_ready()
    router.wait_ready()
    return relay, router


def _status(message_id: str) -> str | None:
    with session_scope() as session:
        message = session.get(Message, message_id)
        return message.status if message else None


def _wait_status(message_id: str, statuses: tuple[str, ...], timeout: float = 60) -> str:
    return wait_for(lambda: (s := _status(message_id)) in statuses and s, timeout=timeout,
                    message=f"message {message_id} in {statuses}")  # type: ignore[return-value]


def _sent_ids(channel_server) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for item in channel_server.received():
        body = item["body"]
        ids.append(body.get("biz_opaque_callback_data") or body.get("message", {}).get("metadata"))
    return ids


def test_message_is_delivered_exactly_once(api, start_worker, channel_server, unique) -> None:
    _workers(start_worker, channel_server)
    resp = api.post("/api/messages", json={
        "id": f"m-{unique}", "conversation_id": "c1", "channel": "whatsapp",
        "recipient": "+15550001", "content": "hello there",
    })
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["status_url"] == f"/api/messages/m-{unique}"

    _wait_status(f"m-{unique}", ("delivered", "failed"))
    body = api.get(f"/api/messages/m-{unique}").get_json()
    assert body["status"] == "delivered"
    assert [h["status"] for h in body["history"]] == ["queued", "sent", "delivered"]
    received = channel_server.received()
    assert len(received) == 1
    assert received[0]["body"]["to"] == "+15550001" and received[0]["body"]["text"]["body"] == "hello there"
    assert body["provider_message_ids"] == {"whatsapp": received[0]["provider_id"]}


def test_channel_all_reaches_both_apis_once_each(api, start_worker, channel_server, unique) -> None:
    _workers(start_worker, channel_server)
    assert api.post("/api/messages", json={
        "id": f"all-{unique}", "conversation_id": "c", "channel": "all", "recipient": "user42", "content": "hi both",
    }).status_code == 202
    _wait_status(f"all-{unique}", ("delivered", "failed"))
    assert sorted(i["channel"] for i in channel_server.received()) == ["instagram", "whatsapp"]
    assert _status(f"all-{unique}") == "delivered"


def test_same_message_twice_and_a_duplicate_router_send_once(api, start_worker, channel_server, unique) -> None:
    relay, _ = _workers(start_worker, channel_server)
    payload = {"id": f"dup-{unique}", "conversation_id": "c", "channel": "instagram", "recipient": "u1", "content": "once"}
    first = api.post("/api/messages", json=payload)
    second = api.post("/api/messages", json=payload)
    assert first.status_code == second.status_code == 202
    assert second.get_json()["duplicate"] is True
    assert api.post("/api/messages", json=payload | {"content": "other"}).status_code == 409
    _wait_status(f"dup-{unique}", ("delivered", "failed"))
    # A second router task for the same message (another task id) changes nothing.
    result = relay.client.signature("app.tasks.messages.route", kwargs={"message_id": f"dup-{unique}"}).apply_async()
    assert result.get(timeout=30)["result"] == "duplicate"
    assert _sent_ids(channel_server) == [f"dup-{unique}"]
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Message).where(Message.id == f"dup-{unique}")) == 1


def test_router_killed_mid_send_never_sends_twice(api, start_worker, channel_server, unique, redis_client) -> None:
    # A slow channel keeps the send in flight while the pool process is killed.
    channel_server.configure(latency=3)
    _, router = _workers(start_worker, channel_server, CHANNEL_TIMEOUT="4")
    mid = f"kill-{unique}"
    assert api.post("/api/messages", json={
        "id": mid, "conversation_id": "c", "channel": "whatsapp", "recipient": "+1555", "content": "slow",
    }).status_code == 202

    def sending() -> bool:
        with session_scope() as session:
            d = session.scalars(select(MessageDelivery).where(MessageDelivery.message_id == mid)).one()
            return d.status == "sending"

    wait_for(sending, timeout=30, message="delivery in flight")
    for pid in router.child_pids():
        os.kill(pid, signal.SIGKILL)

    # Redelivered: the lease (2 × timeout + 5 s) runs out, the outcome is unknown, it is not resent.
    status = _wait_status(mid, ("delivered", "failed"), timeout=60)
    wait_for(lambda: len(channel_server.received()) >= 1, timeout=10, message="server got the request")
    assert _sent_ids(channel_server) == [mid]
    assert status == "failed"
    with session_scope() as session:
        dl = session.scalars(select(DeadLetter).where(DeadLetter.message_id == mid)).one()
        assert dl.error_kind == "unknown_outcome"


def test_transient_errors_are_retried_then_delivered(api, start_worker, channel_server, unique) -> None:
    channel_server.configure(script=[503, 503])
    _workers(start_worker, channel_server)
    mid = f"retry-{unique}"
    assert api.post("/api/messages", json={
        "id": mid, "conversation_id": "c", "channel": "whatsapp", "recipient": "+1", "content": "x",
    }).status_code == 202
    assert _wait_status(mid, ("delivered", "failed")) == "delivered"
    body = api.get(f"/api/messages/{mid}").get_json()
    assert body["deliveries"][0]["attempts"] == 3
    assert sum("retry" in (h["detail"] or "") for h in body["history"]) == 2
    assert _sent_ids(channel_server) == [mid]


def test_429_honours_retry_after(api, start_worker, channel_server, unique) -> None:
    channel_server.configure(script=[429], retry_after="2")
    _workers(start_worker, channel_server)
    mid = f"rl-{unique}"
    api.post("/api/messages", json={"id": mid, "conversation_id": "c", "channel": "whatsapp", "recipient": "+1", "content": "x"})
    assert _wait_status(mid, ("delivered", "failed")) == "delivered"
    body = api.get(f"/api/messages/{mid}").get_json()
    assert any("in 2.0s" in (h["detail"] or "") for h in body["history"])


def test_permanent_error_dead_letters_at_once_and_replay_delivers_once(api, start_worker, channel_server, unique) -> None:
    channel_server.configure(script=[400])
    _workers(start_worker, channel_server)
    mid = f"perm-{unique}"
    api.post("/api/messages", json={"id": mid, "conversation_id": "c", "channel": "whatsapp", "recipient": "+1", "content": "x"})
    assert _wait_status(mid, ("delivered", "failed")) == "failed"
    assert channel_server.received() == []

    page = api.client.get("/api/dlq?channel=whatsapp&error=permanent", headers=api.admin).get_json()
    entry = next(i for i in page["items"] if i["message_id"] == mid)
    assert entry["attempts"] == 1 and "HTTP 400" in entry["error"]

    # The server is "fixed" (its script is used up); replay through the API.
    resp = api.client.post(f"/api/dlq/{entry['id']}/replay", headers=api.admin)
    assert resp.status_code == 202
    assert _wait_status(mid, ("delivered",), timeout=60) == "delivered"
    assert _sent_ids(channel_server) == [mid]
    again = api.client.post(f"/api/dlq/{entry['id']}/replay", headers=api.admin)
    assert again.status_code == 409


def test_exhausted_retries_dead_letter(api, start_worker, channel_server, unique) -> None:
    channel_server.configure(failure_rate=1.0, failure_status=502)
    _workers(start_worker, channel_server, MESSAGE_MAX_RETRIES="2")
    mid = f"exh-{unique}"
    api.post("/api/messages", json={"id": mid, "conversation_id": "c", "channel": "instagram", "recipient": "u", "content": "x"})
    assert _wait_status(mid, ("delivered", "failed")) == "failed"
    with session_scope() as session:
        dl = session.scalars(select(DeadLetter).where(DeadLetter.message_id == mid)).one()
        assert dl.error_kind == "exhausted" and dl.attempts == 3
