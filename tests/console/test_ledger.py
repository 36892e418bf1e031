"""The job ledger view and its service on PostgreSQL: every family appears with its
ledger state, filters and keyset pages, bulk plans refuse what they must, and two
concurrent replays of one filter replay each dead letter once."""

from __future__ import annotations

import importlib.util
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.models.base import utcnow
from app.models.console import STATES
from app.services.console import actions, ledger
from tests.console.support import dead_message, one_of_each

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_the_view_and_the_state_table_agree() -> None:
    spec = importlib.util.spec_from_file_location("m", ROOT / "migrations/versions/0012_console_ledger.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert {name: f["states"] for name, f in module.FAMILIES.items()} == STATES


def test_every_family_is_in_the_ledger_with_its_state(db_session) -> None:  # type: ignore[no-untyped-def]
    ids = one_of_each(db_session)
    db_session.commit()
    expected = {"ocr": "queued", "scans": "failed", "voice": "queued", "files": "succeeded", "campaigns": "succeeded",
                "calls": "queued", "outbox": "dead", "messages": "failed"}
    for family, job_id in ids.items():
        row = ledger.get_row(db_session, family, job_id)
        assert row is not None, family
        assert row["state"] == expected[family], (family, row)
    assert ledger.get_row(db_session, "outbox", ids["outbox"])["trace_id"] == "ab" * 16
    assert ledger.get_row(db_session, "scans", ids["scans"])["last_error"] == "boom"


def test_filters_and_keyset_pages(db_session) -> None:  # type: ignore[no-untyped-def]
    from app.services.auth import create_api_key

    key, _ = create_api_key(db_session, "ledger-client")
    base = utcnow() - timedelta(days=30)
    mids = [dead_message(db_session, client_id=key.client_id, at=base + timedelta(minutes=i))[0] for i in range(7)]
    db_session.commit()
    f = ledger.parse_filter({"family": "messages", "state": "failed", "client_id": str(key.client_id)})
    seen, cursor = [], None
    while True:
        page = ledger.list_jobs(db_session, f, limit=3, after=cursor)
        seen += [r["id"] for r in page.rows]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(mids))
    window = ledger.parse_filter({"client_id": key.client_id, "since": (base + timedelta(minutes=2)).isoformat(),
                                  "until": (base + timedelta(minutes=4)).isoformat()})
    assert [r["id"] for r in ledger.list_jobs(db_session, window).rows] == [mids[3], mids[2]]
    assert [r["id"] for r in ledger.list_jobs(db_session, ledger.parse_filter({"q": mids[5]})).rows] == [mids[5]]
    assert ledger.count_jobs(db_session, ledger.parse_filter({"client_id": key.client_id, "error": "BAD RECIPIENT"})) == 7


@pytest.mark.parametrize("params, message", [
    ({"family": "nope"}, "family: unknown 'nope'"),
    ({"state": "done"}, "state: unknown 'done'"),
    ({"since": "yesterday"}, "not an ISO 8601 time"),
    ({"client_id": "abc"}, "not a client id"),
    ({"since": "2026-01-02", "until": "2026-01-01"}, "since must be before until"),
])
def test_bad_filters_are_refused_clearly(params, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ledger.FilterError, match=message):
        ledger.parse_filter(params)


def test_bulk_refuses_empty_over_broad_and_inapplicable_filters(db_session) -> None:  # type: ignore[no-untyped-def]
    from app.services.auth import create_api_key

    key, _ = create_api_key(db_session, "bulk-client")
    for _ in range(3):
        dead_message(db_session, client_id=key.client_id)
    db_session.commit()
    with pytest.raises(actions.BulkRefused, match="empty filter"):
        actions.plan(db_session, "replay", ledger.LedgerFilter(), cap=100)
    f = ledger.parse_filter({"client_id": key.client_id})
    with pytest.raises(actions.BulkRefused, match="more than 2 jobs"):
        actions.plan(db_session, "replay", f, cap=2)
    with pytest.raises(actions.BulkRefused, match="nothing in this filter can be cancel"):
        actions.plan(db_session, "cancel", ledger.parse_filter({"family": "messages"}), cap=10)
    planned = actions.plan(db_session, "replay", f, cap=3)
    assert planned.count == 3 and planned.description == f"replay 3 failed or dead messages or outbox of client {key.client_id}"


def test_two_operators_replaying_one_filter_replay_each_dead_letter_once(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.models.messages import DeadLetter
    from app.models.outbox import OutboxEvent
    from app.services.auth import create_api_key

    with session_scope() as session:
        key, _ = create_api_key(session, "race-client")
        client_id = key.client_id
        dls = [dead_message(session, client_id=client_id)[1] for _ in range(25)]
    f = ledger.parse_filter({"family": "messages", "state": "failed", "client_id": client_id})
    outcomes: list[actions.Outcome] = []
    barrier = threading.Barrier(2)

    def run(actor: str) -> None:
        barrier.wait()
        outcomes.append(actions.execute(session_scope, "replay", f, 100, actor))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(o.done for o in outcomes) == 25 and not any(o.errors for o in outcomes)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(DeadLetter).where(
            DeadLetter.id.in_(dls), DeadLetter.replayed_at.is_not(None))) == 25
        events = session.scalars(select(OutboxEvent.payload).where(OutboxEvent.event_type == "message.replayed")).all()
        replays = [p["replay"] for p in events if p.get("replay") in dls]
        assert sorted(replays) == sorted(dls)  # one replay event per dead letter, none twice
        session.execute(OutboxEvent.__table__.delete().where(OutboxEvent.event_type == "message.replayed"))


def test_a_row_carries_the_trace_id_of_the_request_that_made_it(db_session) -> None:  # type: ignore[no-untyped-def]
    from app.models.outbox import OutboxEvent

    mid, _ = dead_message(db_session)
    db_session.add(OutboxEvent(aggregate_type="message", aggregate_id=mid, event_type="message.submitted",
                               task_name="app.tasks.messages.route",
                               payload={"_trace": {"traceparent": "00-" + "12" * 16 + "-" + "34" * 8 + "-01"}}))
    db_session.commit()
    assert ledger.get_row(db_session, "messages", mid)["trace_id"] == "12" * 16
    assert ledger.list_jobs(db_session, ledger.parse_filter({"q": mid})).rows[0]["trace_id"] == "12" * 16


def test_cancel_fails_each_queued_job_once_through_its_guard(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope
    from app.models.scans import ScanAudit, ScanJob
    from app.services.auth import create_api_key
    from tests.console.support import hexid

    with session_scope() as session:
        key, _ = create_api_key(session, "cancel-client")
        client_id = key.client_id
        ids = one_of_each(session, client_id=client_id)
        scan = ScanJob(id=hexid(), url="https://example.com/q", state="QUEUED", client_id=client_id)
        session.add(scan)
        ids["queued_scan"] = scan.id
    f = ledger.parse_filter({"client_id": client_id})
    with session_scope() as session:
        planned = actions.plan(session, "cancel", f, cap=10)
    assert planned.count == 4  # the OCR upload, the voice task, the call and the queued scan
    outcome = actions.execute(session_scope, "cancel", f, 10, "alice")
    assert (outcome.done, outcome.skipped, outcome.errors) == (4, 0, [])
    with session_scope() as session:
        for family, job_id in (("ocr", ids["ocr"]), ("voice", ids["voice"]), ("calls", ids["calls"]),
                               ("scans", ids["queued_scan"])):
            row = ledger.get_row(session, family, job_id)
            assert row["state"] == "failed" and row["last_error"] == "cancelled by alice", (family, row)
        audit = session.query(ScanAudit).filter(ScanAudit.job_id == ids["queued_scan"]).one()
        assert (audit.from_state, audit.to_state, audit.worker) == ("QUEUED", "FAILED", "console:alice")
        assert actions.plan(session, "cancel", f, cap=10).count == 0
