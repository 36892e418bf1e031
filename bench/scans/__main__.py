"""URL-scan benchmark: the whole pipeline against a bare ``docker run`` of the fetcher.

1. **End-to-end scan time**: ``POST /api/scans`` to a gunicorn API, then poll
   ``GET /api/scans/<id>`` (every 20 ms) until ``COMPLETED``: outbox, relay worker,
   ``scans`` worker (claim, hardened container through the Docker SDK, analysis, three
   audited transitions). **Baseline**: ``docker run --rm --network <net> <fetcher image>
   <same arguments>`` of the same image on the same URL with the Docker CLI, timed from
   spawn to exit. The two alternate, one scan at a time, ``--repeat`` times; the table
   gives p50 of each, their ratio (target ≤ 1.5×) and the spread.
2. **Throughput**: ``--scans`` URLs submitted at once, timed until all are COMPLETED,
   with the ``scans`` worker at concurrency 1, 2 and 4 (thread pool): scans per minute;
   next to it, the same number of bare ``docker run`` with as many at a time.

Everything stays on the machine: a private redis-server, a scratch PostgreSQL database,
and the scanned page served from the project's own container on a ``docker network
create --internal`` network (the fetcher image running tests/scans_sites.py).

    python -m bench.scans [--quick] [--repeat 20] [--scans 40] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SITES_SCRIPT = ROOT / "tests" / "scans_sites.py"
SITE_PORT = 8080
BENCH_LABEL = "app.scan.bench"
POLL = 0.02


def _http(method: str, url: str, token: str, body: dict | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


class Stack:
    """Docker network + site container, and the API / relay / scans worker processes."""

    def __init__(self, tmp: Path, env: dict[str, str]) -> None:
        import docker

        from app.services.sandbox import fetcher_image_tag

        self.tmp = tmp
        self.env = env
        self.docker = docker.from_env(timeout=30)
        self.image = fetcher_image_tag()
        self.docker.images.get(self.image)  # built by scripts/build-fetcher; never pulled
        token = secrets.token_hex(4)
        self.network = self.docker.networks.create(f"app-scan-bench-{token}", driver="bridge", internal=True,
                                                   labels={BENCH_LABEL: "1"})
        endpoint = self.docker.api.create_endpoint_config(aliases=["site.test"])
        self.site = self.docker.containers.run(
            self.image, entrypoint=["python3", "-I", "/srv/scans_sites.py", str(SITE_PORT)], command=[],
            name=f"app-scan-bench-site-{token}", detach=True, network=self.network.name,
            networking_config={self.network.name: endpoint},
            volumes={str(SITES_SCRIPT): {"bind": "/srv/scans_sites.py", "mode": "ro"}},
            labels={BENCH_LABEL: "1"}, user="65534:65534", read_only=True, cap_drop=["ALL"])
        deadline = time.monotonic() + 30
        while b"listening on" not in self.site.logs(stdout=True, stderr=False):
            if time.monotonic() > deadline:
                raise RuntimeError("bench site did not start")
            time.sleep(0.1)
        self.network.reload()
        self.site_ip = self.network.attrs["Containers"][self.site.id]["IPv4Address"].split("/")[0]
        self.url = f"http://site.test:{SITE_PORT}/plain"
        self.env.update({"SCAN_NETWORK": self.network.name, "SCAN_ALLOW_CIDRS": f"{self.site_ip}/32"})
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str]) -> None:
        """Start a process of the stack, its output in a log file."""
        log = open(self.tmp / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self, name: str, queue: str, concurrency: int) -> None:
        """Start a Celery worker and wait until it answers a ping."""
        self.start(name, [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", queue, "-P", "threads",
                          "-c", str(concurrency), "-n", f"{name}@%h", "--loglevel", "WARNING",
                          "--without-mingle", "--without-gossip"])
        from app.celery_app import celery_app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replies = celery_app.control.ping(timeout=0.5)
            if any(node.startswith(f"{name}@") for reply in replies for node in reply):
                return
        raise RuntimeError(f"worker {name} did not start; see {self.tmp / (name + '.log')}")

    def stop_process(self, name: str) -> None:
        """Stop one process of the stack (warm shutdown)."""
        from bench.common import stop

        proc = self.procs.pop(name, None)
        if proc is not None:
            stop([proc])

    def close(self) -> None:
        """Stop every process; remove the site container and the network."""
        from bench.common import stop

        stop(list(self.procs.values()))
        self.procs.clear()
        try:
            self.site.remove(force=True)
        finally:
            self.network.remove()
        self.docker.close()

    def bare_run(self, args: list[str]) -> float:
        """The baseline: the Docker CLI runs the same image on the same URL."""
        start = time.perf_counter()
        proc = subprocess.run(["docker", "run", "--rm", "--network", self.network.name, self.image, *args],
                              capture_output=True, timeout=60)
        elapsed = time.perf_counter() - start
        doc = json.loads(proc.stdout)
        if proc.returncode != 0 or doc.get("error") or doc.get("status") != 200:
            raise RuntimeError(f"bare run failed: {proc.returncode} {proc.stdout[:300]!r} {proc.stderr[:300]!r}")
        return elapsed


def _wait_completed(api: str, token: str, ids: list[str], timeout: float = 300) -> dict[str, float]:
    """Poll until every scan is COMPLETED; the time each was first seen so."""
    done: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(done) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(done)}/{len(ids)} scans completed")
        for scan_id in ids:
            if scan_id in done:
                continue
            body = _http("GET", f"{api}/api/scans/{scan_id}", token)
            if body["state"] == "COMPLETED":
                done[scan_id] = time.perf_counter()
            elif body["state"] in ("FAILED", "TIMED_OUT"):
                raise RuntimeError(f"scan {scan_id} ended {body['state']}: {body['error']}")
        time.sleep(POLL)
    return done


def latency(stack: Stack, api: str, token: str, repeat: int) -> dict[str, Any]:
    """Paired runs, one at a time: bare ``docker run`` then one scan through the API."""
    from app.services.sandbox import SandboxConfig
    from app.settings import load_settings

    cfg = SandboxConfig.from_settings(load_settings(scan_network=stack.network.name,
                                                    scan_allow_cidrs=stack.env["SCAN_ALLOW_CIDRS"]))
    args = cfg.fetch_args(stack.url)
    # Warm both paths once (first container start, first connections), untimed.
    stack.bare_run(args)
    first = _http("POST", f"{api}/api/scans", token, {"url": stack.url})["id"]
    _wait_completed(api, token, [first])
    bare, e2e = [], []
    for _ in range(repeat):
        bare.append(stack.bare_run(args))
        start = time.perf_counter()
        scan_id = _http("POST", f"{api}/api/scans", token, {"url": stack.url})["id"]
        e2e.append(_wait_completed(api, token, [scan_id])[scan_id] - start)
    return {"bare": bare, "e2e": e2e, "args": args}


def _count(api: str, token: str, state: str) -> int:
    return int(_http("GET", f"{api}/api/scans?state={state}&per_page=1", token)["total"])


def throughput(api: str, token: str, url: str, count: int) -> float:
    """Scans per minute: ``count`` submitted at once, until all are COMPLETED. One list
    call per poll (not one GET per scan), so the measuring costs the API little."""
    before = _count(api, token, "COMPLETED")
    start = time.perf_counter()
    for _ in range(count):
        _http("POST", f"{api}/api/scans", token, {"url": url})
    deadline = time.monotonic() + 300
    while _count(api, token, "COMPLETED") - before < count:
        if _count(api, token, "FAILED") or _count(api, token, "TIMED_OUT"):
            raise RuntimeError("a scan did not complete during the throughput run")
        if time.monotonic() > deadline:
            raise RuntimeError("throughput run did not finish")
        time.sleep(0.05)
    return count / (time.perf_counter() - start) * 60


def bare_throughput(stack: Stack, args: list[str], count: int, parallel: int) -> float:
    """Bare ``docker run`` with ``parallel`` runs at a time: what Docker alone allows here."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda _: stack.bare_run(args), range(count)))
    return count / (time.perf_counter() - start) * 60


def main() -> None:
    """Set up, measure both parts, print the table and write it into docs/scans.md."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeat", type=int, default=20, help="paired latency runs")
    parser.add_argument("--scans", type=int, default=40, help="scans per throughput run")
    parser.add_argument("--write-docs", action="store_true", help="update the table in docs/scans.md")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.scans = 5, 8

    from app.devserver import free_port, start_private_redis
    from bench.common import (
        Figure,
        machine,
        median_spread,
        percentile,
        replace_section,
        scratch_database,
        today,
        write_summary,
    )

    redis_proc, redis_url = start_private_redis()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-scans-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    stack = None
    try:
        with scratch_database(f"bench_scans_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING"})
            from app.migrate import upgrade

            upgrade()
            from app.db import session_scope
            from app.services.auth import create_api_key

            with session_scope() as session:
                _, token = create_api_key(session, "bench")
            stack = Stack(tmp, dict(os.environ))
            port = free_port()
            api = f"http://127.0.0.1:{port}"
            stack.start("api", [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2",
                                "app.api.wsgi:application"])
            stack.start_worker("bench-relay", "outbox", 2)
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"{api}/openapi.json", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

            stack.start_worker("bench-scans-1", "scans", 1)
            times = latency(stack, api, token, args.repeat)
            rates: dict[int, float] = {}
            bare_rates: dict[int, float] = {}
            for concurrency in (1, 2, 4):
                bare_rates[concurrency] = bare_throughput(stack, times["args"], args.scans, concurrency)
                if concurrency != 1:
                    stack.stop_process("bench-scans-1" if concurrency == 2 else "bench-scans-2")
                    stack.start_worker(f"bench-scans-{concurrency}", "scans", concurrency)
                rates[concurrency] = throughput(api, token, stack.url, args.scans)
            from app.services.sandbox import list_scan_containers

            stack.stop_process("bench-scans-4")
            leftovers = list_scan_containers(stack.docker)
            if leftovers:
                raise RuntimeError(f"scan containers left behind: {[c.name for c in leftovers]}")
            from app.db import reset_engine

            reset_engine()
    finally:
        if stack is not None:
            stack.close()
        redis_proc.terminate()

    bare_ms = [t * 1000 for t in times["bare"]]
    e2e_ms = [t * 1000 for t in times["e2e"]]
    bare_p50, e2e_p50 = percentile(bare_ms, 50), percentile(e2e_ms, 50)
    ratio = e2e_p50 / bare_p50
    paired = [e / b for e, b in zip(e2e_ms, bare_ms)]
    pr_m, pr_lo, pr_hi = median_spread(paired)
    verdict = "met" if ratio <= 1.5 else "**missed**"
    n = args.repeat
    table = "\n".join([
        f"Measured {today()} by `python -m bench.scans{' --quick' if args.quick else ''}` on {machine()}.",
        "",
        "| measurement | p50 | spread (min–max) | target |",
        "|---|---|---|---|",
        f"| baseline: bare `docker run --rm` of the fetcher image, same URL ({n} runs) | {bare_p50:.0f} ms | "
        f"{min(bare_ms):.0f}–{max(bare_ms):.0f} ms | |",
        f"| end to end: `POST /api/scans` → `COMPLETED` seen on `GET` ({n} runs) | {e2e_p50:.0f} ms | "
        f"{min(e2e_ms):.0f}–{max(e2e_ms):.0f} ms (p90 {percentile(e2e_ms, 90):.0f}) | |",
        f"| end to end ÷ bare, p50 over p50 | **{ratio:.2f}×** | paired runs: median {pr_m:.2f}×, "
        f"{pr_lo:.2f}–{pr_hi:.2f} | ≤ 1.5× ({verdict}) |",
        *(f"| throughput, worker concurrency {c} ({args.scans} scans submitted at once) | "
          f"{rates[c]:.0f} scans/min | bare `docker run`, {c} at a time: {bare_rates[c]:.0f} runs/min | |"
          for c in (1, 2, 4)),
    ])
    print(table)
    print(f"(e2e stdev {statistics.pstdev(e2e_ms):.0f} ms, bare stdev {statistics.pstdev(bare_ms):.0f} ms)")
    if args.write_docs:
        replace_section(str(ROOT / "docs" / "scans.md"), "bench-scans", table)
    write_summary(args.summary, [
        Figure("Scans: `POST /api/scans` → COMPLETED, p50", f"{e2e_p50:.0f} ms",
               f"bare `docker run --rm` of the fetcher: {bare_p50:.0f} ms", f"{ratio:.2f}× (paired {pr_lo:.2f}–{pr_hi:.2f})",
               "≤ 1.5× bare", ratio <= 1.5, f"{n} paired runs"),
        Figure("Scans: throughput, worker concurrency 2", f"{rates[2]:.0f} scans/min",
               f"bare `docker run`, 2 at a time: {bare_rates[2]:.0f} runs/min", f"{rates[2] / bare_rates[2]:.2f}×",
               "", None, f"{args.scans} scans submitted at once"),
    ])


if __name__ == "__main__":
    main()
