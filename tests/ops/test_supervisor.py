"""The supervisor deployment for real: ``deploy/supervisor/start`` runs supervisord with
the shipped configuration (paths, user and ports templated for this machine; the test
PostgreSQL database and Redis database as the environment file), every program reaches
RUNNING, a ping goes through each of the nine queues to its own worker, Flower's API
(basic auth) lists a worker per queue, each worker's metrics port counts its ping, the
API answers /health and /metrics, and ``ctl shutdown`` stops everything, leaving no
process behind."""

from __future__ import annotations

import base64
import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from app.devserver import free_port
from app.settings import QUEUES
from tests.conftest import PG_URL, REDIS_URL, need
from tests.fixtures.services import wait_for
from tests.ops.helpers import http_get, parse, value

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "supervisor"
PROGRAMS = {"app-api", "app-beat", "app-flower", *(f"app-worker-{q}" for q in QUEUES)}


PING = "app.tasks.system.ping"  # the one probe, sent to each queue by name


def _marked(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _template(tmp: Path) -> tuple[Path, dict[str, int]]:
    """The shipped configuration with this machine's paths, user and free ports."""
    for sub in ("conf", "log", "run", "var"):
        (tmp / sub).mkdir()
    ports: dict[str, int] = {}

    def port_for(match: re.Match[str]) -> str:
        queue = match.group(1)
        ports[queue] = free_port()
        return f'{match.group(0).split("environment=")[0]}environment=WORKER_METRICS_PORT="{ports[queue]}"'

    for name in ("supervisord.conf", "app.conf"):
        text = (DEPLOY / name).read_text()
        text = (text.replace("/opt/app/var", str(tmp / "var")).replace("/opt/app", str(ROOT))
                .replace("/var/log/app", str(tmp / "log")).replace("/run/app", str(tmp / "run"))
                .replace("user=app", f"user={getpass.getuser()}"))
        text = re.sub(r'-Q (\w+) [^\n]*\nenvironment=WORKER_METRICS_PORT="\d+"', port_for, text)
        (tmp / "conf" / name).write_text(text)
    assert set(ports) == set(QUEUES), ports
    return tmp / "conf" / "supervisord.conf", ports


def _status(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([str(DEPLOY / "ctl"), "status"], env=env, capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0].split(":")[-1]: line.split()[1] for line in out.splitlines() if line.strip()}


def test_supervisor_runs_every_program_and_stops_cleanly(pg_database, redis_client, tmp_path) -> None:
    need((ROOT / ".venv" / "bin" / "supervisord").exists(), "supervisord in .venv (requirements.txt: supervisor)")
    conf, metric_ports = _template(tmp_path)
    api_port, flower_port = free_port(), free_port()
    env_file = tmp_path / "app.env"
    env_file.write_text("\n".join([
        "ENVIRONMENT=test", f"DATABASE_URL={PG_URL}", f"REDIS_URL={REDIS_URL}", "BROKER_URL=", "RESULT_BACKEND=",
        "STORAGE_BACKEND=local", f"STORAGE_LOCAL_ROOT={tmp_path / 'storage'}", "SECRET_KEY=test", "ADMIN_TOKEN=test",
        "API_HOST=127.0.0.1", f"API_PORT={api_port}", f"FLOWER_PORT={flower_port}", "FLOWER_USER=ops",
        "FLOWER_PASSWORD=flower-pw", "LOG_JSON=true",
    ]) + "\n")
    marker = f"APP_SUPERVISOR_TEST={os.getpid()}-{time.monotonic_ns()}"
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG"}} | {
        "APP_ENV_FILE": str(env_file), "SUPERVISOR_CONF": str(conf), marker.split("=")[0]: marker.split("=")[1],
    }
    host = socket.gethostname()
    proc = subprocess.Popen([str(DEPLOY / "start"), "-n"], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=open(tmp_path / "supervisord.out", "wb"), stderr=subprocess.STDOUT)
    try:
        states = wait_for(lambda: (s := _status(env)) and set(s) == PROGRAMS and set(s.values()) == {"RUNNING"} and s,
                          timeout=90, interval=1, message="every program RUNNING")
        assert set(states) == PROGRAMS  # type: ignore[arg-type]

        from app.celery_app import celery_app

        nodes = {q: f"{q}@{host}" for q in QUEUES}
        wait_for(lambda: len(celery_app.control.ping(destination=list(nodes.values()), timeout=1)) == len(QUEUES),
                 timeout=60, interval=0.5, message="every worker answers")
        results = {q: celery_app.signature(PING).apply_async(queue=q) for q in QUEUES}
        for queue, result in results.items():
            payload = result.get(timeout=30)
            assert payload["queue"] == queue and payload["hostname"] == nodes[queue], payload

        # Flower: closed without credentials, and sees one worker per queue with them.
        flower = f"http://127.0.0.1:{flower_port}/api/workers?refresh=1"
        assert http_get(flower)[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(b"ops:flower-pw").decode()}

        def flower_workers():  # type: ignore[no-untyped-def]
            status, body = http_get(flower, auth, timeout=15)
            data = json.loads(body) if status == 200 else {}
            return data if set(nodes.values()) <= set(data) else None

        workers = wait_for(flower_workers, timeout=60, interval=1, message="Flower lists every worker")
        for queue, node in nodes.items():
            assert [q["name"] for q in workers[node]["active_queues"]] == [queue]  # type: ignore[index]

        # Each worker's own metrics port counts the ping it ran.
        for queue, port in metric_ports.items():
            status, body = http_get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200, queue
            samples = parse(body.decode())
            assert value(samples, "celery_tasks_succeeded_total", task=PING, queue=queue) == 1, queue

        # The API under gunicorn: health and the scrape-time metrics.
        status, body = http_get(f"http://127.0.0.1:{api_port}/health", {"Authorization": "Bearer test"}, timeout=10)
        health = {d["name"]: d["status"] for d in json.loads(body)["dependencies"]}
        assert health["database"] == health["broker"] == health["redis"] == "up", body
        status, body = http_get(f"http://127.0.0.1:{api_port}/metrics", timeout=10)
        samples = parse(body.decode())
        assert status == 200 and value(samples, "metrics_source_up", source="broker") == 1
        assert {q for (name, labels) in samples if name == "celery_queue_length" for _, q in labels} == set(QUEUES)
    finally:
        subprocess.run([str(DEPLOY / "ctl"), "shutdown"], env=env, capture_output=True, timeout=60)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            for pid in _marked(marker):
                os.kill(pid, signal.SIGKILL)
            pytest.fail("supervisord did not stop within 60 s of `ctl shutdown`")
    assert code == 0, (tmp_path / "supervisord.out").read_text(errors="replace")[-2000:]
    time.sleep(0.5)
    assert _marked(marker) == [], "processes left behind after shutdown"
    # Each program wrote its own log, as JSON lines.
    for program in ("api", "beat", "flower", *(f"worker-{q}" for q in QUEUES)):
        assert (tmp_path / "log" / f"{program}.log").stat().st_size > 0, program
    line = next(l for l in (tmp_path / "log" / "worker-ocr.log").read_text().splitlines() if "ping answered" in l)
    assert json.loads(line)["queue"] == "ocr"
    shutil.rmtree(tmp_path / "run", ignore_errors=True)
