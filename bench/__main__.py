"""Run every benchmark and write docs/performance.md.

    python -m bench [--quick] [--only voice,api] [--no-write] [--family-docs]
    make bench

Each benchmark runs in its own process (``python -m bench.<name> --summary FILE``): it
starts its own private redis-server, scratch PostgreSQL database and workers, measures
the project's path and its named baseline side by side, alternating, several times,
and writes its headline figures (value, baseline, paired ratio with its spread,
target, met or not). This runner collects them into the table between the
``<!-- bench:start -->`` / ``<!-- bench:end -->`` markers of docs/performance.md, with
the machine and the date; each benchmark's full table goes into the same section.
``--quick`` runs every benchmark at smoke sizes, two at a time (under 3 minutes); its
figures are for checking that everything runs, not for the record. A full run takes
one benchmark at a time.

Unattended: no prompts, every benchmark has a deadline, a failed benchmark is tried
once more and then becomes a row saying so (and the exit status is 1) instead of
stopping the others.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import Figure, machine, read_summary, replace_section, today

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"

#: name → (what it measures, full-run arguments, quick-run arguments, deadline in seconds). Quick runs
#: pass smaller sizes explicitly (a benchmark's own --quick would override them).
BENCHMARKS: dict[str, tuple[str, list[str], list[str], int]] = {
    "overhead": ("task overhead (cross-cutting)", [], ["--tasks", "300", "--repeat", "2"], 600),
    "fanout": ("bulk fan-out (cross-cutting)", [], ["--recipients", "1000", "--repeat", "2"], 900),
    "api": ("API submit endpoints (cross-cutting)", [], ["--seconds", "2", "--repeat", "2", "--endpoints", "voice"], 900),
    "beat": ("beat precision (cross-cutting)", [], ["--seconds", "10"], 600),
    "memory": ("worker memory (cross-cutting)", [], ["--tasks", "100"], 900),
    "outbox": ("outbox family", [], ["--events", "300", "--repeat", "2", "--messages", "20"], 900),
    "files": ("files family", [], ["--mib", "10", "--repeat", "2"], 900),
    "voice": ("voice family", [], ["--clips", "40", "--asr-clips", "1", "--repeat", "2"], 1200),
    "ocr": ("OCR family", [], ["--pages", "1", "--repeat", "2", "--skip-accuracy"], 1800),
    "scans": ("scans family", [], ["--repeat", "2", "--scans", "2"], 1200),
    "ledger": ("console ledger (cross-cutting)", [], ["--jobs", "100000", "--repeat", "10"], 1800),
}


def run_one(name: str, quick: bool, family_docs: bool, tmp: Path) -> tuple[list[Figure], str, float]:
    """Run one benchmark in its own process: (figures, its printed table, seconds)."""
    _, full_args, quick_args, deadline = BENCHMARKS[name]
    summary = tmp / f"{name}.json"
    argv = [sys.executable, "-m", f"bench.{name}", *(quick_args if quick else full_args), "--summary", str(summary)]
    if family_docs and not quick and name in ("outbox", "files", "voice", "ocr", "scans"):
        argv.append("--write-docs")
    log = tmp / f"{name}.log"
    if log.exists():  # the second try keeps the first one's log
        log = tmp / f"{name}.retry.log"
    start = time.monotonic()
    print(f"[bench] {name}: {' '.join(argv[1:])}", flush=True)
    try:
        with log.open("w") as out:
            proc = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=deadline)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = -1
    elapsed = time.monotonic() - start
    text = log.read_text(errors="replace")
    if code == 0 and summary.exists():
        print(f"[bench] {name}: done in {elapsed:.0f} s", flush=True)
        return read_summary(str(summary)), _table(text), elapsed
    reason = "timed out" if code == -1 else f"exited {code}"
    tail = " ".join(text.strip().splitlines()[-1:])[:300]
    print(f"[bench] {name}: FAILED ({reason}) after {elapsed:.0f} s; log {log}", flush=True)
    return [Figure(f"{BENCHMARKS[name][0]}: benchmark did not finish", reason, "", "", "", False, tail)], "", elapsed


def _table(output: str) -> str:
    """The benchmark's own report: from its 'Measured …' line to the end of its output."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Measured "):
            return "\n".join(lines[i:]).strip()
    return ""


def render(results: dict[str, tuple[list[Figure], str, float]], quick: bool, total: float) -> str:
    """The generated section of docs/performance.md."""
    met = sum(1 for figs, _, _ in results.values() for f in figs if f.met is True)
    missed = [f for figs, _, _ in results.values() for f in figs if f.met is False]
    lines = [
        f"Measured {today()} by `python -m bench{' --quick' if quick else ''}` on {machine()}, "
        f"in {total / 60:.1f} min. Every ratio is a paired median: the project's path and its baseline run "
        "alternately in the same run, and the ratio of each pair is taken before the median, so machine noise "
        "that hits both cancels out; the spread is the smallest and largest paired ratio."
        + (" **Quick run: smoke sizes, not for the record.**" if quick else ""),
        "",
        f"**{met} targets met, {len(missed)} missed.**",
        "",
        "| figure | value | baseline | ratio (spread) | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for figs, _, _ in results.values():
        for f in figs:
            mark = "—" if f.met is None else ("met" if f.met else "**missed**")
            value = f.value + (f" <br><sub>{f.note}</sub>" if f.note else "")
            lines.append(f"| {f.figure} | {value} | {f.baseline} | {f.ratio} | {f.target} | {mark} |")
    lines += ["", "### Each benchmark's own table", ""]
    for name, (_, table, elapsed) in results.items():
        lines += [f"#### {name} ({BENCHMARKS[name][0]}, {elapsed:.0f} s)", "", table or "(no table: see above)", ""]
    return "\n".join(lines)


def main() -> None:
    """Run the selected benchmarks (one at a time unless ``--jobs``) and write docs/performance.md."""
    parser = argparse.ArgumentParser(description="Run every benchmark; write docs/performance.md.")
    parser.add_argument("--quick", action="store_true", help="smoke sizes, a few minutes in all")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing the doc")
    parser.add_argument("--jobs", type=int, default=0,
                        help="benchmarks run at the same time (default: 1; 2 with --quick, whose smoke figures "
                        "are not for the record: on 2 cores the two lanes slow each other down)")
    parser.add_argument("--family-docs", action="store_true",
                        help="full runs also refresh each family's own table (docs/<family>.md)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    start = time.monotonic()

    def run_with_retry(name: str) -> tuple[list[Figure], str, float]:
        result = run_one(name, args.quick, args.family_docs, tmp)
        if result[0] and result[0][0].figure.endswith("did not finish"):
            # Once more: on a shared machine a private server can be killed under a run.
            print(f"[bench] {name}: trying once more", flush=True)
            result = run_one(name, args.quick, args.family_docs, tmp)
        return result

    jobs = args.jobs or (2 if args.quick else 1)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        outcomes = dict(zip(names, pool.map(run_with_retry, names)))
    results = {name: outcomes[name] for name in names}
    section = render(results, args.quick, time.monotonic() - start)
    if args.no_write:
        print(section)
    else:
        replace_section(str(DOC), "bench", section)
        print(f"[bench] wrote {DOC.relative_to(ROOT)} ({time.monotonic() - start:.0f} s); logs in {tmp}")
    failed = [f for figs, _, _ in results.values() for f in figs if f.figure.endswith("did not finish")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
