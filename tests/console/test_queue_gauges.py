"""The queue gauges equal the broker's truth with a real worker holding prefetched
messages, on Redis and on RabbitMQ: depth = waiting + reserved = every message sent and
not finished; waiting = the broker's own ready count."""

from __future__ import annotations

import re
import time
import uuid

import pytest
import redis as redis_lib

N = 8
PREFETCH = 3  # one running, two reserved: the worker holds three unacknowledged


def gauge(body: str, name: str, queue: str) -> float:
    match = re.search(rf'^{name}{{queue="{queue}"}} ([0-9.e+]+)$', body, re.M)
    assert match, f"{name} for {queue} missing from /metrics"
    return float(match.group(1))


def ready_count(broker_url: str, queue: str) -> int:
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True)[1])
        finally:
            channel.close()


def purge(broker_url: str, queue: str) -> None:
    from kombu import Connection

    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            channel.queue_purge(queue)
        except conn.channel_errors:
            pass
        finally:
            channel.close()


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_depth_gauges_equal_the_brokers_truth_with_prefetched_messages(broker, request, start_worker,  # type: ignore[no-untyped-def]
                                                                      redis_client) -> None:
    from app.api import create_app
    from app.settings import get_settings
    from tests.conftest import REDIS_URL

    broker_url = request.getfixturevalue("rabbitmq_url") if broker == "rabbitmq" else REDIS_URL
    purge(broker_url, "default")
    worker = start_worker(["default"], broker_url=broker_url if broker == "rabbitmq" else None,
                          extra_args=["--prefetch-multiplier", str(PREFETCH)]).wait_ready()
    key = f"gauge:{uuid.uuid4().hex}"
    for i in range(N):
        worker.client.signature("app.tasks.system.slow_marker", args=(f"{key}:{i}", 12.0)).apply_async(queue="default")
    deadline = time.monotonic() + 30
    while not redis_client.exists(f"{key}:0:starts") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the worker has taken its prefetch
    app = create_app(get_settings().model_copy(update={"broker_url": broker_url if broker == "rabbitmq" else ""}))
    body = app.test_client().get("/metrics").get_data(as_text=True)
    truth_waiting = ready_count(broker_url, "default")
    try:
        assert gauge(body, "celery_queue_depth", "default") == N  # nothing finished yet: every message sent
        assert gauge(body, "celery_queue_waiting", "default") == truth_waiting == N - PREFETCH
        assert gauge(body, "celery_queue_reserved", "default") == PREFETCH
        if broker == "redis":
            held = redis_lib.Redis.from_url(REDIS_URL).hlen("unacked")
            assert held == PREFETCH
    finally:
        # The worker gives its prefetched messages back to the queue when it stops: stop it
        # first, then purge, so no later test's worker on this broker meets them.
        worker.stop()
        purge(broker_url, "default")
