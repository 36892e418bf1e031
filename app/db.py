"""Database engine, session factory and the session scope every task and view uses.

One engine per process. Worker processes forked by Celery's prefork pool dispose the
inherited engine in ``worker_process_init`` (see ``app.celery_app``) so that no two
processes ever share a connection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings, get_settings

_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None

#: The database could not be reached (a restart, a failover): worth a retry of the task.
TRANSIENT_DB = (OperationalError, InterfaceError)


def make_engine(settings: Settings) -> Engine:
    """Build an engine for ``settings.database_url`` with per-dialect options."""
    url = make_url(settings.database_url)
    kwargs: dict[str, object] = {"echo": settings.database_echo}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs["pool_size"] = settings.database_pool_size
        kwargs["connect_args"] = {"connect_timeout": 10}
    engine = create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _ping_when_idle(engine, settings.database_ping_after_idle)
    return engine


def _ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Pessimistic disconnect handling, only for connections that sat idle.

    ``pool_pre_ping`` pings at every checkout: a round trip per transaction, and a task or
    a request opens two. A connection checked in moments ago is as alive as the server;
    one that sat idle (through a database restart, say) is pinged, and a dead one is
    replaced before anyone uses it (SQLAlchemy retries the checkout on
    ``DisconnectionError``).
    """

    @event.listens_for(engine, "connect")
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get("checked_in_at")
        if last is not None and time.monotonic() - last <= idle_seconds:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {type(exc).__name__}") from exc
        if alive is False:
            raise DisconnectionError("pooled connection is dead")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; foreign keys are off by default.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def get_engine() -> Engine:
    """The process-wide engine, built on first use."""
    global _engine, _sessionmaker
    if _engine is None:
        _engine = make_engine(get_settings())
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def get_sessionmaker() -> sessionmaker[Session]:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker


def dispose_engine() -> None:
    """Drop inherited pooled connections without closing the parent's (after fork)."""
    if _engine is not None:
        _engine.dispose(close=False)


def reset_engine() -> None:
    """Forget the engine entirely (tests that switch databases)."""
    global _engine, _sessionmaker
    if _engine is not None:
        _engine.dispose()
    _engine = None
    _sessionmaker = None


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rows_changed(session: Session, statement: Executable, *, synchronize: bool = True) -> int:
    """Execute an INSERT, UPDATE or DELETE; how many rows it changed (a conditional
    UPDATE's answer to "did I win?"). ``synchronize=False`` leaves the session's loaded
    objects alone (``synchronize_session=False``)."""
    options = {} if synchronize else {"synchronize_session": False}
    return int(cast(CursorResult[Any], session.execute(statement, execution_options=options)).rowcount)
