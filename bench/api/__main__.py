"""API: requests per second and p99 latency of the submit endpoints under gunicorn,
against a bare Flask endpoint that returns a constant, on the same server settings.

Both applications run under gunicorn with the project's config
(``app.api.gunicorn_conf``: JSON access log, Prometheus multiprocess) and the deployed
worker count and timeout (``deploy/supervisor/app.conf``), side by side on loopback.
The project API talks to a scratch PostgreSQL database and a private redis-server (the
outbox nudge publishes to it; no worker consumes).

1. **Saturation**: ``wrk`` (Debian package) with 2 threads and 16 connections for
   ``--seconds`` per endpoint, alternating bare / submit, ``--repeat`` rounds: requests/s.
   Each request carries a fresh id, so every submit writes its rows and outbox event.
   Target: submit ≥ 0.5× bare.
2. **Latency at half the saturating rate**: an open-loop Python generator sends at half
   of the endpoint's saturating rate, latency counted from each request's due time: p99
   (target < 50 ms). (``wrk``'s per-connection delay does not suit gunicorn's sync
   workers: a worker that has accepted a connection waits for its delayed request.)

    python -m bench.api [--quick] [--seconds 8] [--repeat 3] [--summary out.json]
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS, TIMEOUT = "4", "60"  # as deploy/supervisor/app.conf runs the API
THREADS, CONNECTIONS = 2, 16
_runs = 0  # wrk runs so far: part of every generated id, so no two runs reuse one

#: Submit endpoints: path and a JSON body template (``{n}`` becomes a unique number).
ENDPOINTS = {
    "voice": ("/api/voice", '{"transcript": "Hello, this is your bank. Please read me the code {n}."}'),
    "messages": ("/api/messages", '{"id": "bench-{n}", "conversation_id": "bench", "channel": "whatsapp", '
                                  '"recipient": "+15550001", "content": "hello {n}"}'),
    "scans": ("/api/scans", '{"url": "http://site-{n}.example.test/"}'),
}

LUA = r"""
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", [==[%(run)s]==] .. "-" .. threads)
end
local counter = 0
function request()
  counter = counter + 1
  local body = string.gsub([==[%(body)s]==], "{n}", prefix .. "-" .. counter)
  return wrk.format("POST", [==[%(path)s]==], {["Content-Type"] = "application/json",
                    ["Authorization"] = [==[%(auth)s]==]}, body)
end
"""

def wrk(url: str, path: str, body: str, auth: str, seconds: float, tmp: Path) -> dict[str, float]:
    """One wrk run: requests/s, latency percentiles (ms), non-2xx count."""
    global _runs
    _runs += 1
    script = tmp / f"wrk-{_runs}.lua"
    script.write_text(LUA % {"body": body, "path": path, "auth": auth, "run": f"{os.getpid()}.{_runs}"})
    proc = subprocess.run(["wrk", "-t", str(THREADS), "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s", "--latency",
                          "--timeout", "5s", "-s", str(script), url], capture_output=True, text=True,
                         timeout=seconds + 60)
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
        t.join(timeout=seconds + 60)
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


def main() -> None:
    """Measure, print the table, write the summary for ``python -m bench``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke run")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeat = 3.0, 2
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk); run scripts/bootstrap")
    endpoints = args.endpoints.split(",")

    from app.devserver import free_port, start_private_redis
    from bench.common import Figure, machine, median_spread, paired, scratch_database, stop, today, verdict, write_summary

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    sat: dict[str, list[float]] = {"bare": []} | {e: [] for e in endpoints}
    paced: dict[str, dict[str, float]] = {}
    bad = 0.0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with scratch_database(f"bench_api_{os.getpid()}") as db_url:
            os.environ.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "",
                               "RESULT_BACKEND": "", "LOG_LEVEL": "WARNING",
                               # one client saturates the API: its rate limit stays on (its
                               # Redis hit is part of every figure) but is never reached
                               "RATE_LIMIT_DEFAULT": "100000000/minute",
                               "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom")})
            (tmp / "prom").mkdir()
            from app.migrate import upgrade

            upgrade()
            from app.db import reset_engine, session_scope
            from app.services.auth import create_api_key

            with session_scope() as session:
                _, token = create_api_key(session, "bench")
            auth = f"Bearer {token}"
            bare_port, api_port = free_port(), free_port()
            procs.append(gunicorn("bench.api.bare:application", bare_port, dict(os.environ), tmp / "bare.log"))
            procs.append(gunicorn("app.api.wsgi:application", api_port, dict(os.environ), tmp / "api.log"))
            bare_url, api_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{api_port}"
            for e in endpoints:  # warm-up: every worker imports and connects
                wrk(api_url, ENDPOINTS[e][0], ENDPOINTS[e][1], auth, 1, tmp)
            wrk(bare_url, "/bare", "{}", auth, 1, tmp)
            for _ in range(args.repeat):
                sat["bare"].append(wrk(bare_url, "/bare", "{}", auth, args.seconds, tmp)["rps"])
                for e in endpoints:
                    run = wrk(api_url, ENDPOINTS[e][0], ENDPOINTS[e][1], auth, args.seconds, tmp)
                    sat[e].append(run["rps"])
                    bad += run["bad"] + run["errors"]
                print(" ".join(f"{k} {v[-1]:.0f}/s" for k, v in sat.items()), flush=True)
            for e in endpoints:
                half = statistics.median(sat[e]) / 2
                run = paced_run(api_port, ENDPOINTS[e][0], ENDPOINTS[e][1], auth, half, max(args.seconds, 5) * 1.5)
                bad += run["bad"] + run["errors"]
                paced[e] = run | {"target_rps": half}
                print(f"{e} paced at {run['rps']:.0f}/s (aim {half:.0f}/s): p50 {run['p50']:.1f} ms, "
                      f"p99 {run['p99']:.1f} ms", flush=True)
            reset_engine()
    finally:
        stop(procs)
        redis_proc.terminate()
    if bad:
        raise SystemExit(f"{bad:.0f} requests failed (non-2xx or socket errors); see {tmp}")

    b_m, b_lo, b_hi = median_spread(sat["bare"])
    lines = [
        f"Measured {today()} by `python -m bench.api{' --quick' if args.quick else ''}` on {machine()}; gunicorn "
        f"{WORKERS} sync workers with `app.api.gunicorn_conf` for both; wrk {THREADS} threads, {CONNECTIONS} "
        f"connections, {args.seconds:g} s per run, {args.repeat} alternating rounds.",
        "",
        "| measurement | median | spread (min–max) | target |",
        "|---|---|---|---|",
        f"| bare Flask endpoint (constant 202) | {b_m:,.0f} req/s | {b_lo:,.0f}–{b_hi:,.0f} | |",
    ]
    figures = []
    for e in endpoints:
        m, lo, hi = median_spread(sat[e])
        r_m, r_lo, r_hi = paired(sat[e], sat["bare"])
        p = paced[e]
        ok_rate, ok_p99 = r_m >= 0.5, p["p99"] < 50
        lines += [
            f"| `POST {ENDPOINTS[e][0]}` saturated | {m:,.0f} req/s | {lo:,.0f}–{hi:,.0f} | |",
            f"| `POST {ENDPOINTS[e][0]}` ÷ bare (paired) | **{r_m:.2f}×** | {r_lo:.2f}–{r_hi:.2f} | "
            f"≥ 0.5× ({verdict(ok_rate)}) |",
            f"| `POST {ENDPOINTS[e][0]}` at {p['rps']:,.0f} req/s (half of saturation): p50 / p99 | "
            f"{p['p50']:.1f} / **{p['p99']:.1f} ms** | | p99 < 50 ms ({verdict(ok_p99)}) |",
        ]
        figures += [
            Figure(f"API `POST {ENDPOINTS[e][0]}`: requests/s saturated", f"{m:,.0f} req/s ({lo:,.0f}–{hi:,.0f})",
                   f"bare Flask constant, same gunicorn settings: {b_m:,.0f} req/s",
                   f"{r_m:.2f}× ({r_lo:.2f}–{r_hi:.2f})", "≥ 0.5× bare", ok_rate,
                   f"wrk {CONNECTIONS} connections, {args.repeat} paired rounds of {args.seconds:g} s"),
            Figure(f"API `POST {ENDPOINTS[e][0]}`: p99 at half the saturating rate",
                   f"{p['p99']:.1f} ms (p50 {p['p50']:.1f} ms) at {p['rps']:,.0f} req/s", "", "",
                   "p99 < 50 ms", ok_p99),
        ]
    print("\n".join(lines))
    write_summary(args.summary, figures)


if __name__ == "__main__":
    main()
