"""Scheduled jobs API: tenants, leads, campaigns and calls the jobs work on, and the jobs' status.

``POST`` routes validate (timezone, business hours, addresses) and write rows the beat
jobs pick up; nothing is sent from a request. ``GET /api/schedules`` reports per job the
last run, the next run (from RedBeat's schedule in Redis) and the totals.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from flask import Blueprint
from flask import Response as FlaskResponse
from pydantic import BaseModel, Field, field_validator
from spectree import Response
from sqlalchemy.orm import Session

from app.api.auth import require_admin, require_api_key
from app.api.errors import ErrorResponse, error_response
from app.api.ownership import owned, owner, referenced
from app.api.spec import ADMIN, BEARER, ViewResult, spec
from app.db import session_scope
from app.models.schedules import CallRequest, Campaign, Lead, Tenant
from app.services import schedules as svc
from app.services.jobs import last_run

logger = logging.getLogger(__name__)

bp = Blueprint("schedules", __name__)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError("must carry a UTC offset (e.g. 2030-01-01T09:00:00Z)")
    return value


class TenantCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    plan: str = Field("trial", min_length=1, max_length=32, description="`trial` is suspended at trial_ends_at.")
    trial_ends_at: datetime | None = None
    timezone: str = Field("UTC", max_length=64, description="IANA timezone of the business hours.")
    business_hours: dict[str, list[list[str]]] = Field(
        default_factory=dict, description='Wall-clock hours per weekday: {"mon": [["09:00", "18:00"]], ...}.')

    @field_validator("trial_ends_at")
    @classmethod
    def _check_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class TenantOut(BaseModel):
    id: str = Field(description="Opaque id of the tenant.")
    name: str
    plan: str
    trial_ends_at: datetime | None
    status: str
    suspended_at: datetime | None
    timezone: str
    business_hours: dict[str, Any]
    created_at: datetime


class LeadCreate(BaseModel):
    tenant_id: str = Field(max_length=64)
    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=32)
    next_reminder_at: datetime | None = None

    @field_validator("next_reminder_at")
    @classmethod
    def _check_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class LeadOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    email: str | None
    phone: str | None
    next_reminder_at: datetime | None
    reminders_sent: int
    last_reminder_at: datetime | None
    last_error: str | None


class CampaignCreate(BaseModel):
    tenant_id: str = Field(max_length=64)
    channel: Literal["email", "whatsapp"]
    subject: str = Field("", max_length=300)
    template: str = Field(min_length=1, max_length=100_000)
    scheduled_at: datetime | None = Field(None, description="Omitted: now (sent by the next dispatcher run).")
    recipients: list[str] = Field(description="Email addresses or phone numbers; invalid ones are skipped.",
                                  max_length=100_000)

    @field_validator("scheduled_at")
    @classmethod
    def _check_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class CampaignOut(BaseModel):
    id: str
    tenant_id: str
    channel: str
    subject: str
    scheduled_at: datetime
    status: str
    total: int
    sent: int
    failed: int
    skipped: int
    batches: int
    last_error: str | None
    started_at: datetime | None
    finished_at: datetime | None
    skipped_recipients: list[dict[str, str | None]] = Field(default_factory=list)


class CallCreate(BaseModel):
    tenant_id: str = Field(max_length=64)
    lead_id: str = Field(max_length=64)
    scheduled_for: datetime | None = Field(None, description="Omitted: now.")

    @field_validator("scheduled_for")
    @classmethod
    def _check_aware(cls, value: datetime | None) -> datetime | None:
        return _aware(value)


class CallOut(BaseModel):
    id: str
    tenant_id: str
    lead_id: str
    scheduled_for: datetime
    status: str
    attempts: int
    provider_call_id: str | None
    last_error: str | None
    finished_at: datetime | None


class JobStatus(BaseModel):
    job: str
    task: str
    schedule: str
    lock: str
    last_run: dict[str, Any] | None
    next_run: datetime | None
    totals: dict[str, int]


class JobStatusList(BaseModel):
    jobs: list[JobStatus]


@bp.errorhandler(svc.ScheduleInputError)
def _bad_input(exc: svc.ScheduleInputError) -> FlaskResponse:
    """Input the service refused (an unknown timezone, a tenant that is not the caller's...)."""
    return error_response(400, "validation_error", f"invalid request: {exc}",
                          [{"loc": exc.loc, "msg": str(exc), "type": "value_error"}])


def _out(model: type[BaseModel], row: Any, **extra: Any) -> dict:
    """The row as ``model``, its ids the public ones (the integer keys stay internal)."""
    ids: dict[str, Any] = {"id": row.public_id}
    if hasattr(row, "tenant_id"):
        ids["tenant_id"] = row.tenant.public_id
    if hasattr(row, "lead_id"):
        ids["lead_id"] = row.lead.public_id
    fields = {name: getattr(row, name, None) for name in model.model_fields} | ids | extra
    return model.model_validate(fields).model_dump(mode="json")


def _campaign_out(session: Session, campaign: Campaign) -> dict[str, Any]:
    from sqlalchemy import select

    from app.models.schedules import CampaignRecipient

    skipped = session.execute(select(CampaignRecipient.address, CampaignRecipient.detail).where(
        CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.status.in_(("skipped", "failed")),
    ).order_by(CampaignRecipient.id).limit(100)).all()
    return _out(CampaignOut, campaign, skipped_recipients=[{"address": a, "reason": d} for a, d in skipped])


@bp.post("/api/tenants")
@spec.validate(json=TenantCreate, resp=Response(HTTP_201=TenantOut, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def create_tenant(json: TenantCreate) -> ViewResult:
    """Create a tenant with its IANA timezone and business hours."""
    with session_scope() as session:
        tenant = svc.create_tenant(session, name=json.name, plan=json.plan, trial_ends_at=json.trial_ends_at,
                                   timezone=json.timezone, business_hours=json.business_hours, client_id=owner())
        return _out(TenantOut, tenant), 201


@bp.get("/api/tenants/<tenant_id>")
@spec.validate(resp=Response(HTTP_200=TenantOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def get_tenant(tenant_id: str) -> ViewResult:
    """A tenant and its status (`active` or `suspended`)."""
    with session_scope() as session:
        return _out(TenantOut, owned(session, Tenant, tenant_id, "tenant", by=Tenant.public_id))


@bp.post("/api/leads")
@spec.validate(json=LeadCreate, resp=Response(HTTP_201=LeadOut, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def create_lead(json: LeadCreate) -> ViewResult:
    """Create a lead; ``next_reminder_at`` schedules its first reminder email."""
    with session_scope() as session:
        tenant = referenced(session, Tenant, json.tenant_id, svc.missing_tenant(json.tenant_id),
                            by=Tenant.public_id)
        lead = svc.create_lead(session, tenant_id=tenant.id, name=json.name, email=json.email,
                               phone=json.phone, next_reminder_at=json.next_reminder_at)
        return _out(LeadOut, lead), 201


@bp.get("/api/leads/<lead_id>")
@spec.validate(resp=Response(HTTP_200=LeadOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def get_lead(lead_id: str) -> ViewResult:
    """A lead, its next reminder time and the reminders sent."""
    with session_scope() as session:
        return _out(LeadOut, owned(session, Lead, lead_id, "lead", by=Lead.public_id))


@bp.post("/api/campaigns")
@spec.validate(json=CampaignCreate,
               resp=Response(HTTP_201=CampaignOut, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def create_campaign(json: CampaignCreate) -> ViewResult:
    """Schedule a campaign; the dispatcher sends it in batches once ``scheduled_at`` has passed."""
    from app.models.base import utcnow

    with session_scope() as session:
        tenant = referenced(session, Tenant, json.tenant_id, svc.missing_tenant(json.tenant_id),
                            by=Tenant.public_id)
        campaign = svc.create_campaign(
            session, tenant_id=tenant.id, channel=json.channel, subject=json.subject,
            template=json.template, scheduled_at=json.scheduled_at or utcnow(), recipients=json.recipients)
        return _campaign_out(session, campaign), 201


@bp.get("/api/campaigns/<campaign_id>")
@spec.validate(resp=Response(HTTP_200=CampaignOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def get_campaign(campaign_id: str) -> ViewResult:
    """A campaign's status and counters, with the skipped or failed recipients and why."""
    with session_scope() as session:
        return _campaign_out(session, owned(session, Campaign, campaign_id, "campaign", by=Campaign.public_id))


@bp.post("/api/calls")
@spec.validate(json=CallCreate, resp=Response(HTTP_201=CallOut, HTTP_400=ErrorResponse, HTTP_401=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def create_call(json: CallCreate) -> ViewResult:
    """Queue a call to a lead; it is dialled when due and inside the tenant's business hours."""
    from app.models.base import utcnow

    with session_scope() as session:
        tenant = referenced(session, Tenant, json.tenant_id, svc.missing_tenant(json.tenant_id),
                            by=Tenant.public_id)
        lead = referenced(session, Lead, json.lead_id, svc.missing_lead(json.lead_id, json.tenant_id),
                          by=Lead.public_id)
        if lead.tenant_id != tenant.id:
            raise svc.missing_lead(json.lead_id, json.tenant_id)
        call = svc.create_call(session, tenant_id=tenant.id, lead_id=lead.id,
                               scheduled_for=json.scheduled_for or utcnow())
        return _out(CallOut, call), 201


@bp.get("/api/calls/<call_id>")
@spec.validate(resp=Response(HTTP_200=CallOut, HTTP_401=ErrorResponse, HTTP_404=ErrorResponse),
               tags=["schedules"], security=BEARER)
@require_api_key
def get_call(call_id: str) -> ViewResult:
    """A call request's status, attempts and provider call id."""
    with session_scope() as session:
        return _out(CallOut, owned(session, CallRequest, call_id, "call", by=CallRequest.public_id))


def _next_run(name: str) -> datetime | None:
    """When beat will next send the entry, read from RedBeat's schedule (None if unknown)."""
    from redbeat.schedulers import RedBeatSchedulerEntry

    from app.celery_app import celery_app

    try:
        entry = RedBeatSchedulerEntry.from_key(f"{celery_app.conf.redbeat_key_prefix}{name}", app=celery_app)
        return entry.due_at
    except KeyError:
        return None  # beat has not stored the entry yet
    except Exception:  # Redis down: the rest of the status is still worth serving
        logger.warning("next run unavailable", extra={"job": name}, exc_info=True)
        return None


@bp.get("/api/schedules")
@spec.validate(resp=Response(HTTP_200=JobStatusList, HTTP_401=ErrorResponse, HTTP_403=ErrorResponse),
               tags=["schedules"], security=ADMIN)
@require_admin
def job_status() -> ViewResult:
    """Per scheduled job (admin: the jobs serve every client): last run (start, duration,
    outcome, counts), next run, and totals."""
    import celeryconfig

    jobs = []
    with session_scope() as session:
        totals = svc.job_totals(session)
        for name in svc.JOBS:
            entry = celeryconfig.beat_schedule.get(name, {})
            run = last_run(session, name)
            jobs.append(JobStatus(
                job=name, task=entry.get("task", ""), schedule=str(entry.get("schedule", "")), lock=name,
                last_run=None if run is None else {
                    "started_at": run.started_at.isoformat(),
                    "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                    "duration_seconds": run.duration_seconds, "outcome": run.outcome, "counts": run.counts,
                    "detail": run.detail, "worker": run.worker,
                },
                next_run=_next_run(name), totals=totals[name],
            ))
    return JobStatusList(jobs=jobs).model_dump(mode="json")
