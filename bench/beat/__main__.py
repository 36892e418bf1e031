"""Beat precision: how late each job starts after its slot, p50 and p99, over a run of
the project's real beat schedule made fast.

The real beat (``celery beat`` with ``app.beat:HABeatScheduler``, RedBeat, lock held)
runs ``celeryconfig.beat_schedule`` with every interval entry set to 1–5 s; one real
worker consumes every queue a beat entry is routed to. The benchmark listens to the
Celery event stream: beat's ``task-sent`` and the worker's ``task-started``.

An interval entry's next slot is its last run plus the interval (Celery's and RedBeat's
rule), so slot *i* = sent *i−1* + interval; lateness = started *i* − slot *i*
(reported), and sent *i* − slot *i* (the beat's own share). Target: p99 < 1 s.
A private redis-server and a scratch PostgreSQL database; the jobs find nothing to do.

    python -m bench.beat [--quick] [--seconds 60] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Fast intervals (seconds) for the interval entries of the real schedule.
FAST = {
    "OUTBOX_RELAY_INTERVAL": "1", "VOICE_SWEEP_INTERVAL": "1", "CAMPAIGN_INTERVAL": "1",
    "CALL_SCHEDULER_INTERVAL": "1", "SCAN_SWEEP_INTERVAL": "2", "LEAD_REMINDER_INTERVAL": "2",
    "TRIAL_EXPIRATION_INTERVAL": "2", "CALL_CLEANUP_INTERVAL": "5",
}


def listen(stop: threading.Event, sent: dict, started: dict) -> None:
    """Collect task-sent / task-started events until ``stop`` is set."""
    from app.celery_app import celery_app

    def on_sent(event: dict) -> None:
        sent[event["uuid"]] = (event["name"], event["timestamp"])

    def on_started(event: dict) -> None:
        started[event["uuid"]] = event["timestamp"]

    with celery_app.connection_for_read() as conn:
        receiver = celery_app.events.Receiver(conn, handlers={"task-sent": on_sent, "task-started": on_started})
        for _ in receiver.consume(limit=None, timeout=0.5, wakeup=False, safety_interval=0.5):
            if stop.is_set():
                break


def _consume_until(stop: threading.Event, sent: dict, started: dict) -> None:
    while not stop.is_set():
        try:
            listen(stop, sent, started)
        except TimeoutError:
            continue
        except OSError:
            continue


def main() -> None:
    """Run beat + worker, collect events, print the table, write the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run, for a smoke run")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 20.0

    import subprocess
    import sys

    from app.devserver import start_private_redis
    from bench.common import (
        Figure,
        machine,
        percentile,
        scratch_database,
        start_worker_process,
        stop,
        today,
        write_summary,
    )

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-beat-"))
    sent: dict[str, tuple[str, float]] = {}
    started: dict[str, float] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with scratch_database(f"bench_beat_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING", **FAST})
            from app.migrate import upgrade

            upgrade()
            import celeryconfig

            intervals = {entry["task"]: float(entry["schedule"]) for entry in celeryconfig.beat_schedule.values()
                         if isinstance(entry["schedule"], (int, float))}
            queues = sorted({celeryconfig.FAMILY_QUEUES[t.rsplit(".", 1)[0]] for t in intervals})
            procs.append(start_worker_process("app", queues, f"bench-beat-{os.getpid()}@bench", tmp / "worker.log",
                                              pool="threads", concurrency=8))
            halt = threading.Event()
            listener = threading.Thread(target=_consume_until, args=(halt, sent, started), daemon=True)
            listener.start()
            time.sleep(1)
            procs.append(subprocess.Popen([sys.executable, "-m", "celery", "-A", "app", "beat", "--loglevel", "WARNING",
                                           "-s", str(tmp / "beat-schedule")], cwd=ROOT, env=dict(os.environ),
                                          stdout=(tmp / "beat.log").open("wb"), stderr=subprocess.STDOUT))
            began = time.time()
            time.sleep(args.seconds)
            stop(procs[1:])  # beat first, then let the last jobs start
            time.sleep(2)
            halt.set()
            listener.join(timeout=10)
    finally:
        stop(procs)
        redis_proc.terminate()

    by_task: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for uuid, (name, ts) in sent.items():
        if name in intervals:
            by_task[name].append((ts, uuid))
    start_late, send_late, lost = [], [], 0
    for name, runs in by_task.items():
        runs.sort()
        for (prev_ts, _), (ts, uuid) in zip(runs, runs[1:]):
            if prev_ts < began + 3:  # first slots: beat and worker still warming up
                continue
            slot = prev_ts + intervals[name]
            send_late.append(ts - slot)
            if uuid in started:
                start_late.append(started[uuid] - slot)
            else:
                lost += 1
    if len(start_late) < 10:
        raise SystemExit(f"only {len(start_late)} job starts seen; see {tmp}")
    p50, p99 = percentile(start_late, 50) * 1000, percentile(start_late, 99) * 1000
    s50, s99 = percentile(send_late, 50) * 1000, percentile(send_late, 99) * 1000
    ok = p99 < 1000 and lost == 0
    print("\n".join([
        f"Measured {today()} by `python -m bench.beat{' --quick' if args.quick else ''}` on {machine()}; "
        f"the real beat schedule with {len(intervals)} interval entries at 1–5 s for {args.seconds:g} s, "
        f"one worker (threads, 8) on {', '.join(queues)}.",
        "",
        "| measurement | p50 | p99 | max | target |",
        "|---|---|---|---|---|",
        f"| job start after its slot ({len(start_late)} runs) | {p50:.0f} ms | **{p99:.0f} ms** | "
        f"{max(start_late) * 1000:.0f} ms | p99 < 1 s ({'met' if ok else '**missed**'}) |",
        f"| of which beat sending after the slot | {s50:.0f} ms | {s99:.0f} ms | {max(send_late) * 1000:.0f} ms | |",
        f"| runs sent but never started | {lost} | | | 0 |",
    ]))
    write_summary(args.summary, [Figure(
        "Beat precision: job start after its slot", f"p50 {p50:.0f} ms, p99 {p99:.0f} ms",
        f"beat's own send delay: p50 {s50:.0f} ms, p99 {s99:.0f} ms", "", "p99 < 1 s", ok,
        f"{len(start_late)} runs of {len(intervals)} entries over {args.seconds:g} s; {lost} never started")])


if __name__ == "__main__":
    main()
