"""Flask application factory: one blueprint per family, JSON errors, OpenAPI at /openapi.json.

Operations: ``/metrics`` serves Prometheus metrics of this API process tree plus the
scrape-time sizes (queue depth, outbox, dead letters); every request is traced with
OpenTelemetry and answers with its trace id in ``X-Trace-Id``.
"""

from __future__ import annotations

from importlib import import_module

from flask import Flask, Response, jsonify

from app.api.errors import register_error_handlers
from app.api.limits import init_app as init_limits
from app.api.spec import JsonProvider, openapi_document, spec
from app.settings import Settings, get_settings, set_settings

#: One blueprint module per family, each exposing ``bp``.
BLUEPRINTS = ("home", "health", "admin", "storage", "messages", "dlq", "ocr", "scans", "voice", "files", "schedules", "console")


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
    app.json = JsonProvider(app)  # over-deep JSON is a 400, not a RecursionError
    app.json.sort_keys = False
    register_error_handlers(app)

    for name in BLUEPRINTS:
        app.register_blueprint(import_module(f"app.api.{name}").bp)
    init_limits(app)  # RateLimit-* headers; checks RATE_LIMITS against the blueprints

    spec.register(app)

    @app.get("/openapi.json")
    def openapi_json() -> Response:
        """The OpenAPI 3 document of every route."""
        return jsonify(openapi_document())

    _add_operations(app)
    from app.tasks.outbox import relay_after_commits

    relay_after_commits()  # a commit that added an outbox event publishes it at once
    # After the tracing hooks, so a request refused here still has its span.
    app.before_request(_authenticate_first)
    if settings.trusted_proxy_hops:
        # Outermost, so tracing, the failure limiter and links all see the client's
        # address, scheme and host as the trusted proxies forwarded them.
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    return app


def _authenticate_first() -> None:
    """Run the route's credential check before anything reads the body: spectree parses
    and validates the JSON before the view's own decorator runs, and a blueprint's size
    guard or MAX_CONTENT_LENGTH would answer 413. An unauthenticated caller gets its 401
    (or 429) without a byte of its body being read."""
    from flask import current_app, request

    from app.api.auth import authenticate_route

    rule = request.url_rule
    if rule is None or (request.method == "OPTIONS" and getattr(rule, "provide_automatic_options", False)):
        return
    authenticate_route(current_app.view_functions.get(request.endpoint or ""))


def _add_operations(app: Flask) -> None:
    """``/metrics``, request tracing and the ``X-Trace-Id`` response header."""
    from app import metrics
    from app.tracing import configure_tracing, current_ids, instrument_celery, instrument_flask

    configure_tracing("api")
    instrument_celery()  # a task published from a request carries the request's trace
    instrument_flask(app)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        """Prometheus text exposition (not part of the OpenAPI document); behind
        ``Authorization: Bearer <METRICS_TOKEN>`` when that is set."""
        from app.api.auth import check_metrics_token

        check_metrics_token()
        body, content_type = metrics.render(with_state=True)
        return Response(body, content_type=content_type)

    @app.after_request
    def _trace_header(response: Response) -> Response:
        ids = current_ids()
        if ids is not None:
            response.headers["X-Trace-Id"] = ids[0]
        return response
