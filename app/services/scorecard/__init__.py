"""Cricket scorecard parser: from OCR lines (words with boxes and confidences) to a
structured, cross-checked preview.

Pure logic, no I/O: the OCR service hands in the words Tesseract found, page by page,
and gets back a JSON-ready dict (the *preview*, schema in docs/ocr.md).

- ``parser``: the card read line by line (title, innings, sections); table rows are
  found by their shape (label words, then a run of numbers), not by their header;
- ``columns``: which number is which cell, from the header when it was read and from
  the card's arithmetic always (a header that was not read, or that disagrees with the
  rows, does not lose the table);
- ``totals``: extras and total lines in their usual wordings;
- ``numbers``: cells read tolerantly (OCR confusions repaired in numeric cells only);
- ``checks``: cells derived from the rest of the card, and the table of cross-checks.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from app.services.scorecard import checks
from app.services.scorecard import columns as cols
from app.services.scorecard.lines import deskew, fow_items
from app.services.scorecard.numbers import (
    Line,
    Reading,
    Word,
    clean_name,
    lines_from_text,
    overs_to_balls,
    read_decimal,
    read_int,
    read_overs,
)
from app.services.scorecard.parser import BAT_FIELDS, BOWL_FIELDS, Innings, Reader, build_row, table_context

__all__ = ["Line", "Reading", "Word", "clean_name", "deskew", "fow_items", "lines_from_text", "overs_to_balls",
           "parse_scorecard", "parse_text", "read_decimal", "read_int", "read_overs"]


def _build_table(reader: Reader, inn: Innings, table: str) -> None:
    raw = inn.raw[table]
    if not raw:
        return
    header = inn.headers[table]
    assigned = cols.assign_columns(table, raw, header, table_context(inn))
    if assigned is None:
        return
    keys, cells, proposed = assigned
    if table == "bowling":
        cells = cols.restore_overs_points(keys, cells, table_context(inn))
    dismissal_left = header.dismissal_left if header is not None else None
    rows = getattr(inn, table)
    for raw_row, texts in zip(raw, cells, strict=True):
        row = build_row(table, raw_row, keys, texts, dismissal_left)
        if row is not None:
            rows.append(row)
    if any(p != k for p, k in zip(proposed, keys, strict=True)):
        read = " ".join(p or "?" for p in proposed) if header is not None and header.keys else "not read"
        reader.warnings.append({
            "code": "columns_inferred", "innings": inn.number, "row": None,
            "message": f"{table} columns taken as {' '.join(keys)} from the card's arithmetic (header: {read})",
            "columns": keys})


def _row_confidence(row: dict[str, Any], fields: Sequence[str], warned: bool) -> float:
    readings: dict[str, Reading] = row.pop("_readings")
    inferred = row["inferred"]
    conf = row.pop("_conf")
    for name in fields:
        if name in inferred:
            conf *= 0.75
        elif row[name] is None:
            conf *= 0.5
        elif readings.get(name) is not None and readings[name].repaired:
            conf *= 0.9
    return conf * (0.7 if warned else 1.0)


def _finish_rows(inn: Innings, warned_rows: set[tuple[int, str]]) -> list[float]:
    confs = []
    for rows, key, fields in ((inn.batting, "batter", BAT_FIELDS), (inn.bowling, "bowler", BOWL_FIELDS)):
        for row in rows:
            row["inferred"] = row.pop("_inferred", [])
            cell_conf = row.pop("_cell_conf", {})
            conf = _row_confidence(row, fields, (inn.number, row[key]) in warned_rows)
            row["cell_confidence"] = {f: (0.5 if f in row["inferred"] else cell_conf.get(f)) for f in fields}
            row["confidence"] = round(conf, 2)
            confs.append(conf)
    for part in (inn.extras, inn.total):
        if part is not None:
            part.pop("_readings", None)
            conf = part.pop("_conf") * (0.9 if part.pop("_repaired", False) else 1.0)
            part["confidence"] = round(conf, 2)
            confs.append(conf)
    return confs


def _check(reader: Reader, inn: Innings) -> None:
    checks.infer(inn)
    for code, _ok, message, row, extra in checks.run_checks(inn):
        reader.warnings.append({"code": code, "message": message, "innings": inn.number, "row": row, **extra})
    for rows, key in ((inn.batting, "batter"), (inn.bowling, "bowler")):
        for table_row in rows:
            if not table_row["_inferred"]:
                continue
            row_name, cells = table_row[key], table_row["_inferred"]
            reader.warnings.append({
                "code": "inferred", "innings": inn.number, "row": row_name, "cells": list(cells),
                "message": f"{row_name}: {', '.join(cells)} unreadable or contradicted; "
                           "derived from the rest of the card"})


def finish(reader: Reader) -> dict[str, Any]:
    for inn in reader.innings:
        _build_table(reader, inn, "batting")
        _build_table(reader, inn, "bowling")
        _check(reader, inn)
    warned = {(w["innings"], w["row"]) for w in reader.warnings if w["row"] and w["code"] != "inferred"}
    confs = [c for inn in reader.innings for c in _finish_rows(inn, warned)]
    teams = reader.teams or [i.team for i in reader.innings if i.team]
    return {
        "title": reader.title, "teams": teams, "result": reader.result,
        "innings": [i.as_dict() for i in reader.innings if i.batting or i.bowling or i.total],
        "warnings": reader.warnings, "unparsed": reader.unparsed,
        "confidence": round(statistics.fmean(confs), 2) if confs else 0.0,
    }


def parse_scorecard(pages: Sequence[Sequence[Line]]) -> dict[str, Any]:
    """Parse the OCR lines of every page (in order) into a checked scorecard preview."""
    reader = Reader()
    for page_no, lines in enumerate(pages, start=1):
        for line_no, words in enumerate(deskew(lines), start=1):
            reader.feed(page_no, line_no, words)
    return finish(reader)


def parse_text(text: str) -> dict[str, Any]:
    """Parse plain text (pages separated by form feeds), without word boxes."""
    return parse_scorecard([lines_from_text(page) for page in text.split("\f")])
