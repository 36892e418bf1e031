"""Schemathesis against the served ``/openapi.json``: every operation, with a valid
credential and without one.

For each operation a fixed number of examples is generated (``POSITIVE_EXAMPLES`` that
fit the schema, ``NEGATIVE_EXAMPLES`` that do not), derandomized so CI runs the same
requests every time. Each example is sent with the operation's own credential (client
key, ADMIN_TOKEN, or a remote worker token) and checked: no 5xx, the status, content
type, headers and body all match the document, data that breaks the schema is refused,
and every 4xx carries the JSON error body. Then the same request goes without a
credential, or with a wrong one, and must get a documented 401 with the JSON error body.

Only the API runs (gunicorn, on a scratch database): submits write rows and outbox
events, no worker is needed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.security.conftest import Served

#: Examples per operation and mode; the figures recorded in docs/reliability.md.
POSITIVE_EXAMPLES = 15
NEGATIVE_EXAMPLES = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
#: Routes whose credential is the remote worker token (the document calls it bearer too).
WORKER_PREFIX = "/api/v1/worker/"


@dataclass
class Tally:
    """What one operation was put through."""

    examples: int = 0
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def saw(self, status: int) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1


def _credential(served: Served, operation: Any) -> dict[str, str]:
    security = operation.definition.raw.get("security") or []
    if any("admin" in requirement for requirement in security):
        return served.admin
    if operation.path.startswith(WORKER_PREFIX):
        return served.worker
    if security:
        return served.client
    return {}


#: Statuses gunicorn answers itself, before the application (documented without a body).
SERVER_STATUSES = (414, 431)


def _routing_404(response: Any) -> bool:
    """Flask's own 404 for a URL no route matches (e.g. a negative or non-numeric id for
    an ``<int>`` route): answered before any view runs, so before authentication too."""
    if response.status_code != 404:
        return False
    error = response.json().get("error", {})
    return error.get("code") == "not_found" and "requested URL was not found" in error.get("message", "")


def _check_error_body(response: Any) -> None:
    """A 4xx answer is the JSON error shape: ``{"error": {"code", "message", ...}}``."""
    if not 400 <= response.status_code < 500 or response.status_code in SERVER_STATUSES:
        return
    headers = {k.lower(): v for k, v in response.headers.items()}
    content_type = headers.get("content-type", "")
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    assert content_type.startswith("application/json"), f"{response.status_code} answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"4xx without the JSON error body: {body!r}"
    assert body["error"].get("code") and body["error"].get("message"), f"error body lacks code/message: {body!r}"


def _without_auth(case: Any) -> None:
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() != "authorization"}


def _run_operation(served: Served, operation: Any, mode: GenerationMode, count: int, tally: Tally) -> None:
    credential = _credential(served, operation)
    secured = bool(operation.definition.raw.get("security"))
    http = requests.Session()

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case: Any) -> None:
        tally.examples += 1
        _without_auth(case)
        where = f"{mode.value} {case.method} {case.formatted_path}"
        try:
            response = case.call(base_url=served.base_url, session=http, headers=credential, timeout=30)
            tally.saw(response.status_code)
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
            case.validate_response(response, checks=checks)
            _check_error_body(response)
        except (Exception, BaseExceptionGroup) as exc:
            tally.failures.append(f"{where} with credential: {str(exc)[:1500]}")
        if not secured:
            return
        # The same request with no credential, then with a wrong one (alternating).
        anonymous = {} if tally.examples % 2 else {"Authorization": "Bearer ak_not-a-real-key-" + "x" * 20}
        try:
            response = case.call(base_url=served.base_url, session=http, headers=anonymous, timeout=30)
            tally.saw(response.status_code)
            assert response.status_code in (401, *SERVER_STATUSES) or _routing_404(response), \
                f"answered {response.status_code} without a valid credential"
            case.validate_response(response, checks=CHECKS)
            _check_error_body(response)
        except (Exception, BaseExceptionGroup) as exc:
            tally.failures.append(f"{where} without credential: {str(exc)[:1500]}")

    try:
        fuzz()
    except Unsatisfiable:
        # Nothing to break: an operation with no parameters and no body has no negative data.
        assert mode is GenerationMode.NEGATIVE, f"no positive example for {operation.method} {operation.path}"


def test_every_operation_conforms_with_and_without_credentials(served_api: Served) -> None:
    # Security parameters are ours to set (a valid credential, none, a wrong one): the
    # generated Authorization header is not part of the fuzzed data.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    schema = schemathesis.openapi.from_url(served_api.url("/openapi.json"), config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40, "the document lost its operations"
    started = time.monotonic()
    tallies: dict[str, Tally] = {}
    for operation in operations:
        tally = tallies.setdefault(f"{operation.method.upper()} {operation.path}", Tally())
        _run_operation(served_api, operation, GenerationMode.POSITIVE, POSITIVE_EXAMPLES, tally)
        _run_operation(served_api, operation, GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, tally)
    elapsed = time.monotonic() - started
    failures = [f"{name}: {f}" for name, t in tallies.items() for f in t.failures]
    total = sum(t.requests for t in tallies.values())
    print(f"\nfuzzed {len(operations)} operations, {sum(t.examples for t in tallies.values())} examples, "
          f"{total} requests in {elapsed:.1f} s")
    for name, t in tallies.items():
        print(f"  {name}: {t.examples} examples, statuses {dict(sorted(t.statuses.items()))}")
    assert not failures, f"{len(failures)} findings:\n" + "\n\n".join(failures[:40])
    # Every operation really was exercised, and no 5xx ever came back.
    assert all(t.requests > 0 for t in tallies.values())
    assert not any(s >= 500 for t in tallies.values() for s in t.statuses)


@pytest.mark.parametrize("path", ["/admin/workers", "/metrics"])
def test_the_document_holds_only_json_api_operations(served_api: Served, path: str) -> None:
    """The admin HTML page and the Prometheus text are not described as JSON operations."""
    doc = requests.get(served_api.url("/openapi.json"), timeout=10).json()
    assert path not in doc["paths"]
    for item in doc["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if status.startswith("4"):
                    content = response.get("content", {})
                    if content:
                        assert "application/json" in content, (status, response)
