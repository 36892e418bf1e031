"""One job's detail: its ledger row, its state timeline (the family's own history where it
keeps one) and a readable view of its result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.files import File
from app.models.messages import DeadLetter, Message
from app.models.ocr import Upload
from app.models.outbox import OutboxEvent
from app.models.scans import ScanAudit, ScanJob
from app.models.schedules import CallRequest, Campaign
from app.models.voice import VoiceJob
from app.services.console.ledger import AGGREGATES, get_row
from app.tracing import TRACE_KEY


@dataclass
class Step:
    at: datetime | None
    state: str
    detail: str | None = None


@dataclass
class JobDetail:
    row: dict[str, Any]
    timeline: list[Step] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # its outbox events


def _stamps(*pairs: tuple[str, datetime | None]) -> list[Step]:
    return sorted((Step(at, state) for state, at in pairs if at is not None), key=lambda s: s.at or datetime.min)


def _ocr(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    u = session.get(Upload, job_id)
    if u is None:
        return [], {}
    steps = _stamps(("uploaded", u.created_at), ("queued", u.queued_at), ("processing", u.started_at),
                    (u.status, u.finished_at))
    return steps, {"filename": u.filename, "pages": f"{u.pages_done}/{u.pages_total or '?'}",
                   "page_confidences": u.page_confidences, "scorecard": u.parsed_preview, "error": u.error}


def _scans(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    job = session.get(ScanJob, job_id)
    if job is None:
        return [], {}
    audit = session.scalars(select(ScanAudit).where(ScanAudit.job_id == job_id).order_by(ScanAudit.id))
    steps = [Step(a.created_at, a.to_state, f"{a.from_state or '-'} → {a.to_state} by {a.worker}"
                  + (f": {a.detail}" if a.detail else "")) for a in audit]
    r = job.result
    result: dict[str, Any] = {"url": job.url}
    if r is not None:
        result |= {"final_url": r.final_url, "status_code": r.status_code, "risk": r.risk, "score": r.score,
                   "reasons": r.reasons, "redirect_chain": (r.fetch or {}).get("redirect_chain") or []}
    return steps, result


def _voice(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    t = session.get(VoiceJob, job_id)
    if t is None:
        return [], {}
    steps = _stamps(("pending", t.created_at), ("claimed", t.claimed_at), (t.status, t.finished_at))
    result = t.result or {}
    return steps, {"target": t.target, "claimed_by": t.claimed_by, "risk_level": result.get("risk_level"),
                   "score": result.get("score"), "reasons": result.get("reasons"), "error": t.error}


def _messages(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    m = session.get(Message, job_id)
    if m is None:
        return [], {}
    steps = [Step(h.created_at, h.status, h.detail) for h in m.history]
    dead = session.scalars(select(DeadLetter).where(DeadLetter.message_id == job_id).order_by(DeadLetter.id))
    return steps, {"client_ref": m.client_ref, "channel": m.channel, "recipient": m.recipient,
                   "deliveries": [{"channel": d.channel, "status": d.status, "attempts": d.attempts,
                                   "provider_message_id": d.provider_message_id, "error": d.last_error}
                                  for d in m.deliveries],
                   "dead_letters": [{"id": d.id, "channel": d.channel, "error_kind": d.error_kind, "error": d.error,
                                     "replayed_at": d.replayed_at} for d in dead]}


def _files(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    f = session.get(File, job_id)
    if f is None:
        return [], {}
    steps = _stamps(("UPLOADING", f.created_at), ("last chunk", f.last_activity_at), (f.status, f.completed_at))
    return steps, {"filename": f.filename, "size": f.size, "chunks": f.total_chunks, "final_size": f.final_size,
                   "sha256": f.sha256, "failure_reason": f.failure_reason}


def _campaigns(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    c = session.scalars(select(Campaign).where(Campaign.public_id == job_id)).first()
    if c is None:
        return [], {}
    steps = _stamps(("scheduled", c.created_at), ("sending", c.started_at), (c.status, c.finished_at))
    return steps, {"channel": c.channel, "scheduled_at": c.scheduled_at, "total": c.total, "sent": c.sent,
                   "failed": c.failed, "skipped": c.skipped, "batches": c.batches}


def _calls(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    c = session.scalars(select(CallRequest).where(CallRequest.public_id == job_id)).first()
    if c is None:
        return [], {}
    steps = _stamps(("queued", c.created_at), (c.status, c.finished_at))
    return steps, {"scheduled_for": c.scheduled_for, "provider_call_id": c.provider_call_id}


def _outbox(session: Session, job_id: str) -> tuple[list[Step], dict[str, Any]]:
    e = session.get(OutboxEvent, int(job_id)) if job_id.isdigit() else None
    if e is None:
        return [], {}
    steps = _stamps(("added", e.created_at), ("published", e.published_at), ("consumed", e.consumed_at))
    payload = {k: v for k, v in (e.payload or {}).items() if k != TRACE_KEY}
    return steps, {"event_type": e.event_type, "task": e.task_name, "aggregate": f"{e.aggregate_type} {e.aggregate_id}",
                   "payload": payload, "dead": e.dead}


LOADERS: dict[str, Callable[[Session, str], tuple[list[Step], dict[str, Any]]]] = {
    "ocr": _ocr, "scans": _scans, "voice": _voice, "messages": _messages, "files": _files,
    "campaigns": _campaigns, "calls": _calls, "outbox": _outbox,
}


def _events(session: Session, family: str, job_id: str) -> list[dict[str, Any]]:
    aggregate = AGGREGATES.get(family)
    if aggregate is None:
        return []
    rows = session.scalars(select(OutboxEvent).where(OutboxEvent.aggregate_type == aggregate,
                                                     OutboxEvent.aggregate_id == job_id).order_by(OutboxEvent.id))
    return [{"id": e.id, "event_type": e.event_type, "created_at": e.created_at, "published_at": e.published_at,
             "consumed_at": e.consumed_at, "attempts": e.attempts, "dead": e.dead} for e in rows]


def job_detail(session: Session, family: str, job_id: str) -> JobDetail | None:
    """Everything the console shows of one job; None when it does not exist."""
    row = get_row(session, family, job_id)
    if row is None:
        return None
    timeline, result = LOADERS[family](session, job_id)
    return JobDetail(row, timeline, result, _events(session, family, job_id))
