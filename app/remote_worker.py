"""Standalone remote voice worker: ``python -m app.remote_worker``.

For machines with no Redis or database access. It pulls voice tasks from the API over
HTTP (the old worker's protocol, docs/voice.md), scores them with the very same scoring
service as the Celery task, and reports results. Configured exactly as the old worker:

    SERVER_URL       base URL of the API (required), e.g. http://api.internal:8000
    WORKER_TOKEN     the token shown when the worker was created (required)
    WORKER_ID        how the worker names itself (default: the host name)
    POLL_INTERVAL    seconds between polls when there is no work (default 5)
    REQUEST_TIMEOUT  seconds for every HTTP request (default 30)

The model settings (VOICE_MODEL_PATH, VOICE_ASR_MODEL_PATH, VOICE_* limits) are read as
by every other process. A heartbeat goes out at start and every 60 s; server errors and
unreachable servers back off exponentially (up to 60 s); SIGTERM or SIGINT lets the
current task finish, then the worker exits. A rejected token (401) stops it with exit
status 3, since no retry can help.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests

logger = logging.getLogger("app.remote_worker")

HEARTBEAT_INTERVAL = 60.0
MAX_BACKOFF = 60.0
EXIT_TOKEN_REJECTED = 3
VERSION = "1.0"


class TokenRejected(Exception):
    """The server answered 401: the token is unknown, revoked or expired."""


class ServerError(Exception):
    """The server answered 5xx or could not be reached: back off and try again."""


@dataclass
class Config:
    server_url: str
    token: str
    worker_id: str
    poll_interval: float = 5.0
    request_timeout: float = 30.0
    heartbeat_interval: float = HEARTBEAT_INTERVAL

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> Config:
        """Read the old worker's environment variables; ``SystemExit`` naming what is missing."""
        missing = [name for name in ("SERVER_URL", "WORKER_TOKEN") if not env.get(name)]
        if missing:
            raise SystemExit(f"remote worker: {', '.join(missing)} must be set")
        try:
            return cls(
                server_url=env["SERVER_URL"].rstrip("/"), token=env["WORKER_TOKEN"],
                worker_id=env.get("WORKER_ID") or socket.gethostname(),
                poll_interval=float(env.get("POLL_INTERVAL", "5")),
                request_timeout=float(env.get("REQUEST_TIMEOUT", "30")),
                heartbeat_interval=float(env.get("HEARTBEAT_INTERVAL", str(HEARTBEAT_INTERVAL))),
            )
        except ValueError as exc:
            raise SystemExit(f"remote worker: bad number in POLL_INTERVAL / REQUEST_TIMEOUT: {exc}") from None


class Client:
    """The HTTP pull protocol, one method per endpoint."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.http = requests.Session()
        self.http.headers.update({"Authorization": f"Bearer {config.token}",
                                  "User-Agent": f"voice-remote-worker/{VERSION} ({config.worker_id})"})

    def _call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            resp = self.http.request(method, self.config.server_url + path, timeout=self.config.request_timeout,
                                     **kwargs)
        except requests.RequestException as exc:
            raise ServerError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 401:
            raise TokenRejected(_error_message(resp))
        if resp.status_code >= 500:
            raise ServerError(f"{method} {path}: HTTP {resp.status_code}")
        return resp

    def heartbeat(self, status: str, current_task: str | None = None) -> None:
        self._call("POST", "/api/v1/worker/heartbeat", json={
            "worker_id": self.config.worker_id, "status": status, "version": VERSION, "current_task": current_task})

    def next_task(self) -> dict[str, Any] | None:
        resp = self._call("GET", "/api/v1/worker/tasks/next")
        if resp.status_code == 204:
            return None
        resp.raise_for_status()
        return resp.json()

    def set_status(self, task_id: str, status: str) -> requests.Response:
        return self._call("PATCH", f"/api/v1/worker/tasks/{task_id}/status", json={"status": status})

    def complete(self, task_id: str, result: dict[str, Any]) -> requests.Response:
        return self._call("POST", f"/api/v1/worker/tasks/{task_id}/complete", json=result)

    def fail(self, task_id: str, reason: str, retryable: bool) -> requests.Response:
        return self._call("POST", f"/api/v1/worker/tasks/{task_id}/fail",
                          json={"reason": reason, "retryable": retryable})

    def download(self, url: str, max_bytes: int) -> bytes:
        from app.services.voice.jobs import AudioFetchError, fetch_url

        # The signed link needs no credential; the worker token stays with the API.
        try:
            return fetch_url(url, timeout=self.config.request_timeout, max_bytes=max_bytes)
        except AudioFetchError as exc:
            raise ServerError(str(exc)) from None


def _error_message(resp: requests.Response) -> str:
    try:
        return str(resp.json()["error"]["message"])
    except Exception:
        return f"HTTP {resp.status_code}"


class RemoteWorker:
    """The poll loop: heartbeat, pull, score, report; stops between tasks on request."""

    def __init__(self, config: Config, client: Client | None = None, deps: Any = None) -> None:
        self.config = config
        self.client = client or Client(config)
        self.deps = deps
        self.stop = threading.Event()
        self.backoff = 0.0
        self.last_heartbeat = 0.0

    def request_stop(self, signum: int | None = None, _frame: Any = None) -> None:
        if not self.stop.is_set():
            logger.info(f"Worker {self.config.worker_id} stopping after the current task")
        self.stop.set()

    def _load(self) -> None:
        if self.deps is None:
            from app.services.voice.model import deps_from_settings
            from app.settings import get_settings

            self.deps = deps_from_settings(get_settings())

    def run(self) -> int:
        """Work until asked to stop; the exit status of the process."""
        self._load()
        logger.info(f"Worker {self.config.worker_id} started", extra={"server_url": self.config.server_url})
        while not self.stop.is_set():
            try:
                if time.monotonic() - self.last_heartbeat >= self.config.heartbeat_interval:
                    self.client.heartbeat("online")
                    self.last_heartbeat = time.monotonic()
                task = self.client.next_task()
                self.backoff = 0.0
                if task is None:
                    self.stop.wait(self.config.poll_interval)
                    continue
                self.process(task)
            except TokenRejected as exc:
                logger.error(f"Worker {self.config.worker_id}: token rejected by the server ({exc}); exiting")
                return EXIT_TOKEN_REJECTED
            except ServerError as exc:
                self.backoff = min(MAX_BACKOFF, max(1.0, self.backoff * 2))
                wait = self.backoff * random.uniform(0.75, 1.25)
                logger.warning(f"Server error, retrying in {wait:.1f} s: {exc}")
                self.stop.wait(wait)
        try:
            self.client.heartbeat("offline")
        except (ServerError, TokenRejected):
            pass
        logger.info(f"Worker {self.config.worker_id} stopped")
        return 0

    def process(self, task: dict[str, Any]) -> None:
        """Score one pulled task and report the outcome (401 and 5xx propagate to ``run``)."""
        from app.services.voice.model import AudioError, score_clip

        task_id = task["task_id"]
        logger.info(f"Received task {task_id}", extra={"task_id": task_id, "attempt": task.get("attempt")})
        resp = self.client.set_status(task_id, "processing")
        if resp.status_code == 409:
            logger.warning(f"Task {task_id} is no longer ours; skipping it")
            return
        try:
            audio = self.client.download(task["audio_url"], self.deps.limits.max_bytes) if task.get("audio_url") else None
            result = score_clip(self.deps, audio, task.get("transcript"))
        except AudioError as exc:
            logger.warning(f"Task {task_id} failed: {exc}")
            self.client.fail(task_id, str(exc), retryable=False)
            return
        except ServerError as exc:
            logger.warning(f"Task {task_id}: audio download failed: {exc}")
            self.client.fail(task_id, f"audio_unavailable: {exc}", retryable=True)
            return
        except Exception as exc:  # a scoring bug must not kill the worker; the server retries elsewhere
            logger.exception(f"Task {task_id} failed unexpectedly")
            self.client.fail(task_id, f"worker_error: {type(exc).__name__}: {exc}", retryable=True)
            return
        resp = self.client.complete(task_id, result)
        if resp.status_code == 200:
            logger.info(f"Task {task_id} completed with risk level: {result['risk_level']}",
                        extra={"task_id": task_id, "scam_score": result["scam_score"]})
        elif resp.status_code == 409:
            logger.warning(f"Task {task_id}: lease lost before completion; result discarded ({_error_message(resp)})")
        else:
            logger.error(f"Task {task_id}: server refused the result: HTTP {resp.status_code} {_error_message(resp)}")


def main() -> int:
    """Entry point: configure logging, read the environment, run until SIGTERM."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config.from_env()
    worker = RemoteWorker(config)
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
