"""Rows of every job family for the console tests, made through the families' own models."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from app.models.base import utcnow


def hexid() -> str:
    return uuid.uuid4().hex


def dead_message(session: Session, *, client_id: int | None = None, error: str = "whatsapp: 400 bad recipient",
                 at: datetime | None = None) -> tuple[str, int]:
    """A failed message with its delivery and an unreplayed dead letter, as the router leaves one."""
    from app.models.messages import DeadLetter, Message, MessageDelivery, MessageStatusUpdate

    mid = f"m-{hexid()}"
    at = at or utcnow()
    session.add(Message(id=mid, client_ref=mid, conversation_id="c1", channel="whatsapp", recipient="+34600000000",
                        content="hi", status="failed", attempts=1, last_error=error, client_id=client_id,
                        created_at=at, updated_at=at))
    session.flush()
    session.add(MessageDelivery(message_id=mid, channel="whatsapp", status="failed", attempts=1, last_error=error))
    session.add(MessageStatusUpdate(message_id=mid, status="queued", detail="accepted", created_at=at))
    session.add(MessageStatusUpdate(message_id=mid, status="failed", detail=error, created_at=at + timedelta(seconds=1)))
    dl = DeadLetter(message_id=mid, channel="whatsapp", error=error, error_kind="permanent", attempts=1,
                    client_id=client_id)
    session.add(dl)
    session.flush()
    return mid, dl.id


def one_of_each(session: Session, client_id: int | None = None, at: datetime | None = None) -> dict[str, Any]:
    """One job of every family, each in a known status; their ledger ids by family."""
    from app.models.files import File
    from app.models.ocr import Upload
    from app.models.outbox import OutboxEvent
    from app.models.scans import ScanJob
    from app.models.schedules import CallRequest, Campaign, Lead, Tenant
    from app.models.voice import VoiceJob

    at = at or utcnow()
    ids: dict[str, Any] = {}
    up = Upload(id=hexid(), filename="card.png", storage_key="k", status="queued", client_id=client_id, created_at=at)
    scan = ScanJob(id=hexid(), url="https://example.com", state="FAILED", error="boom", client_id=client_id,
                   created_at=at)
    voice = VoiceJob(id=hexid(), transcript="hello", status="pending", client_id=client_id, created_at=at)
    f = File(id=hexid(), filename="a.bin", content_type="application/octet-stream", size=1, chunk_size=1,
             total_chunks=1, status="COMPLETED", client_id=client_id, created_at=at, completed_at=at)
    session.add_all([up, scan, voice, f])
    tenant = Tenant(name="t", client_id=client_id)
    session.add(tenant)
    session.flush()
    lead = Lead(tenant_id=tenant.id, name="l", client_id=client_id)
    session.add(lead)
    session.flush()
    camp = Campaign(tenant_id=tenant.id, channel="email", template="x", status="sent", client_id=client_id,
                    created_at=at)
    call = CallRequest(tenant_id=tenant.id, lead_id=lead.id, status="queued", client_id=client_id, created_at=at)
    ev = OutboxEvent(aggregate_type="x", aggregate_id="1", event_type="x", task_name="app.tasks.system.ping",
                     payload={"_trace": {"traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"}}, dead=True,
                     created_at=at)
    session.add_all([camp, call, ev])
    session.flush()
    mid, _ = dead_message(session, client_id=client_id, at=at)
    ids.update(ocr=up.id, scans=scan.id, voice=voice.id, files=f.id, campaigns=camp.public_id, calls=call.public_id,
               outbox=str(ev.id), messages=mid)
    return ids
