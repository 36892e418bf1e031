"""Named distributed locks on redis-py's ``Lock`` (random token, Lua release, TTL, extend).

``named_lock("campaigns:dispatch", ttl=60)`` yields a ``LockHandle`` whose ``acquired``
says whether this process got the lock; the body decides what to do when it did not.
The lock is released on exit only if it is still ours (redis-py's Lua script checks the
token), so a holder that outlived its TTL cannot release someone else's lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.exceptions import LockError, LockNotOwnedError
from redis.lock import Lock

from app.settings import get_settings

LOCK_PREFIX = "lock:"

_client: redis.Redis | None = None


def redis_client() -> redis.Redis:
    """The process-wide Redis client for locks, dedup keys and pub/sub."""
    global _client
    if _client is None:
        settings = get_settings()
        _client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_socket_timeout,
            socket_connect_timeout=settings.redis_socket_timeout,
            health_check_interval=30,
        )
    return _client


def reset_redis_client() -> None:
    global _client
    if _client is not None:
        _client.close()
    _client = None


@dataclass
class LockHandle:
    """What ``named_lock`` yields: whether we hold the lock, and the lock to extend."""

    name: str
    acquired: bool
    lock: Lock

    def extend(self, seconds: float) -> bool:
        """Add ``seconds`` to the remaining TTL; False if the lock is no longer ours."""
        try:
            return bool(self.lock.extend(seconds))
        except (LockNotOwnedError, LockError):
            return False

    def owned(self) -> bool:
        return bool(self.lock.owned())


@contextmanager
def named_lock(
    name: str,
    ttl: float = 60.0,
    blocking: bool = False,
    wait: float | None = None,
    client: redis.Redis | None = None,
) -> Iterator[LockHandle]:
    """Try to take the lock ``name`` for ``ttl`` seconds; release it on exit if still ours."""
    lock = (client or redis_client()).lock(
        LOCK_PREFIX + name, timeout=ttl, blocking=blocking, blocking_timeout=wait, thread_local=False
    )
    acquired = bool(lock.acquire())
    handle = LockHandle(name, acquired, lock)
    try:
        yield handle
    finally:
        if acquired:
            try:
                lock.release()
            except LockNotOwnedError:
                pass  # expired and possibly taken by another holder: not ours to release
