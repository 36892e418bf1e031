"""Docker fixtures of the URL-scan tests: the Docker client, the fetcher image, the test
sites on an internal network, and the check that no scan container is left behind.

The test sites run in a container of the fetcher image (same debootstrap base) with
``tests/scans_sites.py`` mounted read-only, on a network made with ``docker network
create --internal``: nothing on it can reach, or be reached from, anywhere else. The
worker is told that network's site address as its SSRF allow-list, so the sites are
fetchable while every other private address stays blocked.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import need

SITES_SCRIPT = Path(__file__).resolve().parent / "scans_sites.py"
#: Label of the tests' own site containers and networks (never the scan label).
TEST_LABEL = "app.scan.test"
SITE_PORT = 8080


def docker_client_or_skip() -> Any:
    """A Docker client, or skip (fail in CI) when Docker does not answer."""
    try:
        import docker

        client = docker.from_env(timeout=20)
        client.ping()
        ok = True
    except Exception:
        client, ok = None, False
    need(ok, "Docker")
    return client


def scan_containers(client: Any) -> list[Any]:
    """Every container with the scan label."""
    from app.services.sandbox import LABEL

    return client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """The session's Docker client (skips, or fails in CI, without Docker)."""
    client = docker_client_or_skip()
    yield client
    client.close()


@pytest.fixture(scope="session")
def fetcher_image(docker_client: Any) -> str:
    """The fetcher image tag the worker will use; built by scripts/build-fetcher."""
    from app.services.sandbox import fetcher_image_tag, image_present

    tag = fetcher_image_tag()
    need(image_present(docker_client, tag), f"fetcher image {tag} (run scripts/build-fetcher)")
    return tag


@pytest.fixture(scope="session")
def no_scan_containers_left_behind(docker_client: Any) -> Iterator[None]:
    """At the very end of the session: no container with the scan label (or the tests'
    own label) may exist any more."""
    yield
    from app.services.sandbox import LABEL

    deadline = time.monotonic() + 20  # a worker may still be removing its last container
    leftovers: list[str] = []
    while time.monotonic() < deadline:
        leftovers = [f"{c.name} {c.labels}" for c in scan_containers(docker_client)]
        leftovers += [f"{c.name} {c.labels}" for c in docker_client.containers.list(
            all=True, filters={"label": TEST_LABEL}, ignore_removed=True)]
        if not leftovers:
            break
        time.sleep(0.5)
    assert not leftovers, f"containers labelled {LABEL}/{TEST_LABEL} left behind: {leftovers}"


@dataclass
class Sites:
    """The test sites: base URL, the network, and the worker's environment for them."""

    network: str
    subnet: str
    site_ip: str
    decoy_ip: str
    base: str  # http://site.test:8080
    decoy_base: str  # http://intranet.test:8080: a private address outside the allow-list

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def worker_env(self, **extra: str) -> dict[str, str]:
        return {"SCAN_NETWORK": self.network, "SCAN_ALLOW_CIDRS": f"{self.site_ip}/32", **extra}


def _run_site(client: Any, image: str, network: str, alias: str, token: str) -> Any:
    endpoint = client.api.create_endpoint_config(aliases=[alias])
    container = client.containers.run(
        image, entrypoint=["python3", "-I", "/srv/scans_sites.py", str(SITE_PORT)], command=[],
        name=f"app-scan-{alias.split('.')[0]}-{token}", detach=True,
        network=network, networking_config={network: endpoint},
        volumes={str(SITES_SCRIPT): {"bind": "/srv/scans_sites.py", "mode": "ro"}},
        labels={TEST_LABEL: "1"}, user="65534:65534", read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges"], mem_limit="256m", pids_limit=64,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        container.reload()
        if b"listening on" in container.logs(stdout=True, stderr=False):
            return container
        if container.status == "exited":
            raise AssertionError(f"test site exited: {container.logs().decode(errors='replace')}")
        time.sleep(0.1)
    raise AssertionError("test site did not start")


@pytest.fixture(scope="module")
def scan_sites(docker_client: Any, fetcher_image: str) -> Iterator[Sites]:
    """The sites on a fresh ``--internal`` network; everything removed afterwards."""
    token = secrets.token_hex(4)
    network = docker_client.networks.create(f"app-scan-test-{token}", driver="bridge", internal=True,
                                            labels={TEST_LABEL: "1"})
    containers: list[Any] = []
    try:
        site = _run_site(docker_client, fetcher_image, network.name, "site.test", token)
        containers.append(site)
        decoy = _run_site(docker_client, fetcher_image, network.name, "intranet.test", token)
        containers.append(decoy)
        network.reload()
        subnet = network.attrs["IPAM"]["Config"][0]["Subnet"]
        ips = {c.id: network.attrs["Containers"][c.id]["IPv4Address"].split("/")[0] for c in containers}
        yield Sites(network=network.name, subnet=subnet, site_ip=ips[site.id], decoy_ip=ips[decoy.id],
                    base=f"http://site.test:{SITE_PORT}", decoy_base=f"http://intranet.test:{SITE_PORT}")
    finally:
        for container in containers:
            container.remove(force=True)
        network.remove()


@pytest.fixture
def clean_scan_tables(pg_database: str) -> Iterator[None]:
    """No scan jobs, nor scan outbox events, before and after the test.

    Jobs a unit test leaves queued would otherwise be published by a later relay and
    fetched by a later worker.
    """
    from sqlalchemy import delete

    from app.db import session_scope
    from app.models.outbox import OutboxEvent
    from app.models.scans import ScanJob

    def wipe() -> None:
        with session_scope() as session:
            session.execute(delete(OutboxEvent).where(OutboxEvent.aggregate_type == "scan"))
            session.execute(delete(ScanJob))  # audit rows and results go by ON DELETE CASCADE

    wipe()
    yield
    wipe()
