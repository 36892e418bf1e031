"""Ledger queries at 1,000,000 jobs on PostgreSQL: p95 of the console's queries.

A scratch PostgreSQL database migrated to head is seeded, by ``INSERT ... SELECT
generate_series``, with 1,000,000 jobs spread over the eight families of the
``job_ledger`` view (OCR uploads, scans, voice jobs, messages, files, campaigns, calls,
outbox events), 100 clients and 90 days, in each family's real statuses (about 5 %
failed). Each query of the console is then timed many times with random parameters
(family, state, client, a day's window, keyset pages 20 deep, an exact id, the capped
dry-run count of a bulk action): p50 and p95 per query and over all of them.
Target: p95 < 100 ms. The baseline is the same first page read with an OFFSET of 1,000
rows (what a page 20 deep costs without keyset pagination).

    python -m bench.ledger [--quick] [--jobs 1000000] [--repeat 40] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

#: family -> (share of the jobs, INSERT ... SELECT over generate_series(1, :n) AS g)
SEED: dict[str, tuple[float, str]] = {
    "ocr": (0.2, "INSERT INTO uploads (id, filename, storage_key, status, pages_done, attempts, created_at, updated_at,"
                 " client_id, error) SELECT md5('u'||g), 'card.png', 'k', (ARRAY['ready','ready','ready','ready','ready',"
                 "'ready','ready','ready','ready','ready','ready','ready','ready','ready','ready','ready','ready','queued',"
                 "'processing','failed'])[1 + g % 20], 1, 1, {at}, {at}, {client}, CASE WHEN g % 20 = 19 THEN "
                 "'ocr failed: page ' || g END FROM generate_series(1, :n) g"),
    "scans": (0.15, "INSERT INTO scan_jobs (id, url, state, version, attempts, created_at, updated_at, client_id, error)"
                    " SELECT md5('s'||g), 'https://example.com/' || g, (ARRAY['COMPLETED','COMPLETED','COMPLETED',"
                    "'COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED',"
                    "'COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED','COMPLETED','QUEUED','FETCHING',"
                    "'FAILED'])[1 + g % 20], 1, 1, {at}, {at}, {client}, CASE WHEN g % 20 = 19 THEN 'timeout ' || g END"
                    " FROM generate_series(1, :n) g"),
    "voice": (0.15, "INSERT INTO voice_tasks (id, metadata, target, status, attempts, version, created_at, updated_at,"
                    " client_id, error) SELECT md5('v'||g), '{{}}', 'celery', (ARRAY['completed','completed','completed',"
                    "'completed','completed','completed','completed','completed','completed','completed','completed',"
                    "'completed','completed','completed','completed','completed','completed','pending','processing',"
                    "'failed'])[1 + g % 20], 1, 1, {at}, {at}, {client}, CASE WHEN g % 20 = 19 THEN 'audio_fetch_failed'"
                    " END FROM generate_series(1, :n) g"),
    "messages": (0.2, "INSERT INTO messages (id, conversation_id, channel, recipient, content, status, attempts,"
                      " created_at, updated_at, client_id, last_error) SELECT md5('m'||g), 'c', 'whatsapp', '+34600',"
                      " 'hi', (ARRAY['delivered','delivered','delivered','delivered','delivered','delivered',"
                      "'delivered','delivered','delivered','delivered','delivered','delivered','delivered','delivered',"
                      "'delivered','delivered','delivered','queued','sent','failed'])[1 + g % 20], 1, {at}, {at},"
                      " {client}, CASE WHEN g % 20 = 19 THEN 'whatsapp: 400' END FROM generate_series(1, :n) g"),
    "files": (0.05, "INSERT INTO files (id, filename, content_type, size, chunk_size, total_chunks, status,"
                    " merge_attempts, merge_parts_done, last_activity_at, created_at, updated_at, client_id)"
                    " SELECT md5('f'||g), 'a.bin', 'application/octet-stream', 1, 1, 1, (ARRAY['COMPLETED',"
                    "'COMPLETED','COMPLETED','FAILED'])[1 + g % 4], 1, 1, {at}, {at}, {at}, {client}"
                    " FROM generate_series(1, :n) g"),
    "campaigns": (0.025, "INSERT INTO campaigns (tenant_id, channel, subject, template, scheduled_at, status, total,"
                         " sent, failed, skipped, batches, created_at, public_id, client_id) SELECT 1, 'email', '', 'x',"
                         " {at}, (ARRAY['sent','sent','sent','failed'])[1 + g % 4], 0, 0, 0, 0, 1, {at},"
                         " md5('c'||g), {client} FROM generate_series(1, :n) g"),
    "calls": (0.075, "INSERT INTO call_requests (tenant_id, lead_id, scheduled_for, status, attempts, created_at,"
                     " updated_at, public_id, client_id) SELECT 1, 1, {at}, (ARRAY['done','done','done','queued',"
                     "'failed'])[1 + g % 5], 1, {at}, {at}, md5('k'||g), {client} FROM generate_series(1, :n) g"),
    "outbox": (0.15, "INSERT INTO outbox_events (aggregate_type, aggregate_id, event_type, task_name, payload,"
                     " created_at, attempts, next_attempt_at, dead, published_at, consumed_at) SELECT 'message',"
                     " md5('m'||g), 'message.submitted', 'app.tasks.messages.route', json_build_object('_trace',"
                     " json_build_object('traceparent', '00-' || md5('t'||g) || '-0000000000000001-01')), {at}, 1,"
                     " {at}, g % 50 = 0, {at}, CASE WHEN g % 50 <> 0 THEN {at} END FROM generate_series(1, :n) g"),
}
AT = "now() - (random() * interval '90 days')"
CLIENT = "1 + (g % 100)"


def seed(conn: Any, jobs: int) -> dict[str, int]:
    from sqlalchemy import text

    conn.execute(text("INSERT INTO clients (id, name, created_at) SELECT g, 'client-' || g, now() "
                      "FROM generate_series(1, 100) g"))
    conn.execute(text("INSERT INTO tenants (id, name, plan, status, timezone, business_hours, created_at, public_id)"
                      " VALUES (1, 't', 'trial', 'active', 'UTC', '{}', now(), md5('tenant'))"))
    conn.execute(text("INSERT INTO leads (id, tenant_id, name, reminders_sent, created_at, public_id)"
                      " VALUES (1, 1, 'l', 0, now(), md5('lead'))"))
    counts = {}
    for family, (share, sql) in SEED.items():
        n = int(jobs * share)
        conn.execute(text(sql.format(at=AT, client=CLIENT)), {"n": n})
        counts[family] = n
    for table in ("uploads", "scan_jobs", "voice_tasks", "messages", "files", "campaigns", "call_requests",
                  "outbox_events"):
        conn.execute(text(f"ANALYZE {table}"))
    return counts


def queries(rng: random.Random) -> dict[str, Callable[[Any], Any]]:
    """Each console query, as a call with fresh random parameters on a session."""
    from app.models.base import utcnow
    from app.services.console import ledger

    def page(params: dict[str, Any], depth: int = 1) -> Callable[[Any], Any]:
        def run(session: Any) -> Any:
            f, cursor = ledger.parse_filter(params() if callable(params) else params), None
            for _ in range(depth - 1):  # the cursor of the page before (not timed)
                cursor = ledger.list_jobs(session, f, limit=50, after=cursor).next_cursor
            return (lambda: ledger.list_jobs(session, f, limit=50, after=cursor)) if depth > 1 else \
                ledger.list_jobs(session, f, limit=50)
        return run  # type: ignore[return-value]

    def day() -> dict[str, Any]:
        start = utcnow() - timedelta(days=rng.uniform(1, 89))
        return {"since": start.isoformat(), "until": (start + timedelta(days=1)).isoformat()}

    return {
        "first page, no filter": page({}),
        "failed messages": page({"family": "messages", "state": "failed"}),
        "failed, every family": page({"state": "failed"}),
        "one client": page(lambda: {"client_id": rng.randint(1, 100)}),  # type: ignore[dict-item]
        "one client's failed scans": page(lambda: {"client_id": rng.randint(1, 100), "family": "scans",  # type: ignore[dict-item]
                                                   "state": "failed"}),
        "one day": page(day),  # type: ignore[arg-type]
        "keyset page 20": page({}, depth=20),
        "error contains, one client": page(lambda: {"client_id": rng.randint(1, 100), "error": "timeout"}),  # type: ignore[dict-item]
        "exact id": page(lambda: {"q": __import__("hashlib").md5(f"m{rng.randint(1, 10000)}".encode()).hexdigest()}),  # type: ignore[dict-item]
        "dead outbox events": page({"family": "outbox", "state": "dead"}),
        "dry-run count (cap 1000)": lambda s: dry_run(s, rng.randint(1, 100)),
    }


def dry_run(session: Any, client_id: int) -> Any:
    """A bulk replay's dry run; counting stops past the cap (over it, the plan is refused)."""
    from app.services.console import actions, ledger

    try:
        return actions.plan(session, "replay", ledger.parse_filter(
            {"family": "messages", "state": "failed", "client_id": client_id}), cap=1000)
    except actions.BulkRefused:
        return None


def offset_baseline(session: Any) -> Any:
    """The same newest-first page 20 deep, by OFFSET instead of keyset."""
    from sqlalchemy import select

    from app.models.console import job_ledger

    c = job_ledger.c
    return session.execute(select(job_ledger).order_by(c.created_at.desc(), c.id.desc()).offset(950).limit(50)).all()


def measure(repeat: int) -> tuple[dict[str, list[float]], list[float]]:
    from app.db import session_scope

    rng = random.Random(7)
    timings: dict[str, list[float]] = {}
    baseline: list[float] = []
    named = queries(rng)
    for _ in range(repeat):
        for name, run in named.items():
            with session_scope() as session:
                t0 = time.perf_counter()
                deferred = run(session)
                if callable(deferred):  # a deep page: time only the page itself
                    t0 = time.perf_counter()
                    deferred()
                timings.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        with session_scope() as session:
            t0 = time.perf_counter()
            offset_baseline(session)
            baseline.append((time.perf_counter() - t0) * 1000)
    return timings, baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 jobs, 10 rounds (smoke run)")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat = 100_000, 10
    from bench.common import Figure, machine, percentile, scratch_database, today, write_summary

    with scratch_database(f"bench_ledger_{os.getpid()}") as db_url:
        os.environ.update({"DATABASE_URL": db_url})
        from app.db import get_engine
        from app.migrate import upgrade

        upgrade()
        t0 = time.monotonic()
        with get_engine().begin() as conn:
            counts = seed(conn, args.jobs)
        seeded = time.monotonic() - t0
        timings, baseline = measure(args.repeat)
        get_engine().dispose()
    every = [t for values in timings.values() for t in values]
    p95 = percentile(every, 95)
    print(f"Measured {today()} on {machine()}: {sum(counts.values()):,} jobs seeded in {seeded:.0f} s "
          f"({', '.join(f'{k} {v:,}' for k, v in counts.items())}); {args.repeat} rounds.\n")
    print("| query | p50 ms | p95 ms | max ms |\n|---|---|---|---|")
    for name, values in timings.items():
        print(f"| {name} | {percentile(values, 50):.1f} | {percentile(values, 95):.1f} | {max(values):.1f} |")
    print(f"| **all queries** | {percentile(every, 50):.1f} | **{p95:.1f}** | {max(every):.1f} |")
    print(f"| baseline: page 20 by OFFSET | {percentile(baseline, 50):.1f} | {percentile(baseline, 95):.1f} | "
          f"{max(baseline):.1f} |")
    write_summary(args.summary, [Figure(
        f"ledger query p95 at {sum(counts.values()):,} jobs (PostgreSQL)", f"{p95:.1f} ms",
        f"{percentile(baseline, 95):.1f} ms (page 20 by OFFSET)", "", "< 100 ms", p95 < 100)])


if __name__ == "__main__":
    main()
