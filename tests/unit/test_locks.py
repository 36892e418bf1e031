"""Distributed locks against the real Redis test database."""

from __future__ import annotations

import threading
import time

from app.locks import named_lock


def test_second_holder_is_refused_until_release(redis_client, unique) -> None:
    with named_lock(unique, ttl=10, client=redis_client) as first:
        assert first.acquired
        with named_lock(unique, ttl=10, client=redis_client) as second:
            assert not second.acquired
    with named_lock(unique, ttl=10, client=redis_client) as third:
        assert third.acquired
    assert redis_client.exists(f"lock:{unique}") == 0


def test_ttl_expires_and_stale_holder_cannot_release_new_owner(redis_client, unique) -> None:
    with named_lock(unique, ttl=0.3, client=redis_client) as stale:
        assert stale.acquired
        time.sleep(0.5)
        assert not stale.owned()
        with named_lock(unique, ttl=10, client=redis_client) as fresh:
            assert fresh.acquired
            # leaving the stale block must not free the fresh owner's lock
        # (fresh released itself on exit)
    assert redis_client.exists(f"lock:{unique}") == 0


def test_stale_exit_keeps_the_new_owners_lock(redis_client, unique) -> None:
    stale_cm = named_lock(unique, ttl=0.3, client=redis_client)
    stale = stale_cm.__enter__()
    assert stale.acquired
    time.sleep(0.5)
    with named_lock(unique, ttl=10, client=redis_client) as fresh:
        assert fresh.acquired
        stale_cm.__exit__(None, None, None)
        assert fresh.owned()
        assert redis_client.exists(f"lock:{unique}") == 1


def test_extend_keeps_the_lock_past_its_ttl(redis_client, unique) -> None:
    with named_lock(unique, ttl=0.5, client=redis_client) as handle:
        assert handle.extend(5)
        time.sleep(0.8)
        assert handle.owned()
        with named_lock(unique, ttl=10, client=redis_client) as other:
            assert not other.acquired


def test_only_one_of_many_concurrent_contenders_wins(redis_client, unique) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        with named_lock(unique, ttl=5, client=redis_client) as handle:
            if handle.acquired:
                wins.append(i)
                time.sleep(0.3)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
