"""The operator console: the job ledger (a SQL view), operators and their audit log.

``job_ledger`` is a view (migration ``0012_console_ledger``): one SELECT per job family
table, joined by UNION ALL, so a row of the ledger is the family's row itself and can
never disagree with it. It is mapped here as a read-only ``Table`` in a metadata of its
own, so ``Base.metadata.create_all`` never makes a table of it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Integer, MetaData, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UTCDateTime, utcnow
from app.models.outbox import BigId

#: The ledger's states, in the order the pages show them.
LEDGER_STATES = ("pending", "queued", "running", "succeeded", "failed", "dead")

#: Each family's own statuses and the ledger state each one is shown as (the view's
#: CASE expressions are made from the same table; ``tests/console`` checks they agree).
STATES: dict[str, dict[str, str]] = {
    "ocr": {"uploaded": "pending", "queued": "queued", "processing": "running", "ready": "succeeded",
            "failed": "failed"},
    "scans": {"QUEUED": "queued", "FETCHING": "running", "ANALYZING": "running", "COMPLETED": "succeeded",
              "FAILED": "failed", "TIMED_OUT": "failed"},
    "voice": {"pending": "queued", "claimed": "running", "processing": "running", "completed": "succeeded",
              "failed": "failed"},
    "messages": {"queued": "queued", "sent": "running", "delivered": "succeeded", "failed": "failed"},
    "files": {"UPLOADING": "pending", "MERGING": "running", "COMPLETED": "succeeded", "FAILED": "failed"},
    "campaigns": {"scheduled": "queued", "sending": "running", "sent": "succeeded", "failed": "failed"},
    "calls": {"queued": "queued", "dialing": "running", "done": "succeeded", "failed": "failed",
              "expired": "failed"},
    "outbox": {"pending": "queued", "published": "running", "consumed": "succeeded", "dead": "dead"},
}
FAMILIES = tuple(STATES)

_view_metadata = MetaData()

job_ledger = Table(
    "job_ledger",
    _view_metadata,
    Column("family", String(16)),
    Column("id", String(64)),
    Column("client_id", Integer),
    Column("status", String(16)),
    Column("state", String(16)),
    Column("attempts", Integer),
    Column("created_at", UTCDateTime()),
    Column("started_at", UTCDateTime()),
    Column("finished_at", UTCDateTime()),
    Column("last_error", Text),
    Column("trace_id", String(32)),
)

ROLES = ("viewer", "operator", "admin")


class Operator(Base):
    """A person who signs in to the console; only an argon2 hash of the password is kept."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator | admin
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    last_login_at: Mapped[datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """One operator action; rows are only ever added (the service has no update or delete)."""

    __tablename__ = "console_audit"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # operator name, or "admin-token"
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text, default=None)  # a queue, schedule, job or filter
    filter: Mapped[str | None] = mapped_column(Text, default=None)  # the bulk filter, as JSON
    count: Mapped[int | None] = mapped_column(Integer, default=None)  # jobs affected
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok | refused | failed
    detail: Mapped[str | None] = mapped_column(Text, default=None)
