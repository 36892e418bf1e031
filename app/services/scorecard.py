"""Cricket scorecard parser: from OCR lines (words with boxes and confidences) to a
structured, cross-checked preview.

Pure logic, no I/O: the OCR service hands in the words Tesseract found, page by page,
and gets back a JSON-ready dict (the *preview*, schema in docs/ocr.md):

- teams and result; per innings a batting table (batter, dismissal, runs, balls, 4s,
  6s, strike rate), extras with their breakdown, the total (runs, wickets, overs), the
  fall of wickets, and a bowling table (bowler, overs, maidens, runs, wickets, economy);
- numbers are read tolerantly: common OCR confusions (O/0, l/1/I/|, S/5, Z/2, A/4, B/8)
  and stray punctuation (``0)``, ``135:29``, ``'12``) are repaired in numeric cells only;
- where the words carry boxes, cells are assigned to the header's columns by position
  (after undoing page skew), so a garbled cell cannot shift its neighbours;
- the card is cross-checked (batting runs + extras vs total, extras breakdown, overs
  notation, bowlers' runs, overs and wickets vs the innings, wickets vs dismissals and
  fall of wickets, strike rates and economies recomputed); a check that fails becomes
  a warning, and a cell that was unreadable, or misread in a way its row's own check
  exposes, is derived from the others when exactly one value fits (marked ``inferred``);
- every row carries a confidence; lines that fit nowhere are kept under ``unparsed``.
"""

from __future__ import annotations

import difflib
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

# --- input ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """One OCR word; position and confidence are optional (plain text has neither)."""

    text: str
    left: int | None = None
    top: int | None = None
    width: int | None = None
    height: int | None = None
    conf: float | None = None  # 0–100, as Tesseract reports it

    @property
    def right(self) -> int | None:
        return None if self.left is None or self.width is None else self.left + self.width

    @property
    def center_y(self) -> float | None:
        return None if self.top is None or self.height is None else self.top + self.height / 2


Line = Sequence[Word]


def lines_from_text(text: str) -> list[list[Word]]:
    """Plain text (no boxes) as parser input: one list of words per line."""
    return [[Word(t) for t in line.split()] for line in text.splitlines()]


# --- reading numbers --------------------------------------------------------------------------

#: Characters OCR puts in place of digits, and the digit each stands for.
DIGIT_CONFUSIONS = {
    "O": "0", "o": "0", "D": "0", "Q": "0",
    "l": "1", "I": "1", "i": "1", "|": "1", "!": "1", "]": "1",
    "S": "5", "s": "5", "$": "5",
    "Z": "2", "z": "2",
    "A": "4",
    "B": "8",
    "G": "6", "b": "6",
    "T": "7", "t": "7",
    "g": "9", "q": "9",
}
_STRAY = "()[]{}'\"`´‘’“”,;:*~_^-–—."
_INT_RE = re.compile(r"^\d{1,4}$")
_DEC_RE = re.compile(r"^\d{1,4}(?:\.\d{1,3})?$")
_OVERS_RE = re.compile(r"^\d{1,3}(?:\.\d)?$")


@dataclass
class Reading:
    """A number read from a cell: its value, whether OCR damage was repaired, and the raw text."""

    value: float | int | str | None
    raw: str
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return self.value is not None


def _clean_numeric(raw: str) -> tuple[str, bool]:
    """Strip stray punctuation, unify the decimal mark, map confusable letters to digits."""
    text = raw.strip()
    text = text.rstrip("*+†")  # not-out marker / keeper and captain marks
    core = text.strip(_STRAY)
    changed = core != text
    # A decimal written with a comma or a colon ("135,29", "135:29").
    core2 = re.sub(r"(?<=\d)[,:;](?=\d)", ".", core)
    changed |= core2 != core
    mapped = "".join(DIGIT_CONFUSIONS.get(ch, ch) for ch in core2)
    changed |= mapped != core2
    if not mapped and text and set(text) <= set("()[]{}"):
        # A lone narrow zero comes out of Tesseract as ")" or "()".
        return "0", True
    if mapped in ("e", "c", "C") and set(text) & set("()"):
        # ... or as "(e)" / "c)": a round letter in brackets.
        return "0", True
    return mapped, changed


def read_int(raw: str) -> Reading:
    """An integer cell (runs, balls, 4s, 6s, maidens, wickets)."""
    text, repaired = _clean_numeric(raw)
    if text.endswith(".") or text.startswith("."):
        text, repaired = text.strip("."), True
    if _INT_RE.match(text):
        return Reading(int(text), raw, repaired)
    return Reading(None, raw, repaired)


def read_decimal(raw: str) -> Reading:
    """A decimal cell (strike rate, economy)."""
    text, repaired = _clean_numeric(raw)
    if _DEC_RE.match(text):
        return Reading(float(text), raw, repaired)
    return Reading(None, raw, repaired)


def read_overs(raw: str) -> Reading:
    """An overs cell in cricket notation (``19.3`` = 19 overs and 3 balls); kept as text."""
    text, repaired = _clean_numeric(raw)
    if text.endswith(".0"):
        text = text[:-2]
    if _OVERS_RE.match(text):
        return Reading(text, raw, repaired)
    return Reading(None, raw, repaired)


def overs_to_balls(overs: str | None) -> int | None:
    """Balls in an overs figure; None when the notation is impossible (``4.7``)."""
    if overs is None:
        return None
    whole, _, part = overs.partition(".")
    balls = int(part) if part else 0
    if balls > 5:
        return None
    return int(whole) * 6 + balls


def balls_to_overs(balls: int) -> str:
    return f"{balls // 6}" if balls % 6 == 0 else f"{balls // 6}.{balls % 6}"


def round2(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _decimals(reading: Reading | None) -> int:
    """Decimals a rate was printed with (2 when unknown)."""
    if reading is None or not reading.raw:
        return 2
    return len(_clean_numeric(reading.raw)[0].partition(".")[2])


def printed_matches(printed: float, computed: float, decimals: int = 2) -> bool:
    """Whether a printed rate is the computed one rounded (or truncated) to its decimals."""
    step = 10.0 ** -decimals
    return abs(printed - computed) <= step / 2 + 1e-9 or (printed - 1e-9 <= computed < printed + step)


# --- names ------------------------------------------------------------------------------------
_NAME_MAP = str.maketrans({"|": "I", "!": "I", "0": "O", "1": "I", "5": "S", "8": "B"})


def clean_name(words: Iterable[str]) -> str:
    """A person's name with OCR debris removed: ``| Shah`` → ``I Shah``, ``Z, Malik`` → ``Z Malik``."""
    out = []
    for word in words:
        word = word.strip(_STRAY.replace("-", "").replace("'", "") + "*†")
        if not word:
            continue
        if not any(ch.isalpha() for ch in word) and len(word) > 1:
            continue
        word = word.translate(_NAME_MAP) if not word.isdigit() or len(word) == 1 else word
        if len(word) == 1 and word.islower():
            word = word.upper()  # an initial
        out.append(word)
    return " ".join(out).strip()


_CAPTAIN_KEEPER = re.compile(r"\s*(\((?:c|wk|c\s*&\s*wk|capt)\)|†|\*)\s*", re.I)


# --- line classification -----------------------------------------------------------------------
_TITLE_RE = re.compile(r"^(?P<a>[A-Za-z][\w .&'-]*?)\s+(?:v|vs\.?|versus)\s+(?P<b>[A-Za-z][\w .&'-]*?)\s*$")
_INNINGS_RE = re.compile(r"^(?P<team>.+?)\s+(?:(?:1st|2nd|first|second)\s+)?inn(?:ing)?s\b", re.I)
_BAT_HEADER_RE = re.compile(r"^(?:batter|batsman|batsmen|batting)\b", re.I)
_BOWL_HEADER_RE = re.compile(r"^(?:bowler|bowling)\b", re.I)
_EXTRAS_RE = re.compile(r"^e[xk]tras?\b", re.I)
_TOTAL_RE = re.compile(r"^t[o0]ta[l1I]\b", re.I)
_DNB_RE = re.compile(r"^(?:did\s+not\s+bat|yet\s+to\s+bat)\s*[:;.]?\s*", re.I)
_FOW_RE = re.compile(r"^fall\s+of\s+wick[e]?ts?\s*[:;.]?\s*", re.I)
_RESULT_RE = re.compile(r"^result\s*[:;.]?\s*", re.I)
#: The start of one fall-of-wickets item: ``3-100`` (wicket-score), OCR-damaged digits allowed.
_FOW_PAIR_RE = re.compile(r"(?<![\w.])(?P<w>[0-9OolI|]{1,2})\s*[-–—~]\s*(?P<s>[0-9OolI|SZ]{1,3})(?![\w])")


def fow_items(text: str) -> list[dict[str, Any]]:
    """Fall-of-wickets items (``1-23 (J Smith, 4.2 ov), 2-45 …``) found in one line."""
    starts = []
    for m in _FOW_PAIR_RE.finditer(text):
        wicket, score = read_int(m["w"]), read_int(m["s"])
        if wicket.ok and score.ok:
            starts.append((m, wicket.value, score.value))
    items = []
    for i, (m, wicket, score) in enumerate(starts):
        end = starts[i + 1][0].start() if i + 1 < len(starts) else len(text)
        inside = text[m.end():end].strip().strip(",;").strip().strip("()").strip()
        batter, over = None, None
        if inside:
            name_part, sep, over_part = inside.rpartition(",")
            if not sep:
                name_part, over_part = inside, ""
            over_text = re.sub(r"\s*ov(?:ers?)?\.?\s*$", "", over_part.strip(), flags=re.I)
            over = read_overs(over_text).value if over_text else None
            batter = clean_name(name_part.split()) or None
        items.append({"wicket": wicket, "score": score, "batter": batter, "over": over})
    return items


#: Words that start a dismissal (lower case as printed); OCR variants of lbw included.
DISMISSAL_START = {"c", "b", "lbw", "Ibw", "ibw", "1bw", "|bw", "low", "run", "st", "not", "retired", "retd",
                   "hit", "handled", "obstructing", "timed", "absent", "c&b", "ct", "hw", "sub"}
BATTING_COLUMNS = {"r": "runs", "b": "balls", "m": "minutes", "4s": "fours", "6s": "sixes", "sr": "strike_rate"}
BOWLING_COLUMNS = {"o": "overs", "m": "maidens", "r": "runs", "w": "wickets", "econ": "economy",
                   "0s": "dots", "4s": "fours", "6s": "sixes", "wd": "wides", "nb": "no_balls"}
BATTING_READERS = {"runs": read_int, "balls": read_int, "minutes": read_int, "fours": read_int, "sixes": read_int,
                   "strike_rate": read_decimal}
BOWLING_READERS = {"overs": read_overs, "maidens": read_int, "runs": read_int, "wickets": read_int,
                   "economy": read_decimal, "dots": read_int, "fours": read_int, "sixes": read_int,
                   "wides": read_int, "no_balls": read_int}
_HEADER_ALIASES = {
    "as": "4s", "4's": "4s", "6's": "6s", "fours": "4s", "sixes": "6s", "s/r": "sr", "s.r.": "sr",
    "oo": "o", "o0": "o", "0": "o", "overs": "o", "ww": "w", "www": "w", "eco": "econ", "er": "econ",
    "econ.": "econ", "economy": "econ", "runs": "r", "balls": "b", "mins": "m", "dots": "0s",
}


@dataclass
class Column:
    key: str
    left: float
    right: float


@dataclass
class Table:
    """The columns of a batting or bowling header, when the words carry boxes."""

    columns: list[Column]
    dismissal_left: float | None = None

    def numeric_start(self) -> float:
        return min(c.left for c in self.columns)


# --- output ------------------------------------------------------------------------------------


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

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number, "team": self.team, "page": self.page,
            "batting": self.batting, "did_not_bat": self.did_not_bat, "extras": self.extras,
            "total": self.total, "fall_of_wickets": self.fall_of_wickets, "bowling": self.bowling,
            "checks": self.checks,
        }


class _Parser:
    def __init__(self) -> None:
        self.title: str | None = None
        self.teams: list[str] = []
        self.result: str | None = None
        self.innings: list[Innings] = []
        self.unparsed: list[dict[str, Any]] = []
        self.warnings: list[dict[str, Any]] = []
        self.section: str | None = None
        self.table: Table | None = None

    # --- bookkeeping ---------------------------------------------------------------
    def _current(self, page: int) -> Innings:
        if not self.innings:
            self.innings.append(Innings(1, None, page))
        return self.innings[-1]

    def _warn(self, code: str, message: str, innings: Innings | None = None, row: str | None = None,
              **extra: Any) -> None:
        self.warnings.append({"code": code, "message": message,
                              "innings": innings.number if innings else None, "row": row, **extra})

    def _keep(self, page: int, line_no: int, text: str, reason: str) -> None:
        self.unparsed.append({"page": page, "line": line_no, "text": text, "reason": reason})

    def _snap_team(self, name: str) -> str:
        name = name.strip(" :-,.")
        if self.teams:
            match = difflib.get_close_matches(name, self.teams, n=1, cutoff=0.75)
            if match:
                return match[0]
        return name

    # --- lines -----------------------------------------------------------------------------
    def feed(self, page: int, line_no: int, words: Sequence[Word]) -> None:
        words = [w for w in words if w.text.strip()]
        if not words:
            return
        text = " ".join(w.text for w in words).strip()
        if _INNINGS_RE.match(text) and not self._looks_numeric_row(words):
            team = self._snap_team(_INNINGS_RE.match(text)["team"])  # type: ignore[index]
            if team and team not in self.teams and len(self.teams) < 2:
                self.teams.append(team)
            # A header repeated at the top of a continuation page stays with its innings.
            current = self.innings[-1] if self.innings else None
            if current is None or current.team != team or current.batting:
                self.innings.append(Innings(len(self.innings) + 1, team, page))
            self.section, self.table = None, None
            return
        if _BAT_HEADER_RE.match(text):
            self.section = "batting"
            self.table = self._header_table(words, BATTING_COLUMNS, dismissal=True)
            self._current(page)
            return
        if _BOWL_HEADER_RE.match(text):
            self.section = "bowling"
            self.table = self._header_table(words, BOWLING_COLUMNS, dismissal=False)
            self._current(page)
            return
        if _EXTRAS_RE.match(text):
            self._extras(self._current(page), words, text)
            return
        if _TOTAL_RE.match(text):
            self._total(self._current(page), words, text)
            self.section = None
            return
        if m := _DNB_RE.match(text):
            names = [clean_name(n.split()) for n in re.split(r"[,;]", text[m.end():])]
            self._current(page).did_not_bat.extend(n for n in names if n)
            return
        if m := _FOW_RE.match(text):
            self.section = "fow"
            self._fow(self._current(page), text[m.end():], page, line_no)
            return
        if m := _RESULT_RE.match(text):
            self.result = text[m.end():].strip() or None
            self.section = None
            return
        if self.title is None and not self.innings and (m := _TITLE_RE.match(text)):
            self.title = text
            self.teams = [m["a"].strip(), m["b"].strip()]
            return
        if self.section == "fow" and fow_items(text):
            self._fow(self._current(page), text, page, line_no)
            return
        if self.section == "batting":
            if self._batting_row(self._current(page), words):
                return
            self._keep(page, line_no, text, "not a batting row")
            return
        if self.section == "bowling":
            if self._bowling_row(self._current(page), words):
                return
            self._keep(page, line_no, text, "not a bowling row")
            return
        self._keep(page, line_no, text, "outside any table")

    @staticmethod
    def _looks_numeric_row(words: Sequence[Word]) -> bool:
        return sum(read_int(w.text).ok or read_decimal(w.text).ok for w in words[-3:]) >= 3

    # --- headers ----------------------------------------------------------------------------
    @staticmethod
    def _header_table(words: Sequence[Word], known: dict[str, str], dismissal: bool) -> Table | None:
        if any(w.left is None for w in words):
            return None
        columns: list[Column] = []
        dismissal_left = None
        for word in words[1:]:
            token = word.text.strip(".:").lower()
            if dismissal and token.startswith(("dismissal", "how", "out", "dism")):
                dismissal_left = float(word.left)  # type: ignore[arg-type]
                continue
            token = _HEADER_ALIASES.get(token, token)
            if token in known:
                columns.append(Column(token, float(word.left), float(word.right)))  # type: ignore[arg-type]
        required = {"r", "b"} if dismissal else {"o", "r", "w"}
        if not required <= {c.key for c in columns}:
            return None
        return Table(columns, dismissal_left)

    @staticmethod
    def _assign(words: Sequence[Word], table: Table | None,
                readers: dict[str, Any]) -> tuple[list[Word], dict[str, Reading]] | None:
        """Split a row into its label words and its numeric cells.

        With a table (boxes), each word right of the label area goes to the column whose
        right edge is nearest to its own; otherwise the trailing words are read right to
        left against the expected columns.
        """
        cells: dict[str, Reading] = {}
        if table is not None and all(w.left is not None for w in words):
            start = table.numeric_start()
            gap = _median_gap(table.columns)
            label = [w for w in words if w.right <= start - gap * 0.25]  # type: ignore[operator]
            rest = [w for w in words if w not in label]
            if not label:
                return None
            for word in rest:
                column = min(table.columns, key=lambda c: abs(c.right - word.right))  # type: ignore[operator]
                if abs(column.right - word.right) > gap * 0.6:  # type: ignore[operator]
                    continue
                if column.key not in readers:
                    continue
                raw = word.text if column.key not in cells else cells[column.key].raw + word.text
                cells[column.key] = readers[column.key](raw)
            for key in readers:
                cells.setdefault(key, Reading(None, ""))
            return label, cells
        # No boxes: the last len(keys) words are the numbers, in order.
        keys = list(readers)
        if len(words) < len(keys) + 1:
            return None
        tail = words[-len(keys):]
        for key, word in zip(keys, tail, strict=True):
            cells[key] = readers[key](word.text)
        if sum(c.ok for c in cells.values()) < max(2, len(keys) - 2):
            return None
        return list(words[: -len(keys)]), cells

    def _row_cells(self, words: Sequence[Word], readers: Mapping[str, Any], columns: Mapping[str, str],
                   default_keys: Sequence[str]) -> tuple[list[Word], dict[str, Any]] | None:
        """The label words and the read cells of one batting or bowling row, keyed by the
        canonical column name; None when the line is not such a row."""
        table = self.table
        if table is not None:
            chosen = {c.key: readers[columns[c.key]] for c in table.columns}
        else:
            chosen = {k: readers[k] for k in default_keys}
        assigned = self._assign(words, table, chosen)
        if assigned is None:
            return None
        label, raw_cells = assigned
        cells = {columns.get(k, k): v for k, v in raw_cells.items()}
        if not any(c.ok for c in cells.values()):
            return None
        return label, cells

    # --- batting -------------------------------------------------------------------------------
    def _batting_row(self, innings: Innings, words: Sequence[Word]) -> bool:
        table = self.table
        row = self._row_cells(words, BATTING_READERS, BATTING_COLUMNS, ("runs", "balls", "fours", "sixes", "strike_rate"))
        if row is None:
            return False
        label, cells = row
        name_words, dismissal_words = self._split_name(label, table)
        name = clean_name(w.text for w in name_words)
        if not name:
            return False
        dismissal = _normalize_dismissal(" ".join(w.text for w in dismissal_words))
        not_out = dismissal.lower().startswith(("not out", "retired not out")) or cells["runs"].raw.rstrip().endswith("*")
        row: dict[str, Any] = {"batter": _CAPTAIN_KEEPER.sub(" ", name).strip(), "dismissal": dismissal or None,
                               "not_out": not_out}
        for key in ("runs", "balls", "fours", "sixes", "strike_rate"):
            row[key] = cells[key].value if key in cells else None
        row["_readings"] = cells
        row["_conf"] = _mean_conf(words)
        innings.batting.append(row)
        return True

    @staticmethod
    def _split_name(label: list[Word], table: Table | None) -> tuple[list[Word], list[Word]]:
        by_keyword = None
        for i, word in enumerate(label[1:], start=1):
            token = word.text.strip(".,;:")
            if token in DISMISSAL_START or token.startswith("c&"):
                by_keyword = i
                break
        if table is not None and table.dismissal_left is not None:
            cut = table.dismissal_left - 8
            name = [w for w in label if w.left < cut]  # type: ignore[operator]
            rest = [w for w in label if w.left >= cut]  # type: ignore[operator]
            if name and (rest or by_keyword is None):
                return name, rest
        if by_keyword is not None:
            return label[:by_keyword], label[by_keyword:]
        return label, []

    # --- extras and total ----------------------------------------------------------------------
    def _extras(self, innings: Innings, words: Sequence[Word], text: str) -> None:
        inside = re.search(r"\(([^)]*)\)?", text)
        breakdown: dict[str, int | None] = {}
        repaired = False
        if inside:
            for piece in re.split(r"[,;]", inside.group(1)):
                m = re.match(r"^\s*(?P<label>[l1I|][bo]|n\s?[bo]|wd|w|b|pen|p)\s*(?P<val>\S+)\s*$", piece, re.I)
                if not m:
                    continue
                label = m["label"].lower().replace(" ", "")
                key = {"b": "byes", "w": "wides", "wd": "wides", "p": "penalty", "pen": "penalty"}.get(label)
                if key is None:
                    key = "no_balls" if label.startswith("n") else "leg_byes"
                reading = read_int(m["val"])
                repaired |= reading.repaired
                breakdown[key] = reading.value  # type: ignore[assignment]
        after = text[inside.end():] if inside else text.split(None, 1)[-1]
        total_words = after.split()
        total = read_int(total_words[-1]) if total_words else Reading(None, "")
        extras: dict[str, Any] = {"total": total.value, "byes": breakdown.get("byes"),
                                  "leg_byes": breakdown.get("leg_byes"), "wides": breakdown.get("wides"),
                                  "no_balls": breakdown.get("no_balls"), "penalty": breakdown.get("penalty")}
        extras["_readings"] = {"total": total}
        extras["_repaired"] = repaired or total.repaired
        extras["_conf"] = _mean_conf(words)
        innings.extras = extras

    def _total(self, innings: Innings, words: Sequence[Word], text: str) -> None:
        body = text.split(None, 1)[1] if len(text.split(None, 1)) > 1 else ""
        inside_m = re.search(r"\(([^)]*)\)?", body)
        inside = inside_m.group(1) if inside_m else ""
        outside = (body[: inside_m.start()] + " " + body[inside_m.end():]) if inside_m else body
        runs = Reading(None, "")
        wickets: int | None = None
        slash = re.search(r"(\S+)\s*/\s*(\S+)", outside)
        if slash and read_int(slash.group(1)).ok:
            runs = read_int(slash.group(1))
            wickets = read_int(slash.group(2)).value  # type: ignore[assignment]
        else:
            for token in reversed(outside.split()):
                reading = read_int(token)
                if reading.ok:
                    runs = reading
                    break
        if re.search(r"all\s*out", inside, re.I):
            wickets = 10
        elif m := re.search(r"(\S+)\s*(?:wkts?|wickets?|wk)\b", inside, re.I):
            wickets = read_int(m.group(1)).value  # type: ignore[assignment]
        overs = None
        if m := re.search(r"(\S+)\s*(?:ov|overs?)\b", inside + " " + outside, re.I):
            overs = read_overs(m.group(1)).value
        innings.total = {"runs": runs.value, "wickets": wickets, "overs": overs,
                         "balls": overs_to_balls(overs) if isinstance(overs, str) else None,
                         "_readings": {"runs": runs}, "_repaired": runs.repaired, "_conf": _mean_conf(words)}

    # --- fall of wickets ----------------------------------------------------------------------
    def _fow(self, innings: Innings, text: str, page: int, line_no: int) -> None:
        items = fow_items(text)
        innings.fall_of_wickets.extend(items)
        if not items and text.strip():
            self._keep(page, line_no, text, "fall of wickets not understood")

    # --- bowling -------------------------------------------------------------------------------
    def _bowling_row(self, innings: Innings, words: Sequence[Word]) -> bool:
        row = self._row_cells(words, BOWLING_READERS, BOWLING_COLUMNS, ("overs", "maidens", "runs", "wickets", "economy"))
        if row is None:
            return False
        label, cells = row
        name = clean_name(w.text for w in label)
        if not name:
            return False
        row: dict[str, Any] = {"bowler": _CAPTAIN_KEEPER.sub(" ", name).strip()}
        for key in ("overs", "maidens", "runs", "wickets", "economy"):
            row[key] = cells[key].value if key in cells else None
        row["balls"] = overs_to_balls(row["overs"]) if isinstance(row["overs"], str) else None
        row["_readings"] = cells
        row["_conf"] = _mean_conf(words)
        innings.bowling.append(row)
        return True

    # --- checks ------------------------------------------------------------------------------------
    def check(self) -> None:
        for innings in self.innings:
            for row in innings.batting:
                self._resolve_batting_row(innings, row)
            for row in innings.bowling:
                self._resolve_bowling_row(innings, row)
            self._fill_from_total(innings)
            self._resolve_with_totals(innings)
            self._check_innings(innings)

    def _resolve_batting_row(self, innings: Innings, row: dict[str, Any]) -> None:
        """Strike rate = 100 × runs / balls: derive one missing or contradicted cell."""
        readings: dict[str, Reading] = row["_readings"]
        row["_inferred"] = []
        r, b, sr = row["runs"], row["balls"], row["strike_rate"]
        decimals = _decimals(readings.get("strike_rate"))
        if r is not None and b and sr is not None and printed_matches(sr, 100 * r / b, decimals):
            return
        candidates: list[tuple[str, Any]] = []
        if sr is not None and b:
            value = int(round(sr * b / 100))
            if printed_matches(sr, 100 * value / b, decimals):
                candidates.append(("runs", value))
        if sr and r is not None and r > 0:
            value = 100 * r / sr
            rounded = int(round(value))
            if rounded > 0 and printed_matches(sr, 100 * r / rounded, decimals):
                candidates.append(("balls", rounded))
        if r is not None and b:
            candidates.append(("strike_rate", round2(100 * r / b)))
        # Replace a missing cell first; otherwise the one that was repaired from OCR damage.
        for key, value in candidates:
            if row[key] is None:
                row[key] = value
                row["_inferred"].append(key)
                return
        for key, value in candidates:
            if readings.get(key) is not None and readings[key].repaired and row[key] != value:
                row[key] = value
                row["_inferred"].append(key)
                return

    def _resolve_bowling_row(self, innings: Innings, row: dict[str, Any]) -> None:
        """Economy = runs ÷ overs: derive one missing or contradicted cell."""
        readings: dict[str, Reading] = row["_readings"]
        row["_inferred"] = []
        balls, runs, econ = row["balls"], row["runs"], row["economy"]
        decimals = _decimals(readings.get("economy"))
        if balls and runs is not None and econ is not None and printed_matches(econ, runs * 6 / balls, decimals):
            return
        candidates: list[tuple[str, Any]] = []
        if econ is not None and balls:
            value = econ * balls / 6
            rounded = int(round(value))
            if printed_matches(econ, rounded * 6 / balls, decimals):
                candidates.append(("runs", rounded))
        if runs is not None and balls:
            candidates.append(("economy", round2(runs * 6 / balls)))
        for key, value in candidates:
            if row[key] is None:
                row[key] = value
                row["_inferred"].append(key)
                return
        for key, value in candidates:
            if readings.get(key) is not None and readings[key].repaired and row[key] != value:
                row[key] = value
                row["_inferred"].append(key)
                return

    def _fill_from_total(self, innings: Innings) -> None:
        """One cell of a column still missing: the column's sum elsewhere on the card gives it."""
        total = (innings.total or {}).get("runs")
        extras = (innings.extras or {}).get("total")
        missing = [row for row in innings.batting if row["runs"] is None]
        value = -1
        if total is not None and extras is not None and len(missing) == 1:
            known = sum(row["runs"] for row in innings.batting if row["runs"] is not None)
            value = total - extras - known
        if value >= 0:
            missing[0]["runs"] = value
            missing[0]["_inferred"].append("runs")
        # One bowler's wickets missing: the dismissals credited to bowlers give it.
        unknown = [row for row in innings.bowling if row["wickets"] is None]
        if len(unknown) == 1 and innings.batting:
            credited = sum(1 for r in innings.batting
                           if r["dismissal"] and not _not_out(r["dismissal"]) and _credited_to_bowler(r["dismissal"]))
            value = credited - sum(row["wickets"] for row in innings.bowling if row["wickets"] is not None)
            if value >= 0:
                unknown[0]["wickets"] = value
                unknown[0]["_inferred"].append("wickets")

    def _resolve_with_totals(self, inn: Innings) -> None:
        """A misread that no OCR repair flagged, caught by two checks at once.

        When the innings' sum is off, and exactly one row's own check (strike rate,
        economy) is off by a value that also closes the innings' gap, that row's runs
        were misread: two independent sums agree on the right value.
        """
        total, extras = inn.total or {}, inn.extras or {}
        runs = [r["runs"] for r in inn.batting]
        if inn.batting and None not in runs and total.get("runs") is not None and extras.get("total") is not None:
            gap = total["runs"] - extras["total"] - sum(runs)
            fits = []
            for row in inn.batting if gap else []:
                r, b, sr = row["runs"], row["balls"], row["strike_rate"]
                if b and sr is not None and not printed_matches(sr, 100 * r / b):
                    candidate = int(round(sr * b / 100))
                    if candidate - r == gap and printed_matches(sr, 100 * candidate / b):
                        fits.append((row, candidate))
            if len(fits) == 1:
                fits[0][0]["runs"] = fits[0][1]
                fits[0][0]["_inferred"].append("runs")
        runs = [r["runs"] for r in inn.bowling]
        byes, leg_byes = extras.get("byes"), extras.get("leg_byes")
        if inn.bowling and None not in runs and total.get("runs") is not None and byes is not None \
                and leg_byes is not None:
            gap = total["runs"] - byes - leg_byes - (extras.get("penalty") or 0) - sum(runs)
            fits = []
            for row in inn.bowling if gap else []:
                balls, r, econ = row["balls"], row["runs"], row["economy"]
                if balls and econ is not None and not printed_matches(econ, r * 6 / balls):
                    candidate = int(round(econ * balls / 6))
                    if candidate - r == gap and printed_matches(econ, candidate * 6 / balls):
                        fits.append((row, candidate))
            if len(fits) == 1:
                fits[0][0]["runs"] = fits[0][1]
                fits[0][0]["_inferred"].append("runs")

    def _check(self, innings: Innings, code: str, ok: bool | None, message: str, row: str | None = None,
               **extra: Any) -> None:
        state = "skipped" if ok is None else ("passed" if ok else "failed")
        previous = innings.checks.get(code)
        if previous != "failed" and not (previous == "passed" and state == "skipped"):
            innings.checks[code] = state
        if ok is False:
            self._warn(code, message, innings, row, **extra)

    def _check_innings(self, inn: Innings) -> None:
        batting_runs = [r["runs"] for r in inn.batting]
        total = inn.total or {}
        extras = inn.extras or {}
        # batting runs + extras = total
        if inn.batting and None not in batting_runs and total.get("runs") is not None and extras.get("total") is not None:
            computed = sum(batting_runs) + extras["total"]
            self._check(inn, "batting_total", computed == total["runs"],
                        f"batting runs {sum(batting_runs)} + extras {extras['total']} = {computed}, "
                        f"but the total says {total['runs']}", printed=total["runs"], computed=computed)
        else:
            self._check(inn, "batting_total", None, "")
        # extras breakdown
        parts = [extras.get(k) for k in ("byes", "leg_byes", "wides", "no_balls", "penalty")]
        known = [p for p in parts if p is not None]
        if extras.get("total") is not None and known:
            self._check(inn, "extras_breakdown", sum(known) == extras["total"],
                        f"extras breakdown adds up to {sum(known)}, but extras are {extras['total']}",
                        printed=extras["total"], computed=sum(known))
        else:
            self._check(inn, "extras_breakdown", None, "")
        # overs notation: a sixth ball is the next over
        bad = []
        if total.get("overs") is not None and total.get("balls") is None:
            bad.append(("total", total["overs"]))
        for row in inn.bowling:
            if row["overs"] is not None and row["balls"] is None:
                bad.append((row["bowler"], row["overs"]))
        for f in inn.fall_of_wickets:
            if f["over"] is not None and overs_to_balls(f["over"]) is None:
                bad.append((f"wicket {f['wicket']}", f["over"]))
        for where, overs in bad:
            self._check(inn, "overs_notation", False,
                        f"{where}: {overs} overs is impossible (an over has 6 balls)", row=where, printed=overs)
        if not bad:
            self._check(inn, "overs_notation", True if (total.get("overs") or inn.bowling) else None, "")
        # bowlers' runs against the runs the innings conceded
        bowl_runs = [r["runs"] for r in inn.bowling]
        if inn.bowling and None not in bowl_runs and total.get("runs") is not None:
            got = sum(bowl_runs)
            byes, leg_byes, penalty = extras.get("byes"), extras.get("leg_byes"), extras.get("penalty") or 0
            if byes is not None and leg_byes is not None:
                expected = total["runs"] - byes - leg_byes - penalty
                self._check(inn, "bowling_runs", got == expected,
                            f"bowlers conceded {got}, but total {total['runs']} less byes and leg byes is {expected}",
                            printed=got, computed=expected)
            elif extras.get("total") is not None:
                low, high = total["runs"] - extras["total"], total["runs"]
                self._check(inn, "bowling_runs", low <= got <= high,
                            f"bowlers conceded {got}, outside {low}–{high} (total {total['runs']}, extras {extras['total']})",
                            printed=got)
            else:
                self._check(inn, "bowling_runs", None, "")
        else:
            self._check(inn, "bowling_runs", None, "")
        # bowlers' overs against the innings' overs
        bowl_balls = [r["balls"] for r in inn.bowling]
        if inn.bowling and None not in bowl_balls and total.get("balls") is not None:
            got = sum(bowl_balls)  # type: ignore[arg-type]
            self._check(inn, "bowling_overs", got == total["balls"],
                        f"bowlers bowled {balls_to_overs(got)} overs, but the innings lasted {total['overs']}",
                        printed=balls_to_overs(got), computed=total["overs"])
        else:
            self._check(inn, "bowling_overs", None, "")
        # wickets: dismissals, the total, the fall of wickets, the bowlers
        dismissed = [r for r in inn.batting if r["dismissal"] and not _not_out(r["dismissal"])]
        if total.get("wickets") is not None and inn.batting:
            self._check(inn, "wickets", len(dismissed) == total["wickets"],
                        f"{len(dismissed)} batters are out, but the total says {total['wickets']} wickets",
                        printed=total["wickets"], computed=len(dismissed))
        else:
            self._check(inn, "wickets", None, "")
        credited = sum(1 for r in dismissed if _credited_to_bowler(r["dismissal"]))
        bowl_wkts = [r["wickets"] for r in inn.bowling]
        if inn.bowling and inn.batting and None not in bowl_wkts:
            self._check(inn, "bowling_wickets", sum(bowl_wkts) == credited,
                        f"bowlers took {sum(bowl_wkts)} wickets, but {credited} dismissals are credited to a bowler",
                        printed=sum(bowl_wkts), computed=credited)
        else:
            self._check(inn, "bowling_wickets", None, "")
        if inn.fall_of_wickets:
            fow = inn.fall_of_wickets
            numbers_ok = [f["wicket"] for f in fow] == list(range(1, len(fow) + 1))
            scores = [f["score"] for f in fow]
            rising = all(a <= b for a, b in zip(scores, scores[1:]))
            within = total.get("runs") is None or scores[-1] <= total["runs"]
            count_ok = total.get("wickets") is None or len(fow) == total["wickets"]
            problems = []
            if not numbers_ok:
                problems.append("wickets are not numbered 1, 2, 3, …")
            if not rising:
                problems.append("scores go down")
            if not within:
                problems.append(f"last score {scores[-1]} is above the total {total['runs']}")
            if not count_ok:
                problems.append(f"{len(fow)} listed for {total['wickets']} wickets")
            self._check(inn, "fall_of_wickets", not problems, "fall of wickets: " + "; ".join(problems))
        else:
            self._check(inn, "fall_of_wickets", None, "")
        # per-row recomputation
        for row in inn.batting:
            r, b, sr = row["runs"], row["balls"], row["strike_rate"]
            if r is not None and b and sr is not None:
                computed = round2(100 * r / b)
                ok = printed_matches(sr, 100 * r / b, _decimals(row["_readings"].get("strike_rate")))
                self._check(inn, "strike_rate", ok,
                            f"{row['batter']}: strike rate printed {sr:.2f}, {r} runs off {b} balls is {computed:.2f}",
                            row=row["batter"], printed=sr, computed=computed)
            if r is not None and row["fours"] is not None and row["sixes"] is not None:
                boundary = 4 * row["fours"] + 6 * row["sixes"]
                self._check(inn, "boundaries", boundary <= r,
                            f"{row['batter']}: {row['fours']} fours and {row['sixes']} sixes make {boundary}, more than {r} runs",
                            row=row["batter"], printed=r, computed=boundary)
            if row["_inferred"]:
                self._warn("inferred", f"{row['batter']}: {', '.join(row['_inferred'])} unreadable or contradicted; "
                           "derived from the rest of the card", inn, row["batter"])
        for row in inn.bowling:
            balls, runs, econ = row["balls"], row["runs"], row["economy"]
            if balls and runs is not None and econ is not None:
                computed = round2(runs * 6 / balls)
                self._check(inn, "economy", printed_matches(econ, runs * 6 / balls, _decimals(row["_readings"].get("economy"))),
                            f"{row['bowler']}: economy printed {econ:.2f}, {runs} runs off {row['overs']} overs is {computed:.2f}",
                            row=row["bowler"], printed=econ, computed=computed)
            if balls and row["maidens"] is not None:
                self._check(inn, "maidens", row["maidens"] <= balls // 6,
                            f"{row['bowler']}: {row['maidens']} maidens in {row['overs']} overs",
                            row=row["bowler"], printed=row["maidens"])
            if row["_inferred"]:
                self._warn("inferred", f"{row['bowler']}: {', '.join(row['_inferred'])} unreadable or contradicted; "
                           "derived from the rest of the card", inn, row["bowler"])
        for code in ("strike_rate", "boundaries", "economy", "maidens"):
            inn.checks.setdefault(code, "skipped")

    # --- confidence and output -----------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        self.check()
        row_confs: list[float] = []
        warned_rows = {(w["innings"], w["row"]) for w in self.warnings if w["row"] and w["code"] != "inferred"}
        for inn in self.innings:
            for kind, rows, key in (("batting", inn.batting, "batter"), ("bowling", inn.bowling, "bowler")):
                for row in rows:
                    readings: dict[str, Reading] = row.pop("_readings")
                    inferred = row.pop("_inferred", [])
                    conf = row.pop("_conf")
                    fields = ("runs", "balls", "fours", "sixes", "strike_rate") if kind == "batting" else \
                        ("overs", "maidens", "runs", "wickets", "economy")
                    for name in fields:
                        if name in inferred:
                            conf *= 0.75
                        elif row[name] is None:
                            conf *= 0.5
                        elif readings.get(name) is not None and readings[name].repaired:
                            conf *= 0.9
                    if (inn.number, row[key]) in warned_rows:
                        conf *= 0.7
                    row["inferred"] = inferred
                    row["confidence"] = round(conf, 2)
                    row_confs.append(conf)
            for part in (inn.extras, inn.total):
                if part is None:
                    continue
                part.pop("_readings", None)
                conf = part.pop("_conf")
                if part.pop("_repaired", False):
                    conf *= 0.9
                part["confidence"] = round(conf, 2)
                row_confs.append(conf)
        teams = self.teams or [i.team for i in self.innings if i.team]
        return {
            "title": self.title,
            "teams": teams,
            "result": self.result,
            "innings": [i.as_dict() for i in self.innings],
            "warnings": self.warnings,
            "unparsed": self.unparsed,
            "confidence": round(statistics.fmean(row_confs), 2) if row_confs else 0.0,
        }


def _median_gap(columns: list[Column]) -> float:
    rights = sorted(c.right for c in columns)
    gaps = [b - a for a, b in zip(rights, rights[1:])]
    return statistics.median(gaps) if gaps else 100.0


def _mean_conf(words: Sequence[Word]) -> float:
    confs = [w.conf for w in words if w.conf is not None and w.conf >= 0]
    return statistics.fmean(confs) / 100 if confs else 1.0


def _normalize_dismissal(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;:")
    text = re.sub(r"^(?:[I1|]bw|low)\b", "lbw", text)
    text = re.sub(r"^c\s*&\s*b\b", "c & b", text)
    return text


def _not_out(dismissal: str) -> bool:
    d = dismissal.lower()
    return d.startswith(("not out", "retired hurt", "retired not out", "absent", "dnb", "did not bat"))


def _credited_to_bowler(dismissal: str) -> bool:
    d = " " + dismissal.lower() + " "
    if "run out" in d or "retired" in d or "obstruct" in d or "timed out" in d or "handled" in d:
        return False
    return " b " in d or d.startswith(" lbw") or d.startswith(" st ") or d.startswith(" hit wicket")


def deskew(lines: Sequence[Line]) -> list[list[Word]]:
    """Undo a small page rotation in word positions, so columns line up with their header.

    The median slope of the text lines (from their words' vertical centres) gives the
    skew; each word's left edge is moved by ``slope × y``.
    """
    slopes = []
    for line in lines:
        pts = [((w.left + w.width / 2), w.center_y) for w in line
               if w.left is not None and w.width is not None and w.center_y is not None and w.text.strip()]
        if len(pts) < 3:
            continue
        xs, ys = zip(*pts, strict=True)
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mean_x) ** 2 for x in xs)
        if var <= 0:
            continue
        slopes.append(sum((x - mean_x) * (y - mean_y) for x, y in pts) / var)
    if not slopes:
        return [list(line) for line in lines]
    slope = statistics.median(slopes)
    if abs(slope) < 0.002:
        return [list(line) for line in lines]
    out = []
    for line in lines:
        row = []
        for w in line:
            if w.left is None or w.center_y is None:
                row.append(w)
                continue
            shift = int(round(slope * w.center_y))
            row.append(Word(w.text, w.left + shift, w.top, w.width, w.height, w.conf))
        out.append(row)
    return out


def parse_scorecard(pages: Sequence[Sequence[Line]]) -> dict[str, Any]:
    """Parse the OCR lines of every page (in order) into a checked scorecard preview."""
    parser = _Parser()
    for page_no, lines in enumerate(pages, start=1):
        for line_no, words in enumerate(deskew(lines), start=1):
            parser.feed(page_no, line_no, words)
    return parser.finish()


def parse_text(text: str) -> dict[str, Any]:
    """Parse plain text (pages separated by form feeds), without word boxes."""
    return parse_scorecard([lines_from_text(page) for page in text.split("\f")])
