"""The one scoping mechanism of the API: every read, list and action on a client's work.

A client API key sets ``g.client_id`` (``app.api.auth``); the admin credential leaves it
None and sees every client (lists take ``?client_id=`` to filter). ``owned`` fetches one
object of the caller's and answers **404 exactly like a missing one** otherwise, so an id
of another client's object tells nothing; ``owner_clause`` / ``scoped`` narrow a query
to the caller's rows;
``owner`` is the client a new row records.
"""

from __future__ import annotations

from typing import Any, TypeVar

from flask import g, request
from sqlalchemy import ColumnElement, Select, select, true
from sqlalchemy.orm import Session

from app.api.errors import ApiError

T = TypeVar("T")


def owner() -> int | None:
    """The client that new rows of this request belong to (None: the admin credential)."""
    return g.get("client_id")


def is_admin() -> bool:
    return bool(g.get("is_admin"))


def not_found(what: str, ident: Any) -> ApiError:
    """The one 404 body of a missing object, and of another client's."""
    return ApiError(404, "not_found", f"{what} {str(ident)!r} does not exist")


def visible(row: Any) -> bool:
    """Whether the caller may see ``row`` (a client-owned model instance)."""
    return row is not None and (is_admin() or row.client_id == owner())


def _get(session: Session, model: type[T], ident: Any, by: Any, lock: bool) -> T | None:
    if by is None:
        return session.get(model, ident, with_for_update=lock or None)
    stmt = select(model).where(by == ident)
    return session.scalars(stmt.with_for_update() if lock else stmt).first()


def owned(session: Session, model: type[T], ident: Any, what: str, *, by: Any = None, lock: bool = False) -> T:
    """The caller's ``model`` row whose primary key (or column ``by``, e.g. a public id) is
    ``ident``; 404 when missing or another's. ``lock`` for an action whose service locks the
    row too: read unlocked first, the session would keep serving the stale row."""
    row = _get(session, model, ident, by, lock)
    if not visible(row):
        raise not_found(what, ident)
    return row  # type: ignore[return-value]


def owner_clause(model: type[Any]) -> ColumnElement[bool]:
    """The condition on ``model`` rows the caller may list: its own; for the admin, all
    of them, or one client's by ``?client_id=``. List services take it as ``where``."""
    if is_admin():
        wanted = request.args.get("client_id", type=int)
        return true() if wanted is None else model.client_id == wanted
    return model.client_id == owner()


def scoped(stmt: Select[Any], model: type[Any]) -> Select[Any]:
    """``stmt`` narrowed to the rows of ``model`` the caller may list."""
    return stmt.where(owner_clause(model))


def referenced(session: Session, model: type[T], ident: Any, error: Exception, *, by: Any = None) -> T:
    """An object a request refers to (a campaign's tenant, a call's lead): the caller's
    ``model`` row, else ``error``, the very error of a missing one."""
    row = _get(session, model, ident, by, False)
    if not visible(row):
        raise error
    return row  # type: ignore[return-value]
