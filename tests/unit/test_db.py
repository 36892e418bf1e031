"""Migrations and the session scope on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import inspect, select

from app.db import make_engine
from app.models import ApiKey, Client
from app.settings import Settings, get_settings


def _migrate(settings: Settings) -> None:
    from alembic import command

    from app.migrate import alembic_config

    engine = make_engine(settings)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return engine


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        settings = get_settings().model_copy(update={"database_url": f"sqlite:///{tmp_path}/app.db"})
    else:
        request.getfixturevalue("pg_database")
        settings = get_settings()
    engine = _migrate(settings)
    yield engine
    engine.dispose()


def test_migrations_create_every_model_table(engine) -> None:  # type: ignore[no-untyped-def]
    from app.models import Base

    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_timestamps_come_back_timezone_aware(engine) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        client = Client(name="tz")
        session.add(client)
        session.flush()
        session.add(ApiKey(name="tz", client_id=client.id, prefix="ak_x", key_hash="h" * 64))
        session.commit()
    with Session(engine) as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_hash == "h" * 64)).one()
        assert row.created_at.tzinfo is not None
        assert row.created_at.utcoffset() == UTC.utcoffset(None)
        session.delete(row)
        session.delete(session.get(Client, row.client_id))
        session.commit()


def test_session_scope_rolls_back_on_error(pg_database) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_scope

    with pytest.raises(RuntimeError), session_scope() as session:
        session.add(Client(name="rollback"))
        session.flush()
        raise RuntimeError("boom")
    with session_scope() as session:
        assert session.scalars(select(Client).where(Client.name == "rollback")).first() is None
