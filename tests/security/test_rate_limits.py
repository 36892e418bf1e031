"""Per-client request rate limits and unfinished-job quotas (app.api.limits).

In process through the Flask test client with real API keys (each its own client) on the
test Redis database, and across the two workers of a real gunicorn: the windows live in
Redis, so the limit holds for the whole API, not per process.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask, g
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from app.api import create_app
from app.api.errors import ApiError
from app.api.limits import check_job_quota, reset_limiter
from app.db import session_scope
from app.models.scans import ScanJob
from app.services.auth import create_api_key
from app.services.scans import FAILED, FETCHING, QUEUED, transition
from app.settings import get_settings
from tests.conftest import _TMP
from tests.security.conftest import free_port, start_api, stop_api


@pytest.fixture(autouse=True)
def _fresh_limiter() -> Iterator[None]:
    """Each test builds the limiter from its own settings (one test points it at a dead Redis)."""
    reset_limiter()
    yield
    reset_limiter()


def _client_key() -> tuple[int, dict[str, str]]:
    """A new client with one API key: its id and its Authorization header."""
    with session_scope() as session:
        key, token = create_api_key(session, f"limits-{secrets.token_hex(3)}")
        client_id = key.client_id
    return client_id, {"Authorization": f"Bearer {token}"}


def _forget(redis_client, client_id: int) -> None:  # type: ignore[no-untyped-def]
    """Drop the client's windows (client ids restart in each scratch database)."""
    for key in redis_client.scan_iter(match=f"rate:LIMITER/*/{client_id}/*"):
        redis_client.delete(key)


def _app(**update: object) -> Flask:
    return create_app(get_settings().model_copy(update=update))


# --- rate limits ----------------------------------------------------------------------------

def test_request_over_the_limit_answers_429_with_retry_after(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    http = _app(rate_limit_default="5/minute", rate_limits={"admin": "2/minute", "messages": ""}).test_client()
    client_id, headers = _client_key()
    _forget(redis_client, client_id)

    for n in range(5):
        resp = http.get("/api/scans", headers=headers)
        assert resp.status_code == 200, resp.get_json()
        assert resp.headers["RateLimit-Limit"] == "5"
        assert resp.headers["RateLimit-Remaining"] == str(4 - n)
        assert 1 <= int(resp.headers["RateLimit-Reset"]) <= 60

    over = http.get("/api/scans", headers=headers)
    assert over.status_code == 429
    error = over.get_json()["error"]
    assert error["code"] == "rate_limited" and "5 per 1 minute" in error["message"]
    assert error["details"]["limit"] == "5 per 1 minute" and error["details"]["family"] == "scans"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert over.headers["RateLimit-Limit"] == "5" and over.headers["RateLimit-Remaining"] == "0"
    assert over.headers["RateLimit-Reset"] == over.headers["Retry-After"]
    # A refused request does not take a place in the window: still refused, not extended.
    assert http.get("/api/scans", headers=headers).status_code == 429
    assert len(redis_client.lrange(f"rate:LIMITER/scans/{client_id}/5/1/minute", 0, -1)) == 5

    # Another client is not affected.
    other_id, other = _client_key()
    _forget(redis_client, other_id)
    resp = http.get("/api/scans", headers=other)
    assert resp.status_code == 200 and resp.headers["RateLimit-Remaining"] == "4"

    # Another family of the same client has its own window and its own (override) limit.
    for _ in range(2):
        assert http.get("/api/me", headers=headers).status_code == 200
    me = http.get("/api/me", headers=headers)
    assert me.status_code == 429 and me.get_json()["error"]["details"]["limit"] == "2 per 1 minute"
    # A family whose override is empty is not limited at all.
    assert "RateLimit-Limit" not in http.get("/api/messages/none", headers=headers).headers

    # The admin credential on client routes is never limited.
    admin = {"Authorization": f"Bearer {get_settings().admin_token.get_secret_value()}"}
    for _ in range(7):
        resp = http.get("/api/scans", headers=admin)
        assert resp.status_code == 200 and "RateLimit-Limit" not in resp.headers


def test_zero_turns_the_rate_limit_off(pg_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    http = _app(rate_limit_default="").test_client()
    client_id, headers = _client_key()
    for _ in range(8):
        resp = http.get("/api/scans", headers=headers)
        assert resp.status_code == 200 and "RateLimit-Limit" not in resp.headers
    assert not list(redis_client.scan_iter(match=f"rate:LIMITER/*/{client_id}/*"))


def test_unreachable_redis_lets_requests_through_with_a_warning(pg_database, redis_client, caplog) -> None:  # type: ignore[no-untyped-def]
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = _app(rate_limit_default="1/minute", redis_socket_timeout=1.0)
    app.config["SETTINGS"] = app.config["SETTINGS"].model_copy(update={"redis_url": dead})
    client_id, headers = _client_key()
    with caplog.at_level(logging.WARNING, logger="app.api.limits"):
        for _ in range(3):
            resp = app.test_client().get("/api/scans", headers=headers)
            assert resp.status_code == 200 and "RateLimit-Limit" not in resp.headers
    warnings = [r for r in caplog.records if r.getMessage() == "rate limiter unavailable, request not limited"]
    assert len(warnings) == 3 and warnings[0].client_id == str(client_id)


def test_rate_limits_must_name_api_families(pg_database) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="RATE_LIMITS names unknown API families: scan "):
        _app(rate_limits={"scan": "1/minute"})


def test_the_limit_holds_across_two_gunicorn_workers(scratch_database, redis_client) -> None:  # type: ignore[no-untyped-def]
    limit, extra = 8, 4
    engine = create_engine(scratch_database)
    with Session(engine) as session:
        keys = [create_api_key(session, f"gunicorn-{n}") for n in range(3)]
        session.commit()
        clients = [(key.client_id, token) for key, token in keys]
    engine.dispose()
    log_path = _TMP / f"api-rate-limits-{secrets.token_hex(3)}.log"
    # The access log names the worker (pid) that served each request.
    proc, base, _ = start_api(scratch_database, log_path, {
        "RATE_LIMIT_DEFAULT": f"{limit}/minute",
        "GUNICORN_CMD_ARGS": "--access-logformat 'served pid=%(p)s %(U)s %(s)s'",
    }, workers=2)
    try:
        # Concurrent requests, each on its own connection, so both workers take some;
        # a round where one worker happened to take them all is repeated with a fresh client.
        for client_id, token in clients:
            _forget(redis_client, client_id)
            marker = secrets.token_hex(4)

            def get(n: int) -> requests.Response:
                return requests.get(f"{base}/api/scans/{marker}-{n}", timeout=30,
                                    headers={"Authorization": f"Bearer {token}", "Connection": "close"})

            with ThreadPoolExecutor(max_workers=6) as pool:
                answers = list(pool.map(get, range(limit + extra)))
            pids = _serving_pids(log_path, marker, limit + extra)
            if len(pids) == 2:
                break
        assert len(pids) == 2, f"one worker served every request: {pids}\n{log_path.read_text()[-2000:]}"
        refused = [a for a in answers if a.status_code == 429]
        passed = [a for a in answers if a.status_code != 429]
        assert len(passed) == limit and len(refused) == extra, [a.status_code for a in answers]
        assert all(a.status_code == 404 for a in passed)  # through the limit to the view: no such scan
        for answer in refused:
            assert answer.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(answer.headers["Retry-After"]) <= 60
            assert answer.headers["RateLimit-Remaining"] == "0" and answer.headers["RateLimit-Limit"] == str(limit)
    finally:
        stop_api(proc)


def _serving_pids(log_path: Path, marker: str, expected: int) -> set[str]:
    """The pids of the workers that served the requests whose path holds ``marker``."""
    pattern = re.compile(r"served pid=<?(\d+)>? /api/scans/" + marker)
    deadline = time.monotonic() + 10
    while True:
        found = pattern.findall(log_path.read_text(errors="replace"))
        if len(found) >= expected or time.monotonic() > deadline:
            return set(found)
        time.sleep(0.1)


# --- job quotas -----------------------------------------------------------------------------

def _submit(http, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return http.post("/api/scans", json={"url": f"https://quota.invalid/{secrets.token_hex(4)}"}, headers=headers)


def test_a_client_at_its_scan_quota_is_refused_until_a_scan_finishes(pg_database) -> None:  # type: ignore[no-untyped-def]
    app = _app(quota_scans=2, rate_limit_default="")
    client_id, headers = _client_key()
    jobs = [_submit(app.test_client(), headers) for _ in range(2)]
    assert [r.status_code for r in jobs] == [202, 202]

    # Both QUEUED: the quota is reached.
    with app.test_request_context("/api/scans", method="POST"), session_scope() as session:
        g.client_id, g.is_admin = client_id, False
        with pytest.raises(ApiError) as refused:
            check_job_quota(session, "scans")
    assert refused.value.status == 429 and refused.value.code == "quota_exceeded"
    assert refused.value.details == {"family": "scans", "quota": 2, "unfinished": 2, "retry_after": 30}
    assert refused.value.headers == {"Retry-After": "30"}

    # One moves on but is still running; then it ends (FAILED is as final as COMPLETED).
    first = jobs[0].get_json()["id"]
    with session_scope() as session:
        version = session.get(ScanJob, first).version
        version = transition(session, first, from_state=QUEUED, to_state=FETCHING, version=version, worker="test")
        assert version is not None
    with app.test_request_context("/api/scans", method="POST"), session_scope() as session:
        g.client_id, g.is_admin = client_id, False
        with pytest.raises(ApiError):
            check_job_quota(session, "scans")
    with session_scope() as session:
        assert transition(session, first, from_state=FETCHING, to_state=FAILED, version=version, worker="test")
    with app.test_request_context("/api/scans", method="POST"), session_scope() as session:
        g.client_id, g.is_admin = client_id, False
        check_job_quota(session, "scans")  # one unfinished of two: accepted
        g.client_id, g.is_admin = None, True
        check_job_quota(session, "scans")  # the admin credential has no quota


def test_third_scan_submission_answers_429_quota_exceeded(pg_database) -> None:  # type: ignore[no-untyped-def]
    http = _app(quota_scans=2, rate_limit_default="").test_client()
    _, headers = _client_key()
    assert [_submit(http, headers).status_code for _ in range(2)] == [202, 202]
    third = _submit(http, headers)
    assert third.status_code == 429, third.get_json()
    assert third.get_json()["error"]["code"] == "quota_exceeded"
    assert third.headers["Retry-After"] == "30"
    # Another client still submits.
    _, other = _client_key()
    assert _submit(http, other).status_code == 202


def test_an_ocr_upload_never_completed_stops_counting(pg_database) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from app.models.base import utcnow
    from app.models.ocr import Upload
    from app.services.quotas import unfinished_jobs

    client_id, _ = _client_key()
    old = utcnow() - timedelta(hours=2)
    rows = [("uploaded", None), ("uploaded", old), ("queued", old), ("processing", None), ("ready", None),
            ("failed", None)]
    with session_scope() as session:
        for status, created in rows:
            upload = Upload(id=secrets.token_hex(16), filename="a.png", storage_key="k", status=status,
                            client_id=client_id)
            if created is not None:
                upload.created_at = created
            session.add(upload)
    with session_scope() as session:
        # The fresh `uploaded`, the old `queued` and the `processing`: not the abandoned one.
        assert unfinished_jobs(session, "ocr", client_id, uploaded_counts_for=timedelta(hours=1)) == 3
        assert unfinished_jobs(session, "ocr", client_id) == 4
