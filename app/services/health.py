"""Dependency checks behind ``GET /health`` and ``python -m app check``.

Each check is a plain function returning ``None`` on success or raising; ``run_checks``
times each one and reports status and latency. Required checks decide the overall state.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass

import redis
from kombu import Connection
from sqlalchemy import text

from app.settings import Settings


@dataclass
class CheckResult:
    name: str
    status: str  # "up" | "down"
    required: bool
    latency_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Check:
    name: str
    func: Callable[[], object]
    required: bool = True


def check_database() -> None:
    from app.db import get_engine

    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


def make_broker_check(settings: Settings) -> Callable[[], None]:
    def check() -> None:
        with Connection(settings.celery_broker_url, connect_timeout=settings.health_timeout) as conn:
            conn.ensure_connection(max_retries=0, timeout=settings.health_timeout)

    return check


def make_redis_check(settings: Settings) -> Callable[[], None]:
    def check() -> None:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.health_timeout,
            socket_connect_timeout=settings.health_timeout,
        )
        try:
            client.ping()
        finally:
            client.close()

    return check


def make_storage_check(settings: Settings) -> Callable[[], None]:
    def check() -> None:
        from app.storage import get_storage

        get_storage(settings).check()

    return check


def check_tesseract() -> None:
    exe = shutil.which("tesseract")
    if exe is None:
        raise RuntimeError("tesseract not found on PATH")
    subprocess.run([exe, "--version"], check=True, capture_output=True, timeout=5)


def make_docker_check(settings: Settings) -> Callable[[], None]:
    """Docker answers and has the fetcher image URL scans run in."""

    def check() -> None:
        from app.services.sandbox import SandboxConfig, docker_client, image_present

        client = docker_client(settings.model_copy(update={"docker_timeout": settings.health_timeout}))
        try:
            client.ping()
            image = SandboxConfig.from_settings(settings).image
            if not image_present(client, image):
                raise RuntimeError(f"fetcher image {image} is missing (scripts/build-fetcher)")
        finally:
            client.close()

    return check


def default_checks(settings: Settings) -> list[Check]:
    """The checks /health runs; later families append theirs (Docker, models)."""
    return [
        Check("database", check_database),
        Check("broker", make_broker_check(settings)),
        Check("redis", make_redis_check(settings)),
        Check("storage", make_storage_check(settings)),
        Check("tesseract", check_tesseract, required=False),
        Check("docker", make_docker_check(settings), required=settings.enable_scans),
    ]


def run_checks(checks: list[Check], timeout: float) -> tuple[bool, list[CheckResult]]:
    """Run every check concurrently, each bounded by ``timeout``; healthy when every
    required one is up."""
    pool = ThreadPoolExecutor(max_workers=max(1, len(checks)))
    started = time.perf_counter()
    futures = [(c, pool.submit(_timed, c.func)) for c in checks]
    results: list[CheckResult] = []
    try:
        for check, future in futures:
            remaining = max(0.0, timeout - (time.perf_counter() - started))
            try:
                elapsed = future.result(timeout=remaining)
                results.append(CheckResult(check.name, "up", check.required, round(elapsed * 1000, 1)))
            except FutureTimeout:
                results.append(
                    CheckResult(check.name, "down", check.required, round(timeout * 1000, 1), f"timed out after {timeout:.1f}s")
                )
            except Exception as exc:  # a failed dependency is reported, never raised
                results.append(
                    CheckResult(check.name, "down", check.required, round((time.perf_counter() - started) * 1000, 1),
                                f"{type(exc).__name__}: {exc}"[:300])
                )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    healthy = all(r.status == "up" for r in results if r.required)
    return healthy, results


class CachedHealth:
    """The last run of the checks, reused for ``ttl`` seconds, one run at a time: a flood
    of probes of ``GET /health`` costs each dependency one check per ``ttl``, not one per
    probe."""

    def __init__(self, checks: Callable[[], list[Check]], timeout: float, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._checks, self._timeout, self._ttl, self._clock = checks, timeout, ttl, clock
        self._lock = threading.Lock()
        self._last: tuple[float, bool, list[CheckResult]] | None = None
        #: How many times the checks really ran (tests and curiosity).
        self.runs = 0

    def get(self) -> tuple[bool, list[CheckResult]]:
        with self._lock:  # a probe that arrives during a run waits for its result
            if self._last is not None and self._clock() - self._last[0] < self._ttl:
                return self._last[1], self._last[2]
            healthy, results = run_checks(self._checks(), self._timeout)
            self.runs += 1
            self._last = (self._clock(), healthy, results)
            return healthy, results


def _timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start
