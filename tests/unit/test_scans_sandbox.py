"""The Docker runner against the real Docker daemon: every way a container run ends, the
container always removed, strays swept; and the image tag shared with the build script.

Containers here run with ``--network none``: no traffic at all.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.services.sandbox import (
    FETCHER_DIR,
    JOB_LABEL,
    LABEL,
    SandboxConfig,
    _parse_docker_time,
    container_kwargs,
    fetcher_image_tag,
    remove_stale_containers,
    run_container,
    run_fetch,
)
from app.settings import ROOT, get_settings
from tests.scans_support import docker_client, fetcher_image, no_scan_containers_left_behind  # noqa: F401

MIB = 1024 * 1024


@pytest.fixture
def cfg(fetcher_image: str) -> SandboxConfig:
    return SandboxConfig(image=fetcher_image, network="none", timeout=10)


def _gone(client: Any, container_id: str) -> bool:
    return not client.containers.list(all=True, filters={"id": container_id})


def test_container_arguments_are_hardened() -> None:
    settings = get_settings()
    cfg = SandboxConfig.from_settings(settings.model_copy(update={"scan_allow_cidrs": "10.0.0.0/8, 172.18.0.2/32"}))
    kwargs = container_kwargs(cfg, cfg.fetch_args("http://x.example/"), {JOB_LABEL: "j1"})
    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 512 * MIB
    assert kwargs["nano_cpus"] == 500_000_000 and kwargs["pids_limit"] == 64
    assert kwargs["read_only"] is True and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["security_opt"] == ["no-new-privileges"] and kwargs["user"] == "65534:65534"
    assert kwargs["labels"] == {LABEL: "1", JOB_LABEL: "j1"} and kwargs["network"] == "bridge"
    assert kwargs["command"][-2:] == ["--", "http://x.example/"]
    assert kwargs["command"].count("--allow") == 2 and "172.18.0.2/32" in kwargs["command"]
    none = container_kwargs(dataclasses.replace(cfg, network="none"), [], {})
    assert none["network_mode"] == "none" and "network" not in none


def test_image_tag_is_the_build_scripts_and_follows_the_content(tmp_path: Path) -> None:
    printed = subprocess.run([str(ROOT / "scripts" / "build-fetcher"), "--print-tag"], capture_output=True,
                             text=True, timeout=60, check=True).stdout.strip()
    assert printed == fetcher_image_tag()
    copy = tmp_path / "fetcher"
    shutil.copytree(FETCHER_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert fetcher_image_tag(copy) == fetcher_image_tag()
    (copy / "fetch.py").write_text((copy / "fetch.py").read_text() + "\n# changed\n")
    assert fetcher_image_tag(copy) != fetcher_image_tag()


@pytest.mark.usefixtures("no_scan_containers_left_behind")
class TestRuns:
    def test_fetch_ok_is_parsed_and_removed(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        started: list[str] = []
        outcome = run_fetch(docker_client, cfg, "http://169.254.169.254/latest/", "job-ok", on_started=started.append)
        assert outcome.kind == "ok" and outcome.exit_code == 0
        assert outcome.document["error"]["kind"] == "blocked_address"
        assert outcome.labels == {LABEL: "1", JOB_LABEL: "job-ok"}
        assert started == [outcome.container_id] and _gone(docker_client, outcome.container_id)

    def test_invalid_json_output(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        outcome = run_container(docker_client, cfg, ["-c", "print('not json at all')"], {JOB_LABEL: "job-bad"},
                                entrypoint=["python3"])
        assert outcome.kind == "invalid_output" and "not valid JSON" in outcome.message
        assert "not json at all" in outcome.message and _gone(docker_client, outcome.container_id)
        outcome = run_container(docker_client, cfg, ["-c", "print('[1, 2]')"], {}, entrypoint=["python3"])
        assert outcome.kind == "invalid_output" and "not an object" in outcome.message

    def test_non_zero_exit_keeps_the_stderr_tail(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        script = "import sys\nfor i in range(100): print('noise', i, file=sys.stderr)\n" \
                 "sys.stderr.write('boom: the last words\\n'); sys.exit(3)"
        outcome = run_container(docker_client, cfg, ["-c", script], {}, entrypoint=["python3"])
        assert outcome.kind == "exit" and outcome.exit_code == 3
        assert outcome.stderr_tail.endswith("boom: the last words") and "noise 0\n" not in outcome.stderr_tail
        assert "exited with status 3" in outcome.message and "boom: the last words" in outcome.message
        assert _gone(docker_client, outcome.container_id)

    def test_timeout_kills_and_removes(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        start = time.monotonic()
        outcome = run_container(docker_client, dataclasses.replace(cfg, timeout=1.5),
                                ["-c", "import time; time.sleep(60)"], {}, entrypoint=["python3"])
        assert outcome.kind == "timeout" and "longer than 1.5 s" in outcome.message
        assert time.monotonic() - start < 10 and _gone(docker_client, outcome.container_id)

    def test_memory_limit_is_an_oom_failure(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        outcome = run_container(docker_client, dataclasses.replace(cfg, memory_bytes=32 * MIB),
                                ["-c", "b = b'x' * (256 * 1024 * 1024)"], {}, entrypoint=["python3"])
        assert outcome.kind == "oom" and outcome.message == "memory limit exceeded (32 MiB)"
        assert outcome.exit_code == 137 and _gone(docker_client, outcome.container_id)

    def test_read_only_root_no_capabilities_no_network(self, docker_client, cfg) -> None:  # type: ignore[no-untyped-def]
        script = (
            "import json, os, socket\n"
            "out = {'uid': os.getuid(), 'gid': os.getgid()}\n"
            "try:\n    open('/etc/x', 'w'); out['root_write'] = True\n"
            "except OSError as e:\n    out['root_write'] = e.strerror\n"
            "open('/tmp/ok', 'w').write('fine'); out['tmp_write'] = True\n"
            "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
            "out['cap_eff'] = status['CapEff'].strip(); out['no_new_privs'] = status['NoNewPrivs'].strip()\n"
            "out['ifaces'] = sorted(n for _, n in socket.if_nameindex())\n"
            "print(json.dumps(out))\n"
        )
        outcome = run_container(docker_client, cfg, ["-c", script], {}, entrypoint=["python3"])
        assert outcome.kind == "ok", outcome.message
        assert outcome.document == {"uid": 65534, "gid": 65534, "root_write": "Read-only file system",
                                    "tmp_write": True, "cap_eff": "0000000000000000", "no_new_privs": "1",
                                    "ifaces": ["lo"]}

    def test_stale_labelled_containers_are_swept(self, docker_client, fetcher_image) -> None:  # type: ignore[no-untyped-def]
        stray = docker_client.containers.create(fetcher_image, entrypoint=["python3", "-c", "pass"],
                                                labels={LABEL: "1", JOB_LABEL: "stray"}, network_mode="none")
        other = docker_client.containers.create(fetcher_image, entrypoint=["python3", "-c", "pass"],
                                                labels={"unrelated": "1"}, network_mode="none")
        try:
            assert remove_stale_containers(docker_client, 3600) == []
            assert not _gone(docker_client, stray.id)
            future = datetime.now(UTC) + timedelta(seconds=5)
            assert remove_stale_containers(docker_client, 1, now=future) == [stray.id]
            assert _gone(docker_client, stray.id) and not _gone(docker_client, other.id)
        finally:
            for container in (stray, other):
                try:
                    container.remove(force=True)
                except Exception:
                    pass


def test_docker_timestamps_with_nanoseconds() -> None:
    assert _parse_docker_time("2026-11-22T20:08:11.570064123Z") == datetime(2026, 11, 22, 20, 8, 11, 570064,
                                                                            tzinfo=UTC)
    assert _parse_docker_time("2026-11-22T20:08:11Z") == datetime(2026, 11, 22, 20, 8, 11, tzinfo=UTC)
    assert _parse_docker_time("2026-11-22T21:08:11.5+01:00") == datetime(2026, 11, 22, 20, 8, 11, 500000,
                                                                         tzinfo=UTC)
    assert _parse_docker_time("") is None and _parse_docker_time("garbage") is None
