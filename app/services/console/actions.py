"""Bulk actions by ledger filter: replay failed or dead-lettered jobs, cancel queued ones.

Every action is first planned (a dry run: how many jobs, described in words) and refused
when the filter is empty or selects more than the cap (``CONSOLE_BULK_MAX``). Executing
acts on each job in a transaction of its own through the family's own guard, so two
operators running the same action at once never act on a job twice:

- a message is replayed through ``messages.replay_dead_letter``, which locks the dead
  letter (``SELECT ... FOR UPDATE``) and refuses one already replayed;
- a dead outbox event through ``outbox.replay_dead``, which locks it and refuses one no
  longer dead;
- a cancel is a conditional UPDATE on the job's queued status (a worker's claim is the
  same kind of UPDATE, so exactly one of them wins).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.models.base import utcnow
from app.models.messages import DeadLetter
from app.models.ocr import Upload
from app.models.scans import ScanAudit, ScanJob
from app.models.schedules import CallRequest
from app.services import messages as messages_service
from app.services import outbox as outbox_service
from app.services.console.ledger import LedgerFilter, count_jobs, list_jobs
from app.services.voice.jobs import fail_unclaimed

Scope = Callable[[], AbstractContextManager[Session]]


class BulkRefused(ValueError):
    """The action is refused as asked (empty or over-broad filter, nothing it applies to)."""


#: action -> {family: the ledger states it acts on}
TARGETS: dict[str, dict[str, tuple[str, ...]]] = {
    "replay": {"messages": ("failed",), "outbox": ("dead",)},
    "cancel": {"ocr": ("queued",), "scans": ("queued",), "voice": ("queued",), "calls": ("queued",)},
}
VERBS = {"replay": "replay", "cancel": "cancel"}


@dataclass
class Plan:
    action: str
    filter: LedgerFilter
    count: int
    description: str


@dataclass
class Outcome:
    plan: Plan
    done: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def narrow(action: str, f: LedgerFilter) -> LedgerFilter:
    """``f`` limited to the families and states the action applies to."""
    if action not in TARGETS:
        raise BulkRefused(f"action: unknown {action!r}; one of {', '.join(TARGETS)}")
    targets = TARGETS[action]
    families = tuple(x for x in (f.families or tuple(targets)) if x in targets)
    states = tuple(dict.fromkeys(s for fam in families for s in targets[fam] if not f.states or s in f.states))
    if not families or not states:
        wanted = "; ".join(f"{', '.join(s)} {fam}" for fam, s in targets.items())
        raise BulkRefused(f"nothing in this filter can be {action}ed: {action} applies to {wanted}")
    return replace(f, families=families, states=states)


def plan(session: Session, action: str, f: LedgerFilter, cap: int) -> Plan:
    """The dry run: the narrowed filter and how many jobs it selects; refuses an empty
    filter and one selecting more than ``cap`` jobs."""
    if f.is_empty():
        raise BulkRefused("an empty filter selects every job: narrow it by family, state, client, time or text")
    narrowed = narrow(action, f)
    n = count_jobs(session, narrowed, at_most=cap)
    if n > cap:
        raise BulkRefused(f"the filter selects more than {cap} jobs (CONSOLE_BULK_MAX); narrow it, "
                          f"for example by time or client")
    return Plan(action, narrowed, n, f"{VERBS[action]} {n} {narrowed.describe()}")


def _replay_message(session: Session, job_id: str, actor: str) -> bool:
    ids = session.scalars(select(DeadLetter.id).where(DeadLetter.message_id == job_id,
                                                      DeadLetter.replayed_at.is_(None))).all()
    done = 0
    for dead_letter_id in ids:
        try:
            messages_service.replay_dead_letter(session, dead_letter_id)
            done += 1
        except (messages_service.NotReplayable, LookupError):
            continue  # replayed meanwhile (another operator, the CLI)
    return done > 0


def _replay_outbox(session: Session, job_id: str, actor: str) -> bool:
    try:
        return outbox_service.replay_dead(session, int(job_id)) is not None
    except outbox_service.NotDead:
        return False


def _cancel_ocr(session: Session, job_id: str, actor: str) -> bool:
    return rows_changed(session,
        update(Upload).where(Upload.id == job_id, Upload.status == "queued")
        .values(status="failed", error=f"cancelled by {actor}", finished_at=utcnow()), synchronize=False) == 1


def _cancel_scan(session: Session, job_id: str, actor: str) -> bool:
    version = session.scalar(select(ScanJob.version).where(ScanJob.id == job_id, ScanJob.state == "QUEUED"))
    if version is None:
        return False
    now = utcnow()
    moved = rows_changed(session,
        update(ScanJob).where(ScanJob.id == job_id, ScanJob.state == "QUEUED", ScanJob.version == version)
        .values(state="FAILED", version=version + 1, error=f"cancelled by {actor}", finished_at=now,
                updated_at=now), synchronize=False) == 1
    if moved:
        session.add(ScanAudit(job_id=job_id, from_state="QUEUED", to_state="FAILED", version=version + 1,
                              worker=f"console:{actor}", detail="cancelled by an operator"))
    return moved


def _cancel_voice(session: Session, job_id: str, actor: str) -> bool:
    return fail_unclaimed(session, job_id, f"cancelled by {actor}")


def _cancel_call(session: Session, job_id: str, actor: str) -> bool:
    return rows_changed(session,
        update(CallRequest).where(CallRequest.public_id == job_id, CallRequest.status == "queued")
        .values(status="failed", last_error=f"cancelled by {actor}", finished_at=utcnow()), synchronize=False) == 1


HANDLERS: dict[tuple[str, str], Callable[[Session, str, str], bool]] = {
    ("replay", "messages"): _replay_message, ("replay", "outbox"): _replay_outbox,
    ("cancel", "ocr"): _cancel_ocr, ("cancel", "scans"): _cancel_scan,
    ("cancel", "voice"): _cancel_voice, ("cancel", "calls"): _cancel_call,
}


def _act_on(scope: Scope, action: str, row: dict[str, Any], actor: str, outcome: Outcome) -> None:
    try:
        with scope() as session:
            acted = HANDLERS[(action, row["family"])](session, row["id"], actor)
    except Exception as exc:  # one job's failure must not stop the batch; it is reported
        outcome.errors.append(f"{row['family']} {row['id']}: {exc}"[:300])
        return
    if acted:
        outcome.done += 1
    else:
        outcome.skipped += 1


def execute(scope: Scope, action: str, f: LedgerFilter, cap: int, actor: str,
            expected: int | None = None) -> Outcome:
    """Plan again (the filter is judged as it is now), then act on each job once.

    ``expected``: the count the operator confirmed; if the filter now selects more, it is
    refused instead of acting on jobs nobody saw counted."""
    with scope() as session:
        planned = plan(session, action, f, cap)
    if expected is not None and planned.count > expected:
        raise BulkRefused(f"the filter now selects {planned.count} jobs, more than the {expected} confirmed; "
                          f"run the dry run again")
    outcome = Outcome(planned)
    cursor: str | None = None
    while True:
        with scope() as session:
            page = list_jobs(session, planned.filter, limit=200, after=cursor)
        for row in page.rows:
            _act_on(scope, action, row, actor, outcome)
        if page.next_cursor is None:
            return outcome
        cursor = page.next_cursor
