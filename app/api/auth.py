"""Bearer authentication: client API keys for /api routes, ADMIN_TOKEN for admin routes."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import current_app, g, request

from app.api.errors import ApiError
from app.db import session_scope
from app.services.auth import verify_api_key

F = TypeVar("F", bound=Callable[..., Any])


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token in the Authorization header")
    return token.strip()


def require_api_key(view: F) -> F:
    """Reject the request with 401 unless it carries an active client API key."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        with session_scope() as session:
            key = verify_api_key(session, token)
            if key is None:
                raise ApiError(401, "unauthorized", "unknown or revoked API key")
            g.api_key_id = key.id
            g.api_key_name = key.name
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_admin(view: F) -> F:
    """Reject the request unless it carries ADMIN_TOKEN (403 when none is configured)."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        expected = current_app.config["SETTINGS"].admin_token.get_secret_value()
        if not expected:
            raise ApiError(403, "admin_disabled", "admin routes are disabled: ADMIN_TOKEN is not set")
        token = _bearer()
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise ApiError(401, "unauthorized", "wrong admin token")
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
