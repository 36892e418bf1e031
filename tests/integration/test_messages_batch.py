"""A batch end to end: ``POST /api/messages/batch`` → one transaction → the relay publishes
its events in batches → a real router worker delivers every message once to the channel
server over HTTP."""

from __future__ import annotations

from tests.integration.test_messages import _sent_ids, _wait_status, _workers


def test_a_batch_is_delivered_once_per_message_by_real_workers(api, start_worker, channel_server, unique) -> None:  # type: ignore[no-untyped-def]
    _workers(start_worker, channel_server)
    items = [{"id": f"batch-{unique}-{i}", "conversation_id": "c", "channel": "whatsapp",
              "recipient": f"+1555000{i:02d}", "content": f"hello {i}"} for i in range(20)]
    items.append(items[3])  # a duplicate inside the batch: answered, not queued twice
    items.append(items[0] | {"channel": "telegram"})  # invalid: answered in its place
    resp = api.post("/api/messages/batch", json={"items": items})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (20, 1, 1)
    for i in range(20):
        assert _wait_status(f"batch-{unique}-{i}", ("delivered", "failed")) == "delivered"
    sent = [s for s in _sent_ids(channel_server) if s and s.startswith(f"batch-{unique}-")]
    assert sorted(sent) == sorted(f"batch-{unique}-{i}" for i in range(20))  # each exactly once
    # Sent again, the whole batch is duplicates and nothing more reaches the channel.
    again = api.post("/api/messages/batch", json={"items": items[:20]}).get_json()
    assert (again["accepted"], again["duplicates"]) == (0, 20)
