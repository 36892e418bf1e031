"""Test support of the voice family: the API served over real HTTP on loopback, and the
standalone remote worker as a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests
from werkzeug.serving import make_server

from tests.conftest import _TMP

ROOT = Path(__file__).resolve().parent.parent
ADMIN = {"Authorization": "Bearer test-admin-token"}


class ApiServer:
    """``create_app(settings)`` behind werkzeug's threaded server on 127.0.0.1:<free port>."""

    def __init__(self, **overrides: Any) -> None:
        from app.api import create_app
        from app.settings import load_settings

        self.settings = load_settings(**overrides)
        self.app = create_app(self.settings)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="voice-test-api", daemon=True)

    def start(self) -> ApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        from app.db import reset_engine
        from app.settings import set_settings

        self.server.shutdown()
        self.thread.join(timeout=10)
        set_settings(None)  # the next get_settings() reads the environment again
        reset_engine()

    def create_worker(self, name: str) -> tuple[str, str]:
        resp = requests.post(f"{self.url}/api/admin/workers", json={"name": name}, headers=ADMIN, timeout=10)
        assert resp.status_code == 201, resp.text
        return resp.json()["id"], resp.json()["token"]

    def api_key(self) -> dict[str, str]:
        from app.db import session_scope
        from app.services.auth import create_api_key

        with session_scope() as session:
            _, token = create_api_key(session, "voice-tests")
        return {"Authorization": f"Bearer {token}"}


class RemoteWorkerProcess:
    """``python -m app.remote_worker`` with the old worker's environment.

    It gets no database and no Redis (both point at closed ports), proving it needs
    only the API.
    """

    def __init__(self, server_url: str, token: str, worker_id: str, **env: str) -> None:
        self.log_path = _TMP / f"remote-worker-{worker_id}-{os.getpid()}-{time.monotonic_ns()}.log"
        self.env = dict(os.environ) | {
            "SERVER_URL": server_url, "WORKER_TOKEN": token, "WORKER_ID": worker_id, "POLL_INTERVAL": "0.3",
            "REQUEST_TIMEOUT": "10", "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "INFO",
            "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none", "REDIS_URL": "redis://127.0.0.1:9/0",
        } | env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RemoteWorkerProcess:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.remote_worker"], cwd=ROOT, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            assert self.proc is not None
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"remote worker exited {self.proc.returncode} before {text!r}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} in the remote worker log after {timeout}s:\n{self.log()}")

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"remote worker still running after {timeout}s:\n{self.log()}") from None

    def terminate(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
