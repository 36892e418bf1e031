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

from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)


class HABeatScheduler(RedBeatScheduler):
    """RedBeat with a standby mode: send only while holding the lock, re-take it when free."""

    def tick(self, min: Any = min, **kwargs: Any) -> float:
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

    def update_from_dict(self, dict_: dict[str, Any]) -> None:
        """Install the configured entries, keeping a pause the operator console stored
        (``enabled`` false in Redis): a beat restart must not resume a paused entry."""
        paused = set()
        for name in dict_:
            try:
                if not self.Entry.from_key(self.Entry.generate_key(self.app, name), app=self.app).enabled:
                    paused.add(name)
            except KeyError:
                continue
        super().update_from_dict({name: ({**conf, "enabled": False} if name in paused and isinstance(conf, dict)
                                         else conf) for name, conf in dict_.items()})
