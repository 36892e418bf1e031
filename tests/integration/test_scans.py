"""URL scans end to end: API → outbox → relay → a real ``scans`` worker → one hardened
Docker container per scan → result, verdict and audit trail, on real PostgreSQL, Redis
and Docker.

The scanned sites are served from the project's own container on a ``docker network
create --internal`` network (``tests/scans_support.py``); the worker's SSRF allow-list
is that site's address only, so the decoy host on the same network is a private
address the fetcher must refuse.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.db import session_scope
from app.models.scans import ScanAudit, ScanJob
from app.services.sandbox import JOB_LABEL, LABEL
from app.services.scans import sweep
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker
from tests.scans_sites import LOGIN_ACTION, PLAIN_COUNTS, PLAIN_HTML, stream_prefix
from tests.scans_support import (  # noqa: F401  (fixtures)
    docker_client,
    fetcher_image,
    no_scan_containers_left_behind,
    scan_sites,
)

pytestmark = pytest.mark.usefixtures("no_scan_containers_left_behind")

MIB = 1024 * 1024
TERMINAL = ("COMPLETED", "FAILED", "TIMED_OUT")
#: Short container timeout so the slow page is quick to time out; everything else
#: finishes in well under a second.
WORKER_ENV = {"SCAN_TIMEOUT": "6", "LOG_LEVEL": "INFO"}


def _start(queues: list[str], env: dict[str, str], name: str, concurrency: int = 1) -> Worker:
    return Worker(queues, name=name, pool="threads", concurrency=concurrency, extra_env=env).start()


@pytest.fixture(scope="module")
def relay(redis_client, pg_database) -> Any:  # type: ignore[no-untyped-def]
    worker = _start(["outbox"], {}, "scan-relay").wait_ready()
    yield worker
    worker.stop()


@pytest.fixture(scope="class")
def scans_worker(relay, scan_sites) -> Any:  # type: ignore[no-untyped-def]
    worker = _start(["scans"], scan_sites.worker_env(**WORKER_ENV), "scans-a").wait_ready()
    yield worker
    assert worker.stop() == 0, worker.log_tail()


def _submit(api, url: str) -> str:  # type: ignore[no-untyped-def]
    resp = api.post("/api/scans", json={"url": url})
    assert resp.status_code == 202, resp.get_json()
    body = resp.get_json()
    assert body["status_url"] == f"/api/scans/{body['id']}" and body["state"] == "QUEUED"
    return body["id"]


def _state(scan_id: str) -> str | None:
    with session_scope() as session:
        job = session.get(ScanJob, scan_id)
        return job.state if job else None


def _wait_done(api, scan_id: str, timeout: float = 60) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    wait_for(lambda: _state(scan_id) in TERMINAL, timeout=timeout, message=f"scan {scan_id} finished")
    resp = api.get(f"/api/scans/{scan_id}")
    assert resp.status_code == 200
    return resp.get_json()


def _containers_of(docker_client, scan_id: str) -> list[Any]:  # type: ignore[no-untyped-def]
    return docker_client.containers.list(all=True, filters={"label": f"{JOB_LABEL}={scan_id}"}, ignore_removed=True)


def _transitions(body: dict[str, Any]) -> list[tuple[str | None, str]]:
    return [(a["from_state"], a["to_state"]) for a in body["audit"]]


@pytest.mark.usefixtures("scans_worker")
class TestScans:
    def test_plain_page_title_hash_and_counts(self, api, docker_client, scan_sites) -> None:  # type: ignore[no-untyped-def]
        scan_id = _submit(api, scan_sites.url("/plain"))
        body = _wait_done(api, scan_id)
        assert body["state"] == "COMPLETED", body
        result = body["result"]
        fetch = result["fetch"]
        assert result["status_code"] == 200 and result["content_type"] == "text/html"
        assert result["sha256"] == hashlib.sha256(PLAIN_HTML).hexdigest()
        assert fetch["bytes_read"] == len(PLAIN_HTML) and fetch["truncated"] is False
        page = fetch["page"]
        assert {k: page[k] for k in PLAIN_COUNTS} == PLAIN_COUNTS
        assert fetch["final_url"] == scan_sites.url("/plain")
        assert fetch["redirect_chain"] == [{"url": scan_sites.url("/plain"), "status": 200, "location": None,
                                            "address": scan_sites.site_ip}]
        assert fetch["headers"]["server"].startswith("scan-test-site")
        assert fetch["error"] is None and fetch["tls"] is None
        assert fetch["timings"]["total_ms"] > 0 and fetch["timings"]["first_byte_ms"] is not None
        assert result["risk"] == "low" and result["score"] == 0 and result["reasons"] == []
        # Every state change audited once, in order, with the versions of the optimistic lock.
        assert _transitions(body) == [(None, "QUEUED"), ("QUEUED", "FETCHING"), ("FETCHING", "ANALYZING"),
                                      ("ANALYZING", "COMPLETED")]
        assert [a["version"] for a in body["audit"]] == [1, 2, 3, 4] and body["version"] == 4
        assert body["audit"][1]["worker"].startswith("scans-a")
        assert body["attempts"] == 1
        assert _containers_of(docker_client, scan_id) == []

    def test_three_hop_redirect_chain(self, api, scan_sites) -> None:  # type: ignore[no-untyped-def]
        body = _wait_done(api, _submit(api, scan_sites.url("/r1")))
        assert body["state"] == "COMPLETED", body
        chain = body["result"]["fetch"]["redirect_chain"]
        assert [(h["url"], h["status"], h["location"]) for h in chain] == [
            (scan_sites.url("/r1"), 302, "/r2"),
            (scan_sites.url("/r2"), 301, "/r3"),
            (scan_sites.url("/r3"), 307, "/plain"),
            (scan_sites.url("/plain"), 200, None),
        ]
        assert body["result"]["final_url"] == scan_sites.url("/plain")
        assert body["result"]["fetch"]["page"]["title"] == "Plain test page"
        assert [r["rule"] for r in body["result"]["reasons"]] == ["many_redirects"]

    def test_password_form_is_found_and_flagged(self, api, scan_sites) -> None:  # type: ignore[no-untyped-def]
        body = _wait_done(api, _submit(api, scan_sites.url("/login")))
        assert body["state"] == "COMPLETED", body
        page = body["result"]["fetch"]["page"]
        assert page["password_field"] is True and page["password_form_actions"] == [LOGIN_ACTION]
        rules = {r["rule"] for r in body["result"]["reasons"]}
        assert {"password_form_over_http", "password_form_cross_domain"} <= rules
        assert body["result"]["risk"] == "high"

    def test_executable_download_is_flagged(self, api, scan_sites) -> None:  # type: ignore[no-untyped-def]
        body = _wait_done(api, _submit(api, scan_sites.url("/download")))
        assert body["state"] == "COMPLETED", body
        assert body["result"]["content_type"] == "application/x-msdownload"
        assert "executable_download" in {r["rule"] for r in body["result"]["reasons"]}

    def test_fifty_megabyte_page_is_truncated_at_the_cap(self, api, scan_sites) -> None:  # type: ignore[no-untyped-def]
        body = _wait_done(api, _submit(api, scan_sites.url("/big?mb=50")))
        assert body["state"] == "COMPLETED", body
        fetch = body["result"]["fetch"]
        cap = 5 * MIB  # SCAN_MAX_BYTES default
        assert fetch["bytes_read"] == cap and fetch["truncated"] is True
        assert fetch["headers"]["content-length"] == str(50 * MIB)
        assert fetch["sha256"] == hashlib.sha256(stream_prefix("text/plain", cap)).hexdigest()

    @pytest.mark.parametrize(("path", "address", "why"), [
        ("/to-loopback", "127.0.0.1", "loopback"),
        ("/to-metadata", "169.254.169.254", "link-local"),
    ])
    def test_redirect_to_an_internal_address_is_refused(self, api, docker_client, scan_sites, path, address,
                                                        why) -> None:  # type: ignore[no-untyped-def]
        scan_id = _submit(api, scan_sites.url(path))
        body = _wait_done(api, scan_id)
        assert body["state"] == "FAILED" and body["result"] is None
        assert f"blocked address {address} ({why})" in body["error"]
        assert _transitions(body)[-1] == ("FETCHING", "FAILED")
        assert body["audit"][-1]["detail"] == body["error"]
        assert _containers_of(docker_client, scan_id) == []

    def test_host_resolving_to_a_private_address_is_refused(self, api, scan_sites) -> None:  # type: ignore[no-untyped-def]
        # intranet.test is a real name on the network (Docker's DNS answers it) whose
        # address is private and not on the worker's allow-list.
        body = _wait_done(api, _submit(api, f"{scan_sites.decoy_base}/plain"))
        assert body["state"] == "FAILED"
        assert f"blocked address {scan_sites.decoy_ip} (private) for host intranet.test" in body["error"]

    def test_slow_page_times_out_in_a_hardened_container_that_is_then_removed(
            self, api, docker_client, scan_sites) -> None:  # type: ignore[no-untyped-def]
        scan_id = _submit(api, scan_sites.url("/slow?seconds=60"))

        def running_container() -> Any:
            for container in _containers_of(docker_client, scan_id):
                if container.attrs["State"]["Running"] and container.attrs["State"]["Pid"]:
                    return container
            return None

        container = wait_for(running_container, timeout=30, message="the scan's container running")
        attrs = container.attrs
        host = attrs["HostConfig"]
        assert host["Memory"] == 512 * MIB and host["MemorySwap"] == 512 * MIB
        assert host["NanoCpus"] == 500_000_000
        assert host["PidsLimit"] == 64
        assert host["ReadonlyRootfs"] is True and host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert set(host["Tmpfs"]) == {"/tmp"} and "noexec" in host["Tmpfs"]["/tmp"]
        assert host["NetworkMode"] == scan_sites.network
        assert attrs["Config"]["User"] == "65534:65534"
        assert attrs["Config"]["Labels"][LABEL] == "1" and attrs["Config"]["Labels"][JOB_LABEL] == scan_id
        # What the kernel actually enforces on the fetcher process.
        status = _proc_status(attrs["State"]["Pid"])
        assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split() == ["65534"] * 4
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        limits = _cgroup_limits(attrs["State"]["Pid"])
        assert limits["memory"] == 512 * MIB and limits["pids"] == 64
        assert limits["cpu_quota"] / limits["cpu_period"] == pytest.approx(0.5)

        body = _wait_done(api, scan_id, timeout=40)
        assert body["state"] == "TIMED_OUT", body
        assert "longer than 6 s" in body["error"]
        assert _transitions(body)[-1] == ("FETCHING", "TIMED_OUT")
        assert _containers_of(docker_client, scan_id) == []
        with pytest.raises(Exception, match="No such container|404"):
            docker_client.containers.get(container.id)

    def test_two_workers_racing_on_one_job_start_one_container(
            self, api, docker_client, scan_sites, scans_worker) -> None:  # type: ignore[no-untyped-def]
        second = _start(["scans"], scan_sites.worker_env(**WORKER_ENV), "scans-b").wait_ready()
        try:
            # A job with no outbox event; both workers get a run task for it at once.
            with session_scope() as session:
                job = ScanJob(id=os.urandom(16).hex(), url=scan_sites.url("/plain"), state="QUEUED", version=1)
                session.add(job)
                session.add(ScanAudit(job_id=job.id, from_state=None, to_state="QUEUED", version=1, worker="test"))
                scan_id = job.id
            time.sleep(1.0)  # both workers idle and blocked on the queue
            since = int(time.time()) - 1
            with second.client.producer_or_acquire() as producer:
                results = [second.client.send_task("app.tasks.scans.run", kwargs={"scan_id": scan_id},
                                                   producer=producer) for _ in range(2)]
            outcomes = [r.get(timeout=60) for r in results]
        finally:
            assert second.stop() == 0, second.log_tail()
        assert sorted(o["result"] for o in outcomes) == ["completed", "skipped"], outcomes
        assert len({o["worker"] for o in outcomes}) == 2, f"both workers took a task: {outcomes}"
        with session_scope() as session:
            job = session.get(ScanJob, scan_id)
            assert job.state == "COMPLETED" and job.attempts == 1
            claims = [(a.from_state, a.to_state) for a in job.audit if a.to_state == "FETCHING"]
        assert claims == [("QUEUED", "FETCHING")]
        starts = list(docker_client.events(since=since, until=int(time.time()) + 1, decode=True, filters={
            "type": "container", "event": "start", "label": f"{JOB_LABEL}={scan_id}"}))
        assert len(starts) == 1, starts

    def test_list_scans_by_state(self, api) -> None:  # type: ignore[no-untyped-def]
        # The scans above were made under other tests' keys (other clients): the admin
        # credential lists every client's.
        api.headers = api.admin
        failed = api.get("/api/scans?state=failed&per_page=100").get_json()
        assert failed["total"] >= 3 and all(item["state"] == "FAILED" for item in failed["items"])
        completed = api.get("/api/scans?state=COMPLETED&per_page=2").get_json()
        assert len(completed["items"]) == 2 and completed["total"] >= 4
        assert all(item["score"] is not None for item in completed["items"])


def _proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _cgroup_limits(pid: int) -> dict[str, int]:
    """The container's memory, pids and CPU limits as the kernel has them (cgroup v1 or v2)."""
    paths = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path
    root = Path("/sys/fs/cgroup")
    if "memory" in paths:  # v1
        def read(controller: str, name: str) -> str:
            return (root / controller / paths[controller].lstrip("/") / name).read_text().strip()

        cpu = "cpu,cpuacct" if (root / "cpu,cpuacct").exists() else "cpu"
        paths.setdefault(cpu, paths.get("cpu", ""))
        return {"memory": int(read("memory", "memory.limit_in_bytes")), "pids": int(read("pids", "pids.max")),
                "cpu_quota": int(read(cpu, "cpu.cfs_quota_us")), "cpu_period": int(read(cpu, "cpu.cfs_period_us"))}
    base = root / paths[""].lstrip("/")
    quota, period = (base / "cpu.max").read_text().split()
    return {"memory": int((base / "memory.max").read_text()), "pids": int((base / "pids.max").read_text()),
            "cpu_quota": int(quota), "cpu_period": int(period)}


class TestLimitsAndRecovery:
    """Workers with other settings; the class above has stopped its worker by now."""

    def test_fetch_that_exhausts_memory_fails(self, api, relay, scan_sites, docker_client) -> None:  # type: ignore[no-untyped-def]
        # A body cap above the memory limit: the fetcher keeps an HTML body to parse it.
        env = scan_sites.worker_env(**WORKER_ENV, SCAN_MEMORY_MB="48", SCAN_MAX_BYTES=str(256 * MIB))
        worker = _start(["scans"], env, "scans-small").wait_ready()
        try:
            scan_id = _submit(api, scan_sites.url("/huge?mb=200"))
            body = _wait_done(api, scan_id)
        finally:
            assert worker.stop() == 0, worker.log_tail()
        assert body["state"] == "FAILED", body
        assert body["error"] == "memory limit exceeded (48 MiB)"
        assert _containers_of(docker_client, scan_id) == []

    def test_worker_killed_mid_scan_is_recovered_by_the_sweep(self, api, relay, scan_sites,
                                                              docker_client) -> None:  # type: ignore[no-untyped-def]
        env = scan_sites.worker_env(**WORKER_ENV)
        doomed = _start(["scans"], env, "scans-doomed").wait_ready()
        try:
            scan_id = _submit(api, scan_sites.url("/slow?seconds=2"))
            wait_for(lambda: any(c.status == "running" for c in _containers_of(docker_client, scan_id)),
                     timeout=30, message="the scan's container running")
            os.kill(doomed.proc.pid, signal.SIGKILL)  # no finally runs: the job and the container are stranded
            doomed.proc.wait(timeout=10)
        finally:
            if doomed.proc.poll() is None:
                doomed.proc.kill()
                doomed.proc.wait(timeout=10)
            doomed._log.close()
        assert _state(scan_id) == "FETCHING"
        stray = _containers_of(docker_client, scan_id)
        assert len(stray) == 1

        result = sweep(session_scope, lambda: docker_client, stale_seconds=0.0, max_attempts=3, worker="sweeper")
        assert result.requeued == [scan_id] and result.failed == []
        assert result.containers_removed == [stray[0].id]
        assert _containers_of(docker_client, scan_id) == []

        # The requeued job goes through the outbox again, to a healthy worker; the relay
        # run is what beat sends every second.
        rescuer = _start(["scans"], env, "scans-rescuer").wait_ready()
        try:
            relay.client.send_task("app.tasks.outbox.relay")
            body = _wait_done(api, scan_id)
        finally:
            assert rescuer.stop() == 0, rescuer.log_tail()
        assert body["state"] == "COMPLETED", body
        assert body["result"]["fetch"]["page"]["title"] == "finally"
        assert body["attempts"] == 2
        assert _transitions(body) == [(None, "QUEUED"), ("QUEUED", "FETCHING"), ("FETCHING", "QUEUED"),
                                      ("QUEUED", "FETCHING"), ("FETCHING", "ANALYZING"), ("ANALYZING", "COMPLETED")]
        assert body["audit"][2]["worker"] == "sweeper"
        with session_scope() as session:
            assert session.scalars(select(ScanAudit).where(ScanAudit.job_id == scan_id)).all()[-1].to_state == "COMPLETED"
