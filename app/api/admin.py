"""Admin routes (ADMIN_TOKEN): client API keys. Plus ``GET /api/me`` for a client to test its key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, g
from pydantic import BaseModel, Field
from spectree import Response

from app.api.auth import require_admin, require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.spec import ADMIN, BEARER, ViewResult, spec
from app.db import session_scope
from app.models.auth import ApiKey
from app.services.auth import UnknownClient, create_api_key, list_api_keys, revoke_api_key

bp = Blueprint("admin", __name__)


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="Who or what the key is for.")
    client_id: int | None = Field(None, ge=1, le=2147483647, description="Add the key to this client (rotation: "
                                  "it keeps access to the client's work). Omitted: a new client named `name`.")


class ApiKeyOut(BaseModel):
    id: int
    client_id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret; shown once, store it now.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class Me(BaseModel):
    api_key_id: int | None
    client_id: int | None = Field(description="The client owning this key's work; null for the admin credential.")
    name: str


def _out(key: ApiKey) -> dict[str, Any]:
    return ApiKeyOut.model_validate(key, from_attributes=True).model_dump(mode="json")


@bp.post("/api/admin/api-keys")
@spec.validate(json=ApiKeyCreate, resp=Response(HTTP_201=ApiKeyCreated, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse), tags=["admin"], security=ADMIN)
@require_admin
def create_key(json: ApiKeyCreate) -> ViewResult:
    """Create an API key: for a new client, or with `client_id` for an existing one."""
    with session_scope() as session:
        try:
            key, token = create_api_key(session, json.name, json.client_id)
        except UnknownClient:
            raise ApiError(400, "validation_error", f"invalid request: client_id: no client {json.client_id}",
                           [{"loc": ["client_id"], "msg": "no such client", "type": "value_error"}]) from None
        body = _out(key) | {"key": token}
    return body, 201


@bp.get("/api/admin/api-keys")
@spec.validate(resp=Response(HTTP_200=ApiKeyList, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse), tags=["admin"], security=ADMIN)
@require_admin
def list_keys() -> ViewResult:
    """List client API keys (never their secrets)."""
    with session_scope() as session:
        return {"items": [_out(k) for k in list_api_keys(session)]}


@bp.delete("/api/admin/api-keys/<int(max=2147483647):key_id>")  # api_keys.id is a 32-bit integer
@spec.validate(resp=Response("HTTP_204", HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse), tags=["admin"], security=ADMIN)
@require_admin
def revoke_key(key_id: int) -> ViewResult:
    """Revoke a client API key; it stops working at once."""
    with session_scope() as session:
        if not revoke_api_key(session, key_id):
            raise ApiError(404, "not_found", f"API key {key_id} does not exist")
    return "", 204


@bp.get("/api/me")
@spec.validate(resp=Response(HTTP_200=Me, HTTP_401=ErrorResponse), tags=["auth"], security=BEARER)
@require_api_key
def me() -> ViewResult:
    """The API key the request authenticated with."""
    return {"api_key_id": g.api_key_id, "client_id": g.client_id, "name": g.api_key_name}
