"""The OCR page path against the bare ``tesseract`` CLI, page by page, and what each step costs.

For every generated card page (development families: clean, degraded and PDF pages,
``bench.ocr.cards``), alternately:

- the **baseline**: the bare CLI on the page file, ``tesseract PAGE OUT -l eng --psm 6
  --oem 3 tsv`` with ``OMP_THREAD_LIMIT=1``, exactly what the task runs without any
  preparation or second look;
- the **page path**: ``app.services.ocr.ocr_page`` on the same file — image preparation
  (every check, and the steps the page needs), Tesseract, the second look.

The ratio is taken per page (paired, same file, runs alternating so a load spike hits
both), then the median and spread per condition. Step costs come from the page path's
own timings (``PageResult.prep_seconds``); Tesseract's share is the rest.

    python -m bench.ocr.pagepath [--clean 2] [--degraded 2] [--pdf 1] [--repeat 2] [--write-docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TESSERACT_ARGS = ["-l", "eng", "--psm", "6", "--oem", "3", "tsv"]
TARGET = 1.3
STEPS = ("load", "denoise", "perspective", "lighting", "inversion", "deskew", "upscale", "binarize", "write",
         "second_look")


def page_files(clean: int, degraded: int, pdf: int, tmp: Path) -> list[tuple[str, str, Path]]:
    """(card, condition, page file) for the development cards; PDF pages rendered as the task does."""
    from app.services import ocr
    from bench.ocr.cards import DEV_FAMILIES, card_set, make_card

    limits = ocr.OcrLimits()
    out = []
    for spec in card_set(DEV_FAMILIES, clean, degraded, pdf):
        name, data, _match, _about = make_card(spec)
        path = tmp / name
        path.write_bytes(data)
        if name.endswith(".pdf"):
            for number in range(1, ocr.pdf_page_count(path, limits) + 1):
                page = ocr.render_pdf_page(path, number, tmp, limits)
                out.append((f"{spec.name} p{number}", spec.condition, page.rename(tmp / f"{spec.name}-{number}.png")))
        else:
            out.append((spec.name, spec.condition, path))
    return out


def bare(page: Path, tmp: Path) -> float:
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    started = time.perf_counter()
    subprocess.run(["tesseract", str(page), str(tmp / "cli"), *TESSERACT_ARGS], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    seconds = time.perf_counter() - started
    (tmp / "cli.tsv").unlink()
    return seconds


def page_path(page: Path, tmp: Path) -> tuple[float, dict[str, float], list[str]]:
    from app.services import ocr

    work = tmp / "work"
    work.mkdir(exist_ok=True)
    started = time.perf_counter()
    result = ocr.ocr_page(page, 1, ocr.OcrLimits(page_timeout=600.0), workdir=work)
    return time.perf_counter() - started, result.prep_seconds, result.prep_applied


def measure(pages: list[tuple[str, str, Path]], repeat: int, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    for card, condition, page in pages:
        pairs = []
        for i in range(repeat):
            if i % 2 == 0:
                cli = bare(page, tmp)
                total, steps, applied = page_path(page, tmp)
            else:
                total, steps, applied = page_path(page, tmp)
                cli = bare(page, tmp)
            pairs.append((cli, total, steps))
        cli, total, steps = min(pairs, key=lambda p: p[1] / p[0])[0:3] if repeat == 1 else pairs[-1]
        ratio = statistics.median(t / c for c, t, _s in pairs)
        rows.append({"card": card, "condition": condition, "cli": statistics.median(c for c, _t, _s in pairs),
                     "path": statistics.median(t for _c, t, _s in pairs), "ratio": ratio,
                     "steps": {k: statistics.median(s.get(k, 0.0) for _c, _t, s in pairs) for k in STEPS},
                     "applied": applied})
        print(f"{card:32s} cli {1000 * rows[-1]['cli']:6.0f} ms  path {1000 * rows[-1]['path']:6.0f} ms  "
              f"{ratio:.2f}×  {' '.join(applied)}", flush=True)
    return rows


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def _ran(step: str, row: dict[str, Any]) -> bool:
    """Whether a step did its work on a page: reading the page always; writing the
    prepared page when a preparation step applied; the others when listed."""
    if step == "load":
        return True
    if step == "write":
        return any(not a.startswith("second_look") for a in row["applied"])
    return any(a.startswith(step) for a in row["applied"])


def table(rows: list[dict[str, Any]], repeat: int) -> str:
    lines = [f"Measured by `python -m bench.ocr.pagepath` (`OMP_THREAD_LIMIT=1`, {repeat} alternating runs per "
             "page, ratio per page, median and min–max over pages):", "",
             "| pages | n | bare CLI ms (median) | page path ms (median) | page path ÷ bare CLI | target |",
             "|---|---|---|---|---|---|"]
    for condition in ("clean", "degraded", "pdf", "all"):
        sel = [r for r in rows if condition in (r["condition"], "all")]
        if not sel:
            continue
        ratios = [r["ratio"] for r in sel]
        ok = statistics.median(ratios) <= TARGET
        lines.append(f"| {condition} | {len(sel)} | {1000 * statistics.median(r['cli'] for r in sel):.0f} | "
                     f"{1000 * statistics.median(r['path'] for r in sel):.0f} | **{_spread(ratios)}** | "
                     f"≤ {TARGET}× ({'met' if ok else '**missed**'}) |")
    lines += ["", "| step | pages it ran on | cost when it ran (median ms) | check only (median ms) |",
              "|---|---|---|---|"]
    for step in STEPS:
        ran = [r["steps"][step] for r in rows if _ran(step, r)]
        idle = [r["steps"][step] for r in rows if not _ran(step, r) and step != "write"]
        lines.append(f"| {step} | {len(ran)}/{len(rows)} | "
                     f"{f'{1000 * statistics.median(ran):.0f}' if ran else '–'} | "
                     f"{f'{1000 * statistics.median(idle):.1f}' if idle else '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clean", type=int, default=2)
    parser.add_argument("--degraded", type=int, default=2)
    parser.add_argument("--pdf", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--write-docs", action="store_true", help="update the page-path table in docs/ocr.md")
    args = parser.parse_args()
    if shutil.which("tesseract") is None:
        raise SystemExit("tesseract is not installed (Debian tesseract-ocr); run scripts/bootstrap")
    from app.services import ocr

    ocr.set_thread_limit(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ocr-pages-"))
    try:
        rows = measure(page_files(args.clean, args.degraded, args.pdf, tmp), args.repeat, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows, args.repeat)
    print(text)
    if args.write_docs:
        from bench.common import replace_section

        replace_section(str(ROOT / "docs" / "ocr.md"), "bench-ocr-pages", text)


if __name__ == "__main__":
    main()
