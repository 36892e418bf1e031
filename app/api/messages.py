"""Messages API: ``POST /api/messages`` (message + outbox event in one transaction) and
``GET /api/messages/<id>`` with the status history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from flask import Blueprint, current_app, url_for
from pydantic import BaseModel, Field, field_validator
from spectree import Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.ownership import is_admin, not_found, owner, scoped
from app.api.spec import BEARER, ViewResult, spec
from app.db import session_scope
from app.models.messages import Message
from app.services.messages import SYSTEM_ID_PREFIX, MessageConflict, submit_message

bp = Blueprint("messages", __name__)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class MessageCreate(BaseModel):
    id: str | None = Field(
        None, pattern=ID_PATTERN,
        description="Client-chosen id; the idempotency key, unique among this client's messages. "
        "Omitted: the server picks one.",
    )
    conversation_id: str = Field(min_length=1, max_length=128)
    channel: Literal["whatsapp", "instagram", "all"]
    recipient: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9+._:-]+$")
    content: str = Field(min_length=1, description="Text; at most MESSAGE_MAX_LENGTH characters.")

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(SYSTEM_ID_PREFIX):
            raise ValueError(f"ids starting with {SYSTEM_ID_PREFIX!r} are reserved for messages the system sends")
        return value


class MessageAccepted(BaseModel):
    id: str
    status: str
    status_url: str
    duplicate: bool = Field(description="True when this id was already accepted; nothing new was queued.")


class DeliveryOut(BaseModel):
    channel: str
    status: str
    attempts: int
    provider_message_id: str | None
    last_error: str | None


class StatusUpdateOut(BaseModel):
    status: str
    detail: str | None
    created_at: datetime


class MessageOut(BaseModel):
    id: str
    conversation_id: str
    channel: str
    recipient: str
    content: str
    status: str
    attempts: int
    last_error: str | None
    provider_message_ids: dict[str, str]
    created_at: datetime
    updated_at: datetime
    deliveries: list[DeliveryOut]
    history: list[StatusUpdateOut]


def message_out(message: Message) -> dict:
    return MessageOut(
        id=message.client_ref or message.id, conversation_id=message.conversation_id, channel=message.channel,
        recipient=message.recipient, content=message.content, status=message.status,
        attempts=message.attempts, last_error=message.last_error,
        provider_message_ids=message.provider_message_ids, created_at=message.created_at,
        updated_at=message.updated_at,
        deliveries=[DeliveryOut.model_validate(d, from_attributes=True) for d in message.deliveries],
        history=[StatusUpdateOut.model_validate(h, from_attributes=True) for h in message.history],
    ).model_dump(mode="json")


@bp.post("/api/messages")
@spec.validate(
    json=MessageCreate,
    resp=Response(HTTP_202=MessageAccepted, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_409=ErrorResponse),
    tags=["messages"], security=BEARER,
)
@require_api_key
def submit(json: MessageCreate) -> ViewResult:
    """Accept a message for WhatsApp, Instagram or both; it is routed asynchronously."""
    limit = current_app.config["SETTINGS"].message_max_length
    if len(json.content) > limit:
        raise ApiError(400, "validation_error", f"invalid request: content is longer than {limit} characters",
                       [{"loc": ["content"], "msg": f"at most {limit} characters", "type": "string_too_long"}])
    message_id = json.id or uuid.uuid4().hex
    for attempt in (1, 2):
        try:
            with session_scope() as session:
                message, created = submit_message(
                    session, client_id=owner(), client_ref=message_id, conversation_id=json.conversation_id,
                    channel=json.channel, recipient=json.recipient, content=json.content,
                )
                status = message.status
            break
        except MessageConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except IntegrityError:
            # The same id submitted twice at the same moment: the other request's insert
            # won. Once more, this request finds that message and answers as a duplicate
            # (or a conflict) instead of a 500.
            if attempt == 2:
                raise
    return {
        "id": message_id, "status": status, "duplicate": not created,
        "status_url": url_for("messages.get_message", message_id=message_id),
    }, 202


@bp.get("/api/messages/<message_id>")
@spec.validate(resp=Response(HTTP_200=MessageOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["messages"], security=BEARER)
@require_api_key
def get_message(message_id: str) -> ViewResult:
    """A message of the caller's by its id, its per-channel deliveries and its status history
    (the admin credential also finds the messages the system sends by their internal id)."""
    with session_scope() as session:
        message = session.scalars(scoped(select(Message).where(
            (Message.client_ref == message_id) | (Message.id == message_id) if is_admin()
            else Message.client_ref == message_id), Message).limit(1)).first()
        if message is None:
            raise not_found("message", message_id)
        return message_out(message)
