"""The shipped unit files and supervisor programs are valid and say what operations need.

systemd is not PID 1 here, so units cannot be started; ``systemd-analyze verify`` (Debian
package ``systemd``) still loads each one as systemd would and checks its syntax, its
directives and that ExecStart's program exists. It runs on copies whose paths point at
this checkout (/opt/app → the repository) and whose User is root, one instance of the
worker template per queue. The properties operations rely on are then checked on the
parsed files themselves."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from app.settings import QUEUES, Settings
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
SUPERVISOR = ROOT / "deploy" / "supervisor"
UNITS = ["app-api.service", "app-beat.service", "app-flower.service", "app-worker@.service"]
CPU_BOUND = {"ocr", "voice"}


def _unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` → every value (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, val = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(val)
    return out


def _longest_task_limit() -> int:
    fields = Settings.model_fields
    return max(fields["task_time_limit"].default, fields["ocr_task_time_limit"].default)


@pytest.fixture(scope="module")
def verify_dir(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    need(shutil.which("systemd-analyze") is not None, "systemd-analyze (Debian package systemd)")
    out = tmp_path_factory.mktemp("units")
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/app", str(ROOT))
        text = text.replace("User=app", "User=root").replace("Group=app", "Group=root")
        (out / name).write_text(text)
    for queue in QUEUES:
        shutil.copy(out / "app-worker@.service", out / f"app-worker@{queue}.service")
    shutil.copytree(SYSTEMD / "app-worker@scans.service.d", out / "app-worker@scans.service.d")
    return out


def _verify(directory: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *[f"./{n}" for n in names]], cwd=directory,
                          capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_passes_every_unit(verify_dir: Path) -> None:
    names = ["app-api.service", "app-beat.service", "app-flower.service", *(f"app-worker@{q}.service" for q in QUEUES)]
    result = _verify(verify_dir, names)
    # Unknown or unparsable directives are only warnings (exit 0): any output fails too.
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr


def test_verify_would_catch_a_broken_unit(verify_dir: Path) -> None:
    text = (verify_dir / "app-beat.service").read_text()
    (verify_dir / "typo.service").write_text(text.replace("KillSignal=", "KilSignal="))
    (verify_dir / "noexec.service").write_text(text.replace(f"{ROOT}/.venv/bin/celery", "/nonexistent/celery"))
    assert "Unknown key 'KilSignal'" in _verify(verify_dir, ["typo.service"]).stderr
    assert _verify(verify_dir, ["noexec.service"]).returncode != 0


@pytest.mark.parametrize("name", UNITS)
def test_units_run_in_the_foreground_restart_and_are_hardened(name: str) -> None:
    unit = _unit(SYSTEMD / name)
    exec_start = unit["Service.ExecStart"][0]
    assert unit["Service.Type"] == ["simple"]
    assert "--detach" not in exec_start and "pidfile" not in exec_start.lower() and "--daemon" not in exec_start
    assert unit["Service.Restart"] == ["always"]
    assert unit["Service.KillSignal"] == ["SIGTERM"]
    assert unit["Service.User"] == ["app"] and unit["Service.Group"] == ["app"]
    assert unit["Service.NoNewPrivileges"] == ["true"] and unit["Service.PrivateTmp"] == ["true"]
    assert unit["Service.ProtectSystem"] == ["strict"] and unit["Service.ReadWritePaths"]
    assert "/etc/app/app.env" in unit["Service.EnvironmentFile"]


def test_worker_template_takes_queue_pool_and_stop_timeout() -> None:
    unit = _unit(SYSTEMD / "app-worker@.service")
    exec_start = unit["Service.ExecStart"][0]
    assert "-Q %i" in exec_start and "-n %i@%H" in exec_start
    assert "--pool ${WORKER_POOL}" in exec_start and "--concurrency ${WORKER_CONCURRENCY}" in exec_start
    assert "--prefetch-multiplier ${WORKER_PREFETCH_MULTIPLIER}" in exec_start
    assert "WORKER_PREFETCH_MULTIPLIER=1" in unit["Service.Environment"][0]  # the default for a queue without one
    assert "-/etc/app/worker-%i.env" in unit["Service.EnvironmentFile"]
    assert int(unit["Service.TimeoutStopSec"][0]) > _longest_task_limit()
    assert unit["Service.KillMode"] == ["mixed"]  # SIGTERM to the main process, SIGKILL to all at the end


@pytest.mark.parametrize("queue", QUEUES)
def test_each_queue_has_worker_env_with_documented_pool(queue: str) -> None:
    env = dict(line.split("=", 1) for line in (SYSTEMD / f"worker-{queue}.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["WORKER_POOL"] == ("prefork" if queue in CPU_BOUND else "threads")
    assert int(env["WORKER_CONCURRENCY"]) >= 1 and int(env["WORKER_METRICS_PORT"]) > 0


def test_supervisor_programs_match_the_units() -> None:
    parser = configparser.RawConfigParser(strict=True)
    parser.read(SUPERVISOR / "app.conf")
    programs = {s.split(":", 1)[1]: dict(parser[s]) for s in parser.sections() if s.startswith("program:")}
    assert set(programs) == {"app-api", "app-beat", "app-flower", *(f"app-worker-{q}" for q in QUEUES)}
    assert set(parser["group:app"]["programs"].split(",")) == set(programs)
    ports = set()
    for name, program in programs.items():
        assert program["stopsignal"] == "TERM" and program["autorestart"] == "true"
        assert program["stopasgroup"] == program["killasgroup"] == "true"
        assert program["stdout_logfile"].startswith("/var/log/app/") and program["redirect_stderr"] == "true"
        assert "--detach" not in program["command"]
        if name.startswith("app-worker-"):
            queue = name.removeprefix("app-worker-")
            env = dict(line.split("=", 1) for line in (SYSTEMD / f"worker-{queue}.env").read_text().splitlines()
                       if line and not line.startswith("#"))
            assert f"-Q {queue} " in program["command"]
            assert f"--pool {env['WORKER_POOL']} --concurrency {env['WORKER_CONCURRENCY']}" in program["command"]
            assert f"--prefetch-multiplier {env.get('WORKER_PREFETCH_MULTIPLIER', '1')} " in program["command"]
            assert program["environment"] == f'WORKER_METRICS_PORT="{env["WORKER_METRICS_PORT"]}"'
            assert int(program["stopwaitsecs"]) > _longest_task_limit()
            ports.add(env["WORKER_METRICS_PORT"])
    assert len(ports) == len(QUEUES)  # one metrics port per worker on a VM


def test_alert_rules_parse_and_name_exported_metrics() -> None:
    import re

    import yaml

    import app.metrics as metrics

    exported = {"up", "celery_queue_length", "outbox_events_pending", "outbox_events_dead", "dlq_messages",
                "metrics_source_up"}
    for obj in vars(metrics).values():
        if hasattr(obj, "_name") and hasattr(obj, "_type"):
            exported.add(obj._name + ("_total" if obj._type == "counter" else ""))
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    doc = (ROOT / "docs" / "operations.md").read_text().lower()
    assert len(rules) >= 8
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule)
        names = set(re.findall(r"\b([a-z_]+)(?=[{\[ ]|\s*>|\s*==|$)", rule["expr"])) - {
            "sum", "by", "rate", "increase", "clamp_min", "and", "task", "outcome", "job"}
        assert names <= exported, (rule["alert"], names - exported)
        # Every alert is explained in the runbook under its own heading.
        assert f"### {rule['alert'].lower()}" in doc, rule["alert"]
