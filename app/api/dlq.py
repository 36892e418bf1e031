"""Dead-letter queue: list failed deliveries and replay them through the outbox; a client
sees and replays only its own messages' dead letters (``app.api.ownership``), the admin
credential every client's. Also the outbox's own dead events (admin), visible and replayable."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from flask import Blueprint
from pydantic import BaseModel, Field
from spectree import Response

from app.api.auth import require_admin, require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.ownership import not_found, owned, owner_clause
from app.api.spec import ADMIN, BEARER, ViewResult, spec
from app.db import session_scope
from app.models.messages import DeadLetter
from app.services import outbox as outbox_service
from app.services.messages import NotReplayable, list_dead_letters, replay_dead_letter

bp = Blueprint("dlq", __name__)


class DlqQuery(BaseModel):
    channel: Literal["whatsapp", "instagram"] | None = None
    error: str | None = Field(None, max_length=200, description="Error kind (`permanent`, `exhausted`, `unknown_outcome`) or text.")
    replayed: bool | None = None
    page: int = Field(1, ge=1, le=100000)
    per_page: int = Field(50, ge=1, le=500)
    client_id: int | None = Field(None, ge=1, description="Admin credential only: one client's dead letters.")


class DeadLetterOut(BaseModel):
    id: int
    message_id: str
    channel: str
    error: str
    error_kind: str
    attempts: int
    created_at: datetime
    replayed_at: datetime | None


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    total: int
    page: int
    per_page: int


class Replayed(BaseModel):
    id: int
    message_id: str
    replayed_at: datetime
    status_url: str


class OutboxQuery(BaseModel):
    state: Literal["dead", "pending", "all"] = "dead"
    page: int = Field(1, ge=1, le=100000)
    per_page: int = Field(50, ge=1, le=500)


class OutboxEventOut(BaseModel):
    id: int
    aggregate_type: str
    aggregate_id: str
    event_type: str
    task_name: str
    created_at: datetime
    published_at: datetime | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    dead: bool


class OutboxPage(BaseModel):
    items: list[OutboxEventOut]
    page: int
    per_page: int


@bp.get("/api/dlq")
@spec.validate(query=DlqQuery, resp=Response(HTTP_200=DeadLetterPage, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["dlq"], security=BEARER)
@require_api_key
def list_dlq(query: DlqQuery) -> ViewResult:
    """Dead letters, newest first, filtered by channel, error and replay state."""
    with session_scope() as session:
        rows, total = list_dead_letters(
            session, channel=query.channel, error=query.error, replayed=query.replayed,
            limit=query.per_page, offset=(query.page - 1) * query.per_page, where=owner_clause(DeadLetter),
        )
        items = [DeadLetterOut.model_validate(r, from_attributes=True).model_copy(update={"message_id": r.message_ref})
                 .model_dump(mode="json") for r in rows]
    return {"items": items, "total": total, "page": query.page, "per_page": query.per_page}


@bp.post("/api/dlq/<int(max=9223372036854775807):dead_letter_id>/replay")
@spec.validate(resp=Response(HTTP_202=Replayed, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["dlq"], security=BEARER)
@require_api_key
def replay(dead_letter_id: int) -> ViewResult:
    """Send the dead letter's channel again, through the outbox."""
    try:
        with session_scope() as session:
            owned(session, DeadLetter, dead_letter_id, "dead letter", lock=True)
            dl = replay_dead_letter(session, dead_letter_id)
            ref = dl.message_ref
            replayed_at = dl.replayed_at.isoformat() if dl.replayed_at else None
            body = {"id": dl.id, "message_id": ref, "replayed_at": replayed_at}
    except LookupError:
        raise not_found("dead letter", dead_letter_id) from None
    except NotReplayable as exc:
        raise ApiError(409, "not_replayable", str(exc)) from None
    body["status_url"] = f"/api/messages/{body['message_id']}"
    return body, 202


@bp.get("/api/admin/outbox")
@spec.validate(query=OutboxQuery, resp=Response(HTTP_200=OutboxPage, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["outbox"], security=ADMIN)
@require_admin
def list_outbox(query: OutboxQuery) -> ViewResult:
    """Outbox events: dead ones (default), pending ones, or all."""
    with session_scope() as session:
        rows = outbox_service.list_events(
            session,
            dead=True if query.state == "dead" else None,
            pending=query.state == "pending",
            limit=query.per_page, offset=(query.page - 1) * query.per_page,
        )
        items = [OutboxEventOut.model_validate(r, from_attributes=True).model_dump(mode="json") for r in rows]
    return {"items": items, "page": query.page, "per_page": query.per_page}


@bp.post("/api/admin/outbox/<int(max=9223372036854775807):event_id>/replay")
@spec.validate(resp=Response(HTTP_202=OutboxEventOut, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse, HTTP_409=ErrorResponse),
               tags=["outbox"], security=ADMIN)
@require_admin
def replay_outbox(event_id: int) -> ViewResult:
    """Give a dead outbox event fresh attempts."""
    try:
        with session_scope() as session:
            event = outbox_service.replay_dead(session, event_id)
            if event is None:
                raise ApiError(404, "not_found", f"outbox event {event_id} does not exist")
            body = OutboxEventOut.model_validate(event, from_attributes=True).model_dump(mode="json")
    except outbox_service.NotDead as exc:
        raise ApiError(409, "not_dead", str(exc)) from None
    return body, 202
