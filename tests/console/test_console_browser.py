"""The operator console in headless Chromium (Selenium with the system browser and driver,
as tests/browser does), against the real API, real workers, a real beat, PostgreSQL and
Redis: sign in, filter the ledger, open a failed message, bulk-replay dead letters after
a dry run and see each delivered once; pause a queue and see a job wait, resume it and
see it done; pause a schedule and see beat not send it; a viewer's action is 403; every
action is in the audit log.

``CONSOLE_SCREENSHOTS=docs/console`` writes the screenshots of each page there (the
ones docs/console.md shows); otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.browser.test_workers_admin import browser  # noqa: F401  (the Chromium fixture)
from tests.fixtures.services import wait_for
from tests.voice_support import ApiServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(pg_database, redis_client) -> Iterator[ApiServer]:  # type: ignore[no-untyped-def]
    srv = ApiServer().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    target = target if target.is_absolute() else ROOT / target
    target.mkdir(parents=True, exist_ok=True)
    return target


def operator(role: str) -> tuple[str, str]:
    from app.db import session_scope
    from app.services.console.operators import create_operator

    name, password = f"{role}-{secrets.token_hex(3)}", secrets.token_urlsafe(16)
    with session_scope() as session:
        create_operator(session, name, role, password)
    return name, password


def sign_in(d: Any, server: ApiServer, role: str = "operator") -> str:
    from selenium.webdriver.common.by import By

    name, password = operator(role)
    d.delete_all_cookies()
    d.get(f"{server.url}/console")
    d.find_element(By.ID, "name").send_keys(name)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login").click()
    assert name in d.find_element(By.ID, "who").text
    return name


def audit_actions(d: Any, server: ApiServer, actor: str) -> list[tuple[str, str, str]]:
    from selenium.webdriver.common.by import By

    d.get(f"{server.url}/console/audit?actor={actor}")
    rows = d.find_elements(By.CSS_SELECTOR, "#audit tbody tr")
    return [tuple(c.text for c in r.find_elements(By.TAG_NAME, "td"))[2:6] for r in rows]  # type: ignore[misc]


def _submit_failing_messages(server: ApiServer, channel_server: Any, n: int) -> list[str]:
    from app.db import session_scope
    from app.models.messages import Message

    channel_server.configure(script=[400] * n)
    headers = server.api_key()
    refs = [f"console-{secrets.token_hex(4)}" for _ in range(n)]
    for ref in refs:
        resp = requests.post(f"{server.url}/api/messages", headers=headers, timeout=10,
                             json={"id": ref, "conversation_id": "c", "channel": "whatsapp", "recipient": "+1",
                                   "content": "x"})
        assert resp.status_code in (200, 201, 202), resp.text

    def internal_ids() -> list[str] | None:
        with session_scope() as session:
            rows = session.query(Message.id, Message.status).filter(Message.client_ref.in_(refs)).all()
        return [r[0] for r in rows] if len(rows) == n and all(r[1] == "failed" for r in rows) else None

    return wait_for(internal_ids, timeout=60, message="messages dead-lettered")  # type: ignore[return-value]


def test_sign_in_filter_detail_and_bulk_replay_delivered_once(browser, server, start_worker, channel_server,
                                                              shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    env = channel_server.env | {"MESSAGE_RETRY_BACKOFF": "0.2", "MESSAGE_RETRY_BACKOFF_MAX": "2"}
    relay = start_worker(["outbox"], name="relay", pool="threads", concurrency=2, extra_env=env)
    start_worker(["messages"], name="router", concurrency=1, extra_env=env).wait_ready()
    relay.wait_ready()
    mids = _submit_failing_messages(server, channel_server, 2)
    d = browser
    name = sign_in(d, server)
    d.save_screenshot(str(shots / "overview.png"))

    d.get(f"{server.url}/console/jobs")
    Select(d.find_element(By.ID, "f-family")).select_by_visible_text("messages")
    Select(d.find_element(By.ID, "f-state")).select_by_visible_text("failed")
    d.find_element(By.ID, "apply").click()
    listed = [r.get_attribute("data-id") for r in d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-id]")]
    assert set(mids) <= set(listed)
    assert all(r.text == "failed" for r in d.find_elements(By.CSS_SELECTOR, "#jobs td.state"))
    d.save_screenshot(str(shots / "jobs.png"))

    d.find_element(By.CSS_SELECTOR, f"#jobs tr[data-id='{mids[0]}'] a.job-link").click()
    assert "HTTP 400" in d.find_element(By.ID, "job-error").text
    assert "failed" in d.find_element(By.ID, "job-state").text
    assert "failed" in d.find_element(By.ID, "timeline").text and "dead_letters" in d.find_element(By.ID, "result").text
    d.save_screenshot(str(shots / "job-detail.png"))

    # Bulk replay: the failed messages since these two were made (exactly these two).
    d.get(f"{server.url}/console/jobs?family=messages&state=failed&since="
          + _created_at_of(mids).replace("+", "%2B"))
    d.find_element(By.ID, "bulk-replay").click()
    assert "replay 2 failed messages" in d.find_element(By.ID, "dry-run").text
    d.save_screenshot(str(shots / "bulk-dry-run.png"))
    d.find_element(By.ID, "confirm").click()
    assert "2 done" in d.find_element(By.ID, "bulk-done").text

    relay.client.send_task("app.tasks.outbox.relay")  # what beat's relay tick would do
    wait_for(lambda: _statuses(mids) == {"delivered"}, timeout=60, message="replayed messages delivered")
    time.sleep(1.0)
    sent = [i["body"].get("biz_opaque_callback_data") for i in channel_server.received()]
    assert sorted(sent) == sorted(mids)  # each delivered exactly once
    action, target, _, count = audit_actions(d, server, name)[0]
    assert (action, count) == ("bulk.replay", "2") and target.startswith("replay 2 failed messages since ")
    d.save_screenshot(str(shots / "audit.png"))
    d.get(f"{server.url}/console/workers")
    assert "relay" in d.find_element(By.ID, "celery-workers").text
    d.save_screenshot(str(shots / "workers.png"))


def _created_at_of(mids: list[str]) -> str:
    from sqlalchemy import func, select

    from app.db import session_scope
    from app.models.messages import Message

    with session_scope() as session:
        first = session.scalar(select(func.min(Message.created_at)).where(Message.id.in_(mids)))
    assert first is not None
    return first.replace(microsecond=0).isoformat()


def _statuses(mids: list[str]) -> set[str]:
    from app.db import session_scope
    from app.models.messages import Message

    with session_scope() as session:
        return {m.status for m in session.query(Message).filter(Message.id.in_(mids))}


def test_pause_a_queue_a_job_waits_resume_it_runs_and_a_viewer_gets_403(browser, server, start_worker,
                                                                        redis_client, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    worker = start_worker(["default"], concurrency=1).wait_ready()
    d = browser
    name = sign_in(d, server)
    d.get(f"{server.url}/console/queues")
    d.find_element(By.CSS_SELECTOR, "#queue-default button.pause").click()
    assert "pause default" in d.find_element(By.ID, "done").text
    assert d.find_element(By.CSS_SELECTOR, "#queue-default td.qstate").text == "paused"

    key = f"paused:{secrets.token_hex(4)}"
    worker.client.signature("app.tasks.system.slow_marker", args=(key, 0.1)).apply_async(queue="default")
    time.sleep(4)
    assert not redis_client.exists(f"{key}:starts")  # the job waits
    d.get(f"{server.url}/console/queues")
    assert d.find_element(By.CSS_SELECTOR, "#queue-default td.waiting").text == "1"
    d.save_screenshot(str(shots / "queues.png"))

    d.find_element(By.CSS_SELECTOR, "#queue-default button.resume").click()
    wait_for(lambda: redis_client.exists(f"{key}:done"), timeout=30, message="the job ran after resume")
    actions = [a[0] for a in audit_actions(d, server, name)]
    assert actions[:2] == ["queue.resume", "queue.pause"]

    viewer, password = operator("viewer")
    s = requests.Session()
    assert s.post(f"{server.url}/console/login", data={"name": viewer, "password": password},
                  allow_redirects=False, timeout=10).status_code == 303
    page = s.get(f"{server.url}/console/jobs", timeout=10).text
    assert "bulk-replay" not in page and "button class=\"pause\"" not in s.get(f"{server.url}/console/queues").text
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', s.get(f"{server.url}/console/audit").text)
    token = csrf.group(1) if csrf else ""
    for path in ("/console/queues/default/pause", "/console/schedules/upload-gc/run", "/console/bulk"):
        assert s.post(f"{server.url}{path}", data={"csrf": token, "action": "replay", "family": "messages"},
                      timeout=10).status_code == 403


FAST_BEAT = {"VOICE_SWEEP_INTERVAL": "1", "OUTBOX_RELAY_INTERVAL": "30", "CAMPAIGN_INTERVAL": "30",
             "CALL_SCHEDULER_INTERVAL": "30", "SCAN_SWEEP_INTERVAL": "30", "LEAD_REMINDER_INTERVAL": "30",
             "TRIAL_EXPIRATION_INTERVAL": "30", "CALL_CLEANUP_INTERVAL": "30", "BEAT_MAX_LOOP_INTERVAL": "1",
             "BEAT_LOCK_TIMEOUT": "5"}


def _sends(log: Path, entry: str) -> int:
    return log.read_text(errors="replace").count(f"Sending due task {entry}")


def test_pause_a_schedule_and_beat_does_not_send_it(browser, server, redis_client, tmp_path: Path,
                                                    shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    log = tmp_path / "beat.log"

    def start_beat() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "celery", "-A", "app", "beat", "--loglevel", "DEBUG",
                                 "-s", str(tmp_path / "beat-schedule")], cwd=ROOT, env=dict(os.environ) | FAST_BEAT,
                                stdout=log.open("ab"), stderr=subprocess.STDOUT)

    beat = start_beat()
    try:
        wait_for(lambda: _sends(log, "voice-lease-sweep") >= 2, timeout=60, message="beat sends the entry")
        d = browser
        name = sign_in(d, server)
        d.get(f"{server.url}/console/schedules")
        d.find_element(By.CSS_SELECTOR, "#schedule-voice-lease-sweep button.pause").click()
        assert d.find_element(By.CSS_SELECTOR, "#schedule-voice-lease-sweep td.sstate").text == "paused"
        d.save_screenshot(str(shots / "schedules.png"))
        time.sleep(2)  # a send already under way when the pause landed
        before = _sends(log, "voice-lease-sweep")
        time.sleep(6)
        assert _sends(log, "voice-lease-sweep") == before  # beat does not send a paused entry
        beat.terminate()
        beat.wait(timeout=20)
        starts = log.read_text(errors="replace").count("beat: Starting")
        beat = start_beat()  # a restarted beat keeps the pause
        wait_for(lambda: log.read_text(errors="replace").count("beat: Starting") > starts, timeout=30,
                 message="beat restarted")
        time.sleep(6)
        assert _sends(log, "voice-lease-sweep") == before
        d.find_element(By.CSS_SELECTOR, "#schedule-voice-lease-sweep button.resume").click()
        wait_for(lambda: _sends(log, "voice-lease-sweep") > before, timeout=30, message="sent again after resume")
        assert [a[0] for a in audit_actions(d, server, name)][:2] == ["schedule.resume", "schedule.pause"]
    finally:
        beat.terminate()
        beat.wait(timeout=20)
        from tests.conftest import REDIS_URL
        from tests.console.test_queue_gauges import purge

        for queue in ("voice", "outbox", "schedules", "scans", "gc"):
            purge(REDIS_URL, queue)
