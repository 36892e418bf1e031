"""OCR benchmark: pages per second through the task against the bare ``tesseract`` CLI,
one and two worker processes, and the parser's accuracy on the fixtures.

1. **Per-page overhead.** The same N rendered scorecard pages (PNG, 300 dpi) go
   (a) through the whole path — API upload + complete, outbox relay, a real OCR worker
   (prefork, one process), download, validation, Tesseract, parsing, status ``ready`` —
   timed from the first upload to the last ``ready``; and (b) to the **baseline**, the
   bare CLI run one page after another with the same options
   (``tesseract PAGE OUT -l eng --psm 6 --oem 3 tsv``, ``OMP_THREAD_LIMIT=1``).
   Runs alternate, ``--repeat`` pairs; ratio per pair, median and spread.
   Target: the task (image preparation and second look included) takes at most
   1.3× the bare CLI per page. The same comparison page by page on generated cards
   (clean, degraded, PDF pages, so preparation and second look actually run) comes
   from ``bench.ocr.pagepath``, with each step's cost (``--cards``).
2. **Two worker processes.** The same, with the OCR worker at ``-c 2`` (and the bare CLI
   two at a time, for reference). Target: ≥ 1.7× the pages/s of one process.
3. **Accuracy.** Every fixture of ``tests/ocr_fixtures.py`` through the task path, its
   preview scored cell by cell against the ground truth.

Everything runs on loopback: a private redis-server, a scratch PostgreSQL database,
local storage in a temp dir.

    python -m bench.ocr [--quick] [--pages 12] [--repeat 3] [--write-docs]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESSERACT_ARGS = ["-l", "eng", "--psm", "6", "--oem", "3", "tsv"]


def _configure(db_url: str, redis_url: str, tmp: Path) -> None:
    os.environ.update({
        "DATABASE_URL": db_url, "REDIS_URL": redis_url, "BROKER_URL": "", "RESULT_BACKEND": "",
        "STORAGE_BACKEND": "local", "STORAGE_LOCAL_ROOT": str(tmp / "storage"), "OCR_TMP_DIR": str(tmp / "ocr-tmp"),
        "LOG_LEVEL": "WARNING", "SECRET_KEY": "bench", "OMP_THREAD_LIMIT": "1",
    })


def render_pages(count: int, out: Path) -> list[Path]:
    """``count`` different full scorecards (two innings each), one PNG page apiece."""
    from tests.ocr_fixtures import FixtureSpec, build

    fonts = [("dejavu-sans", 36), ("liberation-sans", 38), ("liberation-serif", 42), ("dejavu-serif", 36)]
    paths = []
    for i in range(count):
        font, size = fonts[i % len(fonts)]
        paths.append(build(FixtureSpec(f"bench-page-{i:02d}", 100 + i, font, size, "png"), out))
    return paths


def bare_cli(pages: list[Path], parallel: int, tmp: Path) -> float:
    """Seconds for the bare CLI to OCR every page, ``parallel`` at a time."""
    env = dict(os.environ, OMP_THREAD_LIMIT="1")

    def one(item: tuple[int, Path]) -> None:
        index, page = item
        out = tmp / f"cli-{index}"
        subprocess.run(["tesseract", str(page), str(out), *TESSERACT_ARGS], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        Path(f"{out}.tsv").unlink()

    start = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, enumerate(pages)))
    return time.perf_counter() - start


class Stack:
    """The relay worker, an OCR worker, and the API in this process (Flask test client)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ocr: subprocess.Popen[bytes] | None = None
        from app.api import create_app
        from app.db import session_scope
        from app.services.auth import create_api_key

        self.client = create_app().test_client()
        with session_scope() as session:
            _, token = create_api_key(session, "bench")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.relay = self._worker(["outbox"], "threads", 2, "bench-relay")

    def _worker(self, queues: list[str], pool: str, concurrency: int, name: str) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the log's descriptor; ours is closed once it has started.
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "app", "worker", "-Q", ",".join(queues), "-P", pool,
                 "-c", str(concurrency), "-n", f"{name}@bench", "--loglevel", "WARNING", "--without-mingle",
                 "--without-gossip"], cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        from app.celery_app import celery_app

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if celery_app.control.ping(destination=[f"{name}@bench"], timeout=0.5):
                return proc
        raise RuntimeError(f"worker {name} did not start; see {self.tmp / (name + '.log')}")

    def ocr_worker(self, concurrency: int) -> None:
        from bench.common import stop

        if self.ocr is not None:
            stop([self.ocr])
        self.ocr = self._worker(["ocr"], "prefork", concurrency, f"bench-ocr-{concurrency}")
        # Warm every pool process (imports, libmagic) before anything is timed.
        self.run([self.tmp / "warm.png"] * concurrency)

    def submit(self, data: bytes, name: str) -> str:
        resp = self.client.post("/api/uploads", headers=self.headers, content_type="multipart/form-data",
                                data={"file": (io.BytesIO(data), name)})
        assert resp.status_code == 201, resp.get_json()
        upload_id = resp.get_json()["id"]
        assert self.client.post(f"/api/uploads/{upload_id}/complete", headers=self.headers).status_code == 202
        return upload_id

    def run(self, pages: list[Path]) -> tuple[float, list[str]]:
        """Seconds from the first upload to the last ``ready``; and the upload ids."""
        from sqlalchemy import func, select

        from app.db import session_scope
        from app.models.ocr import Upload

        blobs = [p.read_bytes() for p in pages]
        start = time.perf_counter()
        ids = [self.submit(blob, page.name) for blob, page in zip(blobs, pages, strict=True)]
        deadline = time.monotonic() + 60 + 20 * len(pages)
        while time.monotonic() < deadline:
            with session_scope() as session:
                done = session.scalar(select(func.count()).select_from(Upload)
                                      .where(Upload.id.in_(ids), Upload.status.in_(("ready", "failed"))))
            if done == len(ids):
                break
            time.sleep(0.02)
        else:
            raise RuntimeError("uploads did not finish in time")
        elapsed = time.perf_counter() - start
        with session_scope() as session:
            failed = session.scalars(select(Upload.error).where(Upload.id.in_(ids), Upload.status == "failed")).all()
        if failed:
            raise RuntimeError(f"{len(failed)} uploads failed: {failed[:3]}")
        return elapsed, ids

    def previews(self, ids: list[str]) -> list[dict[str, Any]]:
        return [self.client.get(f"/api/uploads/{i}/status", headers=self.headers).get_json() for i in ids]

    def close(self) -> None:
        from bench.common import stop

        stop(self.procs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--skip-accuracy", action="store_true", help="timing only (python -m bench --quick)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write-docs", action="store_true", help="update the tables in docs/ocr.md")
    parser.add_argument("--summary", help="write the headline figures as JSON here (python -m bench)")
    parser.add_argument("--cards", type=int, default=1,
                        help="generated cards per development family and condition for the page-path table "
                             "(bench.ocr.pagepath); 0 skips it")
    args = parser.parse_args()
    if args.quick:
        args.pages, args.repeat = 4, 2
    if shutil.which("tesseract") is None:
        raise SystemExit("tesseract is not installed (Debian tesseract-ocr); run scripts/bootstrap")

    from app.devserver import start_private_redis
    from bench.common import Figure, machine, median_spread, replace_section, scratch_database, today, write_summary

    redis_proc, redis_url = start_private_redis()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ocr-"))
    stack: Stack | None = None
    try:
        with scratch_database(f"bench_ocr_{os.getpid()}") as db_url:
            _configure(db_url, redis_url, tmp)
            from app.migrate import upgrade

            upgrade()
            pages = render_pages(args.pages, tmp / "pages")
            shutil.copy(pages[0], tmp / "warm.png")
            stack = Stack(tmp)

            results: dict[str, list[float]] = {"cli1": [], "task1": [], "cli2": [], "task2": []}
            for concurrency in (1, 2):
                stack.ocr_worker(concurrency)
                for _ in range(args.repeat):
                    results[f"cli{concurrency}"].append(bare_cli(pages, concurrency, tmp))
                    results[f"task{concurrency}"].append(stack.run(pages)[0])
                    print(f"c={concurrency}: cli {results[f'cli{concurrency}'][-1]:.2f}s "
                          f"task {results[f'task{concurrency}'][-1]:.2f}s", flush=True)

            # Accuracy: every fixture through the task path (worker still at -c 2).
            from tests.ocr_fixtures import FIXTURES, build, score, truth

            fixture_dir = tmp / "fixtures"
            fixtures = {} if args.skip_accuracy else FIXTURES
            files = {name: build(spec, fixture_dir) for name, spec in fixtures.items()}
            _, ids = stack.run(list(files.values())) if files else (0.0, [])
            accuracy = []
            for (name, spec), body in zip(fixtures.items(), stack.previews(ids), strict=True):
                result = score(body["parsed_preview"], truth(spec))
                inferred = sum(len(r.get("inferred", [])) for inn in body["parsed_preview"]["innings"]
                               for r in inn["batting"] + inn["bowling"])
                accuracy.append((name, spec, result, inferred, len(body["parsed_preview"]["warnings"])))
            leftovers = list((tmp / "ocr-tmp").iterdir()) if (tmp / "ocr-tmp").exists() else []
            if leftovers:
                raise RuntimeError(f"OCR temp dirs left behind: {leftovers}")
            stack.close()
            stack = None
            from app.db import reset_engine

            reset_engine()
    finally:
        if stack is not None:
            stack.close()
        redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    n = args.pages
    rate = {k: [n / s for s in v] for k, v in results.items()}
    overhead = [t / c for t, c in zip(results["task1"], results["cli1"], strict=True)]
    scaling = [t1 / t2 for t1, t2 in zip(results["task1"], results["task2"], strict=True)]
    cli_scaling = [c1 / c2 for c1, c2 in zip(results["cli1"], results["cli2"], strict=True)]
    o_m, o_lo, o_hi = median_spread(overhead)
    s_m, s_lo, s_hi = median_spread(scaling)
    cs_m, cs_lo, cs_hi = median_spread(cli_scaling)
    per_page = {k: median_spread([s / n * 1000 for s in v]) for k, v in results.items()}

    def fmt_rate(key: str) -> str:
        m, lo, hi = median_spread(rate[key])
        return f"{m:.2f} pages/s | {lo:.2f}–{hi:.2f}"

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        f"Measured {today()} by `python -m bench.ocr{' --quick' if args.quick else ''}` on {machine()}; "
        f"{n} different full scorecard pages (PNG, 2480 px wide, two innings each), {args.repeat} alternating runs "
        "per row, median and spread (min–max). `tesseract` "
        + subprocess.run(["tesseract", "--version"], capture_output=True, text=True, timeout=30)
        .stdout.split("\n")[0].split()[-1] + ", `OMP_THREAD_LIMIT=1` everywhere.",
        "",
        "| measurement | median | spread | per page (median) | target |",
        "|---|---|---|---|---|",
        f"| baseline: bare `tesseract` CLI, one at a time | {fmt_rate('cli1')} | {per_page['cli1'][0]:.0f} ms | |",
        f"| task path, 1 worker process (API → `ready`) | {fmt_rate('task1')} | {per_page['task1'][0]:.0f} ms | |",
        f"| task time ÷ bare CLI time, 1 process (paired) | **{o_m:.3f}×** | {o_lo:.3f}–{o_hi:.3f} | "
        f"{per_page['task1'][0] - per_page['cli1'][0]:+.0f} ms overhead | ≤ 1.3× ({verdict(o_m <= 1.3)}) |",
        f"| bare CLI, two at a time (reference) | {fmt_rate('cli2')} | {per_page['cli2'][0]:.0f} ms | |",
        f"| task path, 2 worker processes | {fmt_rate('task2')} | {per_page['task2'][0]:.0f} ms | |",
        f"| 2 processes ÷ 1 process, pages/s (paired) | **{s_m:.2f}×** | {s_lo:.2f}–{s_hi:.2f} | | "
        f"≥ 1.7× ({verdict(s_m >= 1.7)}) |",
        f"| bare CLI two at a time ÷ one at a time (reference) | {cs_m:.2f}× | {cs_lo:.2f}–{cs_hi:.2f} | | |",
        "",
        "Accuracy through the task path (numeric cells exactly right; names: every batter and bowler of the "
        "truth found by exact name):",
        "",
        "| fixture | kind | font, size, format | numeric cells right | names missing | inferred cells | warnings |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, spec, result, inferred, warnings in accuracy:
        missing = result.missing_batters + result.missing_bowlers
        lines.append(
            f"| {name} | {spec.kind}{f' {spec.rotate:g}°' if spec.rotate else ''} | {spec.font} {spec.size} px, "
            f"{spec.fmt.upper()}{f', {len(spec.pages)} pages' if len(spec.pages) > 1 else ''} | "
            f"{result.right}/{result.cells} = **{100 * result.accuracy:.1f} %** | "
            f"{', '.join(missing) if missing else 'none'} | {inferred} | {warnings} |"
        )
    if args.cards:
        from bench.ocr import pagepath

        page_tmp = Path(tempfile.mkdtemp(prefix="bench-ocr-pages-"))
        try:
            page_rows = pagepath.measure(pagepath.page_files(args.cards, args.cards, args.cards, page_tmp),
                                         args.repeat, page_tmp)
        finally:
            shutil.rmtree(page_tmp, ignore_errors=True)
        lines += ["", "The page path (preparation, Tesseract, second look: `ocr.ocr_page`) against the bare CLI on "
                  "the same generated card page, paired, with what each step costs:", "",
                  pagepath.table(page_rows, args.repeat)]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        replace_section(str(ROOT / "docs" / "ocr.md"), "bench-ocr", table)
    write_summary(args.summary, [
        Figure("OCR: task path per page, 1 worker process", f"{per_page['task1'][0]:.0f} ms/page",
               f"bare `tesseract` CLI: {per_page['cli1'][0]:.0f} ms/page", f"{o_m:.2f}× ({o_lo:.2f}–{o_hi:.2f})",
               "≤ 1.3× bare", o_m <= 1.3, f"{n} pages × {args.repeat} paired runs"),
        Figure("OCR: 2 worker processes vs 1, pages/s", f"{s_m:.2f}× ({s_lo:.2f}–{s_hi:.2f})",
               f"bare CLI two at a time vs one: {cs_m:.2f}×", "", "≥ 1.7×", s_m >= 1.7,
               "needs 2 idle cores: the bare CLI reference shows what the machine allowed"),
    ])


if __name__ == "__main__":
    main()
