"""The operator console under ``/console``: server-rendered pages and the JSON API behind
them (``/console/api/...``), both calling ``app.services.console``.

Who: an operator signed in with the console's form (a signed cookie: HttpOnly,
SameSite=Strict, Secure over HTTPS and always in production; each form carries a CSRF
token derived from it), or automation with ``Authorization: Bearer <ADMIN_TOKEN>``
(acting as an admin named ``admin-token``). A viewer sees; an operator also acts; an
admin also purges queues and manages operators. Every action lands in the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, current_app, g, request

from app.api.errors import ApiError
from app.db import session_scope
from app.services.console.operators import role_at_least

bp = Blueprint("console", __name__, template_folder="templates")

COOKIE = "console_session"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Actor:
    name: str
    role: str
    via_token: bool = False


def _settings() -> Any:
    return current_app.config["SETTINGS"]


def serializer() -> Any:
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(_settings().signing_key(), salt="console.session")


def password_tag(password_hash: str) -> str:
    """Binds a session to the password it was opened with: a changed password ends it."""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


def _from_cookie() -> Actor | None:
    from itsdangerous import BadSignature

    from app.models.console import Operator

    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        value = serializer().loads(raw, max_age=int(_settings().console_session_hours * 3600))
    except BadSignature:
        return None
    with session_scope() as session:
        op = session.get(Operator, value.get("op"))
        if op is None or op.disabled_at is not None or value.get("t") != password_tag(op.password_hash):
            return None
        return Actor(op.name, op.role)


def _from_token() -> Actor | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    from app.api.auth import _check_admin

    _check_admin()  # 401 / 403 / 429 as for every admin route (failure-limited)
    return Actor("admin-token", "admin", via_token=True)


def current_actor() -> Actor | None:
    """The caller (bearer ADMIN_TOKEN first, then the session cookie), or None."""
    if "console_actor" not in g:
        g.console_actor = _from_token() or _from_cookie()
    return g.console_actor


def csrf_token() -> str:
    raw = request.cookies.get(COOKIE, "")
    return hmac.new(_settings().signing_key(), b"console-csrf:" + raw.encode(), hashlib.sha256).hexdigest()


def check_csrf() -> None:
    """A form post must carry the CSRF token of this session (bearer calls need none)."""
    actor = current_actor()
    if actor is not None and actor.via_token:
        return
    sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
    if not hmac.compare_digest(sent, csrf_token()):
        raise ApiError(400, "csrf_failed", "the form has expired or did not come from the console; reload the page")


def need(role: str) -> Actor:
    """The caller, who must hold ``role`` or above: 401 when nobody is signed in, 403 when
    the caller's role is below it."""
    actor = current_actor()
    if actor is None:
        raise ApiError(401, "unauthorized", "sign in to the console or send Authorization: Bearer ADMIN_TOKEN")
    if not role_at_least(actor.role, role):
        raise ApiError(403, "forbidden", f"this needs the {role} role; {actor.name} is a {actor.role}")
    return actor


def requires(role: str) -> Callable[[F], F]:
    """Decorator: ``need(role)`` before the view (and a CSRF check on a cookie's POST)."""

    def decorator(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            need(role)
            if request.method in ("POST", "PUT", "PATCH", "DELETE"):
                check_csrf()
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


from app.api.console import jsonapi, pages  # noqa: E402,F401  (register their routes on bp)
