"""The worker-side dispatcher of batched tasks (app.tasks.batching), driven with a pool that
records what it is handed and answers when told to: alone while a process is free, batches
of at most ``batch_max`` while it is busy, each request answered on its own."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from app.tasks.batching import ALONE, DONE, BatchedTask, _Dispatcher, run_batch_in_pool


class Handle:
    """What a pool's apply_async returns (Celery keeps a weak reference to it)."""


class FakePool:
    num_processes = 1

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_async(self, fn: Any, args: tuple, **kwargs: Any) -> object:  # type: ignore[type-arg]
        self.calls.append({"fn": fn, "args": args, **kwargs})
        return Handle()


class FakeRequest:
    def __init__(self, task_id: str, redelivered: bool = False) -> None:
        self.task_id = self.id = task_id
        self.kwargs = {"task_id": task_id}
        self.hostname = "w@test"
        self.delivery_info = {"redelivered": redelivered}
        self.ignore_result = False
        self.request_dict: dict[str, Any] = {}
        self.type, self.body, self.content_type, self.content_encoding = "t", b"", "application/json", "utf-8"
        self.time_limits = (None, None)
        self.events: list[tuple] = []  # type: ignore[type-arg]

    def revoked(self) -> bool:
        return False

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        self.events.append(("accepted", pid))

    def on_timeout(self, soft: bool, timeout: float) -> None:
        self.events.append(("timeout", soft))

    def on_success(self, failed_retval_runtime: tuple) -> None:  # type: ignore[type-arg]
        self.events.append(("success", failed_retval_runtime[1]))

    def on_failure(self, exc_info: Any) -> None:
        self.events.append(("failure", exc_info))


@pytest.fixture
def setup() -> tuple[_Dispatcher, FakePool, list[tuple[str, Any]]]:
    stored: list[tuple[str, Any]] = []
    app = SimpleNamespace(conf=SimpleNamespace(task_soft_time_limit=10, task_time_limit=20), use_fast_trace_task=False)
    task = SimpleNamespace(
        name="tests.batched", batch_max=3, soft_time_limit=None, time_limit=None, ignore_result=False, app=app,
        backend=SimpleNamespace(mark_as_done=lambda task_id, retval: stored.append((task_id, retval))),
        batchable=lambda request: BatchedTask.batchable(None, request),  # the base class's rule
    )
    pool = FakePool()
    return _Dispatcher(task, app, SimpleNamespace(pool=pool)), pool, stored


def test_alone_while_free_then_the_backlog_in_batches_each_answered_on_its_own(setup) -> None:  # type: ignore[no-untyped-def]
    dispatcher, pool, stored = setup
    reqs = [FakeRequest(f"r{i}") for i in range(5)]
    for r in reqs:
        dispatcher.add(r)
    # The first went at once, alone, through Celery's trace; the rest wait for the process.
    assert len(pool.calls) == 1 and pool.calls[0]["args"][1] == "r0"
    assert pool.calls[0]["fn"] is not run_batch_in_pool
    pool.calls[0]["callback"]((False, "first", 0.01))
    assert reqs[0].events == [("success", "first")]
    # Freed: the next three (batch_max) as one call, with three times the time limits.
    batch = pool.calls[1]
    assert batch["fn"] is run_batch_in_pool and [i.id for i in batch["args"][1]] == ["r1", "r2", "r3"]
    assert (batch["soft_timeout"], batch["timeout"]) == (30, 60)
    assert len(pool.calls) == 2  # r4 waits: the process is busy
    batch["accept_callback"](1234, 0.0)
    batch["callback"]([(DONE, {"n": 1}, 0.01), (ALONE, None, 0.0), (DONE, {"n": 3}, 0.01)])
    assert reqs[1].events == [("accepted", 1234), ("success", {"n": 1})]
    assert reqs[3].events == [("accepted", 1234), ("success", {"n": 3})]
    assert stored == [("r1", {"n": 1}), ("r3", {"n": 3})]  # results stored before the acknowledgement
    # The freed process got what was waiting (r4) first; r2, which asked to go alone, follows.
    assert [c["args"][1] for c in pool.calls[2:]] == ["r4", "r2"]
    assert all(c["fn"] is not run_batch_in_pool for c in pool.calls[2:])


def test_a_lost_batch_fails_each_request_and_the_dispatcher_goes_on(setup) -> None:  # type: ignore[no-untyped-def]
    dispatcher, pool, _ = setup
    reqs = [FakeRequest(f"r{i}") for i in range(4)]
    for r in reqs:
        dispatcher.add(r)
    pool.calls[0]["callback"]((False, "ok", 0.01))
    lost = object()
    pool.calls[1]["error_callback"](lost)  # e.g. WorkerLostError: Celery rejects and requeues each
    assert all(r.events == [("failure", lost)] for r in reqs[1:])
    dispatcher.add(FakeRequest("after"))
    assert pool.calls[-1]["args"][1] == "after"


def test_a_redelivered_message_goes_alone_even_in_a_backlog(setup) -> None:  # type: ignore[no-untyped-def]
    dispatcher, pool, _ = setup
    for r in [FakeRequest("r0"), FakeRequest("r1"), FakeRequest("again", redelivered=True), FakeRequest("r3")]:
        dispatcher.add(r)
    pool.calls[0]["callback"]((False, "ok", 0.01))
    kinds = [(c["fn"] is run_batch_in_pool, c["args"][1]) for c in pool.calls[1:]]
    assert (False, "again") in kinds
    assert any(is_batch and [i.id for i in arg] == ["r1", "r3"] for is_batch, arg in kinds)


@pytest.mark.parametrize(("flag", "value"), [("should_stop", 0), ("should_stop", 1), ("should_terminate", True)])
def test_a_stopping_worker_starts_no_waiting_request(setup, monkeypatch, flag, value) -> None:  # type: ignore[no-untyped-def]
    from celery.worker import state as worker_state

    dispatcher, pool, _ = setup
    reqs = [FakeRequest(f"r{i}") for i in range(4)]
    for r in reqs:
        dispatcher.add(r)
    assert len(pool.calls) == 1  # r0 runs; the rest wait for the process
    # What Celery's shutdown handlers set: a warm stop's value is the exit code 0.
    monkeypatch.setattr(worker_state, flag, value)
    pool.calls[0]["callback"]((False, "first", 0.01))
    assert reqs[0].events == [("success", "first")]  # the running request still finishes
    assert len(pool.calls) == 1  # nothing waiting is started: its messages go back unacknowledged
    assert all(r.events == [] for r in reqs[1:])


def test_a_voice_batch_whose_claim_meets_a_database_outage_goes_back_one_by_one(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.exc import OperationalError

    from app.services.voice import jobs as voice_jobs
    from app.tasks import voice
    from app.tasks.batching import BatchItem

    def down(*_a: Any, **_k: Any) -> None:
        raise OperationalError("UPDATE voice_tasks", {}, Exception("server closed the connection"))

    monkeypatch.setattr(voice_jobs, "claim_many", down)
    items = [BatchItem(id=f"m{i}", kwargs={"task_id": f"t{i}"}, hostname="w@test") for i in range(3)]
    assert voice.score_batch(items) == [(ALONE, None)] * 3


def test_a_voice_batch_that_runs_out_of_time_gives_the_unscored_clips_back(pg_database, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from celery.exceptions import SoftTimeLimitExceeded

    from app.db import session_scope
    from app.models.voice import VoiceJob
    from app.services.voice import batches
    from app.services.voice import jobs as voice_jobs
    from app.tasks import voice
    from app.tasks.batching import BatchItem

    ids = [voice_jobs.new_job_id() for _ in range(3)]
    with session_scope() as session:
        for task_id in ids:
            voice_jobs.create_job(session, task_id=task_id, target="remote", transcript="hello there")
    calls = iter([{"risk_level": "LOW", "scam_score": 0.1}, SoftTimeLimitExceeded()])

    def score_clip(*_a: Any) -> dict[str, Any]:
        outcome = next(calls)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)

    monkeypatch.setattr(batches, "score_clip", score_clip)
    monkeypatch.setattr(voice, "scoring_deps", lambda: None)
    items = [BatchItem(id=f"m{i}", kwargs={"task_id": t}, hostname="w@test") for i, t in enumerate(ids)]
    outcomes = [o for _, o in voice.score_batch(items)]
    assert [o["result"] for o in outcomes] == ["completed", "failed", "failed"]
    assert outcomes[1]["reason"] == batches.TIMED_OUT and outcomes[2]["reason"] == batches.BATCH_TIMED_OUT
    assert all(o["batch"] == 3 for o in outcomes)
    with session_scope() as session:
        rows = [session.get(VoiceJob, t) for t in ids]
    assert rows[0].status == "completed" and rows[0].result["scored_by"] == "celery:w@test"
    assert [r.status for r in rows[1:]] == ["pending", "pending"]  # back in the queue, attempts counted
    assert all(r.attempts == 1 and r.claimed_by is None for r in rows[1:])
