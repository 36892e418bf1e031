"""Score the OCR page path on generated cards: development or held-out layout families.

Each card goes through what the ``ocr`` task does to a page, minus the database: type
from the bytes, validation, PDF rendering (``pdftoppm``) or image pages, image
preparation, Tesseract, the second look, then the parser over all pages. Its preview is
compared cell by cell with the simulation's truth.

Numeric cells (the issue's definition): batting runs, balls, 4s, 6s; bowling overs,
maidens, runs, wickets; the total's runs, wickets and overs; the extras total. Names:
every batter and bowler of the truth found (case and spacing ignored).

    python -m bench.ocr.heldout [--split heldout|dev] [--clean 3] [--degraded 3] [--pdf 1] [--save DIR] [--only NAME]

Held-out families are for reporting only: never tune anything on what this prints for them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.ocr.cards import DEV_FAMILIES, HELD_OUT_FAMILIES, CardSpec, card_set, make_card

BAT = ("runs", "balls", "fours", "sixes")
BOWL = ("overs", "maidens", "runs", "wickets")


@dataclass
class CardScore:
    cells: int = 0
    right: int = 0
    wrong: list[str] = field(default_factory=list)
    names_missing: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return self.right / self.cells if self.cells else 0.0


def _key(name: str | None) -> str:
    return "".join((name or "").split()).casefold()


def score_card(preview: dict[str, Any], match: dict[str, Any]) -> CardScore:
    result = CardScore()

    def cell(where: str, want: Any, got: Any) -> None:
        result.cells += 1
        if want == got:
            result.right += 1
        else:
            result.wrong.append(f"{where}: want {want!r} got {got!r}")

    got_innings = preview.get("innings", [])
    for i, want in enumerate(match["innings"]):
        got = next((g for g in got_innings if _key(g.get("team")) == _key(want["team"])),
                   got_innings[i] if i < len(got_innings) else {})
        for table, key, numbers in (("batting", "batter", BAT), ("bowling", "bowler", BOWL)):
            rows = {_key(r[key]): r for r in got.get(table) or []}
            for w in want[table]:
                g = rows.get(_key(w[key]))
                if g is None:
                    result.names_missing.append(f"{i + 1} {w[key]}")
                    g = {}
                for n in numbers:
                    cell(f"{i + 1} {w[key]} {n}", w[n], g.get(n))
        total, extras = got.get("total") or {}, got.get("extras") or {}
        for n in ("runs", "wickets", "overs"):
            cell(f"{i + 1} total {n}", want["total"][n], total.get(n))
        cell(f"{i + 1} extras total", want["extras"]["total"], extras.get("total"))
    return result


def ocr_file(path: Path, tmp: Path) -> tuple[dict[str, Any], float, list[Any]]:
    """The task's page path on one file: preview, seconds, page results."""
    from app.services import ocr
    from app.services.scorecard import parse_scorecard

    # Accuracy, not time, is scored here: a generous page timeout keeps a busy machine from failing a card.
    limits = ocr.OcrLimits(page_timeout=600.0)
    ocr.set_thread_limit(1)
    started = time.monotonic()
    with open(path, "rb") as f:
        content_type = ocr.detect_content_type(f.read(ocr.MAGIC_BYTES))
    if content_type == "application/pdf":
        count = ocr.pdf_page_count(path, limits)
        page = lambda n: ocr.render_pdf_page(path, n, tmp, limits)  # noqa: E731
    else:
        count, page = ocr.image_pages(path, content_type, tmp, limits)
    results = []
    for number in range(1, count + 1):
        page_path = page(number)
        try:
            results.append(ocr.ocr_page(page_path, number, limits, workdir=tmp))
        finally:
            if page_path != path:
                page_path.unlink(missing_ok=True)
    preview = parse_scorecard([r.lines for r in results])
    return preview, time.monotonic() - started, results


def run(specs: list[CardSpec], save: Path | None, verbose: bool) -> list[dict[str, Any]]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="cards-"))
    try:
        for spec in specs:
            name, data, match, about = make_card(spec)
            path = (save or tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            preview, seconds, results = ocr_file(path, tmp)
            result = score_card(preview, match)
            rows.append({**about, "card": spec.name, "cells": result.cells, "right": result.right,
                         "accuracy": result.accuracy, "names_missing": result.names_missing,
                         "inferred": sum(len(r.get("inferred", [])) for inn in preview["innings"]
                                         for r in inn["batting"] + inn["bowling"]),
                         "seconds": round(seconds, 2)})
            print(f"{spec.name:34s} {100 * result.accuracy:6.1f}%  {result.right}/{result.cells}  "
                  f"names missing {len(result.names_missing)}  {seconds:.1f}s  {about['font']} {about['dpi']}dpi "
                  f"{about['header']} {'+'.join(about['degradations'])}", flush=True)
            if verbose:
                for line in result.wrong[:25] + result.names_missing[:10]:
                    print("     ", line)
                if save:
                    (save / (spec.name + ".json")).write_text(json.dumps(
                        {"preview": preview, "text": "\n\f".join(r.text for r in results)}, indent=1))
            if not save:
                path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| cards | n | numeric cells right | worst card | names missing | inferred cells | s/card |",
             "|---|---|---|---|---|---|---|"]
    for condition in ("clean", "degraded", "pdf"):
        sel = [r for r in rows if r["condition"] == condition]
        if not sel:
            continue
        right, cells = sum(r["right"] for r in sel), sum(r["cells"] for r in sel)
        worst = min(sel, key=lambda r: r["accuracy"])
        lines.append(f"| {condition} | {len(sel)} | {right}/{cells} = **{100 * right / cells:.1f} %** | "
                     f"{100 * worst['accuracy']:.1f} % ({worst['card']}) | "
                     f"{sum(len(r['names_missing']) for r in sel)} | {sum(r['inferred'] for r in sel)} | "
                     f"{statistics.median(r['seconds'] for r in sel):.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("heldout", "dev"), default="heldout")
    parser.add_argument("--clean", type=int, default=3)
    parser.add_argument("--degraded", type=int, default=3)
    parser.add_argument("--pdf", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--only", help="cards whose name contains this")
    parser.add_argument("--save", type=Path, help="keep the cards (and with -v the previews) here")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--json", type=Path, help="write every card's figures here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_THREAD_LIMIT", "1")
    families = HELD_OUT_FAMILIES if args.split == "heldout" else DEV_FAMILIES
    specs = card_set(families, args.clean, args.degraded, args.pdf, args.first_seed)
    if args.only:
        specs = [s for s in specs if args.only in s.name]
    rows = run(specs, args.save, args.verbose)
    print("\n".join(summary(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
