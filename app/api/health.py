"""``GET /health``: the overall status for anyone (load balancers, probes); each
dependency with status and latency for ``Authorization: Bearer`` ADMIN_TOKEN or
METRICS_TOKEN. 503 when a required dependency is down.

The checks' result is kept for HEALTH_CACHE_SECONDS in each process
(``app.services.health.CachedHealth``), so a flood of anonymous probes does not reach
the database, the broker and the rest once per request.
"""

from __future__ import annotations

from flask import Blueprint, current_app, request
from pydantic import BaseModel, Field
from spectree import Response

from app.api.auth import check_operator_token
from app.api.errors import ErrorResponse
from app.api.spec import ViewResult, spec
from app.services.health import CachedHealth, default_checks

bp = Blueprint("health", __name__)


class DependencyStatus(BaseModel):
    name: str
    status: str = Field(description="`up` or `down`.")
    required: bool
    latency_ms: float
    error: str | None = None


class HealthResponse(BaseModel):
    status: str = Field(description="`ok` when every required dependency is up, else `degraded`.")
    environment: str | None = Field(None, description="With ADMIN_TOKEN or METRICS_TOKEN only.")
    dependencies: list[DependencyStatus] | None = Field(None, description="With ADMIN_TOKEN or METRICS_TOKEN only.")


def _cache() -> CachedHealth:
    cache = current_app.extensions.get("health")
    if cache is None:
        settings = current_app.config["SETTINGS"]
        cache = current_app.extensions["health"] = CachedHealth(
            lambda: default_checks(settings), settings.health_timeout, settings.health_cache_seconds)
    return cache


@bp.get("/health")
@spec.validate(resp=Response(HTTP_200=HealthResponse, HTTP_503=HealthResponse, HTTP_401=ErrorResponse,
                             HTTP_429=ErrorResponse), tags=["health"])
def health() -> ViewResult:
    """The overall status; every dependency's status and latency with ADMIN_TOKEN or METRICS_TOKEN."""
    detailed = "Authorization" in request.headers
    if detailed:
        check_operator_token()
    healthy, results = _cache().get()
    body: dict[str, object] = {"status": "ok" if healthy else "degraded"}
    if detailed:
        body["environment"] = current_app.config["SETTINGS"].environment
        body["dependencies"] = [r.as_dict() for r in results]
    return body, 200 if healthy else 503
