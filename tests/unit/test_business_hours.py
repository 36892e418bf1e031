"""Business hours in the tenant's own timezone, with the clock set by time-machine, across DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from app.services import schedules as svc

UTC = UTC
WEEKDAY_9_18 = {d: [["09:00", "18:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}


def _open_now(tz: str, hours: dict) -> bool:
    # No time passed in: the service reads the (travelled) clock itself.
    return svc.is_open(svc.parse_business_hours(hours), svc.check_timezone(tz), svc.utcnow())


@pytest.mark.parametrize(
    ("instant", "tz", "expected"),
    [
        # Friday 2025-03-07, New York on EST (UTC-5): 17:59 open, 18:01 closed.
        ("2025-03-07T22:59:00Z", "America/New_York", True),
        ("2025-03-07T23:01:00Z", "America/New_York", False),
        # A week later New York is on EDT (UTC-4) since 2025-03-09: the same wall clock is an hour earlier in UTC.
        ("2025-03-14T21:59:00Z", "America/New_York", True),
        ("2025-03-14T22:01:00Z", "America/New_York", False),
        # 22:30 UTC: open on the EST Friday (17:30), closed on the EDT Friday (18:30).
        ("2025-03-07T22:30:00Z", "America/New_York", True),
        ("2025-03-14T22:30:00Z", "America/New_York", False),
        # Another tenant, Berlin (CET, UTC+1, its DST starts 2025-03-30): the same instants are evening there.
        ("2025-03-07T16:59:00Z", "Europe/Berlin", True),
        ("2025-03-07T17:01:00Z", "Europe/Berlin", False),
        ("2025-03-07T22:59:00Z", "Europe/Berlin", False),
        # Berlin after its DST change (CEST, UTC+2): Friday 2025-04-04 17:59 local is 15:59 UTC.
        ("2025-04-04T15:59:00Z", "Europe/Berlin", True),
        ("2025-04-04T16:01:00Z", "Europe/Berlin", False),
        # Saturday is closed everywhere.
        ("2025-03-08T15:00:00Z", "America/New_York", False),
    ],
)
def test_open_with_the_clock_set(instant: str, tz: str, expected: bool) -> None:
    with time_machine.travel(datetime.fromisoformat(instant.replace("Z", "+00:00")), tick=False):
        assert _open_now(tz, WEEKDAY_9_18) is expected


def test_next_opening_across_the_dst_gap() -> None:
    # Sunday 2025-03-09 in New York: 02:00-03:00 does not exist. Hours 02:30-05:00 open at 03:00 EDT.
    hours = svc.parse_business_hours({"sun": [["02:30", "05:00"]]})
    zone = svc.check_timezone("America/New_York")
    at = datetime(2025, 3, 9, 5, 0, tzinfo=UTC)  # 00:00 EST
    opening = svc.next_opening(hours, zone, at)
    assert opening is not None and opening.astimezone(zone).hour == 3
    assert svc.is_open(hours, zone, opening)
    assert not svc.is_open(hours, zone, opening - timedelta(minutes=1))
    # Friday 18:01 waits for Monday 09:00 local.
    week = svc.parse_business_hours(WEEKDAY_9_18)
    nxt = svc.next_opening(week, zone, datetime(2025, 3, 7, 23, 1, tzinfo=UTC))
    assert nxt == datetime(2025, 3, 10, 13, 0, tzinfo=UTC)  # Monday 09:00 EDT


@pytest.mark.parametrize(
    ("hours", "needle"),
    [
        ({"fri": [["18:00", "09:00"]]}, "not after start"),
        ({"fri": [["09:00", "09:00"]]}, "not after start"),
        ({"fry": [["09:00", "18:00"]]}, "unknown weekday"),
        ({"fri": [["9am", "18:00"]]}, "not a time"),
        ({"fri": [["09:00", "13:00"], ["12:00", "18:00"]]}, "overlap"),
        ({"fri": "09:00-18:00"}, "list"),
    ],
)
def test_bad_business_hours(hours: dict, needle: str) -> None:
    with pytest.raises(svc.ScheduleInputError, match=needle):
        svc.parse_business_hours(hours)


@pytest.mark.parametrize("name", ["Mars/Olympus", "", "../etc/passwd", "EST5EDT "])
def test_unknown_timezone(name: str) -> None:
    with pytest.raises(svc.ScheduleInputError, match="unknown timezone"):
        svc.check_timezone(name)


def test_plan_calls_with_the_clock_set(db_session) -> None:  # type: ignore[no-untyped-def]
    """The call scheduler dials New York's call at 17:59 and leaves it at 18:01; Berlin's waits."""
    from app.models.schedules import CallRequest

    ny = svc.create_tenant(db_session, name="ny", plan="paid", trial_ends_at=None, timezone="America/New_York",
                           business_hours=WEEKDAY_9_18)
    be = svc.create_tenant(db_session, name="be", plan="paid", trial_ends_at=None, timezone="Europe/Berlin",
                           business_hours=WEEKDAY_9_18)
    due = datetime(2025, 3, 7, 12, 0, tzinfo=UTC)
    calls = {}
    for tenant in (ny, be):
        lead = svc.create_lead(db_session, tenant_id=tenant.id, name="l", email=None, phone="+15550001",
                               next_reminder_at=None)
        calls[tenant.name] = svc.create_call(db_session, tenant_id=tenant.id, lead_id=lead.id, scheduled_for=due).id
    db_session.commit()
    mine = set(calls.values())
    with time_machine.travel(datetime(2025, 3, 7, 22, 59, tzinfo=UTC), tick=False):
        plan = svc.plan_calls(db_session, max_age=timedelta(days=5))
    assert mine & set(plan.dial) == {calls["ny"]}
    with time_machine.travel(datetime(2025, 3, 7, 23, 1, tzinfo=UTC), tick=False):
        plan = svc.plan_calls(db_session, max_age=timedelta(days=5))
    assert not mine & set(plan.dial)
    # Monday morning in Berlin (08:00 UTC = 09:00 CET): Berlin dials, New York (03:00) waits.
    with time_machine.travel(datetime(2025, 3, 10, 8, 0, tzinfo=UTC), tick=False):
        plan = svc.plan_calls(db_session, max_age=timedelta(days=5))
    assert mine & set(plan.dial) == {calls["be"]}
    # Far past the maximum age, both expire with the reason.
    with time_machine.travel(datetime(2025, 3, 20, 8, 0, tzinfo=UTC), tick=False):
        svc.plan_calls(db_session, max_age=timedelta(hours=48))
    db_session.commit()
    rows = db_session.execute(select(CallRequest.status, CallRequest.last_error).where(CallRequest.id.in_(mine))).all()
    assert [r.status for r in rows] == ["expired", "expired"]
    assert all("48 h" in r.last_error for r in rows)
