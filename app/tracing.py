"""OpenTelemetry tracing: one trace from an API request into the tasks it causes.

The API is instrumented with the Flask instrumentation, workers with the Celery one
(its publish hook writes the W3C ``traceparent`` into the task's headers and its run
hook continues the trace). Work the API enqueues goes through the outbox, not straight to
the broker, so the request's ``traceparent`` is stored with the outbox event
(``carrier()`` at ``add_event`` time) and put back around the relay's publish
(``restored(...)``); the task span is then a child of the request span.

Spans are always made, so trace ids are propagated and logged even when nothing exports
them (``TRACING_EXPORTER=none``, the default); ``console`` and ``otlp`` export them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace

logger = logging.getLogger(__name__)

#: Key of the trace carrier inside an outbox event's payload (stripped before publish).
TRACE_KEY = "_trace"

_lock = threading.Lock()
_configured = False
_celery_instrumented = False


def configure_tracing(role: str) -> None:
    """Install the tracer provider and its exporter once per process (``role``: api, worker)."""
    global _configured
    with _lock:
        if _configured:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        from app.settings import get_settings

        settings = get_settings()
        provider = TracerProvider(resource=Resource.create({"service.name": f"{settings.tracing_service_name}-{role}"}))
        if settings.tracing_exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif settings.tracing_exporter == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            endpoint = settings.tracing_otlp_endpoint or None
            # The exporter's own timeout bounds every export call.
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, timeout=10)))
        trace.set_tracer_provider(provider)
        _configured = True
        logger.debug("tracing configured", extra={"exporter": settings.tracing_exporter, "role": role})


def instrument_celery() -> None:
    """Trace task publishes and runs in this process (idempotent)."""
    global _celery_instrumented
    with _lock:
        if _celery_instrumented:
            return
        from opentelemetry.instrumentation.celery import CeleryInstrumentor

        CeleryInstrumentor().instrument()
        _celery_instrumented = True


def instrument_flask(app: Any) -> None:
    """Trace every request of a Flask app (a ``traceparent`` header from the client is honoured)."""
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    FlaskInstrumentor().instrument_app(app, excluded_urls="/metrics$,/health$")


def carrier() -> dict[str, str]:
    """The current trace context as W3C headers (``{"traceparent": ...}``), empty outside a trace."""
    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


@contextmanager
def restored(headers: dict[str, str] | None) -> Iterator[None]:
    """Make the trace context saved in ``headers`` current for the block."""
    if not headers:
        yield
        return
    token = context.attach(propagate.extract(headers))
    try:
        yield
    finally:
        context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span as hex, or None outside a trace."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)
