"""Test harness: real PostgreSQL, an isolated Redis database, real Celery workers.

The environment is fixed here, before any ``app`` module is imported, so that the test
process and every worker subprocess it starts read the same settings. A service that is
missing skips the tests that need it locally and fails them when ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PG_DB_NAME = f"app_test_{os.getpid()}_{secrets.token_hex(3)}"
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_DB_NAME
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "15"))
REDIS_URL = f"{REDIS_BASE}/{REDIS_DB}"
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
_TMP = Path(tempfile.mkdtemp(prefix="app-tests-"))

os.environ.update(
    {
        "ENVIRONMENT": "test",
        "DATABASE_URL": PG_URL,
        "REDIS_URL": REDIS_URL,
        "BROKER_URL": "",
        "RESULT_BACKEND": "",
        "STORAGE_BACKEND": "local",
        "STORAGE_LOCAL_ROOT": str(_TMP / "storage"),
        "SECRET_KEY": "test-secret-key",
        "ADMIN_TOKEN": "test-admin-token",
        "LOG_JSON": "true",
        "LOG_LEVEL": "INFO",
        # Many tests fail authentication on purpose from 127.0.0.1; the limiter stays on,
        # out of their way (tests/security/test_security.py tests it with a small limit).
        "AUTH_FAILURE_LIMIT": "100000",
        # Likewise the per-client request rate limit (tests/security/test_rate_limits.py).
        "RATE_LIMIT_DEFAULT": "100000/minute",
    }
)

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.workers", "tests.fixtures.s3", "tests.fixtures.channels", "tests.fixtures.api"]


def need(ok: bool, what: str) -> None:
    """Skip locally, fail in CI, when a service the test needs is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but is not available")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session", autouse=True)
def tmp_root() -> Iterator[Path]:
    """Scratch space of the session (worker logs, local storage), removed at the end."""
    yield _TMP
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_process_settings() -> Iterator[None]:
    """A test that called ``create_app(other_settings)`` must not leak them (and their
    engine) into the tests after it."""
    from app import settings as app_settings

    before = app_settings._current
    yield
    if app_settings._current is not before:
        from app.db import reset_engine

        app_settings.set_settings(before)
        reset_engine()


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]
