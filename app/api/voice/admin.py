"""Remote voice workers for admins: the JSON API and the server-rendered page."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, request, url_for
from itsdangerous import URLSafeTimedSerializer
from pydantic import BaseModel, Field
from spectree import Response

from app.api.auth import require_admin
from app.api.errors import ApiError, ErrorResponse
from app.api.spec import ADMIN, ViewResult, spec
from app.api.voice import _settings, bp
from app.db import session_scope
from app.services.voice import workers


class WorkerCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="What the worker is, e.g. `worker-01`.")


class WorkerOut(BaseModel):
    id: str
    name: str
    instance: str | None = Field(description="The WORKER_ID it reported in its heartbeat.")
    created_at: datetime
    revoked_at: datetime | None
    last_heartbeat_at: datetime | None
    last_active_at: datetime | None
    active: bool
    tasks_completed: int
    tasks_failed: int
    tasks_processed: int


class WorkerCreated(WorkerOut):
    token: str = Field(description="The worker's bearer token; shown once, store it now.")


class WorkerList(BaseModel):
    active_count: int
    total: int
    items: list[WorkerOut]


def worker_out(view: workers.WorkerView) -> dict[str, Any]:
    w = view.worker
    return WorkerOut(id=w.id, name=w.name, instance=w.instance, created_at=w.created_at, revoked_at=w.revoked_at,
                     last_heartbeat_at=w.last_heartbeat_at, last_active_at=view.last_active_at, active=view.active,
                     tasks_completed=w.tasks_completed, tasks_failed=w.tasks_failed,
                     tasks_processed=w.tasks_completed + w.tasks_failed).model_dump(mode="json")


@bp.post("/api/admin/workers")
@spec.validate(json=WorkerCreate, resp=Response(HTTP_201=WorkerCreated, HTTP_400=ErrorResponse,
                                                HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def create_worker(json: WorkerCreate) -> ViewResult:
    """Create a remote worker; the answer carries its token, shown this once."""
    settings = _settings()
    with session_scope() as session:
        worker, token = workers.create_worker(session, json.name, settings.signing_key(),
                                              settings.voice_worker_token_days)
        body = worker_out(workers.WorkerView(worker, False)) | {"token": token}
    return body, 201


@bp.get("/api/admin/workers")
@spec.validate(resp=Response(HTTP_200=WorkerList, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def list_workers() -> ViewResult:
    """Every remote worker: active or not, tasks processed, last active."""
    with session_scope() as session:
        views = workers.list_workers(session, _settings().voice_worker_active_seconds)
        return {"active_count": sum(v.active for v in views), "total": len(views),
                "items": [worker_out(v) for v in views]}


@bp.delete("/api/admin/workers/<worker_id>")
@spec.validate(resp=Response("HTTP_204", HTTP_401=ErrorResponse, HTTP_403=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["voice workers"], security=ADMIN)
@require_admin
def revoke_worker(worker_id: str) -> ViewResult:
    """Revoke a worker's token: its next call gets 401."""
    with session_scope() as session:
        if workers.revoke_worker(session, worker_id) is None:
            raise ApiError(404, "not_found", f"remote worker {worker_id!r} does not exist")
    return "", 204



# --- admin page (server-rendered) -----------------------------------------------------------
# A browser cannot send a bearer header, so the page asks for ADMIN_TOKEN once and keeps a
# signed, HttpOnly, SameSite=Strict cookie bound to that token (rotating ADMIN_TOKEN logs
# every browser out). Each form carries a CSRF token derived from the cookie.

page = Blueprint("workers_page", __name__, template_folder="templates")

_COOKIE = "workers_admin"
_COOKIE_MAX_AGE = 8 * 3600


def _page_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_settings().signing_key(), salt="voice.workers-admin")


def _token_tag() -> str:
    import hashlib

    return hashlib.sha256(_settings().admin_token.get_secret_value().encode()).hexdigest()[:16]


def _page_session() -> str | None:
    """The cookie value when it is a valid session for the current ADMIN_TOKEN."""
    from itsdangerous import BadSignature

    raw = request.cookies.get(_COOKIE)
    if not raw or not _settings().admin_token.get_secret_value():
        return None
    try:
        value = _page_serializer().loads(raw, max_age=_COOKIE_MAX_AGE)
    except BadSignature:
        return None
    return raw if value == {"t": _token_tag()} else None


def _csrf_for(cookie: str) -> str:
    import hashlib
    import hmac

    return hmac.new(_settings().signing_key(), b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def _check_csrf(cookie: str) -> None:
    import hmac

    if not hmac.compare_digest(request.form.get("csrf", ""), _csrf_for(cookie)):
        raise ApiError(400, "csrf_failed", "the form has expired; reload the page and try again")


def _render_page(cookie: str, status: int = 200, **context: Any) -> tuple[str, int]:
    from flask import render_template

    with session_scope() as session:
        views = workers.list_workers(session, _settings().voice_worker_active_seconds)
        rows = [worker_out(v) for v in views]
    return render_template("voice/workers.html", workers=rows, active_count=sum(r["active"] for r in rows),
                           csrf=_csrf_for(cookie), **context), status


def _render_login(status: int = 200, error: str | None = None) -> tuple[str, int]:
    from flask import render_template

    disabled = not _settings().admin_token.get_secret_value()
    return render_template("voice/login.html", error=error, disabled=disabled), 403 if disabled else status


@page.get("/admin/workers")
def workers_page() -> ViewResult:
    """The Workers admin page: list, add (token shown once), revoke."""
    cookie = _page_session()
    if cookie is None:
        return _render_login()
    return _render_page(cookie, revoked=request.args.get("revoked"))


@page.post("/admin/login")
def workers_login() -> ViewResult:
    """Check ADMIN_TOKEN from the form and start a page session."""
    import hmac

    from flask import redirect

    from app.api.auth import client_address, failure_limiter

    expected = _settings().admin_token.get_secret_value()
    if not expected:
        return _render_login()
    # The sign-in form guesses ADMIN_TOKEN like a bearer header would: same limiter.
    limiter = failure_limiter()
    wait = limiter.retry_after(client_address())
    if wait is not None:
        body, status = _render_login(429, f"Too many failed sign-ins; try again in {wait} s.")
        return body, status, {"Retry-After": str(wait)}
    if not hmac.compare_digest(request.form.get("token", "").encode(), expected.encode()):
        limiter.record_failure(client_address())
        return _render_login(401, "Wrong admin token.")
    resp = redirect(url_for("voice.workers_page.workers_page"), code=303)
    resp.set_cookie(_COOKIE, _page_serializer().dumps({"t": _token_tag()}), max_age=_COOKIE_MAX_AGE,
                    httponly=True, samesite="Strict", secure=request.is_secure, path="/admin")
    return resp


@page.post("/admin/logout")
def workers_logout() -> ViewResult:
    """End the page session."""
    from flask import redirect

    resp = redirect(url_for("voice.workers_page.workers_page"), code=303)
    resp.delete_cookie(_COOKIE, path="/admin")
    return resp


@page.post("/admin/workers")
def workers_page_add() -> ViewResult:
    """Create a worker and show its token in this response only (a reload does not show it)."""
    cookie = _page_session()
    if cookie is None:
        return _render_login(401, "Please sign in again.")
    _check_csrf(cookie)
    name = (request.form.get("name") or "").strip()
    if not name or len(name) > 200:
        return _render_page(cookie, 400, error="A worker needs a name of 1 to 200 characters.")
    settings = _settings()
    with session_scope() as session:
        worker, token = workers.create_worker(session, name, settings.signing_key(), settings.voice_worker_token_days)
        created = {"id": worker.id, "name": worker.name}
    return _render_page(cookie, 201, created=created, new_token=token)


@page.post("/admin/workers/<worker_id>/revoke")
def workers_page_revoke(worker_id: str) -> ViewResult:
    """Revoke a worker, then show the list again."""
    from flask import redirect

    cookie = _page_session()
    if cookie is None:
        return _render_login(401, "Please sign in again.")
    _check_csrf(cookie)
    with session_scope() as session:
        if workers.revoke_worker(session, worker_id) is None:
            return _render_page(cookie, 404, error=f"No worker {worker_id}.")
    return redirect(url_for("voice.workers_page.workers_page", revoked=worker_id), code=303)


bp.register_blueprint(page)
