"""Scheduled jobs: business hours, campaigns, lead reminders, calls, trials and cleanup.

Plain logic over a session (or a session scope) and injected senders; the Celery tasks in
``app.tasks.schedules`` are thin wrappers; each beat job runs in the one frame of every
beat job (``app.services.jobs.run_locked``: the job's lock, its heartbeat, its record).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.metrics import SCHEDULE_ITEMS
from app.models.base import utcnow
from app.models.jobs import JobRun
from app.models.schedules import (
    CALL_TERMINAL,
    CallRequest,
    CallStatus,
    Campaign,
    CampaignRecipient,
    CampaignStatus,
    Lead,
    RecipientStatus,
    Tenant,
    TenantStatus,
)
from app.services import jobs
from app.services.jobs import Scope
from app.services.messages import SYSTEM_ID_PREFIX, submit_message
from app.services.outbox import add_event

logger = logging.getLogger(__name__)

JOB_CAMPAIGNS, JOB_REMINDERS, JOB_CALLS, JOB_TRIALS, JOB_CLEANUP = (
    jobs.CAMPAIGNS, jobs.REMINDERS, jobs.CALLS, jobs.TRIALS, jobs.CALL_CLEANUP)
JOBS = (JOB_CAMPAIGNS, JOB_REMINDERS, JOB_CALLS, JOB_TRIALS, JOB_CLEANUP)

TENANT_SUSPENDED_TASK = "app.tasks.schedules.tenant_suspended"


class ScheduleInputError(ValueError):
    """Input that can never be scheduled (bad timezone, hours, address); the message names it."""

    def __init__(self, message: str, loc: list[str] | None = None) -> None:
        super().__init__(message)
        self.loc = loc or []


# --- business hours ---------------------------------------------------------------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
Hours = dict[str, list[tuple[time, time | None]]]  # end None means midnight (24:00)


def check_timezone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``ScheduleInputError`` when it does not exist."""
    try:
        if not name or name != name.strip() or ".." in name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleInputError(f"unknown timezone {name!r} (use an IANA name such as Europe/Paris)",
                                 ["timezone"]) from None


def _parse_clock(value: Any, loc: list[str], end: bool) -> time | None:
    if end and value == "24:00":
        return None
    match = _HHMM.match(value) if isinstance(value, str) else None
    if not match:
        raise ScheduleInputError(f"{'.'.join(loc)}: {value!r} is not a time HH:MM", loc)
    return time(int(match.group(1)), int(match.group(2)))


def parse_business_hours(raw: Any) -> Hours:
    """Validate ``{"mon": [["09:00", "18:00"], ...], ...}``: known weekdays, start before end, no overlap."""
    if not isinstance(raw, dict):
        raise ScheduleInputError("business_hours must be an object keyed by weekday (mon..sun)", ["business_hours"])
    hours: Hours = {}
    for day, intervals in raw.items():
        loc = ["business_hours", str(day)]
        if day not in WEEKDAYS:
            raise ScheduleInputError(f"business_hours: unknown weekday {day!r} (use {', '.join(WEEKDAYS)})", loc)
        if not isinstance(intervals, list):
            raise ScheduleInputError(f"business_hours.{day} must be a list of [start, end] pairs", loc)
        parsed: list[tuple[time, time | None]] = []
        for i, pair in enumerate(intervals):
            ploc = [*loc, str(i)]
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise ScheduleInputError(f"business_hours.{day}[{i}] must be a [start, end] pair", ploc)
            start = _parse_clock(pair[0], ploc, end=False)
            end = _parse_clock(pair[1], ploc, end=True)
            assert start is not None
            if end is not None and end <= start:
                raise ScheduleInputError(
                    f"business_hours.{day}[{i}]: end {pair[1]} is not after start {pair[0]}", ploc)
            parsed.append((start, end))
        parsed.sort(key=lambda p: p[0])
        for (_, e1), (s2, _) in pairwise(parsed):
            if e1 is None or e1 > s2:
                raise ScheduleInputError(f"business_hours.{day}: intervals overlap", loc)
        hours[day] = parsed
    return hours


def hours_to_json(hours: Hours) -> dict[str, list[list[str]]]:
    """The stored form of validated hours."""
    return {day: [[s.strftime("%H:%M"), e.strftime("%H:%M") if e else "24:00"] for s, e in ivs]
            for day, ivs in hours.items()}


def is_open(hours: Hours, zone: ZoneInfo, at: datetime) -> bool:
    """Whether the wall clock of ``zone`` at instant ``at`` falls inside an opening interval."""
    local = at.astimezone(zone)
    clock = local.time().replace(tzinfo=None)
    for start, end in hours.get(WEEKDAYS[local.weekday()], []):
        if start <= clock and (end is None or clock < end):
            return True
    return False


def _wall_to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant whose wall clock in ``zone`` reads ``wall`` or later.

    For a wall time inside a DST gap (02:30 on a spring-forward night) that is the end
    of the gap (03:00 new time), found by bisection between the two offsets' readings.
    """
    early = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    late = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    lo, hi = min(early, late), max(early, late)
    if lo.astimezone(zone).replace(tzinfo=None) >= wall:
        return lo
    while (hi - lo) > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def next_opening(hours: Hours, zone: ZoneInfo, at: datetime) -> datetime | None:
    """The first instant at or after ``at`` when business is open (UTC), or None if never."""
    if is_open(hours, zone, at):
        return at
    local = at.astimezone(zone)
    for offset in range(8):
        day = (local + timedelta(days=offset)).date()
        for start, _end in hours.get(WEEKDAYS[day.weekday()], []):
            candidate = _wall_to_instant(datetime.combine(day, start), zone).astimezone(at.tzinfo)
            if candidate > at:
                return candidate
    return None


# --- tenants, leads, calls, campaigns: creation -------------------------------------------

_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_PHONE = re.compile(r"^\+?[0-9]{4,20}$")


def check_email(address: str) -> str:
    """A syntactically valid address (normalised domain), or ``ScheduleInputError``."""
    address = address.strip()
    if len(address) > 320 or not _EMAIL.match(address) or ".." in address.split("@")[0]:
        raise ScheduleInputError(f"invalid email address {address!r}", ["email"])
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def check_phone(number: str) -> str:
    """A phone number in E.164-like digits, or ``ScheduleInputError``."""
    number = number.replace(" ", "").replace("-", "")
    if not _PHONE.match(number):
        raise ScheduleInputError(f"invalid phone number {number!r}", ["phone"])
    return number


def create_tenant(session: Session, *, name: str, plan: str, trial_ends_at: datetime | None, timezone: str,
                  business_hours: Any, client_id: int | None = None) -> Tenant:
    """Validate and add a tenant of ``client_id`` (timezone and hours checked here so bad
    input never reaches a job). Its leads, campaigns and calls belong to the same client."""
    check_timezone(timezone)
    hours = parse_business_hours(business_hours)
    if plan == "trial" and trial_ends_at is None:
        raise ScheduleInputError("a trial tenant needs trial_ends_at", ["trial_ends_at"])
    tenant = Tenant(name=name, plan=plan, trial_ends_at=trial_ends_at, timezone=timezone,
                    business_hours=hours_to_json(hours), client_id=client_id)
    session.add(tenant)
    session.flush()
    return tenant


def missing_tenant(tenant_id: int | str) -> ScheduleInputError:
    return ScheduleInputError(f"tenant {tenant_id} does not exist", ["tenant_id"])


def missing_lead(lead_id: int | str, tenant_id: int | str) -> ScheduleInputError:
    return ScheduleInputError(f"lead {lead_id} does not exist for tenant {tenant_id}", ["lead_id"])


def _tenant(session: Session, tenant_id: int) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise missing_tenant(tenant_id)
    return tenant


def create_lead(session: Session, *, tenant_id: int, name: str, email: str | None, phone: str | None,
                next_reminder_at: datetime | None) -> Lead:
    """Validate and add a lead."""
    tenant = _tenant(session, tenant_id)
    lead = Lead(tenant_id=tenant_id, client_id=tenant.client_id, name=name, email=check_email(email) if email else None,
                phone=check_phone(phone) if phone else None, next_reminder_at=next_reminder_at)
    session.add(lead)
    session.flush()
    return lead


def create_call(session: Session, *, tenant_id: int, lead_id: int, scheduled_for: datetime) -> CallRequest:
    """Queue a call to a lead of the tenant (the lead needs a phone number)."""
    tenant = _tenant(session, tenant_id)
    lead = session.get(Lead, lead_id)
    if lead is None or lead.tenant_id != tenant_id:
        raise missing_lead(lead_id, tenant_id)
    if not lead.phone:
        raise ScheduleInputError(f"lead {lead.public_id} has no phone number", ["lead_id"])
    call = CallRequest(tenant_id=tenant_id, lead_id=lead_id, scheduled_for=scheduled_for, client_id=tenant.client_id)
    session.add(call)
    session.flush()
    return call


def create_campaign(session: Session, *, tenant_id: int, channel: str, subject: str, template: str,
                    scheduled_at: datetime, recipients: list[str]) -> Campaign:
    """Add a campaign and its recipients; invalid addresses are kept as ``skipped`` with the reason.

    Refused outright (``ScheduleInputError``): no recipients at all, or none deliverable.
    """
    tenant = _tenant(session, tenant_id)
    if not recipients:
        raise ScheduleInputError("a campaign needs at least one recipient", ["recipients"])
    seen: dict[str, tuple[str, str | None]] = {}
    for raw in recipients:
        try:
            address = check_email(raw) if channel == "email" else check_phone(raw)
            status, detail = RecipientStatus.PENDING, None
        except ScheduleInputError as exc:
            address, status, detail = raw.strip()[:320], RecipientStatus.SKIPPED, str(exc)
        key = address.lower() if channel == "email" else address
        if key not in seen:
            seen[key] = (address, detail) if status == RecipientStatus.SKIPPED else (address, None)
    if all(detail is not None for _, detail in seen.values()):
        raise ScheduleInputError("no recipient is a valid address: " + "; ".join(d or "" for _, d in seen.values()),
                                 ["recipients"])
    campaign = Campaign(tenant_id=tenant_id, channel=channel, subject=subject, template=template,
                        scheduled_at=scheduled_at, total=len(seen), client_id=tenant.client_id)
    session.add(campaign)
    session.flush()
    for address, detail in seen.values():
        session.add(CampaignRecipient(campaign_id=campaign.id, address=address,
                                      status=RecipientStatus.SKIPPED if detail else RecipientStatus.PENDING, detail=detail))
    campaign.skipped = sum(1 for _, d in seen.values() if d)
    session.flush()
    return campaign


# --- campaigns: dispatch and batches --------------------------------------------------------


@dataclass
class BatchPlan:
    campaign_id: int
    batch: int
    countdown: float


def start_due_campaigns(session: Session, now: datetime, batch_size: int, batch_delay: float) -> list[BatchPlan]:
    """Move due ``scheduled`` campaigns to ``sending`` and split their recipients into batches.

    Returns one plan per batch (batch ``i`` starts ``i * batch_delay`` seconds later); the
    caller enqueues them after this transaction commits.
    """
    due = session.scalars(
        select(Campaign).where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.scheduled_at <= now)
        .order_by(Campaign.id).with_for_update(skip_locked=True)
    ).all()
    plans: list[BatchPlan] = []
    for campaign in due:
        # One statement numbers the pending recipients in id order and sets each one's
        # batch (position // batch_size): a 10,000-recipient campaign is one UPDATE, not
        # one per batch.
        ranked = select(CampaignRecipient.id.label("rid"),
                        (func.row_number().over(order_by=CampaignRecipient.id) - 1).label("pos")).where(
            CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.status == RecipientStatus.PENDING,
        ).subquery()
        pending = rows_changed(session, update(CampaignRecipient).where(CampaignRecipient.id == ranked.c.rid)
                                  .values(batch=ranked.c.pos // batch_size),
                                  synchronize=False)
        batches = (pending + batch_size - 1) // batch_size
        for b in range(batches):
            plans.append(BatchPlan(campaign.id, b, b * batch_delay))
        campaign.status = CampaignStatus.SENDING
        campaign.started_at = now
        campaign.batches = batches
        logger.info("campaign started", extra={"campaign_id": campaign.id, "batches": batches})
        if batches == 0:
            _finish_campaign(session, campaign, now)
    return plans


class TransientSendError(Exception):
    """A batch stopped on a transient failure; the task retries it (sent recipients stay sent)."""


@dataclass
class BatchResult:
    sent: int = 0
    failed: int = 0
    interrupted: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "interrupted": self.interrupted}


def _claim_recipient(session: Session, recipient_id: int) -> bool:
    return rows_changed(
        session,
        update(CampaignRecipient).where(CampaignRecipient.id == recipient_id, CampaignRecipient.status == RecipientStatus.PENDING)
        .values(status=RecipientStatus.SENDING)
    ) == 1


@dataclass(frozen=True)
class _Campaign:
    """What one batch needs of its campaign, read once."""

    id: int
    channel: str
    subject: str
    template: str
    client_id: int | None


def send_campaign_batch(
    scope: Scope,
    campaign_id: int,
    batch: int,
    send_email: Callable[[str, str, str], object] | None,
    now: Callable[[], datetime] = utcnow,
) -> BatchResult:
    """Send one batch, each recipient at most once, then refresh the campaign's counters.

    Email: a recipient is claimed (``pending`` → ``sending``, committed) before the SMTP
    send and marked ``sent`` after it. A recipient found in ``sending`` belongs to an
    earlier delivery of this batch that died mid-send: whether the server got it is
    unknown, so it is failed with that reason rather than sent twice. WhatsApp: claim,
    message and ``sent`` are one transaction through the routing path (idempotent by
    message id), so a redelivery can neither lose nor repeat a recipient.
    """
    result = BatchResult()
    campaign, rows = _batch_rows(scope, campaign_id, batch)
    if campaign is None:
        return result
    try:
        for rid, address, status in rows:
            if status == RecipientStatus.SENDING:
                _fail_interrupted(scope, rid)
                result.interrupted += 1
            elif campaign.channel == "whatsapp":
                result.sent += _send_whatsapp(scope, campaign, rid, address, now)
            else:
                sent = _send_email(scope, campaign, rid, address, send_email, now)
                result.sent += sent is True
                result.failed += sent is False
    finally:
        _finish_batch(scope, campaign_id, result, now)
    return result


def _batch_rows(scope: Scope, campaign_id: int, batch: int) -> tuple[_Campaign | None, list[Any]]:
    """The campaign (None unless it is sending) and the batch's recipients left to send."""
    with scope() as session:
        row = session.get(Campaign, campaign_id)
        if row is None or row.status != CampaignStatus.SENDING:
            return None, []
        campaign = _Campaign(row.id, row.channel, row.subject, row.template, row.client_id)
        rows = session.execute(select(CampaignRecipient.id, CampaignRecipient.address, CampaignRecipient.status).where(
            CampaignRecipient.campaign_id == campaign_id, CampaignRecipient.batch == batch,
            CampaignRecipient.status.in_((RecipientStatus.PENDING, RecipientStatus.SENDING)),
        ).order_by(CampaignRecipient.id)).all()
    return campaign, list(rows)


def _set_recipient(scope: Scope, rid: int, **values: Any) -> None:
    with scope() as session:
        session.execute(update(CampaignRecipient).where(CampaignRecipient.id == rid).values(**values))


def _fail_interrupted(scope: Scope, rid: int) -> None:
    with scope() as session:
        session.execute(update(CampaignRecipient).where(
            CampaignRecipient.id == rid, CampaignRecipient.status == RecipientStatus.SENDING,
        ).values(status=RecipientStatus.FAILED, detail="interrupted while sending; not resent, as the first send "
                                                       "may have reached the server"))


def _send_whatsapp(scope: Scope, campaign: _Campaign, rid: int, address: str, now: Callable[[], datetime]) -> bool:
    """Claim, message and ``sent`` in one transaction; False when another send holds it."""
    with scope() as session:
        if not _claim_recipient(session, rid):
            return False
        # A system id (no client_ref): no client can write it, name it or pre-empt it.
        submit_message(session, message_id=f"{SYSTEM_ID_PREFIX}campaign-{campaign.id}-{rid}",
                       client_id=campaign.client_id, conversation_id=f"campaign-{campaign.id}", channel="whatsapp",
                       recipient=address, content=campaign.template)
        session.execute(update(CampaignRecipient).where(CampaignRecipient.id == rid)
                        .values(status=RecipientStatus.SENT, sent_at=now()))
    return True


def _send_email(scope: Scope, campaign: _Campaign, rid: int, address: str,
                send_email: Callable[[str, str, str], object] | None, now: Callable[[], datetime]) -> bool | None:
    """Claim, send, record: True sent, False failed for good, None not ours to send."""
    from app.services.email import PermanentEmailError, TransientEmailError

    with scope() as session:
        if not _claim_recipient(session, rid):
            return None
    assert send_email is not None
    try:
        send_email(address, campaign.subject, campaign.template)
    except PermanentEmailError as exc:
        _set_recipient(scope, rid, status=RecipientStatus.FAILED, detail=str(exc)[:2000])
        return False
    except TransientEmailError as exc:
        # Not sent: give the recipient back, so the retried batch sends it.
        _set_recipient(scope, rid, status=RecipientStatus.PENDING, detail=str(exc)[:2000])
        raise TransientSendError(str(exc)) from exc
    _set_recipient(scope, rid, status=RecipientStatus.SENT, sent_at=now(), detail=None)
    return True


def _finish_batch(scope: Scope, campaign_id: int, result: BatchResult, now: Callable[[], datetime]) -> None:
    with scope() as session:
        campaign = session.get(Campaign, campaign_id, with_for_update=True)
        if campaign is not None:
            refresh_campaign(session, campaign, now())
    for key, value in result.as_dict().items():
        if value:
            SCHEDULE_ITEMS.labels(job=JOB_CAMPAIGNS, result=key).inc(value)


def refresh_campaign(session: Session, campaign: Campaign, now: datetime) -> None:
    """Recount the campaign's recipients; finish it when none is left to send."""
    counts = dict(session.execute(select(CampaignRecipient.status, func.count()).where(
        CampaignRecipient.campaign_id == campaign.id).group_by(CampaignRecipient.status)).all())
    campaign.sent = counts.get(RecipientStatus.SENT, 0)
    campaign.failed = counts.get(RecipientStatus.FAILED, 0)
    campaign.skipped = counts.get(RecipientStatus.SKIPPED, 0)
    if campaign.status == CampaignStatus.SENDING and not counts.get(RecipientStatus.PENDING) and not counts.get(RecipientStatus.SENDING):
        _finish_campaign(session, campaign, now)


def _finish_campaign(session: Session, campaign: Campaign, now: datetime) -> None:
    campaign.status = CampaignStatus.SENT if campaign.sent > 0 else CampaignStatus.FAILED
    if campaign.status == CampaignStatus.FAILED:
        campaign.last_error = "no recipient could be sent"
    campaign.finished_at = now
    logger.info("campaign finished", extra={"campaign_id": campaign.id, "status": campaign.status,
                                            "sent": campaign.sent, "failed": campaign.failed})


def stalled_batches(session: Session, now: datetime, grace: timedelta) -> list[BatchPlan]:
    """Batches of ``sending`` campaigns still pending long after their planned start.

    Their task was lost (e.g. the dispatcher died between commit and enqueue); the
    dispatcher sends them again, and the per-recipient claim keeps that harmless.
    """
    rows = session.execute(
        select(CampaignRecipient.campaign_id, CampaignRecipient.batch).join(
            Campaign, Campaign.id == CampaignRecipient.campaign_id)
        .where(Campaign.status == CampaignStatus.SENDING, Campaign.started_at < now - grace,
               CampaignRecipient.status == RecipientStatus.PENDING)
        .group_by(CampaignRecipient.campaign_id, CampaignRecipient.batch)
    ).all()
    return [BatchPlan(cid, b, 0.0) for cid, b in rows if b is not None]


# --- lead reminders --------------------------------------------------------------------------


def due_reminders(session: Session, now: datetime, limit: int = 10000) -> list[tuple[int, str]]:
    """(lead id, due time ISO) of leads whose reminder time has passed."""
    rows = session.execute(select(Lead.id, Lead.next_reminder_at).where(
        Lead.next_reminder_at.is_not(None), Lead.next_reminder_at <= now,
    ).order_by(Lead.next_reminder_at).limit(limit)).all()
    return [(lid, due.isoformat()) for lid, due in rows if due is not None]


def send_reminder(scope: Scope, lead_id: int, due: datetime, now: datetime, period: timedelta,
                  send_email: Callable[[str, str, str], object]) -> str:
    """Send one lead's reminder once for the due time ``due``; move its next reminder forward.

    The claim is a conditional UPDATE on ``next_reminder_at = due``: a second task for
    the same due time finds it moved and does nothing. Returns ``sent``, ``skipped``
    (no address; the reason is stored), ``failed`` or ``already_done``.
    """
    from app.services.email import PermanentEmailError, TransientEmailError

    with scope() as session:
        lead = session.get(Lead, lead_id)
        if lead is None:
            return "already_done"
        claimed = rows_changed(session, update(Lead).where(Lead.id == lead_id, Lead.next_reminder_at == due).values(
            next_reminder_at=now + period, last_reminder_at=now)) == 1
        if not claimed:
            return "already_done"
        if not lead.email:
            lead.last_error = "no email address: reminder skipped"
            return "skipped"
        email, name = lead.email, lead.name
    try:
        send_email(email, "Reminder: follow up", f"Hello {name},\n\nthis is your scheduled reminder.\n")
    except PermanentEmailError as exc:
        with scope() as session:
            session.execute(update(Lead).where(Lead.id == lead_id).values(last_error=str(exc)[:2000]))
        return "failed"
    except TransientEmailError:
        # Give the due time back so the retried task can claim it again.
        with scope() as session:
            session.execute(update(Lead).where(Lead.id == lead_id, Lead.next_reminder_at == now + period)
                            .values(next_reminder_at=due))
        raise
    with scope() as session:
        session.execute(update(Lead).where(Lead.id == lead_id).values(
            reminders_sent=Lead.reminders_sent + 1, last_error=None))
    return "sent"


# --- calls -----------------------------------------------------------------------------------


@dataclass
class CallPlan:
    dial: list[int] = field(default_factory=list)
    waiting: int = 0
    expired: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def plan_calls(session: Session, now: datetime | None = None, max_age: timedelta = timedelta(hours=48),
               limit: int = 5000) -> CallPlan:
    """Expire calls too old to dial, and pick the due calls whose tenant is open right now.

    ``now`` defaults to the current time (so a time-travel clock moves it). A call of a
    tenant outside its hours stays ``queued`` and is picked by the first run after the
    next opening; a tenant whose stored timezone is unusable is skipped with the reason.
    """
    now = now or utcnow()
    plan = CallPlan()
    plan.expired = rows_changed(
        session,
        update(CallRequest).where(CallRequest.status == CallStatus.QUEUED, CallRequest.scheduled_for < now - max_age)
        .values(status=CallStatus.EXPIRED, finished_at=now,
                last_error=f"not dialled within {max_age.total_seconds() / 3600:g} h of its scheduled time")
    )
    rows = session.execute(
        select(CallRequest.id, Tenant.id, Tenant.timezone, Tenant.business_hours, Tenant.status)
        .join(Tenant, Tenant.id == CallRequest.tenant_id)
        .where(CallRequest.status == CallStatus.QUEUED, CallRequest.scheduled_for <= now)
        .order_by(CallRequest.scheduled_for).limit(limit)
    ).all()
    cache: dict[int, tuple[ZoneInfo, Hours] | str] = {}
    for call_id, tenant_id, tz, raw_hours, status in rows:
        if status != TenantStatus.ACTIVE:
            plan.waiting += 1
            continue
        if tenant_id not in cache:
            try:
                cache[tenant_id] = (check_timezone(tz), parse_business_hours(raw_hours))
            except ScheduleInputError as exc:
                cache[tenant_id] = str(exc)
        entry = cache[tenant_id]
        if isinstance(entry, str):
            plan.skipped.append({"call_id": call_id, "reason": entry})
            continue
        if is_open(entry[1], entry[0], now):
            plan.dial.append(call_id)
        else:
            plan.waiting += 1
    return plan


def dial_call(scope: Scope, call_id: int, dial: Callable[[str, str, int, int], str], max_attempts: int,
              now: Callable[[], datetime] = utcnow) -> str:
    """Dial one queued call; returns ``done``, ``queued`` (transient failure, retried later), ``failed`` or ``noop``.

    The claim (``queued`` → ``dialing``, attempts + 1) is committed before the HTTP call.
    The provider gets the idempotency key ``call-<id>-<attempt>``, so a task redelivered
    with the call still ``dialing`` asks again with the same key and gets the same call.
    """
    from app.services.telephony import TelephonyRejected, TelephonyTransient

    with scope() as session:
        claimed = rows_changed(session, update(CallRequest).where(
            CallRequest.id == call_id, CallRequest.status == CallStatus.QUEUED).values(
            status=CallStatus.DIALING, attempts=CallRequest.attempts + 1)) == 1
        call = session.get(CallRequest, call_id)
        if call is None or (not claimed and call.status != CallStatus.DIALING):
            return "noop"
        lead = session.get(Lead, call.lead_id)
        phone, attempt, tenant_id = (lead.phone if lead else None), call.attempts, call.tenant_id
    if not phone:
        with scope() as session:
            session.execute(update(CallRequest).where(CallRequest.id == call_id).values(
                status=CallStatus.FAILED, finished_at=now(), last_error="the lead has no phone number"))
        return "failed"
    try:
        provider_id = dial(phone, f"call-{call_id}-{attempt}", call_id, tenant_id)
    except TelephonyTransient as exc:
        final = attempt >= max_attempts
        with scope() as session:
            session.execute(update(CallRequest).where(CallRequest.id == call_id, CallRequest.status == CallStatus.DIALING)
                            .values(status=CallStatus.FAILED if final else CallStatus.QUEUED, last_error=str(exc)[:2000],
                                    finished_at=now() if final else None))
        return "failed" if final else "queued"
    except TelephonyRejected as exc:
        with scope() as session:
            session.execute(update(CallRequest).where(CallRequest.id == call_id, CallRequest.status == CallStatus.DIALING)
                            .values(status=CallStatus.FAILED, last_error=str(exc)[:2000], finished_at=now()))
        return "failed"
    with scope() as session:
        session.execute(update(CallRequest).where(CallRequest.id == call_id, CallRequest.status == CallStatus.DIALING)
                        .values(status=CallStatus.DONE, provider_call_id=provider_id, finished_at=now(), last_error=None))
    return "done"


def cleanup_calls(scope: Scope, now: datetime, retention: timedelta, batch_size: int,
                  on_batch: Callable[[], object] = lambda: None) -> int:
    """Delete terminal calls finished before ``now - retention``, ``batch_size`` per transaction."""
    cutoff = now - retention
    total = 0
    while True:
        with scope() as session:
            ids = session.scalars(select(CallRequest.id).where(
                CallRequest.status.in_(CALL_TERMINAL),
                func.coalesce(CallRequest.finished_at, CallRequest.updated_at) < cutoff,
            ).order_by(CallRequest.id).limit(batch_size)).all()
            if not ids:
                return total
            session.execute(delete(CallRequest).where(CallRequest.id.in_(ids)))
        total += len(ids)
        on_batch()


# --- trials ----------------------------------------------------------------------------------


def expire_trials(session: Session, now: datetime, limit: int = 1000) -> list[int]:
    """Suspend active trial tenants past their end, each with a ``tenant.suspended`` outbox event.

    Rows are locked (SKIP LOCKED) and re-checked, so two runs never suspend a tenant
    twice nor write two events for it.
    """
    tenants = session.scalars(select(Tenant).where(
        Tenant.status == TenantStatus.ACTIVE, Tenant.plan == "trial", Tenant.trial_ends_at.is_not(None),
        Tenant.trial_ends_at <= now,
    ).order_by(Tenant.id).limit(limit).with_for_update(skip_locked=True)).all()
    for tenant in tenants:
        tenant.status = TenantStatus.SUSPENDED
        tenant.suspended_at = now
        add_event(session, aggregate_type="tenant", aggregate_id=str(tenant.id), event_type="tenant.suspended",
                  task_name=TENANT_SUSPENDED_TASK,
                  payload={"tenant_id": tenant.id, "reason": "trial_expired",
                           "trial_ends_at": tenant.trial_ends_at.isoformat() if tenant.trial_ends_at else None})
    return [t.id for t in tenants]


def hold_suspended_tenant_work(session: Session, tenant_id: int, now: datetime) -> dict[str, int]:
    """A suspended tenant's queued calls expire and its scheduled campaigns fail, with the reason."""
    tenant = session.get(Tenant, tenant_id)
    if tenant is None or tenant.status != TenantStatus.SUSPENDED:
        return {"calls": 0, "campaigns": 0}
    calls = rows_changed(session, update(CallRequest).where(
        CallRequest.tenant_id == tenant_id, CallRequest.status == CallStatus.QUEUED,
    ).values(status=CallStatus.EXPIRED, finished_at=now, last_error="tenant suspended"))
    campaigns = rows_changed(session, update(Campaign).where(
        Campaign.tenant_id == tenant_id, Campaign.status == CampaignStatus.SCHEDULED,
    ).values(status=CampaignStatus.FAILED, finished_at=now, last_error="tenant suspended"))
    return {"calls": calls, "campaigns": campaigns}


# --- job status --------------------------------------------------------------------------------


def job_totals(session: Session, jobs: tuple[str, ...] = JOBS) -> dict[str, dict[str, int]]:
    """Per job: runs by outcome and the items processed over all recorded runs."""
    totals: dict[str, dict[str, int]] = {j: {"runs": 0, "ok": 0, "failed": 0, "skipped": 0, "running": 0,
                                             "processed": 0} for j in jobs}
    processed = JobRun.counts["processed"].as_integer()
    rows = session.execute(select(
        JobRun.job, JobRun.outcome, func.count(), func.coalesce(func.sum(case((processed.is_not(None), processed),
                                                                              else_=0)), 0),
    ).where(JobRun.job.in_(jobs)).group_by(JobRun.job, JobRun.outcome)).all()
    for job, outcome, count, items in rows:
        entry = totals[job]
        entry["runs"] += count
        entry[outcome] = entry.get(outcome, 0) + count
        entry["processed"] += int(items or 0)
    return totals

