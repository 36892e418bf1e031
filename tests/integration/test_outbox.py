"""The outbox under load and outage: three relays publish 5,000 events exactly once
(PostgreSQL SKIP LOCKED), and 500 messages accepted while the broker is down are all
delivered exactly once when it is back, with no manual step."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from sqlalchemy import delete, func, select

from app.db import session_scope
from app.devserver import free_port, start_private_redis
from app.models.messages import Message
from app.models.outbox import OutboxEvent
from app.services.outbox import add_event
from tests.fixtures.services import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_three_relays_publish_each_of_5000_events_exactly_once(start_worker, redis_client, pg_database) -> None:
    with session_scope() as session:
        session.execute(delete(OutboxEvent))
        for i in range(5000):
            add_event(session, aggregate_type="load", aggregate_id=str(i), event_type="load.ping",
                      task_name="app.tasks.system.ping", payload={})
    redis_client.delete("default")  # nobody consumes `default` in this test: count what lands there

    relays = [start_worker(["outbox"], name=f"relay{i}", pool="prefork", concurrency=1,
                           extra_env={"OUTBOX_BATCH_SIZE": "50"}) for i in range(3)]
    for relay in relays:
        relay.wait_ready()
    client = relays[0].client
    for _ in range(9):
        client.signature("app.tasks.outbox.relay").apply_async()

    def drained() -> bool:
        with session_scope() as session:
            return session.scalar(select(func.count()).select_from(OutboxEvent).where(OutboxEvent.published_at.is_(None))) == 0

    wait_for(drained, timeout=120, interval=0.5, message="all 5000 events published")
    task_ids = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange("default", 0, -1)]
    redis_client.delete("default")
    counts = Counter(task_ids)
    assert len(task_ids) == 5000, f"{len(task_ids)} messages for 5000 events"
    assert max(counts.values()) == 1, [t for t, n in counts.items() if n > 1][:5]
    with session_scope() as session:
        ids = set(session.scalars(select(OutboxEvent.id)))
    assert set(counts) == {f"outbox-{i}" for i in ids}

    per_relay = []
    for relay in relays:
        lines = [json.loads(l) for l in relay.log_path.read_text().splitlines() if l.startswith("{")]
        per_relay.append(sum(l.get("published", 0) for l in lines if l.get("message") == "outbox relayed"))
    assert sum(per_relay) == 5000
    assert sum(1 for n in per_relay if n > 0) >= 2, f"relays did not overlap: {per_relay}"
    with session_scope() as session:
        session.execute(delete(OutboxEvent))


def _post(url: str, token: str, body: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_messages_accepted_during_broker_outage_are_all_delivered_once(
    start_worker, channel_server, pg_database, tmp_path, unique
) -> None:
    from app.services.auth import create_api_key

    port = free_port()
    redis_proc, broker = start_private_redis(port)
    env = channel_server.env | {"BROKER_URL": broker, "REDIS_URL": broker, "RESULT_BACKEND": broker,
                                "MESSAGE_RETRY_BACKOFF": "0.2"}
    procs: list[subprocess.Popen] = []
    try:
        relay = start_worker(["outbox"], name="outage-relay", broker_url=broker, pool="threads", concurrency=2, extra_env=env)
        router = start_worker(["messages"], name="outage-router", broker_url=broker, pool="threads", concurrency=8, extra_env=env)
        relay.wait_ready()
        router.wait_ready()
        full_env = relay.env
        beat_log = open(tmp_path / "beat.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "app", "beat", "-s", str(tmp_path / "beat-schedule"), "--loglevel", "INFO"],
            cwd=ROOT, env=full_env, stdout=beat_log, stderr=subprocess.STDOUT))
        api_port = free_port()
        api_log = open(tmp_path / "api.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{api_port}", "-w", "2", "app.api.wsgi:application"],
            cwd=ROOT, env=full_env, stdout=api_log, stderr=subprocess.STDOUT))

        def api_up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/openapi.json", timeout=2):
                    return True
            except OSError:
                return False

        wait_for(api_up, timeout=60, message="gunicorn API")
        with session_scope() as session:
            _, token = create_api_key(session, "outage")

        # The broker (and Redis) goes away.
        redis_proc.terminate()
        redis_proc.wait(timeout=10)

        ids = [f"out-{unique}-{i}" for i in range(500)]
        statuses = Counter(
            _post(f"http://127.0.0.1:{api_port}/api/messages", token,
                  {"id": mid, "conversation_id": "outage", "channel": "whatsapp", "recipient": "+1555", "content": f"n{i}"})
            for i, mid in enumerate(ids)
        )
        assert statuses == {202: 500}, statuses
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Message).where(Message.conversation_id == "outage")) == 500
        assert channel_server.received() == []  # nothing could be published yet

        # The broker comes back on the same address; nobody touches anything else.
        redis_proc, _ = start_private_redis(port)

        def delivered() -> int:
            with session_scope() as session:
                return session.scalar(select(func.count()).select_from(Message).where(
                    Message.conversation_id == "outage", Message.status == "delivered")) == 500

        wait_for(delivered, timeout=180, interval=1, message="all 500 delivered")
        sent = Counter(item["body"]["biz_opaque_callback_data"] for item in channel_server.received())
        assert set(sent) == set(ids)
        assert max(sent.values()) == 1, [k for k, v in sent.items() if v > 1][:5]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.terminate()
