"""The card read line by line into innings, then each table's columns assigned.

Lines are classified by what they start with (title, innings header, table headers,
extras, total, did not bat, fall of wickets, result) and, for table rows, by their
**shape**: label words followed by a run of numbers. A row is kept as a ``RawRow``
until its table is complete; then ``columns.assign_columns`` decides which number is
which cell, with the header when it was read and the card's arithmetic always.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.services.scorecard import columns as cols
from app.services.scorecard import totals
from app.services.scorecard.columns import Header, RawRow, TableContext
from app.services.scorecard.lines import (
    DISMISSAL_START,
    credited_to_bowler,
    fow_items,
    normalize_dismissal,
    not_out,
)
from app.services.scorecard.numbers import (
    CAPTAIN_KEEPER,
    Reading,
    Word,
    clean_name,
    is_debris,
    mean_conf,
    overs_to_balls,
)

_TITLE_RE = re.compile(r"^(?P<a>[A-Za-z][\w .&'-]*?)\s+(?:v|vs\.?|versus)\s+(?P<b>[A-Za-z][\w .&'-]*?)\s*$")
_INNINGS_RE = re.compile(r"^(?P<team>.+?)\s+(?:(?:1st|2nd|first|second)\s+)?inn(?:ing)?s\b", re.I)
_BAT_HEADER_RE = re.compile(r"^(?:batter|batsman|batsmen|batting)\b", re.I)
_BOWL_HEADER_RE = re.compile(r"^(?:bowler|bowling)\b", re.I)
_EXTRAS_RE = re.compile(r"^(?:e[xk]tras?|sundries)\b", re.I)
_TOTAL_RE = re.compile(r"^[tf][o0]ta[l1I]\b", re.I)
_DNB_RE = re.compile(r"^(?:did\s+not\s+bat|yet\s+to\s+bat)\s*[:;.]?\s*", re.I)
_FOW_RE = re.compile(r"^fall\s+of\s+wick[e]?ts?\s*[:;.]?\s*", re.I)
_RESULT_RE = re.compile(r"^result\s*[:;.]?\s*", re.I)
BAT_FIELDS = ("runs", "balls", "fours", "sixes", "strike_rate")
BOWL_FIELDS = ("overs", "maidens", "runs", "wickets", "economy")


@dataclass
class Innings:
    number: int
    team: str | None
    page: int
    batting: list[dict[str, Any]] = field(default_factory=list)
    did_not_bat: list[str] = field(default_factory=list)
    extras: dict[str, Any] | None = None
    total: dict[str, Any] | None = None
    fall_of_wickets: list[dict[str, Any]] = field(default_factory=list)
    bowling: list[dict[str, Any]] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    raw: dict[str, list[RawRow]] = field(default_factory=lambda: {"batting": [], "bowling": []})
    headers: dict[str, Header | None] = field(default_factory=lambda: {"batting": None, "bowling": None})

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "team": self.team, "page": self.page,
            "batting": self.batting, "did_not_bat": self.did_not_bat, "extras": self.extras,
            "total": self.total, "fall_of_wickets": self.fall_of_wickets, "bowling": self.bowling,
            "checks": self.checks,
        }


def _is_dismissal_word(text: str) -> bool:
    token = text.strip(".,;:")
    return token in DISMISSAL_START or token.startswith("c&")


class Reader:
    """The line-by-line pass: innings, sections, raw table rows."""

    def __init__(self) -> None:
        self.title: str | None = None
        self.teams: list[str] = []
        self.result: str | None = None
        self.innings: list[Innings] = []
        self.unparsed: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.section: str | None = None  # batting | after | bowling | fow

    def current(self, page: int) -> Innings:
        if not self.innings:
            self.innings.append(Innings(1, None, page))
        return self.innings[-1]

    def keep(self, page: int, line_no: int, text: str, reason: str) -> None:
        self.unparsed.append({"page": page, "line": line_no, "text": text, "reason": reason})

    def snap_team(self, name: str) -> str:
        name = name.strip(" :-,.")
        by_fold = {t.casefold(): t for t in self.teams}
        match = difflib.get_close_matches(name.casefold(), list(by_fold), n=1, cutoff=0.75)
        return by_fold[match[0]] if match else name

    def feed(self, page: int, line_no: int, words: Sequence[Word]) -> None:
        words = [w for w in words if w.text.strip() and not is_debris(w.text)]
        if not words:
            return
        text = " ".join(w.text for w in words).strip()
        for handler in (self._structure, self._sections, self._table_row):
            if handler(page, line_no, words, text):
                return
        self.keep(page, line_no, text, "outside any table")

    # --- headings and sections ------------------------------------------------------------------
    def _structure(self, page: int, line_no: int, words: list[Word], text: str) -> bool:
        m = _INNINGS_RE.match(text)
        if m and len(cols.split_numbers(words)[1]) < 3 and not _BAT_HEADER_RE.match(text):
            team = self.snap_team(m["team"])
            if team and team not in self.teams and len(self.teams) < 2:
                self.teams.append(team)
            current = self.innings[-1] if self.innings else None
            # A header repeated at the top of a continuation page stays with its innings.
            if current is None or current.team != team or current.raw["batting"]:
                self.innings.append(Innings(len(self.innings) + 1, team, page))
            self.section = "batting"
            return True
        for regex, table in ((_BAT_HEADER_RE, "batting"), (_BOWL_HEADER_RE, "bowling")):
            if regex.match(text) and len(cols.split_numbers(words)[1]) < 3:
                inn = self._innings_for(table, page)
                inn.headers[table] = inn.headers[table] or cols.read_header(words, table)
                self.section = table
                return True
        if self.title is None and not self.innings and (m := _TITLE_RE.match(text)):
            self.title = text
            self.teams = [m["a"].strip(), m["b"].strip()]
            return True
        if m := _RESULT_RE.match(text):
            self.result = text[m.end():].strip() or None
            self.section = None
            return True
        return False

    def _innings_for(self, table: str, page: int) -> Innings:
        """The innings a batting table belongs to: a new one when the current has finished batting."""
        inn = self.current(page)
        if table == "batting" and (inn.raw["bowling"] or (inn.total is not None and self.section != "batting")):
            inn = Innings(len(self.innings) + 1, None, page)
            self.innings.append(inn)
        return inn

    def _sections(self, page: int, line_no: int, words: list[Word], text: str) -> bool:
        if _EXTRAS_RE.match(text):
            self.current(page).extras = totals.read_extras(words, text)
            self.section = "after"
            return True
        if _TOTAL_RE.match(text):
            self.current(page).total = totals.read_total(words, text)
            self.section = "after"
            return True
        if m := _DNB_RE.match(text):
            names = [clean_name(n.split()) for n in re.split(r"[,;]", text[m.end():])]
            self.current(page).did_not_bat.extend(n for n in names if n)
            self.section = "after"
            return True
        if m := _FOW_RE.match(text):
            self._fow(page, line_no, text[m.end():])
            return True
        if self.section == "fow" and fow_items(text) and len(cols.split_numbers(words)[1]) < 3:
            self._fow(page, line_no, text)
            return True
        return False

    def _fow(self, page: int, line_no: int, text: str) -> None:
        self.section = "fow"
        items = fow_items(text)
        self.current(page).fall_of_wickets.extend(items)
        if not items and text.strip():
            self.keep(page, line_no, text, "fall of wickets not understood")

    # --- table rows ---------------------------------------------------------------------------------
    def _table_row(self, page: int, line_no: int, words: list[Word], text: str) -> bool:
        label, numbers = cols.row_words(words)
        has_dismissal = any(_is_dismissal_word(w.text) for w in label[1:])
        if len(numbers) < 3:
            return self._dismissal_line(page, words, numbers)
        if not clean_name(w.text for w in label):
            return False
        table = "batting" if self.section in (None, "batting") or has_dismissal else "bowling"
        if table == "batting" and self.section not in (None, "batting"):
            self._innings_for("batting", page)
        inn = self.current(page)
        self.section = table
        inn.raw[table].append(RawRow(label, numbers, page, line_no, mean_conf(words)))
        return True

    def _dismissal_line(self, page: int, words: list[Word], numbers: list[Word]) -> bool:
        """A dismissal printed on its own line under the batter's name."""
        if numbers or not self.innings or not _is_dismissal_word(words[0].text):
            return False
        inn = self.innings[-1]
        table = inn.raw["batting"] if self.section == "batting" else None
        if self.section == "bowling" and inn.raw["bowling"] and len(inn.raw["bowling"]) == 1 and not inn.raw["batting"]:
            # The "bowling" row was the first batter of an innings whose headings were not read.
            inn.raw["batting"], inn.raw["bowling"] = inn.raw["bowling"], []
            self.section, table = "batting", inn.raw["batting"]
        if not table or table[-1].dismissal:
            return False
        table[-1].dismissal = list(words)
        return True


def build_row(table: str, raw: RawRow, keys: list[str], texts: list[str | None], dismissal_left: float | None
              ) -> dict[str, Any] | None:
    readings = {k: cols.READERS[k](t) if t is not None else Reading(None, "") for k, t in zip(keys, texts, strict=True)}
    words = raw.label
    if table == "bowling":
        name = clean_name(w.text for w in words)
        if not name:
            return None
        row: dict[str, Any] = {"bowler": CAPTAIN_KEEPER.sub(" ", name).strip()}
        for key in BOWL_FIELDS:
            row[key] = readings[key].value if key in readings else None
        row["balls"] = overs_to_balls(row["overs"]) if isinstance(row["overs"], str) else None
    else:
        name_words, dismissal_words = split_name(words, dismissal_left)
        name = clean_name(w.text for w in name_words)
        if not name:
            return None
        dismissal = normalize_dismissal(" ".join(w.text for w in dismissal_words + raw.dismissal))
        runs_raw = readings["runs"].raw if "runs" in readings else ""
        row = {"batter": CAPTAIN_KEEPER.sub(" ", name).strip(), "dismissal": dismissal or None,
               "not_out": not_out(dismissal) if dismissal else runs_raw.rstrip().endswith("*")}
        for key in BAT_FIELDS:
            row[key] = readings[key].value if key in readings else None
    row["_readings"] = readings
    row["_conf"] = raw.conf
    row["_cell_conf"] = {k: _cell_conf(raw, t) for k, t in zip(keys, texts, strict=True)}
    return row


def _cell_conf(raw: RawRow, text: str | None) -> float | None:
    if text is None:
        return None
    confs = [w.conf for w in raw.numbers if w.conf is not None and w.conf >= 0 and w.text in text]
    return round(min(confs) / 100, 2) if confs else None


def split_name(label: list[Word], dismissal_left: float | None) -> tuple[list[Word], list[Word]]:
    """The batter's name and the dismissal: at the header's Dismissal column, or the first dismissal word."""
    by_keyword = next((i for i, w in enumerate(label[1:], start=1) if _is_dismissal_word(w.text)), None)
    if dismissal_left is not None and all(w.left is not None for w in label):
        cut = dismissal_left - 8
        name = [w for w in label if w.left < cut]  # type: ignore[operator]
        rest = [w for w in label if w.left >= cut]  # type: ignore[operator]
        if name and (rest or by_keyword is None):
            return name, rest
    if by_keyword is not None:
        return label[:by_keyword], label[by_keyword:]
    return label, []


def table_context(inn: Innings) -> TableContext:
    total, extras = inn.total or {}, inn.extras or {}
    credited = None
    if inn.batting:
        credited = sum(1 for r in inn.batting if r["dismissal"] and not not_out(r["dismissal"])
                       and credited_to_bowler(r["dismissal"]))
    return TableContext(total.get("runs"), total.get("balls"), extras, credited)
