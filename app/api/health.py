"""``GET /health``: each dependency with status and latency; 503 when a required one is down."""

from __future__ import annotations

from flask import Blueprint, current_app
from pydantic import BaseModel, Field
from spectree import Response

from app.api.spec import spec
from app.services.health import default_checks, run_checks

bp = Blueprint("health", __name__)


class DependencyStatus(BaseModel):
    name: str
    status: str = Field(description="`up` or `down`.")
    required: bool
    latency_ms: float
    error: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="`ok` when every required dependency is up, else `degraded`.")
    environment: str
    dependencies: list[DependencyStatus]


@bp.get("/health")
@spec.validate(resp=Response(HTTP_200=HealthResponse, HTTP_503=HealthResponse), tags=["health"])
def health():  # type: ignore[no-untyped-def]
    """Report every dependency's status and latency."""
    settings = current_app.config["SETTINGS"]
    healthy, results = run_checks(default_checks(settings), settings.health_timeout)
    body = {
        "status": "ok" if healthy else "degraded",
        "environment": settings.environment,
        "dependencies": [r.as_dict() for r in results],
    }
    return body, 200 if healthy else 503
