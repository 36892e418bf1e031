"""Profile the API's gunicorn workers under load: ``py-spy`` samples every worker while
``wrk`` saturates one submit endpoint, as ``bench.api`` runs it (same gunicorn settings,
scratch database, private Redis). Writes a flame graph (SVG) and a top-N table of where
the workers' time goes, by the project's own cost centres.

    python -m bench.api.profile [--endpoint messages] [--seconds 20] [--out docs/profiles/api-messages]

``py-spy`` is a development tool (pinned in requirements.txt); on Linux it needs ptrace
permission over the workers (same user; ``kernel.yama.ptrace_scope`` 0 or 1 with the
workers as its children, which they are: it starts them through gunicorn's master).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.api.__main__ import BATCH_PATH, ENDPOINTS, MESSAGE, api_environment, free_port, gunicorn, wrk

#: Cost centres. A sample belongs to the centre matched by its deepest frame that matches
#: any (so the view's transaction is not counted as the validation that wraps it).
CENTRES: list[tuple[str, str]] = [
    ("authentication (key lookup)", r"^(_check_api_key|verify_api_key|cached_key|authenticate) "),
    ("auth failure limiter (Redis)", r"^(refuse_if_blocked|retry_after|record_failure) "),
    ("rate limit (Redis)", r"^(check_rate_limit|_hit|hit_window) "),
    ("job quota (count query)", r"^(check_job_quota|check) \(app/api/limits"),
    ("the view: durable transaction (ORM, flush, commit)", r"^(submit|submit_batch) \(app/api/|^submit_"),
    ("OpenTelemetry", r"opentelemetry"),
    ("Prometheus", r"prometheus_client"),
    ("JSON logging", r"pythonjsonlogger|^(emit|handle|callHandlers|access) "),
    ("request validation (spectree, pydantic)", r"spectree|pydantic|_check_no_nul|_check_json_body"),
]
REST = "gunicorn + Flask + werkzeug (the rest)"


def centre_of(stack: str) -> str:
    for frame in reversed(stack.split(";")):
        for name, pattern in CENTRES:
            if re.search(pattern, frame):
                return name
    return REST


def centres(raw: Path) -> list[tuple[str, float]]:
    """Share of the samples of each cost centre (from py-spy's collapsed stacks)."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        if not _busy(stack):
            continue  # the worker idling in its accept loop
        total += int(n)
        counts[centre_of(stack)] += int(n)
    return [(name, counts[name] / total if total else 0.0) for name in [*(c for c, _ in CENTRES), REST]]


def record(master: int, seconds: float, out: Path) -> None:
    """py-spy on every worker of the master at once (waits included: a sync worker's time
    on PostgreSQL and Redis round trips is its time too): a flame graph and the collapsed
    stacks."""
    from bench.common import child_pids

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in child_pids(master):
        procs.append(subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100", "--idle",
             "--format", "raw", "--output", str(out.with_suffix(f".{pid}.txt")), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in procs:
        proc.wait(timeout=seconds + 120)
    parts = sorted(out.parent.glob(out.name + ".*.txt"))
    with out.with_suffix(".txt").open("w") as merged:
        for part in parts:
            merged.write(part.read_text())
            part.unlink()
    flamegraph(out.with_suffix(".txt"), out.with_suffix(".svg"))


def flamegraph(raw: Path, svg: Path) -> None:
    """Render collapsed stacks as an SVG flame graph (py-spy's own renderer, through its
    ``--format flamegraph`` on the merged samples is not offered, so a small one here)."""
    rows: dict[tuple[str, ...], int] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if n.isdigit() and _busy(stack):
            rows[tuple(stack.split(";"))] += int(n)
    total = sum(rows.values()) or 1
    width, height = 1200.0, 16
    boxes: list[str] = []

    def draw(prefix: tuple[str, ...], x: float, depth: int) -> None:
        children: dict[str, int] = collections.Counter()
        for stack, n in rows.items():
            if len(stack) > len(prefix) and stack[:len(prefix)] == prefix:
                children[stack[len(prefix)]] += n
        for name, n in sorted(children.items()):
            w = width * n / total
            if w >= 0.5:
                label = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                hue = 20 + (hash(name) % 40)
                boxes.append(f'<g><title>{label} ({n / total:.1%})</title><rect x="{x:.1f}" y="{depth * height}" '
                             f'width="{w:.1f}" height="{height - 1}" fill="hsl({hue},80%,60%)"/>'
                             f'<text x="{x + 2:.1f}" y="{depth * height + 11}" font-size="10">'
                             f'{label[:int(w / 6)]}</text></g>')
                draw((*prefix, name), x, depth + 1)
            x += w

    draw((), 0.0, 0)
    depth = max((len(s) for s in rows), default=1)
    svg.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{(depth + 1) * height}" '
                   f'font-family="monospace">{"".join(boxes)}</svg>\n')


def _busy(stack: str) -> bool:
    """A sample of a worker handling a request (not idling in its accept loop)."""
    return "handle_request" in stack


def main() -> None:
    """Record, render, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", default="messages", choices=[*ENDPOINTS, "batch"])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--out", default="docs/profiles/api-messages", help="path without suffix: .svg, .txt")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    from bench.common import stop

    with api_environment(args.batch) as (tmp, _db_url, token):
        port = free_port()
        api = gunicorn("app.api.wsgi:application", port, dict(os.environ), tmp / "api.log")
        try:
            url, auth = f"http://127.0.0.1:{port}", f"Bearer {token}"
            path, body = (BATCH_PATH, MESSAGE) if args.endpoint == "batch" else ENDPOINTS[args.endpoint]
            size = args.batch if args.endpoint == "batch" else 0
            wrk(url, path, body, auth, 2, tmp, size=size)  # warm-up
            # wrk for the whole recording, started first; py-spy records in the meantime.
            driver = subprocess.Popen([sys.executable, "-c", (
                "import sys; from pathlib import Path; from bench.api.__main__ import wrk; "
                f"print(wrk({url!r}, {path!r}, {body!r}, {auth!r}, {args.seconds + 4}, Path({str(tmp)!r}), "
                f"size={size}))")], cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE, text=True)
            time.sleep(2)
            record(api.pid, args.seconds, out)
            print(driver.communicate(timeout=args.seconds + 120)[0].strip())
        finally:
            stop([api])
    print(f"load average {os.getloadavg()[0]:.1f}; flame graph {out.with_suffix('.svg')}")
    print(table(out.with_suffix(".txt")))


def table(raw: Path) -> str:
    """The top-N table of a recording: each cost centre's share of the busy samples."""
    rows = ["| where the workers' time goes (wall time, waits included) | share |", "|---|---|"]
    rows += [f"| {name} | {share:.0%} |" for name, share in centres(raw)]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
