"""Shared benchmark helpers: statistics, a scratch PostgreSQL database, process handling."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """Median, minimum and maximum."""
    return statistics.median(values), min(values), max(values)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{platform.machine()}, {cpus} cores, {mem}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database, migrated to head, dropped afterwards."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def deploy_env(queue: str) -> dict[str, str]:
    """The shipped worker settings of a queue (deploy/systemd/worker-<queue>.env), so a
    benchmark's worker runs as deployed (pool, concurrency, prefetch)."""
    path = Path(__file__).resolve().parents[1] / "deploy" / "systemd" / f"worker-{queue}.env"
    env = {"WORKER_POOL": "threads", "WORKER_CONCURRENCY": "4", "WORKER_PREFETCH_MULTIPLIER": "1"}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 30
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def replace_section(path: str, marker: str, content: str) -> None:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    with open(path) as f:
        doc = f.read()
    if start not in doc:
        doc = doc.rstrip() + f"\n\n{start}\n{end}\n"
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{content.rstrip()}\n{end}{tail}")


# --- the runner's summary: one row per headline figure -----------------------------------


@dataclass
class Figure:
    """One headline figure of a benchmark, next to its baseline and target.

    ``ratio`` is the paired median of value ÷ baseline (or baseline ÷ value where lower
    is better, as the target says); ``met`` is None for a figure without a target.
    """

    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


def write_summary(path: str | None, figures: list[Figure]) -> None:
    """Write the headline figures as JSON for ``python -m bench`` (no-op without a path)."""
    if path:
        Path(path).write_text(json.dumps([asdict(f) for f in figures], indent=1))


def read_summary(path: str) -> list[Figure]:
    return [Figure(**row) for row in json.loads(Path(path).read_text())]


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**missed**")


def paired(values: list[float], baselines: list[float]) -> tuple[float, float, float]:
    """Median and spread of the per-round ratios value ÷ baseline."""
    return median_spread([v / b for v, b in zip(values, baselines, strict=True)])


def spawn_worker(argv_app: str, queues: list[str], node: str, log: Path, *, pool: str, concurrency: int,
                 prefetch: int = 1, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a real ``celery worker`` subprocess (see ``wait_worker``)."""
    argv = [sys.executable, "-m", "celery", "-A", argv_app, "worker", "-Q", ",".join(queues), "-n", node,
            "-P", pool, "-c", str(concurrency), "--prefetch-multiplier", str(prefetch),
            "--without-mingle", "--without-gossip", "--loglevel", "WARNING", *(extra or [])]
    return subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1], env=dict(env or os.environ),
                            stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_worker(proc: subprocess.Popen[bytes], node: str, log: Path, timeout: float = 90) -> None:
    """Return once the worker answers a control ping; stop it and raise if it does not."""
    from app.celery_app import celery_app

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {node} exited {proc.returncode}; see {log}")
        if celery_app.control.ping(destination=[node], timeout=0.5):
            return
    stop([proc])
    raise RuntimeError(f"worker {node} not ready in {timeout:.0f} s; see {log}")


def start_worker_process(argv_app: str, queues: list[str], node: str, log: Path, *, pool: str, concurrency: int,
                         prefetch: int = 1, extra: list[str] | None = None,
                         env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.Popen[bytes]:
    """A real ``celery worker`` subprocess, returned once it answers a control ping."""
    proc = spawn_worker(argv_app, queues, node, log, pool=pool, concurrency=concurrency, prefetch=prefetch,
                        extra=extra, env=env)
    wait_worker(proc, node, log, timeout)
    return proc


def child_pids(pid: int) -> list[int]:
    """Direct children of a process (a prefork worker's pool processes)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10).stdout
    return [int(p) for p in out.split()]


def rss_mib(pid: int) -> float:
    """Resident set size of a process, MiB (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
