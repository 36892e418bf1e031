"""Task overhead: how fast a worker drains the project's instrumented no-op task
(``app.tasks.system.ping``: the project app with its signals — per-task metrics, tracing,
structured logging — and result) against a bare Celery no-op task
(``bench/overhead/bare.py``) on the same worker settings (``celeryconfig``, the
`default` queue's deployed pool and concurrency, a private redis-server).

Both workers run side by side, each on its own queue; rounds alternate between them.
Each round publishes N messages on one producer and times from the first publish to
the last result stored. Target: project ≥ 0.95× the bare rate.

    python -m bench.overhead [--quick] [--tasks 2000] [--repeat 5] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def drain(task_name: str, queue: str, n: int, timeout: float = 120) -> float:
    """Publish n messages of ``task_name`` to ``queue``; tasks/s until every result is stored."""
    from app.celery_app import celery_app
    from app.locks import redis_client

    r = redis_client()
    ids = [f"ovh-{uuid.uuid4().hex}" for _ in range(n)]
    keys = [f"celery-task-meta-{i}" for i in ids]
    start = time.perf_counter()
    with celery_app.producer_or_acquire() as producer:
        for task_id in ids:
            celery_app.send_task(task_name, task_id=task_id, queue=queue, producer=producer)
    deadline = time.monotonic() + timeout
    while True:
        done = sum(r.exists(*keys[i:i + 500]) for i in range(0, n, 500))
        if done == n:
            elapsed = time.perf_counter() - start
            r.delete(*keys)
            return n / elapsed
        if time.monotonic() > deadline:
            raise RuntimeError(f"{task_name}: only {done}/{n} results in {timeout:.0f} s")
        time.sleep(0.01)


def measure(tasks: int, repeat: int, tmp: Path) -> dict[str, list[float]]:
    """Alternating rounds of the bare and the project worker; rates in tasks/s."""
    from bench.common import deploy_env, start_worker_process, stop

    env = deploy_env("default")
    pool, conc = env["WORKER_POOL"], int(env["WORKER_CONCURRENCY"])
    prefetch = int(env["WORKER_PREFETCH_MULTIPLIER"])
    pid = os.getpid()
    # The bare app consumes `gc` only so that the two workers never take each other's
    # messages; the queue's name does not change the work.
    bare = start_worker_process("bench.overhead.bare", ["gc"], f"bare-{pid}@bench", tmp / "bare.log",
                                pool=pool, concurrency=conc, prefetch=prefetch)
    project = start_worker_process("app", ["default"], f"project-{pid}@bench", tmp / "project.log",
                                   pool=pool, concurrency=conc, prefetch=prefetch)
    rates: dict[str, list[float]] = {"bare": [], "project": [], "pool": [pool], "concurrency": [conc]}  # type: ignore[list-item]
    try:
        drain("bench.overhead.noop", "gc", 200)  # warm-up: connections, imports
        drain("app.tasks.system.ping", "default", 200)
        for _ in range(repeat):
            rates["bare"].append(drain("bench.overhead.noop", "gc", tasks))
            rates["project"].append(drain("app.tasks.system.ping", "default", tasks))
            print(f"bare {rates['bare'][-1]:.0f}/s project {rates['project'][-1]:.0f}/s", flush=True)
    finally:
        stop([bare, project])
    return rates


def main() -> None:
    """Measure, print the table, write the summary for ``python -m bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.repeat = 500, 3

    from app.devserver import start_private_redis
    from bench.common import Figure, machine, median_spread, paired, today, verdict, write_summary

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        os.environ.update({"REDIS_URL": redis_url, "BROKER_URL": "", "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING"})
        rates = measure(args.tasks, args.repeat, tmp)
    finally:
        redis_proc.terminate()

    b_m, b_lo, b_hi = median_spread(rates["bare"])
    p_m, p_lo, p_hi = median_spread(rates["project"])
    r_m, r_lo, r_hi = paired(rates["project"], rates["bare"])
    setup = f"{rates['pool'][0]} pool, concurrency {rates['concurrency'][0]}"
    print("\n".join([
        f"Measured {today()} by `python -m bench.overhead{' --quick' if args.quick else ''}` on {machine()}; "
        f"{args.tasks} tasks per round, {args.repeat} alternating rounds, {setup}.",
        "",
        "| measurement | median | spread (min–max) | target |",
        "|---|---|---|---|",
        f"| bare Celery no-op task | {b_m:,.0f} tasks/s | {b_lo:,.0f}–{b_hi:,.0f} | |",
        f"| project no-op (`app.tasks.system.ping`: signals, metrics, tracing, logging) | {p_m:,.0f} tasks/s | "
        f"{p_lo:,.0f}–{p_hi:,.0f} | |",
        f"| project ÷ bare (paired) | **{r_m:.2f}×** | {r_lo:.2f}–{r_hi:.2f} | ≥ 0.95× ({verdict(r_m >= 0.95)}) |",
    ]))
    write_summary(args.summary, [Figure(
        "Task overhead: project no-op drained by one worker", f"{p_m:,.0f} tasks/s ({p_lo:,.0f}–{p_hi:,.0f})",
        f"bare Celery no-op, same worker settings: {b_m:,.0f} tasks/s", f"{r_m:.2f}× ({r_lo:.2f}–{r_hi:.2f})",
        "≥ 0.95× bare", r_m >= 0.95, f"{args.tasks} tasks × {args.repeat} paired rounds, {setup}")])


if __name__ == "__main__":
    main()
