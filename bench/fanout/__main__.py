"""Bulk fan-out: a campaign of 10,000 recipients enqueued by the project's real path
against naive one-by-one ``apply_async``.

1. **Project**: ``app.tasks.schedules.dispatch_campaigns`` run in this process (its
   lock, its job-run record, ``start_due_campaigns`` assigning recipients to batches,
   and ``publish_all`` sending one ``send_campaign_batch`` message per batch of
   ``CAMPAIGN_BATCH_SIZE`` on one producer). Timed from the call to its return.
2. **Baseline**: the same recipients read from the database and one
   ``send_campaign_batch.apply_async`` per recipient (the naive fan-out: a task each).

Rate = recipients enqueued per second. Rounds alternate, each on a fresh campaign; the
messages are counted on the broker after each round. Target: project ≥ 5× baseline.
No worker runs: this measures enqueueing only. A private redis-server and a scratch
PostgreSQL database.

    python -m bench.fanout [--quick] [--recipients 10000] [--repeat 3] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta

QUEUE = "schedules"


def new_campaign(tenant_id: int, recipients: int, tag: str) -> int:
    from app.db import session_scope
    from app.models.base import utcnow
    from app.services import schedules as svc

    with session_scope() as session:
        campaign = svc.create_campaign(
            session, tenant_id=tenant_id, channel="email", subject="bench", template="hello",
            scheduled_at=utcnow() - timedelta(seconds=1),
            recipients=[f"r{i}.{tag}@example.com" for i in range(recipients)])
        return campaign.id


def project_round(tenant_id: int, recipients: int, tag: str) -> float:
    """Recipients/s through ``dispatch_campaigns`` (the beat task's real body)."""
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.locks import redis_client
    from app.models.schedules import CampaignRecipient
    from app.tasks.schedules import dispatch_campaigns

    r = redis_client()
    r.delete(QUEUE)
    campaign_id = new_campaign(tenant_id, recipients, tag)
    start = time.perf_counter()
    outcome = dispatch_campaigns()
    elapsed = time.perf_counter() - start
    assert not outcome["skipped"], outcome
    with session_scope() as session:
        batched = session.scalar(select(func.count()).select_from(CampaignRecipient).where(
            CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.batch.is_not(None)))
    assert batched == recipients, f"{batched}/{recipients} recipients in a batch"
    assert r.llen(QUEUE) == outcome["batches"], (r.llen(QUEUE), outcome)
    r.delete(QUEUE)
    return recipients / elapsed


def naive_round(tenant_id: int, recipients: int, tag: str) -> float:
    """Recipients/s with one ``apply_async`` per recipient."""
    from sqlalchemy import select

    from app.db import session_scope
    from app.locks import redis_client
    from app.models.schedules import CampaignRecipient
    from app.tasks.schedules import send_campaign_batch

    r = redis_client()
    r.delete(QUEUE)
    campaign_id = new_campaign(tenant_id, recipients, tag)
    start = time.perf_counter()
    with session_scope() as session:
        ids = session.scalars(select(CampaignRecipient.id).where(
            CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.status == "pending")).all()
    for rid in ids:
        send_campaign_batch.apply_async((campaign_id, rid))
    elapsed = time.perf_counter() - start
    assert r.llen(QUEUE) == recipients
    r.delete(QUEUE)
    return recipients / elapsed


def main() -> None:
    """Measure, print the table, write the summary for ``python -m bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, for a smoke run")
    parser.add_argument("--recipients", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.recipients, args.repeat = 3000, 2

    from app.devserver import start_private_redis
    from bench.common import Figure, machine, median_spread, paired, scratch_database, today, verdict, write_summary

    redis_proc, redis_url = start_private_redis()
    rates: dict[str, list[float]] = {"project": [], "naive": []}
    try:
        with scratch_database(f"bench_fanout_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING"})
            from app.migrate import upgrade

            upgrade()
            from app.celery_app import celery_app
            from app.db import reset_engine, session_scope
            from app.services import schedules as svc
            from app.settings import get_settings

            celery_app.loader.import_default_modules()
            batch_size = get_settings().campaign_batch_size
            with session_scope() as session:
                tenant_id = svc.create_tenant(session, name="bench", plan="paid", trial_ends_at=None,
                                              timezone="UTC", business_hours={}).id
            for r in range(args.repeat):
                rates["naive"].append(naive_round(tenant_id, args.recipients, f"n{r}"))
                rates["project"].append(project_round(tenant_id, args.recipients, f"p{r}"))
                print(f"naive {rates['naive'][-1]:,.0f}/s project {rates['project'][-1]:,.0f}/s", flush=True)
            reset_engine()
    finally:
        redis_proc.terminate()

    n_m, n_lo, n_hi = median_spread(rates["naive"])
    p_m, p_lo, p_hi = median_spread(rates["project"])
    r_m, r_lo, r_hi = paired(rates["project"], rates["naive"])
    print("\n".join([
        f"Measured {today()} by `python -m bench.fanout{' --quick' if args.quick else ''}` on {machine()}; "
        f"{args.recipients:,} recipients, batches of {batch_size}, {args.repeat} alternating rounds.",
        "",
        "| measurement | median | spread (min–max) | target |",
        "|---|---|---|---|",
        f"| naive: one `apply_async` per recipient | {n_m:,.0f} recipients/s | {n_lo:,.0f}–{n_hi:,.0f} | |",
        f"| project: `dispatch_campaigns` (batches, one producer) | {p_m:,.0f} recipients/s | {p_lo:,.0f}–{p_hi:,.0f} | |",
        f"| project ÷ naive (paired) | **{r_m:.1f}×** | {r_lo:.1f}–{r_hi:.1f} | ≥ 5× ({verdict(r_m >= 5)}) |",
    ]))
    write_summary(args.summary, [Figure(
        f"Bulk fan-out: campaign of {args.recipients:,} recipients enqueued",
        f"{p_m:,.0f} recipients/s ({p_lo:,.0f}–{p_hi:,.0f})",
        f"naive one-by-one `apply_async`: {n_m:,.0f} recipients/s", f"{r_m:.1f}× ({r_lo:.1f}–{r_hi:.1f})",
        "≥ 5× naive", r_m >= 5, f"batches of {batch_size}, {args.repeat} paired rounds")])


if __name__ == "__main__":
    main()
