"""Operator accounts (argon2id password hashes, roles) and the append-only audit log.

Roles are ordered: a ``viewer`` sees everything, an ``operator`` also acts (replay,
cancel, pause, run now), an ``admin`` also purges queues and manages operators.
"""

from __future__ import annotations

import json
import re
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.console import ROLES, AuditEntry, Operator

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()
#: Verified against when the name is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


class OperatorError(ValueError):
    """A name, role or password the console refuses."""


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def _check(name: str, role: str, password: str | None) -> None:
    if not NAME.match(name):
        raise OperatorError("name: 1 to 100 letters, digits or . _ @ -, starting with a letter or digit")
    if role not in ROLES:
        raise OperatorError(f"role: one of {', '.join(ROLES)}")
    if password is not None and len(password) < MIN_PASSWORD:
        raise OperatorError(f"password: at least {MIN_PASSWORD} characters")


def create_operator(session: Session, name: str, role: str, password: str) -> Operator:
    """Add an operator; a name already taken is refused."""
    _check(name, role, password)
    if session.scalars(select(Operator).where(Operator.name == name)).first() is not None:
        raise OperatorError(f"an operator named {name!r} exists")
    operator = Operator(name=name, role=role, password_hash=_hasher.hash(password))
    session.add(operator)
    session.flush()
    return operator


def authenticate(session: Session, name: str, password: str) -> Operator | None:
    """The enabled operator with this name and password, or None."""
    operator = session.scalars(select(Operator).where(Operator.name == name)).first()
    try:
        _hasher.verify(operator.password_hash if operator else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if operator is None or operator.disabled_at is not None:
        return None
    if _hasher.check_needs_rehash(operator.password_hash):
        operator.password_hash = _hasher.hash(password)
    operator.last_login_at = utcnow()
    return operator


def list_operators(session: Session) -> list[Operator]:
    return list(session.scalars(select(Operator).order_by(Operator.name)))


def update_operator(session: Session, name: str, *, role: str | None = None, disabled: bool | None = None,
                    password: str | None = None) -> Operator:
    """Change an operator's role, password, or disable / enable it."""
    operator = session.scalars(select(Operator).where(Operator.name == name).with_for_update()).first()
    if operator is None:
        raise LookupError(f"no operator named {name!r}")
    _check(name, role or operator.role, password)
    if role is not None:
        operator.role = role
    if password is not None:
        operator.password_hash = _hasher.hash(password)
    if disabled is not None:
        operator.disabled_at = utcnow() if disabled else None
    return operator


def record(session: Session, actor: str, action: str, *, target: str | None = None,
           filter: dict[str, Any] | None = None, count: int | None = None, outcome: str = "ok",
           detail: str | None = None) -> AuditEntry:
    """Append one action to the audit log, in the caller's transaction."""
    entry = AuditEntry(actor=actor, action=action, target=target, count=count, outcome=outcome,
                       filter=json.dumps(filter, sort_keys=True) if filter else None,
                       detail=detail[:2000] if detail else None)
    session.add(entry)
    session.flush()
    return entry


def audit_log(session: Session, limit: int = 100, before_id: int | None = None,
              actor: str | None = None) -> list[AuditEntry]:
    """The newest entries first; ``before_id`` pages back."""
    stmt = select(AuditEntry)
    if before_id is not None:
        stmt = stmt.where(AuditEntry.id < before_id)
    if actor:
        stmt = stmt.where(AuditEntry.actor == actor)
    return list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(min(max(limit, 1), 500))))
