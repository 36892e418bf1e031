"""Memory: resident memory (RSS) of every worker process, per queue, at idle and after
N tasks; the growth shows leaks and sets ``WORKER_MAX_TASKS_PER_CHILD``.

One real worker per queue, each as deployed (``deploy/systemd/worker-<queue>.env``:
pool, concurrency, prefetch), all started together on a private redis-server and a
scratch PostgreSQL database. Idle: RSS of the main process and of each pool process
once every worker answers and has run one task. Then N tasks per queue, queue after
queue: the queue's probe task (the full per-task path: signals, metrics, tracing,
logging, result), and for `voice` real clip scoring (transcript provided: decoding,
features, the ONNX model) — the work with the largest allocations. RSS again after.

    python -m bench.memory [--quick] [--tasks 1000] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


PROBE = "app.tasks.system.ping"  # the one probe, sent to each queue by name


def run_probes(queue: str, n: int, timeout: float = 300) -> None:
    from app.celery_app import celery_app
    from app.locks import redis_client

    r = redis_client()
    ids = [f"mem-{uuid.uuid4().hex}" for _ in range(n)]
    with celery_app.producer_or_acquire() as producer:
        for task_id in ids:
            celery_app.send_task(PROBE, queue=queue, task_id=task_id, producer=producer)
    keys = [f"celery-task-meta-{i}" for i in ids]
    deadline = time.monotonic() + timeout
    while sum(r.exists(*keys[i:i + 500]) for i in range(0, n, 500)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue}: probes not done in {timeout:.0f} s")
        time.sleep(0.05)
    r.delete(*keys)


_voice_rounds = iter(range(900, 1000))


def run_voice(n: int) -> None:
    """n real clip scorings through the `voice` worker (transcript provided)."""
    from bench.voice.__main__ import make_clips, queue_rate

    queue_rate(make_clips(4), n, with_asr=False, round_no=next(_voice_rounds))


def sample(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, dict[str, list[float]]]:
    """RSS (MiB) of each worker's main process and of each of its pool processes."""
    from bench.common import child_pids, rss_mib

    out = {}
    for queue, proc in procs.items():
        out[queue] = {"main": [rss_mib(proc.pid)], "pool": [rss_mib(p) for p in child_pids(proc.pid)]}
    return out


def main() -> None:
    """Start a worker per queue, sample RSS idle and after the tasks, print and summarise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks, for a smoke run")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.tasks = 200

    from app.devserver import start_private_redis
    from app.settings import QUEUES
    from bench.common import (
        Figure,
        deploy_env,
        machine,
        scratch_database,
        spawn_worker,
        stop,
        today,
        wait_worker,
        write_summary,
    )

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    setups: dict[str, str] = {}
    try:
        with scratch_database(f"bench_memory_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING", "STORAGE_BACKEND": "local",
                               "STORAGE_LOCAL_ROOT": str(tmp / "storage"), "HF_HUB_OFFLINE": "1",
                               "VOICE_ASR_THREADS": "1", "SECRET_KEY": "bench"})
            from app.migrate import upgrade

            upgrade()
            from app.celery_app import celery_app

            celery_app.loader.import_default_modules()
            for queue in QUEUES:  # all at once: start-up is the slow part
                env = deploy_env(queue)
                setups[queue] = f"{env['WORKER_POOL']} ×{env['WORKER_CONCURRENCY']}"
                procs[queue] = spawn_worker(
                    "app", [queue], f"bench-mem-{queue}-{os.getpid()}@bench", tmp / f"{queue}.log",
                    pool=env["WORKER_POOL"], concurrency=int(env["WORKER_CONCURRENCY"]),
                    prefetch=int(env["WORKER_PREFETCH_MULTIPLIER"]))
            for queue in QUEUES:
                wait_worker(procs[queue], f"bench-mem-{queue}-{os.getpid()}@bench", tmp / f"{queue}.log", 180)
            for queue in QUEUES:  # every pool process has started and run something
                run_probes(queue, 4 * int(deploy_env(queue)["WORKER_CONCURRENCY"]))
            time.sleep(1)
            idle = sample(procs)
            # In quarters, sampled after each: the first quarter's rise is warm-up (caches,
            # allocator arenas); the slope over the last three is what would grow forever.
            steps: dict[str, list[dict[str, list[float]]]] = {}
            for queue in QUEUES:
                steps[queue] = []
                for _ in range(4):
                    if queue == "voice":
                        run_voice(args.tasks // 4)
                    else:
                        run_probes(queue, args.tasks // 4)
                    steps[queue].append(sample({queue: procs[queue]})[queue])
                print(f"{queue}: {args.tasks} tasks done", flush=True)
            after = {q: steps[q][-1] for q in QUEUES}
            from app.db import reset_engine

            reset_engine()
    finally:
        stop(list(procs.values()))
        redis_proc.terminate()

    lines = [
        f"Measured {today()} by `python -m bench.memory{' --quick' if args.quick else ''}` on {machine()}; one "
        f"worker per queue as deployed, RSS in MiB; {args.tasks} tasks per queue (the queue's probe task; "
        "`voice`: real clip scoring with the transcript provided).",
        "",
        "| queue | pool | main process: idle → after | pool process (largest): idle → after | "
        "first quarter (warm-up) | steady growth per 1,000 tasks |",
        "|---|---|---|---|---|---|",
    ]
    worst = 0.0

    def working(sample_: dict[str, list[float]]) -> float:
        # The process that runs the tasks: the largest pool process, or the main one (threads).
        return max(sample_["pool"]) if sample_["pool"] else sample_["main"][0]

    for queue in QUEUES:
        m0, m1 = idle[queue]["main"][0], after[queue]["main"][0]
        w = [working(idle[queue])] + [working(s_) for s_ in steps[queue]]
        warm = w[1] - w[0]
        growth = (w[4] - w[1]) * 1000 / (args.tasks * 3 / 4)
        worst = max(worst, growth)
        pool_cell = (f"{max(idle[queue]['pool']):.0f} → {max(after[queue]['pool']):.0f}" if idle[queue]["pool"]
                     else "(threads: tasks run in the main process)")
        lines.append(f"| {queue} | {setups[queue]} | {m0:.0f} → {m1:.0f} | {pool_cell} | {warm:+.1f} MiB | "
                     f"{growth:+.1f} MiB |")
    print("\n".join(lines))
    idle_total = sum(idle[q]["main"][0] + sum(idle[q]["pool"]) for q in QUEUES)
    write_summary(args.summary, [
        Figure("Memory: worker processes of all 9 queues at idle", f"{idle_total:,.0f} MiB RSS in all",
               "", "", "", None, "per queue and process: docs/performance.md, memory table"),
        Figure("Memory: largest growth per 1,000 tasks, any worker process", f"{worst:+.1f} MiB",
               "idle RSS of the same process", "", "no steady growth (sets WORKER_MAX_TASKS_PER_CHILD)",
               None, f"{args.tasks} tasks per queue"),
    ])
    (tmp / "table.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
