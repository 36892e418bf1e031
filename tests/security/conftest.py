"""The API served for real (gunicorn on a free loopback port) on a scratch database, with
one credential of every kind: a client API key, ADMIN_TOKEN and a remote worker token.

The fuzzing and hostile-input tests talk HTTP to it, so what they see is what a client
sees: gunicorn's own answers (a huge header), Flask's and the application's. The scratch
database keeps the thousands of rows the fuzzer writes out of the shared test database.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from tests.conftest import _TMP, PG_ADMIN_URL, need

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    """A running API: its base URL, its credentials and its log file."""

    base_url: str
    client_key: str
    admin_token: str
    worker_token: str
    database_url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def client(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.client_key}"}

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def worker(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.worker_token}"}


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a GET (0 when nothing answers): for servers outside the API."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _pg_admin_ok() -> bool:
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def scratch_database() -> Iterator[str]:
    """A fresh PostgreSQL database, migrated to head (in a subprocess, so this process's
    settings and engine stay on the session's database), dropped afterwards."""
    need(_pg_admin_ok(), f"PostgreSQL at {PG_ADMIN_URL}")
    name = f"app_sec_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        subprocess.run([sys.executable, "-m", "app", "migrate"], cwd=ROOT, env={**os.environ, "DATABASE_URL": url},
                       check=True, capture_output=True, timeout=120)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _credentials(database_url: str) -> tuple[str, str]:
    """A client key (moved to a high id, so a fuzzed ``DELETE /api/admin/api-keys/1``
    cannot revoke it) and a remote worker token, written to ``database_url``."""
    from app.services.auth import create_api_key
    from app.services.voice.workers import create_worker
    from app.settings import get_settings

    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            key, client_key = create_api_key(session, "security-tests")
            session.flush()
            session.execute(text("UPDATE api_keys SET id = 1900000000 WHERE id = :id"), {"id": key.id})
            _, worker_token = create_worker(session, "security-tests", get_settings().signing_key(), 1)
            session.commit()
    finally:
        engine.dispose()
    return client_key, worker_token


def start_api(database_url: str, log_path: Path, extra_env: dict[str, str] | None = None,
              workers: int = 2) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    """gunicorn with the project's config on a free loopback port; waits for /health."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "API_HOST": "127.0.0.1", "API_PORT": str(port),
           **(extra_env or {})}
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:app.api.gunicorn_conf", "-b", f"127.0.0.1:{port}",
         "-w", str(workers), "--timeout", "60", "--graceful-timeout", "5", "app.api.wsgi:application"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    _started.append(proc)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if requests.get(base + "/openapi.json", timeout=2).status_code == 200:
                return proc, base, env
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop_api(proc)
    raise AssertionError(f"gunicorn did not answer:\n{log_path.read_text(errors='replace')[-3000:]}")


def stop_api(proc: subprocess.Popen[bytes]) -> None:
    """Graceful stop (SIGTERM to gunicorn's process group), SIGKILL if it hangs.

    The group, not ``proc.poll()``, says whether anything is left: a server whose exit
    status someone else collected still has its workers to stop."""
    pgid = proc.pid  # start_new_session: the master leads its own group

    def alive() -> bool:
        proc.poll()  # collect the master's exit status, so it is no zombie of ours
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True

    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        if not alive():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    if proc in _started:
        _started.remove(proc)


#: The servers started here; whatever is left goes when the session ends.
_started: list[subprocess.Popen[bytes]] = []
atexit.register(lambda: [stop_api(proc) for proc in list(_started)])


@pytest.fixture(scope="session")
def served_api(scratch_database: str, redis_client) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """The API under gunicorn on the scratch database. Authentication-failure limiting
    stays on but with a limit the fuzzer's thousands of anonymous calls cannot reach
    (the limiter itself is tested with a small limit in test_security.py)."""
    from app.settings import get_settings

    client_key, worker_token = _credentials(scratch_database)
    log_path = _TMP / f"api-security-{secrets.token_hex(3)}.log"
    proc, base, env = start_api(scratch_database, log_path, {"AUTH_FAILURE_LIMIT": "1000000"})
    try:
        yield Served(base_url=base, client_key=client_key,
                     admin_token=get_settings().admin_token.get_secret_value(), worker_token=worker_token,
                     database_url=scratch_database, log_path=log_path, env=env)
    finally:
        stop_api(proc)
