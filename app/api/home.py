"""First contact: ``GET /`` links the operator console, the API reference and health;
``GET /docs/`` is the API reference, Swagger UI over ``/openapi.json``.

Swagger UI is vendored under ``app/api/static/swagger-ui/`` (its licence and version
beside it) and served by Flask's static route, so no page of the product fetches anything
from the internet. Both pages are public: they show nothing that ``/openapi.json`` does
not already publish.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from app.api.spec import ViewResult

bp = Blueprint("home", __name__, template_folder="templates")


@bp.get("/")
def index() -> ViewResult:
    """A small page linking the console, the API reference and health."""
    return render_template("home/index.html")


@bp.get("/docs/")
def api_reference() -> ViewResult:
    """The API reference: the vendored Swagger UI reading ``/openapi.json``."""
    return render_template("home/reference.html")
