"""Every queue is consumed only by the worker started with ``-Q`` that queue, on Redis
and on RabbitMQ; a SIGKILLed task is delivered again and completes. (That the routes
take every task to its family's queue is checked in tests/unit/test_celery_config.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest

from app.settings import QUEUES
from tests.fixtures.services import wait_for

#: The one probe, sent to each queue by name.
PING = "app.tasks.system.ping"


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_each_queue_is_consumed_only_by_its_worker(broker, start_worker, request) -> None:
    broker_url = request.getfixturevalue("rabbitmq_url") if broker == "rabbitmq" else None
    workers = {q: start_worker([q], name=f"{broker}-{q}", broker_url=broker_url, pool="solo") for q in QUEUES}
    for worker in workers.values():
        worker.wait_ready()
    client = next(iter(workers.values())).client

    results = {}
    for queue in QUEUES:
        # The one probe, to each queue by name (its route would take it to `default`).
        results[queue] = client.signature(PING).apply_async(queue=queue)
    for queue, result in results.items():
        payload = result.get(timeout=30)
        assert payload["queue"] == queue
        assert payload["hostname"] == workers[queue].nodename, f"{queue} task ran on {payload['hostname']}"

    # Worker logs are JSON lines carrying the task id and the queue.
    for queue, result in results.items():
        lines = [json.loads(l) for l in workers[queue].log_path.read_text().splitlines() if l.startswith("{")]
        answered = [l for l in lines if l.get("message") == "ping answered"]
        assert answered, workers[queue].log_tail()
        line = answered[0]
        assert line["task_id"] == result.id and line["queue"] == queue
        assert {"timestamp", "level", "logger"} <= set(line)

    # Each worker processed exactly its own queue's task and nothing else.
    stats = client.control.inspect(destination=[w.nodename for w in workers.values()], timeout=5).stats()
    for queue, worker in workers.items():
        totals = stats[worker.nodename]["total"]
        assert totals == {PING: 1}, f"{worker.nodename} processed {totals}"


def test_task_on_unknown_queue_fails_loudly() -> None:
    from celery.exceptions import QueueNotFound

    from app.celery_app import celery_app

    with pytest.raises(QueueNotFound):
        celery_app.send_task(PING, queue="orc")


def test_sigkilled_task_is_redelivered_and_completes(start_worker, redis_client, unique) -> None:
    worker = start_worker(["default"], name="kill", pool="prefork", concurrency=1).wait_ready()
    key = f"kill:{unique}"
    result = worker.client.signature("app.tasks.system.slow_marker", args=(key, 3.0)).apply_async()

    first_pid = int(wait_for(lambda: redis_client.lindex(f"{key}:starts", 0), timeout=30, message="task start"))
    assert first_pid in worker.child_pids()
    os.kill(first_pid, signal.SIGKILL)

    payload = result.get(timeout=60)
    starts = [int(p) for p in redis_client.lrange(f"{key}:starts", 0, -1)]
    assert len(starts) == 2, starts  # delivered again after the kill, exactly once more
    assert starts[0] == first_pid and starts[1] != first_pid
    assert int(redis_client.get(f"{key}:done")) == starts[1] == payload["pid"]
