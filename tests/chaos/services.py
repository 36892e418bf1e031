"""Private services and processes of the chaos suite, each one something the suite may
break on purpose without touching anybody else's.

- ``PrivateRedis``: a ``redis-server`` on a free loopback port with an append-only file
  (``appendfsync always``), so stopping and starting it again keeps the queued tasks,
  as a production broker would.
- ``PrivatePostgres``: a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temp
  dir, run as the ``postgres`` user because ``initdb`` refuses root) on a free port.
- ``restart_dockerd``: the machine's Docker engine stopped and started again the way
  ``scripts/bootstrap`` starts it.
- ``Stack``: the API (gunicorn), one prefork worker per queue and beat, all pointed at the
  private services; a worker whose main process dies is restarted like a supervisor would
  (its whole process group is killed first, as systemd's ``KillMode=control-group`` does).
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from app.devserver import free_port, redis_answers

ROOT = Path(__file__).resolve().parents[2]


def wait_until(condition: Any, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``condition`` until truthy or ``timeout`` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # a service coming up answers with errors for a while
            pass
        time.sleep(interval)
    return False


# --- Redis -------------------------------------------------------------------------------------
class PrivateRedis:
    """``redis-server`` on a private port; ``stop()``/``start()`` keep its data (AOF)."""

    def __init__(self, workdir: Path) -> None:
        self.exe = shutil.which("redis-server")
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.exe is not None
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        if not wait_until(lambda: redis_answers(self.url, 0.3), 20):
            raise RuntimeError(f"private redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- PostgreSQL ----------------------------------------------------------------------------------
def pg_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``initdb``."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class PrivatePostgres:
    """A throwaway cluster in a temp dir, owned by the ``postgres`` user, on a free port."""

    def __init__(self, workdir: Path) -> None:
        bindir = pg_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.port = free_port()
        self.dir = workdir / "pg"
        self.data = self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, "postgres", "postgres")
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/app"

    def _as_postgres(self, *argv: str, timeout: float = 120) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/")

    def init(self) -> None:
        self._as_postgres(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                          "--no-sync", "-E", "UTF8")

    def _ctl(self, action: str, *extra: str) -> None:
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts,
                          "-l", str(self.dir / "postgres.log"), "-w", "-t", "60", action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def restart(self, down_for: float = 0.0) -> None:
        """Fast shutdown (every session is disconnected, open transactions roll back), then
        start again after ``down_for`` seconds (a real restart is not instantaneous)."""
        self._ctl("stop", "-m", "fast")
        time.sleep(down_for)
        self._ctl("start")

    def stop(self) -> None:
        try:
            self._ctl("stop", "-m", "immediate")
        except subprocess.CalledProcessError:
            pass

    def create_database(self) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text('CREATE DATABASE "app"'))
        engine.dispose()


# --- Docker engine -------------------------------------------------------------------------------
def docker_answers() -> bool:
    return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=20).returncode == 0


def restart_dockerd(timeout: float = 90) -> float:
    """Stop the running ``dockerd`` and start it again as ``scripts/bootstrap`` does; the
    seconds Docker did not answer."""
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    if len(out) != 1:
        raise RuntimeError(f"expected one dockerd, found {out}")
    pid = int(out[0])
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout):
        raise RuntimeError("dockerd did not stop")
    start_dockerd(timeout)
    return time.monotonic() - started


def start_dockerd(timeout: float = 90) -> None:
    """``nohup dockerd >>var/log/dockerd.log &`` as in scripts/bootstrap; wait until it answers."""
    log_dir = ROOT / "var" / "log"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "dockerd.log", "ab") as log:
        subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    if not wait_until(docker_answers, timeout, interval=0.5):
        raise RuntimeError("dockerd did not come back")


# --- the application's processes -------------------------------------------------------------------
@dataclass
class Proc:
    """One supervised program: its command, its log and its current process."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self, env: dict[str, str]) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def children(self) -> list[int]:
        if not self.alive():
            return []
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown of the group, SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group(signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Kill:
    at: float
    target: str
    pid: int
    kind: str  # child | main


@dataclass
class Stack:
    """API, one worker per queue and beat on the private services, with a supervisor."""

    env: dict[str, str]
    logs: Path
    queues: tuple[str, ...]
    concurrency: dict[str, int]
    prefetch: dict[str, str] = field(default_factory=dict)
    api_port: int = field(default_factory=free_port)
    workers: dict[str, Proc] = field(default_factory=dict)
    api: Proc | None = None
    beat: Proc | None = None
    kills: list[Kill] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def worker_log(self, queue: str) -> Path:
        return self.logs / f"worker-{queue}.log"

    def start(self) -> None:
        py = sys.executable
        self.api = Proc("api", [py, "-m", "gunicorn", "-c", "python:app.api.gunicorn_conf",
                                "-b", f"127.0.0.1:{self.api_port}", "-w", "2", "--timeout", "60",
                                "--graceful-timeout", "10", "app.api.wsgi:application"], self.logs / "api.log")
        self.api.start(self.env)
        for queue in self.queues:
            worker = Proc(queue, [py, "-m", "celery", "-A", "app", "worker", "-Q", queue, "-n", f"{queue}@chaos",
                                  "-P", "prefork", "-c", str(self.concurrency.get(queue, 1)), "--loglevel", "INFO",
                                  "--without-mingle", "--without-gossip",
                                  *(["--prefetch-multiplier", self.prefetch[queue]] if queue in self.prefetch else [])],
                          self.worker_log(queue))
            worker.start(self.env)
            self.workers[queue] = worker
        self.beat = Proc("beat", [py, "-m", "celery", "-A", "app", "beat", "--loglevel", "INFO",
                                  "-s", str(self.logs / "celerybeat-schedule")], self.logs / "beat.log")
        self.beat.start(self.env)

    def wait_ready(self, timeout: float = 120) -> None:
        def api_up() -> bool:
            return requests.get(f"{self.base_url}/health", timeout=5).status_code in (200, 503)

        if not wait_until(api_up, timeout):
            raise AssertionError("API did not answer:\n" + tail(self.logs / "api.log"))
        for queue, worker in self.workers.items():
            # Ready = the pool is up (the main process logs "ready." once its children started).
            if not wait_until(lambda: b"ready." in self.worker_log(queue).read_bytes(), timeout):
                raise AssertionError(f"worker {queue} not ready:\n" + tail(self.worker_log(queue)))

    # -- supervision and chaos --------------------------------------------------------------------
    def supervise(self, interval: float = 0.5) -> None:
        """Background: restart any worker (or beat) whose main process is gone."""

        def loop() -> None:
            while not self._stop.is_set():
                with self._lock:
                    for proc in [*self.workers.values(), self.beat]:
                        assert proc is not None
                        if not proc.alive():
                            proc.kill_group()  # leftover pool processes die with their parent
                            proc.restarts += 1
                            proc.start(self.env)
                self._stop.wait(interval)

        self._spawn(loop, "supervisor")

    def kill_randomly(self, every: tuple[float, float], main_share: float, seed: int, started: float,
                      until: float) -> None:
        """Background: every few seconds SIGKILL a random worker's pool process, or
        (``main_share`` of the time) its main process."""
        rng = random.Random(seed)

        def loop() -> None:
            while not self._stop.wait(rng.uniform(*every)):
                if time.monotonic() >= until:
                    return
                with self._lock:
                    queue = rng.choice(sorted(self.workers))
                    worker = self.workers[queue]
                    children = worker.children()
                    if not worker.alive():
                        continue
                    assert worker.proc is not None
                    if children and rng.random() >= main_share:
                        pid, kind = rng.choice(children), "child"
                    else:
                        pid, kind = worker.proc.pid, "main"
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.kills.append(Kill(round(time.monotonic() - started, 1), queue, pid, kind))

        self._spawn(loop, "killer")

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=f"chaos-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop_chaos(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def stop(self) -> None:
        self.stop_chaos()
        for proc in [self.beat, *self.workers.values(), self.api]:
            if proc is not None:
                proc.stop()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def make_workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="app-chaos-"))
    path.chmod(0o755)
    return path
