"""The console's server-rendered pages (Jinja, no JavaScript)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import current_app, redirect, render_template, request, url_for

from app.api.console import COOKIE, bp, check_csrf, csrf_token, current_actor, need, ops, password_tag, serializer
from app.api.errors import ApiError
from app.db import session_scope
from app.models.console import FAMILIES, LEDGER_STATES
from app.services.console import ledger, operators

PAGE_SIZE = 50


def render(template: str, status: int = 200, **context: Any) -> Any:
    actor = current_actor()
    return render_template(f"console/{template}", actor=actor, csrf=csrf_token() if actor else "",
                           **context), status


def page(role: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A page for ``role`` and above: the sign-in form (401) when nobody is signed in, the
    refusal (403/400) as a page otherwise; a POST must carry the CSRF token."""

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if current_actor() is None:
                nxt = request.full_path.rstrip("?") if request.method == "GET" else ""
                return render("login.html", 401, error=None, next=nxt)
            try:
                need(role)
                if request.method == "POST":
                    check_csrf()
                return view(*args, **kwargs)
            except ApiError as exc:
                return render("error.html", exc.status, error=exc.message, code=exc.code)

        return wrapper

    return decorator


@bp.get("/console/login")
def login_page() -> Any:
    return render("login.html", error=None, next=request.args.get("next", ""))


def _login_limited() -> int | None:
    """Seconds to wait when this address is over CONSOLE_LOGIN_LIMIT (the API's limiter)."""
    import time

    from limits import parse

    from app.api.auth import client_address
    from app.api.limits import limiter

    notation = current_app.config["SETTINGS"].console_login_limit
    if not notation:
        return None
    item = parse(notation)
    try:
        if limiter().hit(item, "console-login", client_address()):
            return None
        reset = limiter().get_window_stats(item, "console-login", client_address()).reset_time
    except Exception:  # Redis down: availability first, as for every limit (docs/security.md)
        return None
    return max(1, int(reset - time.time()) + 1)


@bp.post("/console/login")
def login_submit() -> Any:
    """Check name and password; open a session cookie."""
    wait = _login_limited()
    if wait is not None:
        body, status = render("login.html", 429, error=f"Too many sign-ins; try again in {wait} s.", next="")
        return body, status, {"Retry-After": str(wait)}
    name, password = request.form.get("name", "").strip(), request.form.get("password", "")
    with session_scope() as session:
        op = operators.authenticate(session, name, password)
        value = {"op": op.id, "t": password_tag(op.password_hash)} if op else None
    if value is None:
        return render("login.html", 401, error="Wrong name or password.", next=request.form.get("next", ""))
    nxt = request.form.get("next", "")
    resp = redirect(nxt if nxt.startswith("/console") else url_for("console.overview_page"), code=303)
    settings = current_app.config["SETTINGS"]
    resp.set_cookie(COOKIE, serializer().dumps(value), max_age=int(settings.console_session_hours * 3600),
                    httponly=True, samesite="Strict", path="/console",
                    secure=request.is_secure or settings.environment == "production")
    return resp


@bp.post("/console/logout")
def logout() -> Any:
    resp = redirect(url_for("console.login_page"), code=303)
    resp.delete_cookie(COOKIE, path="/console")
    return resp


@bp.get("/console")
@page("viewer")
def overview_page() -> Any:
    return render("overview.html", data=ops.overview())


@bp.get("/console/jobs")
@page("viewer")
def jobs_page() -> Any:
    try:
        f = ledger.parse_filter(request.args)
        with session_scope() as session:
            result = ledger.list_jobs(session, f, PAGE_SIZE, request.args.get("after") or None)
    except ledger.FilterError as exc:
        return render("jobs.html", 400, rows=[], next_url=None, error=str(exc), args=request.args,
                      families=FAMILIES, states=LEDGER_STATES)
    kept = {k: v for k, v in request.args.items() if k != "after" and v}
    next_url = url_for("console.jobs_page", **(kept | {"after": result.next_cursor})) if result.next_cursor else None  # type: ignore[arg-type]
    return render("jobs.html", rows=result.rows, next_url=next_url, error=None, args=request.args,
                  families=FAMILIES, states=LEDGER_STATES)


@bp.get("/console/jobs/<family>/<job_id>")
@page("viewer")
def job_page(family: str, job_id: str) -> Any:
    with session_scope() as session:
        detail = ops.job_detail(session, family, job_id)
        return render("job.html", d=detail)


@bp.post("/console/bulk")
@page("operator")
def bulk_page() -> Any:
    """Dry run (``confirm`` absent) shows the count and a confirm button; confirm acts."""
    params = {k: v for k, v in request.form.items() if k in ("family", "state", "client_id", "since", "until", "q",
                                                              "error")}
    action = request.form.get("action", "")
    confirm = request.form.get("confirm") == "yes"
    expected = request.form.get("expected")
    result = ops.bulk(current_actor(), action, params, dry_run=not confirm,  # type: ignore[arg-type]
                      expected=int(expected) if expected and expected.isdigit() else None)
    return render("bulk.html", result=result, params=params)


@bp.get("/console/queues")
@page("viewer")
def queues_page() -> Any:
    return render("queues.html", data=ops.overview(), done=request.args.get("done"))


@bp.post("/console/queues/<queue>/<action>")
@page("operator")
def queue_action_page(queue: str, action: str) -> Any:
    if action not in ("pause", "resume", "purge"):
        raise ApiError(404, "not_found", f"no queue action {action!r}")
    if action == "purge":
        need("admin")
    ops.queue_action(current_actor(), queue, action, request.form.get("confirm"))  # type: ignore[arg-type]
    return redirect(url_for("console.queues_page", done=f"{action} {queue}"), code=303)


@bp.get("/console/schedules")
@page("viewer")
def schedules_page() -> Any:
    return render("schedules.html", entries=ops.schedule_list(), done=request.args.get("done"))


@bp.post("/console/schedules/<name>/<action>")
@page("operator")
def schedule_action_page(name: str, action: str) -> Any:
    if action not in ("pause", "resume", "run"):
        raise ApiError(404, "not_found", f"no schedule action {action!r}")
    ops.schedule_action(current_actor(), name, action)  # type: ignore[arg-type]
    return redirect(url_for("console.schedules_page", done=f"{action} {name}"), code=303)


@bp.get("/console/workers")
@page("viewer")
def workers_page() -> Any:
    from app.services.console.queues import workers

    return render("workers.html", celery_workers=workers(ops.celery()), remote=ops.remote_workers())


@bp.get("/console/audit")
@page("viewer")
def audit_page() -> Any:
    before = request.args.get("before")
    with session_scope() as session:
        before_id = int(before) if before and before.isdigit() and len(before) < 19 else None
        entries = operators.audit_log(session, 100, before_id,
                                      request.args.get("actor") or None)
        return render("audit.html", entries=entries)


@bp.get("/console/operators")
@page("admin")
def operators_page() -> Any:
    with session_scope() as session:
        return render("operators.html", operators=operators.list_operators(session), error=None)


@bp.post("/console/operators")
@page("admin")
def operators_add() -> Any:
    name, role, password = (request.form.get(k, "") for k in ("name", "role", "password"))
    try:
        with session_scope() as session:
            operators.create_operator(session, name.strip(), role, password)
    except operators.OperatorError as exc:
        with session_scope() as session:
            return render("operators.html", 400, operators=operators.list_operators(session), error=str(exc))
    ops.audit(current_actor(), "operator.create", target=name, detail=f"role {role}")  # type: ignore[arg-type]
    return redirect(url_for("console.operators_page"), code=303)
