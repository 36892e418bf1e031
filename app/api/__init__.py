"""Flask application factory: one blueprint per family, JSON errors, OpenAPI at /openapi.json."""

from __future__ import annotations

from importlib import import_module

from flask import Flask, jsonify

from app.api.errors import register_error_handlers
from app.api.spec import openapi_document, spec
from app.settings import Settings, get_settings, set_settings


#: One blueprint module per family, each exposing ``bp``.
BLUEPRINTS = ("health", "admin", "storage", "messages", "dlq", "uploads", "scans", "voice", "files", "schedules")


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API. ``settings`` replaces the process-wide settings (tests)."""
    from app.logging import configure_logging

    if settings is not None:
        from app.db import reset_engine

        set_settings(settings)
        reset_engine()
    settings = get_settings()
    configure_logging()

    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    register_error_handlers(app)

    for name in BLUEPRINTS:
        app.register_blueprint(import_module(f"app.api.{name}").bp)

    spec.register(app)

    @app.get("/openapi.json")
    def openapi_json():  # type: ignore[no-untyped-def]
        """The OpenAPI 3 document of every route."""
        return jsonify(openapi_document())

    return app
