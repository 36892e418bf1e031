"""Authentication-failure limiting: after AUTH_FAILURE_LIMIT failed authentications from
one client address within AUTH_FAILURE_WINDOW seconds, that address is refused (429
with Retry-After) until the window ends, whatever credential it presents.

A fixed window per address in Redis (``SET NX EX`` then ``INCR``, in one transaction,
so a counter never lives without its expiry), shared by every API process. Guessing
an API key, a worker token or ADMIN_TOKEN is slowed to ``limit`` tries a window. If
Redis does not answer, authentication goes on unlimited rather than locking everyone
out: the limiter is a brake, not the lock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

logger = logging.getLogger(__name__)

PREFIX = "authfail:"


@dataclass(frozen=True)
class FailureLimiter:
    """Counts authentication failures per client address in ``client`` (Redis)."""

    client: redis.Redis
    limit: int
    window: int

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def retry_after(self, address: str) -> int | None:
        """Seconds until ``address`` may try again, or None when it is not blocked."""
        if not self.enabled:
            return None
        key = PREFIX + address
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(key)
            pipe.ttl(key)
            count, ttl = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("auth failure limiter unavailable", extra={"error": str(exc)[:200]})
            return None
        if count is None or int(count) < self.limit:
            return None
        return max(1, int(ttl)) if ttl and ttl > 0 else self.window

    def record_failure(self, address: str) -> int:
        """Count one failure; returns the failures of the current window (0 if unknown)."""
        if not self.enabled:
            return 0
        key = PREFIX + address
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, 0, ex=self.window, nx=True)
            pipe.incr(key)
            _, count = pipe.execute()
        except (redis.RedisError, OSError) as exc:
            logger.warning("auth failure limiter unavailable", extra={"error": str(exc)[:200]})
            return 0
        if count == self.limit:
            logger.warning("authentication failures limit reached",
                           extra={"client_address": address, "failures": count, "window_seconds": self.window})
        return int(count)

    def reset(self, address: str) -> None:
        """Forget an address's failures (operators, tests)."""
        self.client.delete(PREFIX + address)
