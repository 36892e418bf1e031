"""Outbox benchmark: relay throughput against raw publishing, and end-to-end latency.

1. **Relay throughput**: N events read from PostgreSQL, published to the broker and
   marked published by the relay's own code (``app.tasks.outbox.drain``), against the
   baseline of publishing the same N task messages straight to the broker with Celery's
   ``send_task`` on one producer (no database). Both run in this process, alternating,
   ``--repeat`` times; the table gives the median and the spread. Target: ≥ 0.5×.
2. **End-to-end latency**: messages submitted to the API (gunicorn) at a steady rate,
   relayed and routed by real workers to the development channel server; latency is
   from the API's 202 to the server's receipt. p50 and p99.

Everything runs on loopback: a private redis-server, a scratch PostgreSQL database.

    python -m bench.outbox [--quick] [--events 5000] [--repeat 5] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _configure(db_url: str, redis_url: str) -> None:
    os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "", "RESULT_BACKEND": "",
                       "LOG_LEVEL": "WARNING"})


def relay_vs_raw(n: int, repeat: int) -> dict:
    from sqlalchemy import delete

    from app.celery_app import celery_app
    from app.db import session_scope
    from app.locks import redis_client
    from app.models.outbox import OutboxEvent
    from app.tasks.outbox import drain

    celery_app.loader.import_default_modules()
    r = redis_client()
    raw_rates, relay_rates = [], []
    for _ in range(repeat):
        r.delete("default")
        start = time.perf_counter()
        with celery_app.producer_or_acquire() as producer:
            for i in range(n):
                celery_app.send_task("app.tasks.system.ping", kwargs={}, task_id=f"raw-{i}", producer=producer, retry=False)
        raw_rates.append(n / (time.perf_counter() - start))
        assert r.llen("default") == n
        r.delete("default")

        with session_scope() as session:
            session.execute(delete(OutboxEvent))
            session.add_all(OutboxEvent(aggregate_type="bench", aggregate_id=str(i), event_type="bench.ping",
                                        task_name="app.tasks.system.ping", payload={}) for i in range(n))
        start = time.perf_counter()
        published = 0
        while published < n:
            published += drain(budget=60)["published"]
        relay_rates.append(n / (time.perf_counter() - start))
        assert r.llen("default") == n
        r.delete("default")
    return {"raw": raw_rates, "relay": relay_rates}


def end_to_end(count: int, rate: float, redis_url: str, db_url: str, tmp: Path) -> list[float]:
    from app.db import session_scope
    from app.devserver import free_port
    from app.services.auth import create_api_key
    from bench.common import stop

    channel_port, api_port = free_port(), free_port()
    env = dict(os.environ) | {
        "WHATSAPP_BASE_URL": f"http://127.0.0.1:{channel_port}/whatsapp/v21.0",
        "INSTAGRAM_BASE_URL": f"http://127.0.0.1:{channel_port}/instagram/v21.0",
        "LOG_LEVEL": "WARNING",
    }
    py = sys.executable
    procs = [
        subprocess.Popen([py, "-m", "app.dev.channels", "--port", str(channel_port)], cwd=ROOT, env=env),
        subprocess.Popen([py, "-m", "celery", "-A", "app", "worker", "-Q", "outbox", "-P", "threads", "-c", "2",
                          "-n", "bench-relay@%h", "--loglevel", "WARNING"], cwd=ROOT, env=env,
                         stdout=open(tmp / "relay.log", "wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([py, "-m", "celery", "-A", "app", "worker", "-Q", "messages", "-P", "threads", "-c", "8",
                          "-n", "bench-router@%h", "--loglevel", "WARNING"], cwd=ROOT, env=env,
                         stdout=open(tmp / "router.log", "wb"), stderr=subprocess.STDOUT),
        subprocess.Popen([py, "-m", "gunicorn", "-b", f"127.0.0.1:{api_port}", "-w", "2", "app.api.wsgi:application"],
                         cwd=ROOT, env=env, stdout=open(tmp / "api.log", "wb"), stderr=subprocess.STDOUT),
    ]
    try:
        from app.celery_app import celery_app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = celery_app.control.ping(timeout=0.5)
            names = {k for reply in replies for k in reply}
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{api_port}/openapi.json", timeout=1).read()
                api_ok = True
            except OSError:
                api_ok = False
            if api_ok and any(n.startswith("bench-relay") for n in names) and any(n.startswith("bench-router") for n in names):
                break
        else:
            raise RuntimeError("bench stack did not start")
        with session_scope() as session:
            _, token = create_api_key(session, "bench")
        accepted: dict[str, float] = {}
        interval = 1.0 / rate
        next_at = time.monotonic()
        for i in range(count):
            mid = f"bench-{os.getpid()}-{i}"
            body = json.dumps({"id": mid, "conversation_id": "bench", "channel": "whatsapp",
                               "recipient": "+1555", "content": f"m{i}"}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{api_port}/api/messages", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 202
            accepted[mid] = time.time()
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        received: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while len(received) < count and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{channel_port}/_received", timeout=5) as resp:
                items = json.loads(resp.read())["items"]
            received = {it["body"]["biz_opaque_callback_data"]: it["time"] for it in items}
            time.sleep(0.5)
        if len(received) < count:
            raise RuntimeError(f"only {len(received)}/{count} messages arrived")
        return [(received[m] - t) * 1000 for m, t in accepted.items()]
    finally:
        stop(procs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second for the latency run")
    parser.add_argument("--write-docs", action="store_true", help="update the table in docs/outbox.md")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeat, args.messages = 1000, 3, 100

    from app.devserver import start_private_redis
    from bench.common import (
        Figure,
        machine,
        median_spread,
        percentile,
        replace_section,
        scratch_database,
        today,
        write_summary,
    )

    redis_proc, redis_url = start_private_redis()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-outbox-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with scratch_database(f"bench_outbox_{os.getpid()}") as db_url:
            _configure(db_url, redis_url)
            from app.migrate import upgrade

            upgrade()
            rates = relay_vs_raw(args.events, args.repeat)
            latencies = end_to_end(args.messages, args.rate, redis_url, db_url, tmp)
            from app.db import reset_engine

            reset_engine()
    finally:
        redis_proc.terminate()

    raw_m, raw_lo, raw_hi = median_spread(rates["raw"])
    rel_m, rel_lo, rel_hi = median_spread(rates["relay"])
    ratios = [r / b for r, b in zip(rates["relay"], rates["raw"])]
    ratio_m, ratio_lo, ratio_hi = median_spread(ratios)
    table = "\n".join([
        f"Measured {today()} by `python -m bench.outbox{' --quick' if args.quick else ''}` on {machine()}.",
        "",
        "| measurement | median | spread (min–max) | target |",
        "|---|---|---|---|",
        f"| baseline: raw `send_task` publish, {args.events} messages | {raw_m:,.0f} msg/s | {raw_lo:,.0f}–{raw_hi:,.0f} | |",
        f"| relay: PostgreSQL → broker, {args.events} events | {rel_m:,.0f} events/s | {rel_lo:,.0f}–{rel_hi:,.0f} | |",
        f"| relay ÷ raw (paired, {args.repeat} runs) | **{ratio_m:.2f}×** | {ratio_lo:.2f}–{ratio_hi:.2f} | ≥ 0.5× |",
        f"| end-to-end API 202 → channel receipt, p50 ({args.messages} msgs at {args.rate:g}/s) | {percentile(latencies, 50):.0f} ms | | |",
        f"| end-to-end API 202 → channel receipt, p99 | {percentile(latencies, 99):.0f} ms | max {max(latencies):.0f} ms | |",
    ])
    print(table)
    if args.write_docs:
        replace_section(str(ROOT / "docs" / "outbox.md"), "bench-outbox", table)
    write_summary(args.summary, [
        Figure("Outbox relay: PostgreSQL → broker", f"{rel_m:,.0f} events/s ({rel_lo:,.0f}–{rel_hi:,.0f})",
               f"raw `send_task` publish: {raw_m:,.0f} msg/s", f"{ratio_m:.2f}× ({ratio_lo:.2f}–{ratio_hi:.2f})",
               "≥ 0.5× raw", ratio_m >= 0.5, f"{args.events} events × {args.repeat} paired runs"),
        Figure("Outbox end to end: API 202 → channel receipt",
               f"p50 {percentile(latencies, 50):.0f} ms, p99 {percentile(latencies, 99):.0f} ms", "", "", "", None,
               f"{args.messages} messages at {args.rate:g}/s"),
    ])


if __name__ == "__main__":
    main()
