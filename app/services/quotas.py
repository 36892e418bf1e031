"""Job quotas: how many unfinished jobs of one family a client has.

A job is unfinished while its row is in a non-terminal state, so a client's quota frees
up as its jobs complete or fail. The count is one indexed query on ``client_id`` (each
job model carries the owning client); no counter is kept that could drift from the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.ocr import Upload
from app.models.scans import ScanJob
from app.models.voice import VoiceJob


@dataclass(frozen=True)
class JobFamily:
    """Where a family keeps its jobs and which of their states are still running."""

    model: type
    state_column: str
    unfinished: tuple[str, ...]


#: Families with a quota, by the name of their QUOTA_<FAMILY> setting.
FAMILIES: dict[str, JobFamily] = {
    "scans": JobFamily(ScanJob, "state", ("QUEUED", "FETCHING", "ANALYZING")),
    "ocr": JobFamily(Upload, "status", ("uploaded", "queued", "processing")),
    "voice": JobFamily(VoiceJob, "status", ("pending", "claimed", "processing")),
}


def unfinished_jobs(session: Session, family: str, client_id: int, *,
                    uploaded_counts_for: timedelta | None = None) -> int:
    """The client's jobs of ``family`` not yet in a terminal state.

    ``uploaded_counts_for`` (OCR only): an upload still ``uploaded`` (its bytes or its
    ``complete`` call never came) counts only while younger than this, so an abandoned
    upload cannot hold a quota slot for ever.
    """
    spec = FAMILIES[family]
    model = spec.model
    state = getattr(model, spec.state_column)
    where = and_(model.client_id == client_id, state.in_(spec.unfinished))  # type: ignore[attr-defined]
    if family == "ocr" and uploaded_counts_for is not None:
        where = and_(where, or_(state != "uploaded", model.created_at >= utcnow() - uploaded_counts_for))  # type: ignore[attr-defined]
    return int(session.scalar(select(func.count()).select_from(model).where(where)) or 0)
