"""First contact: the home page and the locally served API reference, the development
operator `make run` creates, and a relay tick that publishes nothing staying out of the
INFO log."""

from __future__ import annotations

import json
import logging
import re
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, select

from app.api import create_app
from app.db import session_scope
from app.devserver import DEV_OPERATOR, dev_credentials, ensure_dev_operator
from app.models.console import Operator
from app.models.outbox import OutboxEvent
from app.services.console.operators import authenticate, update_operator
from app.services.outbox import add_event
from app.settings import Settings, get_settings

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.fixture
def client(pg_database):  # type: ignore[no-untyped-def]
    return create_app(get_settings()).test_client()


def _links(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)="([^"]+)\"""", html)


def test_home_page_links_console_reference_and_health(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert {"/console", "/docs/", "/health"} <= set(_links(html))
    assert not EXTERNAL.search(html)
    for link in ("/console", "/docs/", "/health"):
        assert client.get(link).status_code in (200, 302, 401), link  # each link leads somewhere


def test_api_reference_and_its_assets_are_served_locally(client) -> None:  # type: ignore[no-untyped-def]
    resp = client.get("/docs/")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert not EXTERNAL.search(html), "the API reference page loads something from outside"
    assets = [link for link in _links(html) if link.startswith("/static/")]
    assert {"/static/swagger-ui/swagger-ui-bundle.js", "/static/swagger-ui/swagger-ui.css",
            "/static/api-reference.js"} <= set(assets)
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200 and len(served.data) > 0, asset
        served.close()
    init = client.get("/static/api-reference.js").get_data(as_text=True)
    assert "validatorUrl: null" in init  # no badge fetched from the public validator
    assert 'data-spec-url="/openapi.json"' in html and client.get("/openapi.json").status_code == 200
    licence = Path(__file__).resolve().parents[2] / "app/api/static/swagger-ui/LICENSE"
    assert "Apache License" in licence.read_text()
    # spectree's own pages load their UI from a CDN: they are not served.
    for page in ("/docs/swagger/", "/docs/redoc/", "/docs/scalar/"):
        assert client.get(page).status_code == 404, page


def _dev_settings(**update: object) -> Settings:
    return get_settings().model_copy(update={"environment": "development", "admin_token": SecretStr(""), **update})


def _dev_operators() -> list[tuple[str, str, bool]]:
    with session_scope() as session:
        return [(op.role, op.name, op.disabled_at is None)
                for op in session.scalars(select(Operator).where(Operator.name == DEV_OPERATOR))]


def test_dev_operator_is_created_once_as_admin_and_its_password_works(pg_database, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(delete(Operator).where(Operator.name == DEV_OPERATOR))
    path = tmp_path / "dev-credentials.json"
    first = ensure_dev_operator(_dev_settings(), path)
    assert _dev_operators() == [("admin", DEV_OPERATOR, True)]
    assert len(first.password) >= 12 and len(first.admin_token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with session_scope() as session:
        assert authenticate(session, DEV_OPERATOR, first.password) is not None

    assert ensure_dev_operator(_dev_settings(), path) == first  # idempotent: same operator, same credentials
    assert _dev_operators() == [("admin", DEV_OPERATOR, True)]

    with session_scope() as session:  # demoted, disabled, password changed: brought back
        update_operator(session, DEV_OPERATOR, role="viewer", disabled=True, password="something-else-entirely")
    assert ensure_dev_operator(_dev_settings(), path) == first
    assert _dev_operators() == [("admin", DEV_OPERATOR, True)]
    with session_scope() as session:
        assert authenticate(session, DEV_OPERATOR, first.password) is not None

    # A configured ADMIN_TOKEN is the one printed and passed on, and is not written to the file.
    configured = dev_credentials(_dev_settings(admin_token=SecretStr("configured-admin-token")), path)
    assert configured.admin_token == "configured-admin-token"
    assert "configured-admin-token" not in path.read_text()
    assert json.loads(path.read_text())["admin_token"] == first.admin_token


@pytest.mark.parametrize("environment", ["production", "test"])
def test_dev_operator_is_refused_outside_development(pg_database, tmp_path: Path, environment: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope() as session:
        session.execute(delete(Operator).where(Operator.name == DEV_OPERATOR))
    path = tmp_path / "dev-credentials.json"
    with pytest.raises(RuntimeError, match=f"ENVIRONMENT={environment}"):
        ensure_dev_operator(_dev_settings(environment=environment), path)
    assert _dev_operators() == [] and not path.exists()


def _celery_lines_about(task: str) -> None:
    """What Celery itself logs for one periodic run of ``task``, through its own loggers."""
    from celery.app import trace

    context = {"id": "x", "name": task, "args": "()", "kwargs": "{}", "eta": None, "return_value": "{}",
               "runtime": 0.01}
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "outbox-relay", task)
    logging.getLogger("celery.worker.strategy").info(trace.LOG_RECEIVED, context, extra={"data": context})
    trace.info(trace.LOG_SUCCESS, context)
    logging.getLogger("celery.worker.request").info("Discarding revoked task: %s[%s]", task, "x")


def test_a_relay_tick_that_publishes_nothing_logs_nothing_at_info(pg_database, redis_client, caplog) -> None:  # type: ignore[no-untyped-def]
    from app.tasks.outbox import RELAY_TASK, relay

    with session_scope() as session:
        session.execute(delete(OutboxEvent))
    caplog.set_level(logging.INFO)
    assert relay()["published"] == 0
    _celery_lines_about(RELAY_TASK)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []

    caplog.clear()  # every other task keeps Celery's INFO lines
    _celery_lines_about("app.tasks.system.ping")
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 4

    caplog.clear()  # with LOG_LEVEL=DEBUG the relay's lines are there, at DEBUG
    caplog.set_level(logging.DEBUG)
    _celery_lines_about(RELAY_TASK)
    assert [r.levelname for r in caplog.records if r.name.startswith("celery.")] == ["DEBUG"] * 4


def test_a_relay_tick_that_publishes_logs_at_info(pg_database, redis_client, caplog) -> None:  # type: ignore[no-untyped-def]
    from app.tasks.outbox import relay

    with session_scope() as session:
        session.execute(delete(OutboxEvent))
        add_event(session, aggregate_type="probe", aggregate_id="1", event_type="probe.ping",
                  task_name="app.tasks.system.ping", payload={})
    caplog.set_level(logging.INFO)
    assert relay()["published"] == 1
    relayed = [r for r in caplog.records if r.getMessage() == "outbox relayed"]
    assert len(relayed) == 1 and relayed[0].levelno == logging.INFO and relayed[0].published == 1
    redis_client.delete("default")  # nobody consumes the probe here
