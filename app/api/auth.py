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


#: Attribute carrying a route's authentication check; it survives ``functools.wraps``
#: (which copies ``__dict__``), so the request-validation hook can authenticate first.
AUTH_ATTR = "_authenticate"


def protected(authenticate: Callable[[], None]) -> Callable[[F], F]:
    """Decorator factory: run ``authenticate()`` (raising ``ApiError``) before the view."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            authenticate()
            return view(*args, **kwargs)

        setattr(wrapper, AUTH_ATTR, authenticate)
        return wrapper  # type: ignore[return-value]

    return decorator


def authenticate_route(view: Callable[..., Any] | None) -> None:
    """Run the route's authentication check, if it has one (used before reporting a
    validation error, so an unauthenticated caller learns nothing about the schema)."""
    check = getattr(view, AUTH_ATTR, None)
    if check is not None:
        check()


def _check_api_key() -> None:
    token = _bearer()
    with session_scope() as session:
        key = verify_api_key(session, token)
        if key is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        g.api_key_id = key.id
        g.api_key_name = key.name


def _check_admin() -> None:
    expected = current_app.config["SETTINGS"].admin_token.get_secret_value()
    if not expected:
        raise ApiError(403, "admin_disabled", "admin routes are disabled: ADMIN_TOKEN is not set")
    token = _bearer()
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "wrong admin token")


#: Reject the request with 401 unless it carries an active client API key.
require_api_key = protected(_check_api_key)
#: Reject the request unless it carries ADMIN_TOKEN (403 when none is configured).
require_admin = protected(_check_admin)
