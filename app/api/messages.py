"""Messages API: ``POST /api/messages`` (message + outbox event in one transaction) and
``GET /api/messages/<id>`` with the status history."""

from __future__ import annotations

import collections
import uuid
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, current_app, url_for
from pydantic import BaseModel, Field, ValidationError, field_validator
from spectree import Response
from sqlalchemy import select

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.limits import charge_rate_limit
from app.api.ownership import is_admin, not_found, owner, scoped
from app.api.spec import BEARER, ViewResult, spec
from app.db import session_scope
from app.models.messages import Message
from app.services.messages import SYSTEM_ID_PREFIX, NewMessage, Submitted, submit_messages

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
    too_long = _too_long(json, current_app.config["SETTINGS"].message_max_length)
    if too_long is not None:
        raise ApiError(400, "validation_error", f"invalid request: {too_long['msg']}", [too_long])
    message_id = json.id or uuid.uuid4().hex
    with session_scope() as session:
        result = submit_messages(session, [_new_message(json, message_id)], client_id=owner())[0]
    if result.conflict is not None:
        raise ApiError(409, "conflict", result.conflict)
    return {
        "id": message_id, "status": result.status, "duplicate": not result.created,
        "status_url": url_for("messages.get_message", message_id=message_id),
    }, 202


def _too_long(json: MessageCreate, limit: int) -> dict[str, Any] | None:
    """The validation error of content over MESSAGE_MAX_LENGTH, or None."""
    if len(json.content) <= limit:
        return None
    return {"loc": ["content"], "msg": f"content is longer than {limit} characters", "type": "string_too_long"}


def _new_message(json: MessageCreate, message_id: str) -> NewMessage:
    return NewMessage(json.conversation_id, json.channel, json.recipient, json.content, client_ref=message_id)


class MessageBatch(BaseModel):
    items: list[Any] = Field(
        min_length=1,
        description="The messages, each a `MessageCreate` object (the body of `POST /api/messages`), at most "
        "MESSAGES_BATCH_MAX. Each item is validated on its own: an invalid item is answered in its place and "
        "the others are accepted. The schema leaves the items free for that reason: a malformed item "
        "is not a malformed request.",
    )


class BatchItemError(BaseModel):
    code: str = Field(description="`validation_error` or `conflict` (the id names a different message).")
    message: str
    details: list[dict[str, Any]] | None = None


class BatchItemResult(BaseModel):
    index: int = Field(description="Position of the item in the request.")
    id: str | None = Field(description="The message's id (the client's, or the one the server picked); "
                           "null for an item without a valid id.")
    status: str = Field(description="The message's status (`queued` …), or `rejected`: nothing was written for it.")
    duplicate: bool = Field(description="True when this id was already accepted; nothing new was queued.")
    status_url: str | None
    error: BatchItemError | None = None


class BatchAccepted(BaseModel):
    accepted: int = Field(description="Items accepted now (new messages).")
    duplicates: int = Field(description="Items naming a message already accepted with the same content.")
    rejected: int = Field(description="Items refused: invalid, or their id names a different message.")
    items: list[BatchItemResult]


@bp.post("/api/messages/batch")
@spec.validate(
    json=MessageBatch,
    resp=Response(HTTP_202=BatchAccepted, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_429=ErrorResponse),
    tags=["messages"], security=BEARER,
)
@require_api_key
def submit_batch(json: MessageBatch) -> ViewResult:
    """Accept up to MESSAGES_BATCH_MAX messages in one request and one transaction; each
    item is answered in its place (accepted, duplicate, or rejected with its error), as
    `POST /api/messages` would answer it alone. The batch counts one request per item
    against the client's rate limit."""
    settings = current_app.config["SETTINGS"]
    if len(json.items) > settings.messages_batch_max:
        raise ApiError(400, "validation_error", f"invalid request: items: at most {settings.messages_batch_max} "
                       f"items a batch, not {len(json.items)}",
                       [{"loc": ["items"], "msg": f"at most {settings.messages_batch_max} items",
                         "type": "too_long"}])
    charge_rate_limit(len(json.items) - 1)  # the request itself was counted when it was authenticated
    answers: list[dict[str, Any]] = [{} for _ in json.items]
    valid: list[tuple[int, NewMessage]] = []
    for index, raw in enumerate(json.items):
        item, error = _validated(raw, settings.message_max_length)
        if item is None:
            answers[index] = _rejected(index, _raw_id(raw), error)
        else:
            valid.append((index, _new_message(item, item.id or uuid.uuid4().hex)))
    with session_scope() as session:
        results = submit_messages(session, [m for _, m in valid], client_id=owner())
    base = url_for("messages.get_message", message_id="~")[:-1]
    for (index, new), result in zip(valid, results, strict=True):
        answers[index] = _answer(index, new.client_ref, result, base)
    counts = collections.Counter("rejected" if a["error"] else "duplicates" if a["duplicate"] else "accepted"
                                 for a in answers)
    return {"accepted": counts["accepted"], "duplicates": counts["duplicates"], "rejected": counts["rejected"],
            "items": answers}, 202


def _raw_id(raw: Any) -> str | None:
    """An invalid item's id as sent, when it sent one."""
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _validated(raw: Any, max_length: int) -> tuple[MessageCreate | None, dict[str, Any]]:
    """An item as ``POST /api/messages`` validates its body: the model or the error."""
    try:
        item = MessageCreate.model_validate(raw)
    except ValidationError as exc:
        details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                   for e in exc.errors(include_url=False, include_context=False)]
        fields = ", ".join(".".join(str(p) for p in d["loc"]) or "item" for d in details)
        return None, {"code": "validation_error", "message": f"invalid item: {fields}", "details": details}
    too_long = _too_long(item, max_length)
    if too_long is not None:
        return None, {"code": "validation_error", "message": f"invalid item: {too_long['msg']}",
                      "details": [too_long]}
    return item, {}


def _rejected(index: int, message_id: str | None, error: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "id": message_id, "status": "rejected", "duplicate": False, "status_url": None,
            "error": error}


def _answer(index: int, message_id: str | None, result: Submitted, base: str) -> dict[str, Any]:
    if result.conflict is not None:
        return _rejected(index, message_id, {"code": "conflict", "message": result.conflict, "details": None})
    return {"index": index, "id": message_id, "status": result.status, "duplicate": not result.created,
            "status_url": f"{base}{message_id}", "error": None}


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
