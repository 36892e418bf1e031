"""One trace id from an API request to the log lines of the task it caused, through the
outbox (the request's trace context is stored with the event and restored by the relay)
and real worker processes."""

from __future__ import annotations

import json
import secrets

from sqlalchemy import select

from app.db import session_scope
from app.models.outbox import OutboxEvent
from app.tracing import TRACE_KEY
from tests.fixtures.services import wait_for


def _json_lines(path) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]


def test_trace_id_travels_from_request_through_outbox_to_task_log(api, start_worker, channel_server, unique) -> None:
    relay = start_worker(["outbox"], name="trace-relay", pool="threads", concurrency=2, extra_env=channel_server.env)
    router = start_worker(["messages"], name="trace-router", pool="prefork", concurrency=1,
                          extra_env=channel_server.env)
    relay.wait_ready()
    router.wait_ready()

    # 1. A request with no trace of its own: the API starts one and names it.
    resp = api.post("/api/messages", json={"id": f"t1-{unique}", "conversation_id": "c", "channel": "whatsapp",
                                           "recipient": "+15550001", "content": "trace me"})
    assert resp.status_code == 202, resp.get_json()
    fresh = resp.headers["X-Trace-Id"]
    assert len(fresh) == 32 and int(fresh, 16) != 0

    # 2. A request that arrives inside a caller's trace (W3C traceparent): it is continued.
    caller = secrets.token_hex(16)
    resp = api.post("/api/messages", json={"id": f"t2-{unique}", "conversation_id": "c", "channel": "whatsapp",
                                           "recipient": "+15550002", "content": "trace me too"},
                    headers={"traceparent": f"00-{caller}-{secrets.token_hex(8)}-01"})
    assert resp.status_code == 202 and resp.headers["X-Trace-Id"] == caller

    with session_scope() as session:
        events = {e.aggregate_id: e for e in session.scalars(
            select(OutboxEvent).where(OutboxEvent.aggregate_id.in_([f"t1-{unique}", f"t2-{unique}"])))}
        assert events[f"t1-{unique}"].payload[TRACE_KEY]["traceparent"].split("-")[1] == fresh
        assert events[f"t2-{unique}"].payload[TRACE_KEY]["traceparent"].split("-")[1] == caller

    for message_id in (f"t1-{unique}", f"t2-{unique}"):
        wait_for(lambda m=message_id: api.get(f"/api/messages/{m}").get_json()["status"] == "delivered", timeout=60,
                 message=f"{message_id} delivered")

    # The router's log lines for each message carry the request's trace id, with the
    # task id, task name and queue; the task got its kwargs without the trace carrier.
    def router_lines(trace_id: str) -> list[dict]:
        return [l for l in _json_lines(router.log_path) if l.get("trace_id") == trace_id]

    for trace_id, message_id in ((fresh, f"t1-{unique}"), (caller, f"t2-{unique}")):
        lines = wait_for(lambda t=trace_id: router_lines(t), timeout=10, message=f"router log with trace {trace_id}")
        assert all(l["task_name"] == "app.tasks.messages.route" and l["queue"] == "messages" for l in lines), lines
        done = [l for l in lines if "succeeded" in l["message"]]
        assert done and message_id in done[0]["message"] and done[0]["task_id"] == f"outbox-{events[message_id].id}"
        assert TRACE_KEY not in done[0]["message"]
    # Each request is its own trace: no line mixes them up.
    assert not [l for l in router_lines(fresh) if f"t2-{unique}" in l["message"]]
