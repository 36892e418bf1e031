"""URL scans API: submit a URL (the job and its outbox event in one transaction), read a
scan with its result and audit trail, and list scans by state.

``ENABLE_SCANS=false`` answers every route here with 503 ``scans_disabled``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, current_app, url_for
from pydantic import BaseModel, Field, field_validator
from spectree import Response

from app.api.auth import require_api_key
from app.api.errors import ApiError, ErrorResponse
from app.api.limits import job_quota
from app.api.ownership import owned, owner, owner_clause
from app.api.spec import BEARER, ViewResult, spec
from app.db import session_scope
from app.models.scans import STATES, ScanJob
from app.services.scans import MAX_URL_LENGTH, InvalidScanUrl, list_scans, submit_scan

bp = Blueprint("scans", __name__)


@bp.before_request
def _feature_flag() -> None:
    if not current_app.config["SETTINGS"].enable_scans:
        raise ApiError(503, "scans_disabled", "URL scans are turned off on this server (ENABLE_SCANS=false)")


class ScanCreate(BaseModel):
    """The URL to scan."""

    url: str = Field(min_length=1, max_length=MAX_URL_LENGTH,
                     description="http or https URL with a host and no user information, at most 2048 characters.")


class ScanAccepted(BaseModel):
    """The queued scan and where to poll it."""

    id: str
    state: str
    status_url: str


class AuditOut(BaseModel):
    """One state change of the audit trail."""

    from_state: str | None
    to_state: str
    version: int
    worker: str = Field(description="Host (worker node) that made the change; `api` for the submission.")
    detail: str | None
    created_at: datetime


class ReasonOut(BaseModel):
    """One verdict rule that fired."""

    rule: str
    weight: int
    detail: str


class ResultOut(BaseModel):
    """What the fetcher saw and the verdict drawn from it."""

    final_url: str | None
    status_code: int | None
    content_type: str | None
    sha256: str | None
    score: int = Field(description="0–100, the sum of the weights of the rules that fired (docs/scans.md).")
    risk: str = Field(description="`low` (< 25), `medium` (25–59) or `high` (≥ 60).")
    reasons: list[ReasonOut]
    container_seconds: float | None
    fetch: dict[str, Any] = Field(description="The fetcher's whole JSON document; schema in docs/scans.md.")


class ScanOut(BaseModel):
    """A scan with its result and audit trail."""

    id: str
    url: str
    state: str
    version: int
    attempts: int
    error: str | None = Field(None, description="Why it failed or timed out.")
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: ResultOut | None = Field(None, description="Present when COMPLETED.")
    audit: list[AuditOut]


class ScanSummary(BaseModel):
    """One scan in a list."""

    id: str
    url: str
    state: str
    attempts: int
    error: str | None
    score: int | None
    risk: str | None
    created_at: datetime
    finished_at: datetime | None
    status_url: str


class ScanPage(BaseModel):
    """One page of scans, newest first."""

    items: list[ScanSummary]
    total: int
    page: int
    per_page: int


class ScanQuery(BaseModel):
    """Filter and page of the scan list."""

    state: str | None = Field(None, description=f"One of {', '.join(STATES)} (any case).")
    page: int = Field(1, ge=1, le=100000)
    per_page: int = Field(50, ge=1, le=500)
    client_id: int | None = Field(None, ge=1, description="Admin credential only: the scans of one client.")

    @field_validator("state")
    @classmethod
    def _known_state(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        upper = value.strip().upper()
        if upper not in STATES:
            raise ValueError(f"unknown state {value!r}; one of {', '.join(STATES)}")
        return upper


def scan_out(job: ScanJob) -> dict[str, Any]:
    """The JSON body of ``GET /api/scans/<id>``."""
    result = None
    if job.result is not None:
        result = ResultOut.model_validate(job.result, from_attributes=True)
    return ScanOut(
        id=job.id, url=job.url, state=job.state, version=job.version, attempts=job.attempts, error=job.error,
        created_at=job.created_at, updated_at=job.updated_at, started_at=job.started_at,
        finished_at=job.finished_at, result=result,
        audit=[AuditOut.model_validate(a, from_attributes=True) for a in job.audit],
    ).model_dump(mode="json")


@bp.post("/api/scans")
@spec.validate(json=ScanCreate, resp=Response(HTTP_202=ScanAccepted, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                              HTTP_503=ErrorResponse),
               tags=["scans"], security=BEARER)
@require_api_key
@job_quota("scans")
def submit(json: ScanCreate) -> ViewResult:
    """Queue a URL for a scan in a throw-away container; poll the status URL."""
    try:
        with session_scope() as session:
            job = submit_scan(session, json.url, client_id=owner())
            body = {"id": job.id, "state": job.state}
    except InvalidScanUrl as exc:
        raise ApiError(400, "validation_error", f"invalid request: url: {exc.reason}",
                       [{"loc": ["url"], "msg": exc.reason, "type": "invalid_url"}]) from None
    body["status_url"] = url_for("scans.get_scan", scan_id=body["id"])
    return body, 202


@bp.get("/api/scans/<scan_id>")
@spec.validate(resp=Response(HTTP_200=ScanOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse, HTTP_503=ErrorResponse),
               tags=["scans"], security=BEARER)
@require_api_key
def get_scan(scan_id: str) -> ViewResult:
    """A scan: its state, its result when COMPLETED, and the audit trail of every change."""
    with session_scope() as session:
        return scan_out(owned(session, ScanJob, scan_id, "scan"))


@bp.get("/api/scans")
@spec.validate(query=ScanQuery, resp=Response(HTTP_200=ScanPage, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse,
                                              HTTP_503=ErrorResponse),
               tags=["scans"], security=BEARER)
@require_api_key
def list_all(query: ScanQuery) -> ViewResult:
    """Scans, newest first, optionally only those in one state; paginated."""
    with session_scope() as session:
        rows, total = list_scans(session, state=query.state, limit=query.per_page,
                                 offset=(query.page - 1) * query.per_page, where=owner_clause(ScanJob))
        items = [
            ScanSummary(
                id=job.id, url=job.url, state=job.state, attempts=job.attempts, error=job.error,
                score=job.result.score if job.result else None, risk=job.result.risk if job.result else None,
                created_at=job.created_at, finished_at=job.finished_at,
                status_url=url_for("scans.get_scan", scan_id=job.id),
            ).model_dump(mode="json")
            for job in rows
        ]
    return {"items": items, "total": total, "page": query.page, "per_page": query.per_page}
