"""Queues, workers and schedules as the broker, the Celery control API and RedBeat see them.

The caller passes its clients: a Celery app (``app.control`` for the workers, its broker
connection), a Redis client (RedBeat's schedule, the console's paused-queue record).

**Depth.** Waiting is the broker's ready count (``queue_declare(passive=True)``, Redis
and RabbitMQ alike). Reserved is what workers hold unacknowledged: on Redis, kombu's
``unacked`` hash (every delivered, unacknowledged message, with the queue it came from);
on RabbitMQ, the workers' own ``inspect().reserved()`` plus ``active()`` (acks are late,
so a running task is unacknowledged too). The oldest waiting message's age is read from
the outbox: the oldest event published to the queue that no worker has started
(every job of every family is published through the outbox; beat's own ticks are not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.outbox import OutboxEvent

PAUSED_KEY = "console:paused-queues"  # hash: queue -> JSON list of the workers it was cancelled on


@dataclass
class QueueState:
    name: str
    waiting: int = 0
    reserved: int = 0
    oldest_waiting_seconds: float | None = None
    consumers: list[str] = field(default_factory=list)
    paused: bool = False
    paused_on: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return self.waiting + self.reserved


def waiting_counts(celery: Any, queues: tuple[str, ...], timeout: float = 3.0) -> dict[str, int]:
    """Ready messages per queue (0 for a queue the broker does not know yet)."""
    out = {}
    with celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        channel = conn.channel()
        try:
            for queue in queues:
                try:
                    out[queue] = int(channel.queue_declare(queue=queue, passive=True)[1])
                except conn.channel_errors:
                    out[queue] = 0
                    channel.close()
                    channel = conn.channel()
        finally:
            channel.close()
    return out


def _redis_unacked(celery: Any, queues: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(queues, 0)
    with celery.connection_for_read() as conn:
        client = conn.default_channel.client
        key = getattr(conn.default_channel, "unacked_key", "unacked")
        for raw in client.hvals(key):
            try:
                _, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            queue = routing_key or exchange
            if queue in counts:
                counts[queue] += 1
    return counts


def _inspected(celery: Any, queues: tuple[str, ...], timeout: float) -> dict[str, int]:
    counts = dict.fromkeys(queues, 0)
    for reply in inspect_all(celery, ("reserved", "active"), timeout).values():
        for tasks in reply.values():
            for task in tasks:
                queue = (task.get("delivery_info") or {}).get("routing_key")
                if queue in counts:
                    counts[queue] += 1
    return counts


def reserved_counts(celery: Any, queues: tuple[str, ...], timeout: float = 1.0) -> dict[str, int]:
    """Messages delivered to workers and not acknowledged yet, per queue."""
    if celery.connection_for_read().transport.driver_type == "redis":
        return _redis_unacked(celery, queues)
    return _inspected(celery, queues, timeout)


def oldest_waiting(session: Session, task_queue: dict[str, str], now: datetime | None = None) -> dict[str, float]:
    """Seconds since the oldest outbox event of each queue was published without being started."""
    now = now or utcnow()
    stmt = (select(OutboxEvent.task_name, func.min(OutboxEvent.published_at))
            .where(OutboxEvent.published_at.is_not(None), OutboxEvent.consumed_at.is_(None),
                   OutboxEvent.dead.is_(False)).group_by(OutboxEvent.task_name))
    out: dict[str, float] = {}
    for task_name, published in session.execute(stmt):
        queue = task_queue.get(task_name.rsplit(".", 1)[0], "default")
        if published is None:
            continue
        age = max(0.0, (now - published).total_seconds())
        out[queue] = max(out.get(queue, 0.0), age)
    return out


def inspect_all(celery: Any, commands: tuple[str, ...], timeout: float = 1.0) -> dict[str, dict[str, Any]]:
    """Several ``inspect`` broadcasts at once (each waits its whole timeout for replies)."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(command: str) -> dict[str, Any]:
        return getattr(celery.control.inspect(timeout=timeout), command)() or {}

    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return dict(zip(commands, pool.map(ask, commands), strict=True))


def consumers(celery: Any, timeout: float = 1.0, active_queues: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Queue -> the workers consuming it now."""
    out: dict[str, list[str]] = {}
    if active_queues is None:
        active_queues = celery.control.inspect(timeout=timeout).active_queues() or {}
    for worker, queues in active_queues.items():
        for q in queues:
            out.setdefault(q["name"], []).append(worker)
    return out


def paused(redis: Any) -> dict[str, list[str]]:
    return {k.decode() if isinstance(k, bytes) else k: json.loads(v) for k, v in redis.hgetall(PAUSED_KEY).items()}


def pause(celery: Any, redis: Any, queue: str, timeout: float = 2.0) -> list[str]:
    """Stop every worker consuming ``queue`` from taking more of it (``cancel_consumer``);
    the workers it was cancelled on are kept, so a resume re-adds exactly those."""
    workers = consumers(celery, timeout).get(queue, [])
    before = paused(redis).get(queue, [])
    if workers:
        celery.control.cancel_consumer(queue, destination=workers, reply=True, timeout=timeout)
    names = sorted(set(before) | set(workers))
    redis.hset(PAUSED_KEY, queue, json.dumps(names))
    return workers


def resume(celery: Any, redis: Any, queue: str, timeout: float = 2.0) -> list[str]:
    """Make the workers a pause cancelled consume ``queue`` again (``add_consumer``)."""
    workers = paused(redis).get(queue, [])
    if workers:
        celery.control.add_consumer(queue, exchange=queue, exchange_type="direct", routing_key=queue,
                                    destination=workers, reply=True, timeout=timeout)
    redis.hdel(PAUSED_KEY, queue)
    return workers


def purge(celery: Any, queue: str) -> int:
    """Delete every waiting message of ``queue``; how many there were."""
    with celery.connection_for_write() as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_purge(queue) or 0)
        finally:
            channel.close()


def queue_states(celery: Any, redis: Any, session: Session, queues: tuple[str, ...],
                 task_queue: dict[str, str], active_queues: dict[str, Any] | None = None) -> list[QueueState]:
    """Every queue: waiting, reserved, oldest waiting, consumers, paused."""
    waiting = waiting_counts(celery, queues)
    reserved = reserved_counts(celery, queues)
    ages = oldest_waiting(session, task_queue)
    who = consumers(celery, active_queues=active_queues)
    stopped = paused(redis)
    return [QueueState(q, waiting.get(q, 0), reserved.get(q, 0), ages.get(q) if waiting.get(q) else None,
                       who.get(q, []), q in stopped, stopped.get(q, [])) for q in queues]


def workers(celery: Any, timeout: float = 1.0, replies: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Celery workers answering the control API: name, queues, active and reserved tasks."""
    replies = replies or inspect_all(celery, ("active_queues", "active", "reserved", "stats"), timeout)
    queues, active, reserved, stats = (replies[k] for k in ("active_queues", "active", "reserved", "stats"))
    return [{"name": name, "queues": sorted(q["name"] for q in queues.get(name, [])),
             "active": len(active.get(name, [])), "reserved": len(reserved.get(name, [])),
             "pool": ((stats.get(name) or {}).get("pool") or {}).get("implementation"),
             "concurrency": ((stats.get(name) or {}).get("pool") or {}).get("max-concurrency")}
            for name in sorted(set(queues) | set(stats))]
