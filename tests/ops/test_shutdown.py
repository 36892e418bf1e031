"""Graceful shutdown with real worker processes: SIGTERM in the middle of a 20 s task lets
it finish and the worker exit 0 (warm shutdown); a task still running when the stop
timeout runs out (then SIGKILL, as systemd and supervisor do) is delivered again and
completed once, because it was never acknowledged (late acks).

Redis gives an unacknowledged message back only once the visibility timeout has passed
since its delivery, so the second scenario runs on a private redis-server with the
shortest timeout settings accept (61 s), started first and left waiting while the first
scenario runs."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import redis

from app.devserver import start_private_redis
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker

SLOW = "app.tasks.system.slow_marker"
VISIBILITY = 61  # the smallest BROKER_VISIBILITY_TIMEOUT above OCR_TASK_TIME_LIMIT's minimum (60)
STOP_TIMEOUT = 3.0  # stands for TimeoutStopSec / stopwaitsecs, shortened


@pytest.fixture(scope="module")
def killed_mid_task(redis_client, pg_database) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """A worker gets SIGTERM during a 10 s task, is still busy after the stop timeout and
    is SIGKILLed with its pool, leaving the task unacknowledged on the broker."""
    proc, url = start_private_redis()
    client = redis.Redis.from_url(url, socket_timeout=5)
    env = {"REDIS_URL": url, "BROKER_URL": url, "RESULT_BACKEND": url,
           "BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY), "TASK_TIME_LIMIT": "50", "TASK_SOFT_TIME_LIMIT": "45",
           "OCR_TASK_TIME_LIMIT": "60"}
    try:
        first = Worker(["default"], name="killed", broker_url=url, pool="prefork", concurrency=1, extra_env=env)
        first.start().wait_ready()
        first.client.send_task(SLOW, args=("kill", 10.0))
        pid = int(wait_for(lambda: client.lindex("kill:starts", 0), timeout=30, message="task start"))  # type: ignore[arg-type]
        delivered_at = time.monotonic()
        pool = first.child_pids()
        assert pid in pool
        first.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        time.sleep(STOP_TIMEOUT)
        assert first.proc.poll() is None, "the warm shutdown did not wait for the running task"  # type: ignore[union-attr]
        for p in [first.proc.pid, *pool]:  # type: ignore[union-attr]
            os.kill(p, signal.SIGKILL)
        first.proc.wait(timeout=10)  # type: ignore[union-attr]
        first._log.close()
        time.sleep(0.5)
        # Not finished, not acknowledged, not back in the queue yet: held as unacked.
        assert client.get("kill:done") is None
        assert client.hlen("unacked") == 1 and client.llen("default") == 0
        yield SimpleNamespace(url=url, env=env, client=client, first_pid=pid, delivered_at=delivered_at)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_sigterm_mid_task_lets_it_finish_and_exit_zero(killed_mid_task, start_worker, redis_client, unique) -> None:
    # (Requests `killed_mid_task` so that its visibility-timeout wait runs meanwhile.)
    worker = start_worker(["default"], name="graceful", pool="prefork", concurrency=1).wait_ready()
    key = f"graceful:{unique}"
    result = worker.client.signature(SLOW, args=(key, 20.0)).apply_async()
    wait_for(lambda: redis_client.lindex(f"{key}:starts", 0), timeout=30, message="task start")
    time.sleep(2)  # well inside the task

    stopped_at = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    code = worker.proc.wait(timeout=60)
    took = time.monotonic() - stopped_at

    assert code == 0, worker.log_tail()
    assert took >= 15, f"exited {took:.1f}s after SIGTERM: the task cannot have finished"
    assert redis_client.get(f"{key}:done") is not None
    assert redis_client.llen(f"{key}:starts") == 1
    assert result.get(timeout=10)["redelivered"] is False
    # Acknowledged: this task is neither queued again nor waiting unacknowledged.
    # (Other tests' workers may hold their own unacked messages in the same database.)
    def mentions_task(raw: bytes) -> bool:
        return result.id.encode() in raw

    assert not any(mentions_task(m) for m in redis_client.lrange("default", 0, -1))
    assert not any(mentions_task(m) for m in redis_client.hvals("unacked"))
    assert "Warm shutdown" in worker.log_path.read_text(errors="replace")


def test_task_killed_past_stop_timeout_is_redelivered_and_completed_once(killed_mid_task, start_worker) -> None:
    k = killed_mid_task
    # A worker that starts after the visibility timeout takes the message back at once.
    remaining = k.delivered_at + VISIBILITY + 2 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    second = start_worker(["default"], name="second", broker_url=k.url, pool="prefork", concurrency=1,
                          extra_env=k.env).wait_ready()
    done_pid = int(wait_for(lambda: k.client.get("kill:done"), timeout=60, message="redelivered task done"))  # type: ignore[arg-type]
    time.sleep(1)
    starts = [int(p) for p in k.client.lrange("kill:starts", 0, -1)]
    assert len(starts) == 2, starts  # once on the killed worker, once more after it
    assert starts[0] == k.first_pid and starts[1] == done_pid != k.first_pid
    assert done_pid in second.child_pids()
    assert k.client.hlen("unacked") == 0 and k.client.llen("default") == 0
    assert second.stop() == 0
