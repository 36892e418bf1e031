"""`python -m app dev` (what `make run` starts): the whole stack on embedded defaults,
a private redis-server when none answers, /health 200, Flower behind basic auth, and
Ctrl-C stopping every process it started."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.devserver import free_port
from tests.conftest import need
from tests.fixtures.services import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _processes_with_marker(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def test_dev_stack_runs_on_embedded_defaults_and_stops_cleanly(tmp_path: Path) -> None:
    import shutil

    need(shutil.which("redis-server") is not None, "redis-server")
    api_port, flower_port, dead_redis = free_port(), free_port(), free_port()
    marker = f"APP_DEV_TEST_MARKER={os.getpid()}{time.monotonic_ns()}"
    keep = {"PATH", "HOME", "LANG"}
    env = {k: v for k, v in os.environ.items() if k in keep} | {
        "DATABASE_URL": f"sqlite:///{tmp_path}/app.db",
        # Nothing listens here, so `dev` must start its own redis-server.
        "REDIS_URL": f"redis://127.0.0.1:{dead_redis}/0",
        "STORAGE_LOCAL_ROOT": str(tmp_path / "storage"),
        "API_PORT": str(api_port),
        "FLOWER_PORT": str(flower_port),
        "FLOWER_PASSWORD": "flower-test-pw",
        "SECRET_KEY": "dev-test",
        "ADMIN_TOKEN": "dev-stack-admin",  # /health lists the dependencies only with it
        marker.split("=")[0]: marker.split("=")[1],
    }
    log = open(tmp_path / "dev.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "app", "dev"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> dict | None:
            status, body = _get(f"http://127.0.0.1:{api_port}/health", {"Authorization": "Bearer dev-stack-admin"})
            return json.loads(body) if status == 200 else None

        health = wait_for(healthy, timeout=90, interval=0.5, message="dev API /health 200")
        names = {d["name"]: d["status"] for d in health["dependencies"]}
        assert names["database"] == names["broker"] == names["redis"] == names["storage"] == "up"

        # Flower answers only with its basic-auth credentials, and sees the worker.
        flower = f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"
        wait_for(lambda: _get(flower)[0] == 401, timeout=60, interval=0.5, message="flower up")
        auth = {"Authorization": "Basic " + base64.b64encode(b"admin:flower-test-pw").decode()}
        workers = wait_for(
            lambda: (lambda s, b: json.loads(b) if s == 200 and json.loads(b) else None)(*_get(flower, auth)),
            timeout=60, interval=1, message="flower lists the worker",
        )
        queues = {q["name"] for w in workers.values() for q in w.get("active_queues", [])}
        assert {"default", "ocr", "scans", "voice", "outbox", "messages", "files", "gc", "schedules"} <= queues

        output = (tmp_path / "dev.log").read_text(errors="replace")
        assert f"http://127.0.0.1:{api_port}" in output and f"http://127.0.0.1:{flower_port}" in output
        assert "started a private redis-server" in output
        started = _processes_with_marker(marker)
        assert len(started) >= 5  # dev, api, worker, beat, flower (+ pool processes)
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("dev did not stop within 60 s of Ctrl-C")
        log.close()
    assert code == 0, (tmp_path / "dev.log").read_text(errors="replace")[-3000:]
    time.sleep(0.5)
    assert _processes_with_marker(marker) == [], "processes left behind after Ctrl-C"
    # The private redis-server is stopped too.
    assert _get(f"http://127.0.0.1:{api_port}/health")[0] == 0
