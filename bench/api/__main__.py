"""API: requests per second and p99 latency of the submit endpoints under gunicorn,
against the **durable bare endpoint**: the same Flask under the same gunicorn settings,
writing the same two rows (a job row and its outbox event) in one transaction with the
same driver (psycopg) on the same loopback PostgreSQL, answering 202
(``bench/api/bare.py``, ``POST /durable``). A submit must be durable before it answers,
so that is the honest limit; a Flask endpoint returning a constant (``POST /bare``) is
kept as a second reference line.

Both applications run under gunicorn with the project's config
(``app.api.gunicorn_conf``: JSON access log, Prometheus multiprocess) and the deployed
worker count and timeout (``deploy/supervisor/app.conf``), side by side on loopback.
The project API talks to a scratch PostgreSQL database and a private redis-server (the
outbox nudge publishes to it; no worker consumes).

1. **Saturation**: ``wrk`` (Debian package) with 2 threads and 16 connections for
   ``--seconds`` per endpoint; each round runs the constant, the durable baseline and
   every submit endpoint one after the other, ``--repeat`` rounds: requests/s. Each
   request carries a fresh id, so every submit writes its rows and outbox event.
   Target: each submit ≥ 0.6× the durable baseline (the ratio of each round's pair).
2. **Latency at half the saturating rate**: an open-loop Python generator sends at half
   of the endpoint's saturating rate, latency counted from each request's due time: p99
   (target < 25 ms). (``wrk``'s per-connection delay does not suit gunicorn's sync
   workers: a worker that has accepted a connection waits for its delayed request.)
3. **Bulk**: ``POST /api/messages/batch`` with ``--batch`` messages a request, in the
   same rounds: messages accepted durably per second, against the single endpoint's
   (target ≥ 10,000 messages/s).

The load average of the machine is printed with every round: the machine is shared.

    python -m bench.api [--quick] [--seconds 8] [--repeat 3] [--endpoints messages,scans,voice,batch]
                        [--batch 1000] [--summary out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS, TIMEOUT = "4", "60"  # as deploy/supervisor/app.conf runs the API
THREADS, CONNECTIONS = 2, 16
_runs = 0  # wrk runs so far: part of every generated id, so no two runs reuse one

MESSAGE = ('{"id": "bench-{n}", "conversation_id": "bench", "channel": "whatsapp", '
           '"recipient": "+15550001", "content": "hello {n}"}')
#: Submit endpoints: path and a JSON body template (``{n}`` becomes a unique number).
ENDPOINTS = {
    "messages": ("/api/messages", MESSAGE),
    "scans": ("/api/scans", '{"url": "http://site-{n}.example.test/"}'),
    "voice": ("/api/voice", '{"transcript": "Hello, this is your bank. Please read me the code {n}."}'),
}
#: The baselines (bench/api/bare.py): the durable one is the reference of every ratio.
DURABLE = ("/durable", MESSAGE)
CONSTANT = ("/bare", "{}")
BATCH_PATH = "/api/messages/batch"

LUA = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", [==[%(run)s]==] .. "-" .. threads)
end
local counter = 0
local size = %(size)d
function request()
  local body
  if size == 0 then
    counter = counter + 1
    body = string.gsub([==[%(body)s]==], "{n}", prefix .. "-" .. counter)
  else
    local items = {}
    for i = 1, size do
      counter = counter + 1
      items[i] = string.gsub([==[%(body)s]==], "{n}", prefix .. "-" .. counter)
    end
    body = '{"items": [' .. table.concat(items, ",") .. ']}'
  end
  return wrk.format("POST", [==[%(path)s]==], {["Content-Type"] = "application/json",
                    ["Authorization"] = [==[%(auth)s]==]}, body)
end
"""


def loadavg() -> float:
    """The machine's 1-minute load average (printed with every figure: the machine is shared)."""
    return os.getloadavg()[0]


def wrk(url: str, path: str, body: str, auth: str, seconds: float, tmp: Path, size: int = 0) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles (ms), non-2xx count. ``size`` > 0: each
    request is a batch of that many bodies (``{"items": [...]}``)."""
    global _runs
    _runs += 1
    script = tmp / f"wrk-{_runs}.lua"
    script.write_text(LUA % {"body": body, "path": path, "auth": auth, "run": f"{os.getpid()}.{_runs}",
                             "size": size})
    proc = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s", "--latency",
                          "--timeout", "60s" if size else "10s", "-s", str(script), url], capture_output=True, text=True,
                         timeout=seconds + 120)
    out = proc.stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk gave no rate: {out[-500:]} {proc.stderr[-500:]}")
    rps = float(found.group(1))
    lat = {p: _ms(m) for p, m in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50": lat.get("50", float("nan")), "p99": lat.get("99", float("nan")),
            "bad": float(bad.group(1)) if bad else 0.0,
            "errors": float(sum(int(x) for x in errors.groups())) if errors else 0.0}


def paced_run(port: int, path: str, body: str, auth: str, rate: float, seconds: float) -> dict[str, float]:
    """Open-loop load at ``rate`` requests/s: request *i* is due at start + i / rate and its
    latency counts from that moment (a late send counts against the server, no
    coordinated omission). A new connection per request, as gunicorn's sync workers close
    each one; a thread per in-flight request, up to 32."""
    import http.client
    import threading

    total = max(10, int(rate * seconds))
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    bad = [0]
    lock = threading.Lock()
    next_i = [0]

    def worker() -> None:
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= total:
                return
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            payload = body.replace("{n}", f"paced-{os.getpid()}-{_runs}-{i}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", path, body=payload.encode(),
                             headers={"Content-Type": "application/json", "Authorization": auth})
                resp = conn.getresponse()
                resp.read()
                conn.close()
                ok = 200 <= resp.status < 300
            except OSError:
                ok = False
            with lock:
                latencies.append((time.perf_counter() - due) * 1000)
                bad[0] += 0 if ok else 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)
    from bench.common import percentile

    elapsed = max(latencies) / 1000 + total / rate if latencies else seconds
    return {"rps": total / elapsed, "p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
            "bad": float(bad[0]), "errors": 0.0}


def _ms(text: str) -> float:
    value = float(re.match(r"[\d.]+", text).group(0))  # type: ignore[union-attr]
    unit = text[len(re.match(r"[\d.]+", text).group(0)):]  # type: ignore[union-attr]
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def gunicorn(app: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:app.api.gunicorn_conf", "--bind", f"127.0.0.1:{port}",
         "--workers", WORKERS, "--timeout", TIMEOUT, app],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn {app} exited; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except urllib.error.HTTPError:
            return proc  # it answers (the bare app has no /health)
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"gunicorn {app} did not answer; see {log}")


def _count_messages(db_url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM messages")).scalar_one())
    finally:
        engine.dispose()


class Run:
    """The servers of one benchmark run and every figure measured on them."""

    def __init__(self, args: argparse.Namespace, tmp: Path, db_url: str, auth: str, bare_url: str,
                 api_url: str, api_port: int, bare_port: int) -> None:
        self.args, self.tmp, self.db_url, self.auth = args, tmp, db_url, auth
        self.bare_url, self.api_url, self.api_port, self.bare_port = bare_url, api_url, api_port, bare_port
        self.endpoints = [e for e in args.endpoints.split(",") if e in ENDPOINTS]
        self.batch = "batch" in args.endpoints.split(",")
        self.sat: dict[str, list[float]] = {"constant": [], "durable": []} | {e: [] for e in self.endpoints}
        if self.batch:
            self.sat["batch"] = []  # messages/s
        self.loads: list[float] = []
        self.paced: dict[str, dict[str, float]] = {}
        self.bad = 0.0

    def _wrk(self, key: str, seconds: float) -> float:
        if key in ("constant", "durable"):
            path, body = CONSTANT if key == "constant" else DURABLE
            run = wrk(self.bare_url, path, body, self.auth, seconds, self.tmp)
        elif key == "batch":
            before = _count_messages(self.db_url)
            run = wrk(self.api_url, BATCH_PATH, MESSAGE, self.auth, seconds, self.tmp, size=self.args.batch)
            run["rps"] *= self.args.batch  # messages accepted per second
            stored = _count_messages(self.db_url) - before
            if stored < run["rps"] * round(seconds) * 0.9:
                raise SystemExit(f"batch: only {stored} messages stored for {run['rps']:.0f}/s reported")
        else:
            run = wrk(self.api_url, ENDPOINTS[key][0], ENDPOINTS[key][1], self.auth, seconds, self.tmp)
        self.bad += run["bad"] + run["errors"]
        return run["rps"]

    def saturate(self) -> None:
        for key in self.sat:  # warm-up: every worker imports and connects
            self._wrk(key, 1)
        for _ in range(self.args.repeat):
            self.loads.append(loadavg())
            for key in self.sat:
                self.sat[key].append(self._wrk(key, self.args.seconds))
            print(" ".join(f"{k} {v[-1]:.0f}/s" for k, v in self.sat.items()) + f" (load {self.loads[-1]:.1f})",
                  flush=True)

    def pace(self) -> None:
        seconds = max(self.args.seconds, 5) * 1.5
        for key in ["durable", *self.endpoints]:
            half = statistics.median(self.sat[key]) / 2
            port, (path, body) = (self.bare_port, DURABLE) if key == "durable" else (self.api_port, ENDPOINTS[key])
            load = loadavg()
            run = paced_run(port, path, body, self.auth, half, seconds)
            self.bad += run["bad"] + run["errors"]
            self.paced[key] = run | {"target_rps": half, "load": load}
            print(f"{key} paced at {run['rps']:.0f}/s (aim {half:.0f}/s): p50 {run['p50']:.1f} ms, "
                  f"p99 {run['p99']:.1f} ms (load {load:.1f})", flush=True)


def report(run: Run, quick: bool) -> tuple[list[str], list]:
    """The printed table and the summary figures."""
    from bench.common import Figure, machine, median_spread, paired, today, verdict

    args, sat = run.args, run.sat
    d_m, d_lo, d_hi = median_spread(sat["durable"])
    c_m, c_lo, c_hi = median_spread(sat["constant"])
    load = f"load average {min(run.loads):.1f}–{max(run.loads):.1f} during the rounds"
    lines = [
        f"Measured {today()} by `python -m bench.api{' --quick' if quick else ''}` on {machine()}; gunicorn "
        f"{WORKERS} sync workers with `app.api.gunicorn_conf` for every server; wrk {THREADS} threads, "
        f"{CONNECTIONS} connections, {args.seconds:g} s per run, {args.repeat} rounds, each endpoint in every "
        f"round; {load}. **Baseline: the durable bare endpoint** (Flask + psycopg, the job row and its outbox "
        "row in one transaction, 202); ratios are the median of each round's pair.",
        "",
        "| measurement | median | spread (min–max) | ÷ durable (paired) | ÷ constant (paired) | target |",
        "|---|---|---|---|---|---|",
        f"| Flask, constant 202 (reference) | {c_m:,.0f} req/s | {c_lo:,.0f}–{c_hi:,.0f} | | | |",
        f"| **durable bare**: Flask + psycopg, 2 INSERTs, 1 commit (baseline) | {d_m:,.0f} req/s | "
        f"{d_lo:,.0f}–{d_hi:,.0f} | 1× | {paired(sat['durable'], sat['constant'])[0]:.2f}× | |",
    ]
    figures = []
    for e in run.endpoints:
        m, lo, hi = median_spread(sat[e])
        r_m, r_lo, r_hi = paired(sat[e], sat["durable"])
        rc = paired(sat[e], sat["constant"])[0]
        p = run.paced[e]
        ok_rate, ok_p99 = r_m >= 0.6, p["p99"] < 25
        path = ENDPOINTS[e][0]
        lines += [
            f"| `POST {path}` saturated | {m:,.0f} req/s | {lo:,.0f}–{hi:,.0f} | **{r_m:.2f}×** "
            f"({r_lo:.2f}–{r_hi:.2f}) | {rc:.2f}× | ≥ 0.6× durable ({verdict(ok_rate)}) |",
            f"| `POST {path}` at {p['rps']:,.0f} req/s (half of saturation): p50 / p99 | "
            f"{p['p50']:.1f} / **{p['p99']:.1f} ms** | | | | p99 < 25 ms ({verdict(ok_p99)}); load {p['load']:.1f} |",
        ]
        figures += [
            Figure(f"API `POST {path}`: requests/s saturated", f"{m:,.0f} req/s ({lo:,.0f}–{hi:,.0f})",
                   f"durable bare endpoint (Flask + psycopg, 2 rows, 1 commit): {d_m:,.0f} req/s; "
                   f"constant: {c_m:,.0f} req/s", f"{r_m:.2f}× ({r_lo:.2f}–{r_hi:.2f})", "≥ 0.6× durable", ok_rate,
                   f"wrk {CONNECTIONS} connections, {args.repeat} paired rounds of {args.seconds:g} s; {load}"),
            Figure(f"API `POST {path}`: p99 at half the saturating rate",
                   f"{p['p99']:.1f} ms (p50 {p['p50']:.1f} ms) at {p['rps']:,.0f} req/s", "", "",
                   "p99 < 25 ms", ok_p99, f"load average {p['load']:.1f}"),
        ]
    dp = run.paced["durable"]
    lines.append(f"| durable bare at {dp['rps']:,.0f} req/s (half of saturation): p50 / p99 | "
                 f"{dp['p50']:.1f} / {dp['p99']:.1f} ms | | | | load {dp['load']:.1f} |")
    if run.batch:
        m, lo, hi = median_spread(sat["batch"])
        ok = m >= 10_000
        rd = paired(sat["batch"], sat["durable"])[0]
        single = f"; ÷ single `POST /api/messages` {paired(sat['batch'], sat['messages'])[0]:.1f}×" \
            if "messages" in sat else ""
        lines.append(f"| `POST {BATCH_PATH}`, {args.batch} messages a request | {m:,.0f} messages/s | "
                     f"{lo:,.0f}–{hi:,.0f} | {rd:.1f}×{single} | | ≥ 10,000 messages/s ({verdict(ok)}) |")
        figures.append(Figure(f"API `POST {BATCH_PATH}`: messages accepted durably per second",
                              f"{m:,.0f} messages/s ({lo:,.0f}–{hi:,.0f})",
                              f"durable bare endpoint, one message a request: {d_m:,.0f} req/s",
                              f"{rd:.1f}×{single}", "≥ 10,000 messages/s", ok,
                              f"{args.batch} messages a request, wrk {CONNECTIONS} connections; {load}"))
    return lines, figures


def free_port() -> int:
    from app.devserver import free_port as free

    return free()


@contextmanager
def api_environment(batch: int = 1000) -> Iterator[tuple[Path, str, str]]:
    """A scratch PostgreSQL database migrated to head, a private redis-server, the
    environment the API is started with, and a client's API key: (tmp dir, database URL,
    token)."""
    from app.devserver import start_private_redis
    from bench.common import scratch_database

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        with scratch_database(f"bench_api_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING",
                               # one client saturates the API: its rate limit stays on (its
                               # Redis hit is part of every figure) but is never reached
                               "RATE_LIMIT_DEFAULT": "100000000/minute",
                               "MESSAGES_BATCH_MAX": str(max(batch, 1000)),
                               "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")})
            (tmp / "prom").mkdir()
            from app.migrate import upgrade

            upgrade()
            from app.db import reset_engine, session_scope
            from app.services.auth import create_api_key

            with session_scope() as session:
                _, token = create_api_key(session, "bench")
            yield tmp, db_url, token
            reset_engine()
    finally:
        redis_proc.terminate()


def main() -> None:
    """Measure, print the table, write the summary for ``python -m bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke run")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoints", default=",".join([*ENDPOINTS, "batch"]))
    parser.add_argument("--batch", type=int, default=1000, help="messages per batch request")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat = 3.0, 2
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk); run scripts/bootstrap")

    from bench.common import stop, write_summary

    procs: list[subprocess.Popen[bytes]] = []
    with api_environment(args.batch) as (tmp, db_url, token):
        try:
            bare_port, api_port = free_port(), free_port()
            procs.append(gunicorn("bench.api.bare:application", bare_port, dict(os.environ), tmp / "bare.log"))
            procs.append(gunicorn("app.api.wsgi:application", api_port, dict(os.environ), tmp / "api.log"))
            run = Run(args, tmp, db_url, f"Bearer {token}", f"http://127.0.0.1:{bare_port}",
                      f"http://127.0.0.1:{api_port}", api_port, bare_port)
            run.saturate()
            run.pace()
        finally:
            stop(procs)
    if run.bad:
        raise SystemExit(f"{run.bad:.0f} requests failed (non-2xx or socket errors); see {tmp}")
    lines, figures = report(run, args.quick)
    print("\n".join(lines))
    write_summary(args.summary, figures)


if __name__ == "__main__":
    main()
