"""A retry the broker cannot take is handed back to the outbox, not dropped.

A real ``messages`` worker on a private Redis broker sends a message; the channel answers
503 after the broker has gone away, so the router's retry cannot be published. Celery
would drop the message then (``Reject(requeue=False)``) and leave it ``queued`` for
good; the task's event goes back to the outbox instead, and once the broker is back the
outbox publishes it again with the same task id and the message is delivered once.
"""

from __future__ import annotations

from sqlalchemy import delete, update

from app.db import session_scope
from app.devserver import free_port, start_private_redis
from app.models.base import utcnow
from app.models.messages import Message
from app.models.outbox import OutboxEvent
from app.services.messages import ROUTE_TASK, submit_message
from app.services.outbox import task_id_for, task_kwargs
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker


def _event(event_id: int) -> OutboxEvent:
    with session_scope() as session:
        event = session.get(OutboxEvent, event_id)
        assert event is not None
        session.expunge(event)
        return event


def _publish(client, event_id: int) -> None:  # type: ignore[no-untyped-def]
    """What the relay does for one event: publish it with its task id, mark it published."""
    event = _event(event_id)
    client.send_task(event.task_name, kwargs=task_kwargs(event), task_id=task_id_for(event_id))
    with session_scope() as session:
        session.execute(update(OutboxEvent).where(OutboxEvent.id == event_id).values(published_at=utcnow()))


def test_a_retry_during_a_broker_outage_goes_back_to_the_outbox_and_is_delivered_once(
    channel_server, pg_database, redis_client, unique
) -> None:
    port = free_port()
    redis_proc, broker = start_private_redis(port)
    env = channel_server.env | {"REDIS_URL": broker, "RESULT_BACKEND": broker, "MESSAGE_RETRY_BACKOFF": "1"}
    workers: list[Worker] = []

    def router() -> Worker:
        worker = Worker(["messages"], name="handback-router", broker_url=broker, pool="threads", concurrency=2,
                        extra_env=env).start()
        workers.append(worker)
        return worker.wait_ready()

    try:
        first = router()
        message_id = f"handback-{unique}"
        with session_scope() as session:
            submit_message(session, message_id=message_id, conversation_id="handback", channel="whatsapp",
                           recipient="+1555", content="hello")
            session.flush()
            event_id = session.query(OutboxEvent.id).filter(
                OutboxEvent.task_name == ROUTE_TASK, OutboxEvent.aggregate_id == message_id).scalar()
        # The channel answers slowly, then 503: the router has to retry, and by then the
        # broker is gone.
        channel_server.configure(latency=3, script=[503])
        _publish(first.client, event_id)
        wait_for(lambda: _event(event_id).consumed_at is not None, timeout=30, interval=0.05,
                 message="the router took the message")
        redis_proc.terminate()
        redis_proc.wait(timeout=10)

        def handed_back() -> bool:
            event = _event(event_id)
            return event.published_at is None and event.consumed_at is None

        wait_for(handed_back, timeout=60, interval=0.2, message="the retry handed back to the outbox")
        event = _event(event_id)
        assert task_kwargs(event)["message_id"] == message_id
        assert event.next_attempt_at > event.created_at  # due after the retry's countdown
        with session_scope() as session:
            message = session.get(Message, message_id)
            assert message is not None and message.status == "queued"
            assert [(d.status, d.attempts) for d in message.deliveries] == [("pending", 1)]
        assert channel_server.received() == []
        assert "handed back to the outbox" in first.log_path.read_text(errors="replace")

        # The broker comes back with a fresh worker (kombu can end a worker that held
        # unacknowledged messages when the broker went away; its process manager starts it
        # again). The outbox publishes the event again with the same task id.
        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
        redis_proc, _ = start_private_redis(port)
        second = router()
        wait_for(lambda: _event(event_id).next_attempt_at <= utcnow(), timeout=30, interval=0.2,
                 message="the event due again")
        _publish(second.client, event_id)

        def delivered() -> bool:
            with session_scope() as session:
                message = session.get(Message, message_id)
                return message is not None and message.status == "delivered"

        wait_for(delivered, timeout=60, interval=0.2, message="the message delivered")
        sent = [item for item in channel_server.received() if item["body"].get("biz_opaque_callback_data") == message_id]
        assert len(sent) == 1
        with session_scope() as session:
            message = session.get(Message, message_id)
            assert message is not None
            assert [(d.status, d.attempts) for d in message.deliveries] == [("accepted", 2)]
    finally:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)


def test_a_handed_back_task_resumes_its_retry_count(pg_database, unique) -> None:  # type: ignore[no-untyped-def]
    """The retry count of a policy travels in the task's kwargs, so it survives a hand-back.

    A ``MERGING`` file whose merge claim another delivery holds: every merge of it meets
    ``MergeBusy`` and retries by ``MERGE_BUSY`` (50 retries). Its event already carries 49
    of them. The merge is held up on a lock of the files table while the broker goes away, so its
    retry (the 50th) is handed back to the event; once the broker is back and the event is
    published again, the merge finds its retries used up and gives this delivery up, which
    it would not do had the count started again.
    """
    from datetime import timedelta

    from sqlalchemy import text

    from app.models.files import MERGING, File
    from app.services.outbox import add_event
    from app.tasks.files import MERGE_BUSY

    port = free_port()
    redis_proc, broker = start_private_redis(port)
    env = {"REDIS_URL": broker, "RESULT_BACKEND": broker}
    workers: list[Worker] = []

    def merger() -> Worker:
        worker = Worker(["files"], name="handback-files", broker_url=broker, pool="threads", concurrency=1,
                        extra_env=env).start()
        workers.append(worker)
        return worker.wait_ready()

    file_id = f"hb{unique}"[:32]
    try:
        first = merger()
        with session_scope() as session:
            session.add(File(id=file_id, filename="held.bin", content_type="application/octet-stream", size=1,
                             chunk_size=5 * 1024 * 1024, total_chunks=1, status=MERGING, merge_token="elsewhere",
                             merge_lease_until=utcnow() + timedelta(seconds=45)))
            event_id = add_event(session, aggregate_type="file", aggregate_id=file_id, event_type="file.merge",
                                 task_name="app.tasks.files.merge",
                                 payload={"file_id": file_id, MERGE_BUSY.counter: MERGE_BUSY.max_retries - 1}).id
        with session_scope() as lock:
            # The merge's first read of the file waits on this table lock while the broker goes
            # away. (A row lock would not hold it: the claim's conditional UPDATE does not
            # match a row whose lease runs, so it never waits for the row.)
            lock.execute(text("LOCK TABLE files IN ACCESS EXCLUSIVE MODE"))
            _publish(first.client, event_id)
            wait_for(lambda: _event(event_id).consumed_at is not None, timeout=30, interval=0.05,
                     message="the merge took its task")
            redis_proc.terminate()
            redis_proc.wait(timeout=10)

        def handed_back() -> bool:
            event = _event(event_id)
            return event.published_at is None and event.consumed_at is None

        wait_for(handed_back, timeout=90, interval=0.2, message="the retry handed back to the outbox")
        assert task_kwargs(_event(event_id)) == {"file_id": file_id, MERGE_BUSY.counter: MERGE_BUSY.max_retries}

        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
            first.proc.wait()
        redis_proc, _ = start_private_redis(port)
        second = merger()
        wait_for(lambda: _event(event_id).next_attempt_at <= utcnow(), timeout=90, interval=0.2,
                 message="the event due again (when the claim's lease was to end)")
        with session_scope() as session:  # the other delivery renewed its claim meanwhile
            session.execute(update(File).where(File.id == file_id)
                            .values(merge_lease_until=utcnow() + timedelta(minutes=10)))
        _publish(second.client, event_id)
        wait_for(lambda: "'result': 'busy'" in second.log_path.read_text(errors="replace"), timeout=60,
                 interval=0.2, message="the merge gave the delivery up: its retries were used up")
    finally:
        for worker in workers:
            if worker.proc is not None and worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        with session_scope() as session:
            session.execute(delete(OutboxEvent).where(OutboxEvent.aggregate_id == file_id))
            session.execute(delete(File).where(File.id == file_id))
