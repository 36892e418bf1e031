"""Scheduled jobs end to end: two real beat processes (RedBeat), a real worker, real SMTP and telephony.

- Two beats at once, short slots: each job runs once per slot; the standby takes over
  when the active beat is killed, still without a double run.
- A 250-recipient campaign through a real SMTP server (aiosmtpd): every address once,
  three batches spaced by the delay; a batch killed mid-send and redelivered resends nobody.
- The call scheduler through the worker, the time passed in: dial at Friday 17:59 in the
  tenant's timezone, wait at 18:01.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.services import wait_for

ROOT = Path(__file__).resolve().parents[2]
UTC = UTC
JOBS = ("campaign-scheduler", "lead-reminder-scheduler", "call-scheduler", "trial-expiration", "call-cleanup")
SLOT = 2.0
BATCH_DELAY = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    """aiosmtpd handler: records every accepted (recipient, time); refuses bounce@ addresses with 550."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[tuple[str, float]] = []
        self.delay = 0.0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if address.startswith("bounce"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.delay:
            time.sleep(self.delay)  # a slow relay, so a batch takes long enough to be killed mid-way
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.received.append((rcpt, time.time()))
        return "250 Message accepted"


@pytest.fixture(scope="module")
def smtp_server():  # type: ignore[no-untyped-def]
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield inbox, port
    controller.stop()


@pytest.fixture(scope="module")
def telephony():  # type: ignore[no-untyped-def]
    from app.dev.telephony import serve

    port = free_port()
    server = serve(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, port
    server.shutdown()
    server.server_close()


def _runs(job: str, since: datetime):  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.models.jobs import JobRun

    with session_scope() as session:
        return session.execute(select(JobRun.started_at, JobRun.outcome).where(
            JobRun.job == job, JobRun.started_at >= since).order_by(JobRun.started_at)).all()


def _start_beat(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app", "beat", "--loglevel", "INFO", "-s", str(log) + ".schedule"],
        cwd=ROOT, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _sends(log: Path) -> dict[str, list[datetime]]:
    """When a beat sent each job, from its log ("Scheduler: Sending due task <job> (...)")."""
    sends: dict[str, list[datetime]] = defaultdict(list)
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        match = re.match(r"Scheduler: Sending due task (\S+) ", str(record.get("message", "")))
        if match:
            sends[match[1]].append(datetime.fromisoformat(record["timestamp"]))
    return sends


def test_two_beats_run_each_job_once_per_slot_and_fail_over(start_worker, redis_client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # What is checked where: the beats' own logs say when each job was sent, and by whom
    # (exact, whatever the load); the job_runs rows say what the worker did with it. A
    # worker that falls behind starts runs late, and a send older than its slot expires
    # unrun; so run times are not compared with slots, only counted against sends.
    env_over = {
        "CAMPAIGN_INTERVAL": str(SLOT), "LEAD_REMINDER_INTERVAL": str(SLOT), "CALL_SCHEDULER_INTERVAL": str(SLOT),
        "TRIAL_EXPIRATION_INTERVAL": str(SLOT), "CALL_CLEANUP_INTERVAL": str(SLOT),
        "BEAT_LOCK_TIMEOUT": "4", "BEAT_MAX_LOOP_INTERVAL": "0.5",
    }
    for key in redis_client.scan_iter("redbeat:*"):
        redis_client.delete(key)
    worker = start_worker(["schedules"], concurrency=2, extra_env=env_over).wait_ready()
    env = worker.env
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    beats: list[subprocess.Popen[bytes]] = []
    t0 = datetime.now(UTC)
    try:
        beats.append(_start_beat(env, logs[0]))
        wait_for(lambda: b"Acquired lock" in logs[0].read_bytes(), timeout=30, message="beat A active")
        beats.append(_start_beat(env, logs[1]))
        time.sleep(10 * SLOT + 4)  # margin for a loaded machine: at least 10 slots must fit
        sends_a = _sends(logs[0])
        for job in JOBS:
            assert len(sends_a[job]) >= 10, (job, sends_a[job])
        assert b"Acquired lock" not in logs[1].read_bytes() and not _sends(logs[1])  # B is standing by

        # The active beat dies without releasing its lock; B takes over once it expires.
        killed_at = time.monotonic()
        beats[0].send_signal(signal.SIGKILL)
        beats[0].wait(10)
        wait_for(lambda: b"Acquired lock" in logs[1].read_bytes(), timeout=15, message="beat B takes over")
        takeover = time.monotonic() - killed_at
        assert takeover <= 4 + 5, takeover  # the lock timeout plus a few loops (and a loaded machine)
        time.sleep(5 * SLOT)
    finally:
        for proc in beats:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
    sends_a, sends_b = _sends(logs[0]), _sends(logs[1])  # complete: both beats have stopped

    for job in JOBS:
        assert len(sends_b[job]) >= 2, (job, sends_b[job])  # B carried on with every job
        assert max(sends_a[job]) < min(sends_b[job])  # never both at once
        sent = sorted(sends_a[job] + sends_b[job])
        gaps = [(b - a).total_seconds() for a, b in zip(sent, sent[1:])]
        # Once per slot: a beat's loop is 0.5 s, so a slot's send can come up to half a
        # second late and the next on time; two beats sending one slot would be milliseconds apart.
        assert min(gaps) >= SLOT - 0.5 - 0.2, (job, gaps)
        # No slot lost but around the takeover (B sends what fell due at once).
        assert max(gaps) <= takeover + SLOT + 2, (job, gaps, takeover)

    # The worker ran what was sent, each once, and every run succeeded (a run that found the
    # previous one of its job still going is skipped and counted, never run twice).
    def settled() -> bool:
        return all(r.outcome != "running" for job in JOBS for r in _runs(job, t0))

    wait_for(settled, timeout=30, message="the last runs finished")
    for job in JOBS:
        runs = _runs(job, t0)
        outcomes = Counter(r.outcome for r in runs)
        n_sent = len(sends_a[job]) + len(sends_b[job])
        assert set(outcomes) <= {"ok", "skipped"}, (job, runs)
        assert len(runs) <= n_sent, (job, len(runs), n_sent)  # no run without its send
        assert outcomes["ok"] >= 0.75 * n_sent and outcomes["ok"] >= 10, (job, outcomes, n_sent)

    # The status API reports the same: last run, next run, totals.
    from app.api import create_app
    from app.db import session_scope
    from app.services.auth import create_api_key
    from app.settings import get_settings

    client = create_app(get_settings()).test_client()
    with session_scope() as session:
        _, token = create_api_key(session, "schedules-status")
    # The jobs serve every client: their status is the operators' (admin credential).
    assert client.get("/api/schedules", headers={"Authorization": f"Bearer {token}"}).status_code in (401, 403)
    admin = get_settings().admin_token.get_secret_value()
    body = client.get("/api/schedules", headers={"Authorization": f"Bearer {admin}"}).get_json()
    by_job = {j["job"]: j for j in body["jobs"]}
    assert set(by_job) == set(JOBS)
    for job in JOBS:
        runs = _runs(job, datetime(2000, 1, 1, tzinfo=UTC))  # all of them: the totals are all-time
        assert by_job[job]["last_run"]["outcome"] == runs[-1].outcome
        outcomes = Counter(r.outcome for r in runs)
        assert {k: by_job[job]["totals"][k] for k in ("ok", "skipped", "failed")} == \
            {k: outcomes[k] for k in ("ok", "skipped", "failed")}, (job, by_job[job]["totals"], outcomes)
        assert by_job[job]["next_run"] is not None


def _campaign(api, tenant_id: int, recipients: list[str]) -> int:  # type: ignore[no-untyped-def]
    res = api.post("/api/campaigns", json={"tenant_id": tenant_id, "channel": "email", "subject": "News",
                                           "template": "Hello from the campaign", "recipients": recipients})
    assert res.status_code == 201, res.get_json()
    return res.get_json()["id"]


def test_campaign_of_250_through_real_smtp(api, start_worker, smtp_server, unique) -> None:  # type: ignore[no-untyped-def]
    from app.tasks.schedules import dispatch_campaigns

    inbox, port = smtp_server
    env = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "CAMPAIGN_BATCH_DELAY": str(BATCH_DELAY),
           "CAMPAIGN_BATCH_SIZE": "100"}
    worker = start_worker(["schedules"], concurrency=1, extra_env=env).wait_ready()
    tenant = api.post("/api/tenants", json={"name": "acme", "plan": "paid"}).get_json()["id"]

    good = [f"r{i}-{unique}@example.com" for i in range(250)]
    cid = _campaign(api, tenant, good + [f"bounce-{unique}@example.com", "not-an-address"])
    dispatch_campaigns.delay()
    wait_for(lambda: api.get(f"/api/campaigns/{cid}").get_json()["status"] in ("sent", "failed"), timeout=60,
             message="campaign sent")
    out = api.get(f"/api/campaigns/{cid}").get_json()
    mine = [(a, t) for a, t in inbox.received if unique in a and a.startswith("r")]
    counts = Counter(a for a, _ in mine)
    assert set(counts) == set(good) and set(counts.values()) == {1}  # 250 received, each once
    assert out["status"] == "sent" and out["batches"] == 3
    assert (out["total"], out["sent"], out["failed"], out["skipped"]) == (252, 250, 1, 1)
    reasons = {r["address"]: r["reason"] for r in out["skipped_recipients"]}
    assert "550" in reasons[f"bounce-{unique}@example.com"]  # one refused recipient did not stop the campaign
    assert "invalid email address" in reasons["not-an-address"]

    from app.db import session_scope
    from app.models.schedules import CampaignRecipient

    with session_scope() as session:
        from app.models.schedules import Campaign

        internal = session.scalars(select(Campaign.id).where(Campaign.public_id == cid)).one()
        batch_of = dict(session.execute(select(CampaignRecipient.address, CampaignRecipient.batch).where(
            CampaignRecipient.campaign_id == internal)).all())
    firsts: dict[int, float] = defaultdict(lambda: float("inf"))
    for address, at in mine:
        firsts[batch_of[address]] = min(firsts[batch_of[address]], at)
    assert sorted(firsts) == [0, 1, 2]
    assert firsts[1] - firsts[0] >= BATCH_DELAY * 0.9 and firsts[2] - firsts[1] >= BATCH_DELAY * 0.9, dict(firsts)

    # A second campaign; its first batch's worker process is killed mid-send and the task is redelivered.
    inbox.delay = 0.02
    second = [f"k{i}-{unique}@example.com" for i in range(150)]
    cid2 = _campaign(api, tenant, second)
    dispatch_campaigns.delay()
    wait_for(lambda: sum(1 for a, _ in inbox.received if a.startswith("k") and unique in a) >= 30, timeout=30,
             message="first batch under way")
    children = worker.child_pids()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: api.get(f"/api/campaigns/{cid2}").get_json()["status"] in ("sent", "failed"), timeout=60,
             message="second campaign finished")
    inbox.delay = 0.0
    out2 = api.get(f"/api/campaigns/{cid2}").get_json()
    got = Counter(a for a, _ in inbox.received if a.startswith("k") and unique in a)
    assert max(got.values()) == 1  # nobody got it twice despite the redelivery
    # The rest of the killed batch was sent by the redelivered task (the batch had 100, the kill came after 30).
    assert len(got) >= 149
    interrupted = {r["address"] for r in out2["skipped_recipients"] if "interrupted" in (r["reason"] or "")}
    # Everyone was either sent exactly once, or (the one in flight at the kill) failed as interrupted.
    assert set(got) | interrupted == set(second) and len(interrupted) <= 1
    assert out2["sent"] + out2["failed"] == 150 and out2["status"] == "sent"


def test_call_scheduler_through_the_worker_with_the_time_passed_in(api, start_worker, telephony) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.models.schedules import CallRequest
    from app.tasks.schedules import schedule_calls

    server, port = telephony
    start_worker(["schedules"], concurrency=1, extra_env={"TELEPHONY_URL": f"http://127.0.0.1:{port}"}).wait_ready()
    hours = {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}
    tenant = api.post("/api/tenants", json={"name": "ny", "plan": "paid", "timezone": "America/New_York",
                                            "business_hours": hours}).get_json()["id"]
    lead = api.post("/api/leads", json={"tenant_id": tenant, "name": "Bob", "phone": "+15551234567"}).get_json()["id"]
    call = api.post("/api/calls", json={"tenant_id": tenant, "lead_id": lead,
                                        "scheduled_for": "2025-03-07T20:00:00Z"}).get_json()["id"]
    # Friday 18:01 in New York (EST): closed, the call waits.
    assert schedule_calls.delay(now="2025-03-07T23:01:00+00:00").get(timeout=30)["dialled"] == 0
    time.sleep(1)
    assert api.get(f"/api/calls/{call}").get_json()["status"] == "queued"
    # Friday 17:59: open, dialled through the telephony adapter.
    assert schedule_calls.delay(now="2025-03-07T22:59:00+00:00").get(timeout=30)["dialled"] >= 1
    wait_for(lambda: api.get(f"/api/calls/{call}").get_json()["status"] == "done", timeout=30, message="dialled")
    out = api.get(f"/api/calls/{call}").get_json()
    import json
    import urllib.request

    with session_scope() as session:
        row = session.scalars(select(CallRequest).where(CallRequest.public_id == call)).one()
        assert row.attempts == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_calls", timeout=5) as res:
        calls = [c for c in json.load(res)["items"] if c["body"]["call_request_id"] == row.id]
    assert len(calls) == 1 and calls[0]["id"] == out["provider_call_id"] and calls[0]["body"]["to"] == "+15551234567"
