"""The scan container's hardening, read from ``docker inspect`` of a real scan's container.

A real scan goes API → outbox relay → ``scans`` worker → container; the page it fetches
answers slowly, so the container is inspected while it runs. Every control
docs/scans.md promises is checked, plus what a container must not have: host
namespaces, mounts, devices, published ports, extra capabilities. Afterwards the scan
is TIMED_OUT and its container is gone.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.services.sandbox import JOB_LABEL, LABEL
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker
from tests.scans_support import (  # noqa: F401  (fixtures)
    docker_client,
    fetcher_image,
    no_scan_containers_left_behind,
    scan_sites,
)

pytestmark = pytest.mark.usefixtures("no_scan_containers_left_behind")

MIB = 1024 * 1024


@pytest.fixture
def scan_workers(redis_client, pg_database, scan_sites) -> Any:  # type: ignore[no-untyped-def]
    relay = Worker(["outbox"], name="hardening-relay", pool="threads", concurrency=1).start()
    scans = Worker(["scans"], name="hardening-scans", pool="threads", concurrency=1,
                   extra_env=scan_sites.worker_env(SCAN_TIMEOUT="8")).start()
    relay.wait_ready()
    scans.wait_ready()
    yield scans
    assert scans.stop() == 0 and relay.stop() == 0


def _scan_state(api, scan_id: str) -> str:  # type: ignore[no-untyped-def]
    return api.get(f"/api/scans/{scan_id}").get_json()["state"]


def test_scan_container_is_hardened_as_documented(api, docker_client, scan_sites, scan_workers) -> None:  # type: ignore[no-untyped-def]
    resp = api.post("/api/scans", json={"url": scan_sites.url("/slow?seconds=60")})
    assert resp.status_code == 202, resp.get_json()
    scan_id = resp.get_json()["id"]

    def running() -> Any:
        for container in docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={scan_id}"},
                                                       ignore_removed=True):
            if container.attrs["State"]["Running"]:
                return container
        return None

    container = wait_for(running, timeout=45, message="the scan's container running")
    attrs = container.attrs
    host, config = attrs["HostConfig"], attrs["Config"]
    findings = []

    def expect(ok: bool, what: str) -> None:
        if not ok:
            findings.append(what)

    # What docs/scans.md promises.
    expect(host["Memory"] == 512 * MIB and host["MemorySwap"] == 512 * MIB, "memory 512 MiB, no swap")
    expect(host["NanoCpus"] == 500_000_000, "0.5 CPU")
    expect(host["PidsLimit"] == 64, "pids limit 64")
    expect(host["ReadonlyRootfs"] is True, "read-only root file system")
    expect(set(host["Tmpfs"] or {}) == {"/tmp"} and all(
        opt in host["Tmpfs"]["/tmp"] for opt in ("noexec", "nosuid", "nodev", f"size={16 * MIB}")), "/tmp tmpfs only")
    expect(host["CapDrop"] == ["ALL"] and not host["CapAdd"], "every capability dropped, none added")
    expect(host["SecurityOpt"] == ["no-new-privileges"], "no-new-privileges")
    expect(config["User"] == "65534:65534", "runs as nobody")
    expect(host["IpcMode"] == "none", "IPC none")
    expect(host["NetworkMode"] == scan_sites.network, "only the configured network")
    expect(set(attrs["NetworkSettings"]["Networks"]) == {scan_sites.network}, "joined no other network")
    expect(host["LogConfig"] == {"Type": "json-file", "Config": {"max-file": "1", "max-size": "8m"}}, "bounded logs")
    expect(config["Labels"].get(LABEL) == "1" and config["Labels"].get(JOB_LABEL) == scan_id, "scan labels")
    # What it must not have.
    expect(host["Privileged"] is False, "not privileged")
    expect(host["PidMode"] in ("", None) and host["UTSMode"] in ("", None) and host["UsernsMode"] in ("", None),
           "no host PID/UTS/user namespace")
    expect((not host.get("Binds") and not attrs["Mounts"]) or all(m["Type"] == "tmpfs" for m in attrs["Mounts"]),
           "no bind mounts or volumes")
    expect(not host.get("Devices") and not host.get("DeviceRequests"), "no devices")
    expect(not host.get("PortBindings") and not host.get("PublishAllPorts"), "no published ports")
    expect(not host.get("ExtraHosts") and not config.get("Tty") and not config.get("OpenStdin"), "no tty, stdin, hosts")
    # The network the tests give it is internal: it reaches nothing outside.
    network = docker_client.networks.get(scan_sites.network)
    expect(network.attrs["Internal"] is True, "internal network")
    assert not findings, f"scan container hardening: {findings}"

    wait_for(lambda: _scan_state(api, scan_id) in ("TIMED_OUT", "FAILED", "COMPLETED"), timeout=60,
             message="the scan finished")
    assert _scan_state(api, scan_id) == "TIMED_OUT"
    # Removed: the container is gone, not just stopped.
    wait_for(lambda: not docker_client.containers.list(all=True, filters={"id": container.id}, ignore_removed=True),
             timeout=20, message="the container removed")
