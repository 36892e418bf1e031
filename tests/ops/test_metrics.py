"""Prometheus metrics against real processes: a real worker serves its task counters on
its own port (prefork: the counts of every pool process add up), and the API's /metrics
reports queue depth, outbox and dead-letter sizes read at scrape time."""

from __future__ import annotations

from sqlalchemy import update

from app.db import session_scope
from app.devserver import free_port
from app.models.messages import DeadLetter, Message
from app.models.outbox import OutboxEvent
from app.services.outbox import add_event
from tests.fixtures.services import wait_for
from tests.ops.helpers import http_get, parse, value

FAST = {"MESSAGE_RETRY_BACKOFF": "0.2", "MESSAGE_RETRY_BACKOFF_MAX": "1"}
PING = "app.tasks.system.ping"
ROUTE = "app.tasks.messages.route"


def _scrape(port: int):  # type: ignore[no-untyped-def]
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, body[:200]
    return parse(body.decode())


def test_worker_metrics_move_by_the_tasks_it_ran(api, start_worker, channel_server, unique) -> None:
    port = free_port()
    worker = start_worker(["default", "outbox", "messages"], name="metrics", pool="prefork", concurrency=2,
                          extra_env=channel_server.env | FAST | {"WORKER_METRICS_PORT": str(port)}).wait_ready()
    before = _scrape(port)

    # Three pings and one task that raises, on `default`.
    pings = [worker.client.signature(PING).apply_async() for _ in range(3)]
    for result in pings:
        result.get(timeout=30)
    broken = worker.client.signature("app.tasks.system.slow_marker", args=(f"m:{unique}", "not seconds")).apply_async()
    wait_for(lambda: broken.ready(), timeout=30, message="the broken task to fail")
    assert broken.failed()

    # One message through the API whose first send gets a 503: one retry, then delivered.
    channel_server.configure(script=[503])
    resp = api.post("/api/messages", json={"id": f"m-{unique}", "conversation_id": "c", "channel": "whatsapp",
                                           "recipient": "+15550001", "content": "metrics"})
    assert resp.status_code == 202, resp.get_json()
    wait_for(lambda: api.get(f"/api/messages/m-{unique}").get_json()["status"] == "delivered", timeout=60,
             message="message delivered")

    def settled():  # type: ignore[no-untyped-def]
        after = _scrape(port)
        done = value(after, "celery_tasks_succeeded_total", task=ROUTE, queue="messages") - \
            value(before, "celery_tasks_succeeded_total", task=ROUTE, queue="messages")
        return after if done >= 1 else None

    after = wait_for(settled, timeout=20, message="route success counted")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)  # type: ignore[arg-type]

    assert delta("celery_tasks_received_total", task=PING, queue="default") == 3
    assert delta("celery_tasks_succeeded_total", task=PING, queue="default") == 3
    assert delta("celery_task_runtime_seconds_count", task=PING, queue="default") == 3
    assert delta("celery_tasks_failed_total", task="app.tasks.system.slow_marker", queue="default") == 1
    assert delta("celery_tasks_succeeded_total", task="app.tasks.system.slow_marker", queue="default") == 0
    assert delta("celery_tasks_received_total", task=ROUTE, queue="messages") == 2  # first try + the retry
    assert delta("celery_tasks_retried_total", task=ROUTE, queue="messages") == 1
    assert delta("celery_tasks_succeeded_total", task=ROUTE, queue="messages") == 1
    assert delta("celery_tasks_failed_total", task=ROUTE, queue="messages") == 0
    assert delta("messages_routed_total", result="pending") == 1
    assert delta("messages_routed_total", result="done") == 1
    assert delta("outbox_events_published_total") == 1
    # The pings ran in pool processes, yet the main process serves their counts.
    pids = {r.result["pid"] for r in pings}
    assert pids <= set(worker.child_pids())


def test_api_metrics_report_queue_depth_outbox_and_dead_letters(api, redis_client, unique) -> None:
    before = parse(api.client.get("/metrics").get_data(as_text=True))

    # Nobody consumes `gc` in this test: four pings wait in its queue.
    from app.celery_app import celery_app

    for _ in range(4):
        celery_app.send_task(PING, queue="gc")
    with session_scope() as session:
        for i in range(2):
            add_event(session, aggregate_type="metrics", aggregate_id=f"{unique}-{i}", event_type="metrics.test",
                      task_name=PING, payload={})
        dead = add_event(session, aggregate_type="metrics", aggregate_id=f"{unique}-dead", event_type="metrics.test",
                         task_name=PING, payload={})
        session.add(Message(id=f"dl-{unique}", conversation_id="c", channel="whatsapp", recipient="+1", content="x",
                            status="failed"))
        session.flush()
        session.add(DeadLetter(message_id=f"dl-{unique}", channel="whatsapp", error="HTTP 400", error_kind="permanent",
                               attempts=1))
        dead_id = dead.id
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == dead_id).values(dead=True))

    resp = api.client.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain")
    after = parse(resp.get_data(as_text=True))
    try:
        assert value(after, "celery_queue_length", queue="gc") - value(before, "celery_queue_length", queue="gc") == 4
        assert value(after, "outbox_events_pending") - value(before, "outbox_events_pending") == 2
        assert value(after, "outbox_events_dead") - value(before, "outbox_events_dead") == 1
        assert value(after, "dlq_messages") - value(before, "dlq_messages") == 1
        assert value(after, "metrics_source_up", source="broker") == 1
        assert value(after, "metrics_source_up", source="database") == 1
        assert ("celery_queue_length", (("queue", "schedules"),)) in after  # every queue is reported
    finally:
        redis_client.delete("gc")
        with session_scope() as session:
            session.execute(update(OutboxEvent).where(OutboxEvent.aggregate_type == "metrics").values(dead=True))


def test_scrape_survives_a_broker_that_does_not_answer(api) -> None:
    import time

    from app.settings import get_settings, set_settings

    original = get_settings()
    set_settings(original.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0",
                                             "metrics_scrape_timeout": 1.0}))
    try:
        started = time.monotonic()
        resp = api.client.get("/metrics")
        took = time.monotonic() - started
    finally:
        set_settings(original)
    assert resp.status_code == 200
    samples = parse(resp.get_data(as_text=True))
    assert value(samples, "metrics_source_up", source="broker") == 0
    assert value(samples, "metrics_source_up", source="database") == 1
    assert ("celery_queue_length", (("queue", "default"),)) not in samples
    assert took < 5, f"scrape took {took:.1f}s with the broker down"
