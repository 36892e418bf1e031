"""The beat scheduler: RedBeat, made to survive a lost lock instead of exiting.

RedBeat stores the schedule in Redis and lets only the holder of its lock send tasks.
Stock RedBeat raises when the lock is found no longer ours (it expired while Redis was
unreachable or the process was paused, and a standby may have taken it over), which
ends the beat process. Here the scheduler instead steps back to standby and tries to
take the lock again on each loop, so at most one beat sends at any time and a beat
never dies of an outage.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, TimeoutError as RedisTimeoutError
from redbeat import RedBeatScheduler

logger = logging.getLogger(__name__)


class HABeatScheduler(RedBeatScheduler):
    """RedBeat with a standby mode: send only while holding the lock, re-take it when free."""

    def tick(self, min: Any = min, **kwargs: Any) -> float:  # noqa: A002 (celery's signature)
        """One beat loop: keep (or win back) the lock, then send what is due."""
        if self.lock_key and self.lock is not None:
            try:
                if not self.lock.owned():
                    if not self.lock.acquire(blocking=False):
                        logger.info("beat: standby, lock held by another beat")
                        return self.max_interval
                    logger.info("beat: lock re-acquired, sending again")
            except (RedisConnectionError, RedisTimeoutError) as exc:
                logger.warning("beat: Redis unreachable (%s); retrying", exc)
                return self.max_interval
        try:
            return super().tick(min=min, **kwargs)
        except LockError:
            logger.warning("beat: lock lost; standing by")
            return self.max_interval
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("beat: Redis unreachable (%s); retrying", exc)
            return self.max_interval
