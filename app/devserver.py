"""The development stack behind ``python -m app dev``: API, one worker on every queue,
beat and Flower in the foreground, with a private ``redis-server`` when none answers.

Each child runs in its own session so that Ctrl-C is handled here once: every child gets
SIGTERM (Celery's warm shutdown), then SIGKILL after a grace period, and the private
Redis is stopped last.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from app.settings import QUEUES, VAR, Settings

logger = logging.getLogger(__name__)

GRACE_SECONDS = 20.0

#: The console operator ``dev`` creates on a development stack, and where the generated
#: credentials are kept between runs (like ``var/secret.key``), so a restart keeps them.
DEV_OPERATOR = "dev"
DEV_CREDENTIALS = VAR / "dev-credentials.json"


@dataclass(frozen=True)
class DevCredentials:
    operator: str
    password: str
    admin_token: str


def _stored(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def dev_credentials(settings: Settings, path: Path = DEV_CREDENTIALS) -> DevCredentials:
    """The development operator's password and the ADMIN_TOKEN of the stack: the configured
    ADMIN_TOKEN when one is set, else the ones kept in ``path``, else new ones (then kept).
    Refused outside ENVIRONMENT=development: production never gets a generated credential."""
    if settings.environment != "development":
        raise RuntimeError(f"development credentials are refused with ENVIRONMENT={settings.environment}")
    stored = _stored(path)
    keep = {"password": str(stored.get("password") or secrets.token_urlsafe(18)),
            "admin_token": str(stored.get("admin_token") or secrets.token_urlsafe(32))}
    configured = settings.admin_token.get_secret_value()
    creds = DevCredentials(DEV_OPERATOR, keep["password"], configured or keep["admin_token"])
    if keep != stored:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.chmod(0o600)
        path.write_text(json.dumps(keep))
    return creds


def ensure_dev_operator(settings: Settings, path: Path = DEV_CREDENTIALS) -> DevCredentials:
    """Create the ``dev`` operator (role admin) with the kept password, or bring an existing
    one back to role admin, enabled, with that password; idempotent. Development only."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError
    from sqlalchemy import select

    from app.db import session_scope
    from app.models.console import Operator
    from app.services.console.operators import create_operator, update_operator

    creds = dev_credentials(settings, path)
    with session_scope() as session:
        operator = session.scalars(select(Operator).where(Operator.name == creds.operator)).first()
        if operator is None:
            create_operator(session, creds.operator, "admin", creds.password)
            return creds
        try:
            # An unchanged password is not hashed again: open console sessions stay valid.
            PasswordHasher().verify(operator.password_hash, creds.password)
            password: str | None = None
        except (VerificationError, InvalidHashError):
            password = creds.password
        if password or operator.role != "admin" or operator.disabled_at is not None:
            update_operator(session, creds.operator, role="admin", disabled=False, password=password)
    return creds


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def start_private_redis(port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``redis-server`` on a free loopback port, keeping nothing on disk."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed; run scripts/bootstrap")
    port = port or free_port()
    workdir = tempfile.mkdtemp(prefix="app-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers(url, 0.2):
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"private redis-server did not start on port {port}")


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class DevStack:
    """The processes of the development stack and their shared environment."""

    settings: Settings
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    private_redis: subprocess.Popen[bytes] | None = None
    flower_password: str = ""
    dev: DevCredentials | None = None

    def prepare(self) -> None:
        s = self.settings
        self._prepare_redis()
        self.flower_password = s.flower_password.get_secret_value() or secrets.token_urlsafe(12)
        self.env["FLOWER_PASSWORD"] = self.flower_password
        if s.environment == "development":
            self.dev = ensure_dev_operator(s)
            self.env["ADMIN_TOKEN"] = self.dev.admin_token  # the API and workers read it
        self.children = self._children()

    def _prepare_redis(self) -> None:
        s = self.settings
        if not redis_answers(s.redis_url):
            host = urlparse(s.redis_url).hostname or ""
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise RuntimeError(f"REDIS_URL {s.redis_url} does not answer")
            self.private_redis, url = start_private_redis()
            print(f"no Redis at {s.redis_url}; started a private redis-server at {url}", flush=True)
            self.env["REDIS_URL"] = url
            if s.broker_url in ("", s.redis_url):
                self.env["BROKER_URL"] = url
            if s.result_backend in ("", s.redis_url):
                self.env["RESULT_BACKEND"] = url

    def _children(self) -> list[Child]:
        s = self.settings
        py = sys.executable
        VAR.mkdir(parents=True, exist_ok=True)
        return [
            Child("api", [py, "-m", "gunicorn", "-c", "python:app.api.gunicorn_conf",
                          "-b", f"{s.api_host}:{s.api_port}", "-w", "2",
                          "--timeout", "60", "--graceful-timeout", "10", "app.api.wsgi:application"]),
            Child("worker", [py, "-m", "celery", "-A", "app", "worker", "-Q", ",".join(QUEUES),
                             "-n", "dev@%h", "-c", str(s.worker_concurrency), "--loglevel", s.log_level]),
            Child("beat", [py, "-m", "celery", "-A", "app", "beat", "--loglevel", s.log_level,
                           "-s", str(VAR / "celerybeat-schedule")]),
            Child("channels", [py, "-m", "app.dev.channels", "--port", str(s.dev_channels_port)]),
            Child("telephony", [py, "-m", "app.dev.telephony", "--port", str(s.dev_telephony_port)]),
            Child("flower", [py, "-m", "celery", "-A", "app", "flower", "--address=127.0.0.1",
                             f"--port={s.flower_port}", f"--basic-auth={s.flower_user}:{self.flower_password}"]),
        ]

    def start(self) -> None:
        for child in self.children:
            child.proc = subprocess.Popen(child.argv, env=self.env, start_new_session=True)

    def banner(self) -> str:
        s = self.settings
        api = s.base_url
        return "\n".join([
            "",
            "stack is up:",
            f"  API      {api}   (health: {api}/health, OpenAPI: {api}/openapi.json)",
            f"  Flower   http://127.0.0.1:{s.flower_port}   (user {s.flower_user}, password {self.flower_password})",
            f"  channels http://127.0.0.1:{s.dev_channels_port}   (development WhatsApp/Instagram server; GET /_received)",
            f"  telephony http://127.0.0.1:{s.dev_telephony_port}   (development telephony server for the call scheduler)",
            f"  queues   {', '.join(QUEUES)}",
            *self._sign_in_lines(),
            "Ctrl-C stops everything.",
            "",
        ])

    def _sign_in_lines(self) -> list[str]:
        if self.dev is None:
            return []
        api = self.settings.base_url
        return [
            f"  home     {api}/   (console, API reference at {api}/docs/, health)",
            f"  console  {api}/console   (operator {self.dev.operator}, password {self.dev.password}; role admin)",
            f"  ADMIN_TOKEN {self.dev.admin_token}   (the console's Workers page, /admin/workers, and "
            "Authorization: Bearer on admin routes)",
            f"  (development credentials kept in {DEV_CREDENTIALS}; delete it for new ones)",
        ]

    def first_exit(self) -> Child | None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                return child
        return None

    def stop(self) -> None:
        """SIGTERM every child's process group, wait, then SIGKILL what is left."""
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_SECONDS
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait()
        for child in self.children:  # leftovers of pools whose parent already left
            _signal_group(child.proc, signal.SIGKILL)
        if self.private_redis is not None:
            self.private_redis.terminate()
            try:
                self.private_redis.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.private_redis.kill()


def _signal_group(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_dev(settings: Settings) -> int:
    """Run the stack until Ctrl-C/SIGTERM or until one child dies; return the exit code."""
    stack = DevStack(settings)
    stack.prepare()
    stopping: dict[str, int | None] = {"signal": None}

    def _on_signal(signum: int, _frame: object) -> None:
        stopping["signal"] = signum

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    stack.start()
    print(stack.banner(), flush=True)
    code = 0
    try:
        while stopping["signal"] is None:
            dead = stack.first_exit()
            if dead is not None:
                print(f"{dead.name} exited with code {dead.proc.returncode}; stopping", file=sys.stderr, flush=True)  # type: ignore[union-attr]
                code = 1
                break
            time.sleep(0.3)
    finally:
        print("stopping...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return code
