"""Which number of a table row is which cell.

A batting row is a name, a dismissal, then 4–6 numbers; a bowling row a name then 4–6
numbers, one of them an overs figure. The rows of one table are gathered first; then
the table's columns are found from the rows themselves (the positions of the numbers
of its complete rows), and every column gets a key (runs, balls, overs, …):

- the header's reading, when there is one, proposes keys by position;
- every assignment the column contents allow is scored against the card's arithmetic
  (strike rate = 100 × runs ÷ balls, economy = runs ÷ overs, batting runs + extras =
  total, bowlers' runs + byes + leg byes = total, bowlers' balls = the innings' balls,
  wickets credited to bowlers, wides and no-balls against the extras) plus a small
  preference for the header and for the usual column order;
- the best assignment wins. Where it differs from what the header said (or there was
  no header), the table is reported in ``warnings`` as inferred.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.services.scorecard.numbers import (
    Reading,
    Word,
    overs_to_balls,
    printed_matches,
    read_decimal,
    read_int,
    read_overs,
)

BATTING_KEYS = ("runs", "balls", "minutes", "fours", "sixes", "strike_rate")
BOWLING_KEYS = ("overs", "maidens", "runs", "wickets", "economy", "dots", "fours", "sixes", "wides", "no_balls")
READERS: dict[str, Callable[[str], Reading]] = {
    "runs": read_int, "balls": read_int, "minutes": read_int, "fours": read_int, "sixes": read_int,
    "strike_rate": read_decimal, "overs": read_overs, "maidens": read_int, "wickets": read_int,
    "economy": read_decimal, "dots": read_int, "wides": read_int, "no_balls": read_int,
}
#: Header words and what they name, per table. Lower case, dots and colons stripped.
HEADER_WORDS = {
    "batting": {"r": "runs", "runs": "runs", "b": "balls", "balls": "balls", "bf": "balls", "m": "minutes",
                "mins": "minutes", "min": "minutes", "4s": "fours", "4's": "fours", "as": "fours", "fours": "fours",
                "6s": "sixes", "6's": "sixes", "sixes": "sixes", "sr": "strike_rate", "s/r": "strike_rate",
                "s.r": "strike_rate", "strike": "strike_rate"},
    "bowling": {"o": "overs", "0": "overs", "oo": "overs", "ov": "overs", "overs": "overs", "m": "maidens",
                "mdns": "maidens", "mdn": "maidens", "maidens": "maidens", "r": "runs", "runs": "runs",
                "w": "wickets", "ww": "wickets", "wkts": "wickets", "wkt": "wickets", "wickets": "wickets",
                "econ": "economy", "eco": "economy", "er": "economy", "economy": "economy", "0s": "dots",
                "dots": "dots", "4s": "fours", "6s": "sixes", "wd": "wides", "wides": "wides", "nb": "no_balls",
                "no-balls": "no_balls"},
}
#: The usual left-to-right orders; an assignment that keeps to one of them is preferred.
USUAL_ORDERS = {
    "batting": (("runs", "balls", "minutes", "fours", "sixes", "strike_rate"),
                ("runs", "minutes", "balls", "fours", "sixes", "strike_rate")),
    "bowling": (("overs", "maidens", "runs", "wickets", "economy", "dots", "fours", "sixes", "wides", "no_balls"),
                ("overs", "maidens", "runs", "wickets", "wides", "no_balls", "economy", "dots"),
                ("overs", "maidens", "runs", "wickets", "no_balls", "wides", "economy", "dots")),
}
_NOTE_RE = re.compile(r"^\(?\s*[\dlIiO|]*\s*(?:w|wd|wides?|[nI]b|no-?balls?|pen)\b", re.I)


@dataclass
class RawRow:
    """A table row before its numbers have keys: label words, number words, where it was."""

    label: list[Word]
    numbers: list[Word]
    page: int
    line: int
    conf: float
    dismissal: list[Word] = field(default_factory=list)  # printed on the line below the name


@dataclass
class Header:
    keys: list[str]  # in reading order
    centers: list[float | None]
    dismissal_left: float | None = None


def split_note(words: Sequence[Word]) -> list[Word]:
    """Drop a trailing ``(2w, 1nb)`` after a bowler's figures."""
    for i in range(len(words) - 1, 0, -1):
        if words[i].text.startswith("(") and _NOTE_RE.match(words[i].text + " " +
                                                             " ".join(w.text for w in words[i + 1:])):
            return list(words[:i])
    return list(words)


def _numeric(word: Word) -> bool:
    """A cell's word: a number, allowing OCR confusions in a word that has a digit, or a
    one- or two-character word made only of confusable characters (``O``, ``l2``, ``)``)."""
    text = word.text
    if not any(ch.isdigit() for ch in text) and len(text.strip("()[]{}*.,'")) > 2:
        return False
    return read_int(text).ok or read_decimal(text).ok


def split_numbers(words: Sequence[Word]) -> tuple[list[Word], list[Word]]:
    """Label words and the run of number words that ends the line.

    An unreadable word between two numbers (``52 af 2``) stays in the run: it is a cell
    OCR could not read, and keeping it keeps its neighbours in their columns.
    """
    i = len(words)
    while i > 1:
        if _numeric(words[i - 1]) or (i < len(words) and i > 2 and len(words[i - 1].text) <= 4 and _numeric(words[i - 2])
              and any(ch.isdigit() for ch in words[i - 2].text)):
            i -= 1
        else:
            break
    return list(words[:i]), list(words[i:])


_PLAIN_NUMBER_RE = re.compile(r"^[\d.,:*()]*\d[\d.,:*()]*$")


def row_words(words: Sequence[Word]) -> tuple[list[Word], list[Word]]:
    """Label words and number words of a table row (``split_numbers`` after ``split_note``).

    When the line does not end in numbers, words after its last plain number that are
    OCR noise (no digit, or digits mixed with letters: what a shaded bar or a rule beyond
    the table reads as) are dropped, up to ``_MAX_JUNK`` of them.
    """
    label, numbers = split_numbers(split_note(words))
    if len(numbers) >= 3:
        return label, numbers
    for cut in range(len(words) - 1, max(1, len(words) - _MAX_JUNK) - 1, -1):
        dropped = words[cut:]
        if any(_PLAIN_NUMBER_RE.match(w.text) for w in dropped):
            break
        if _PLAIN_NUMBER_RE.match(words[cut - 1].text):
            label, numbers = split_numbers(words[:cut])
            return (label, numbers) if len(numbers) >= 3 else (list(words), [])
    return label, numbers


_MAX_JUNK = 20


def read_header(words: Sequence[Word], table: str) -> Header:
    keys, centers, dismissal_left = [], [], None
    for word in words[1:]:
        token = word.text.strip(".:,'’‘|").lower()
        if token.startswith(("dismissal", "how", "dism")):
            dismissal_left = float(word.left) if word.left is not None else None
            continue
        key = HEADER_WORDS[table].get(token)
        if key is not None and key not in keys:
            keys.append(key)
            centers.append(word.left + word.width / 2 if word.left is not None and word.width is not None else None)
    return Header(keys, centers, dismissal_left)


# --- the columns of one table -------------------------------------------------------------------
def _center(word: Word) -> float | None:
    return None if word.left is None or word.width is None else word.left + word.width / 2


def column_count(rows: Sequence[RawRow]) -> int:
    counts = Counter(len(r.numbers) for r in rows if r.numbers)
    if not counts:
        return 0
    best = max(counts.values())
    return max(n for n, c in counts.items() if c >= best * 0.5)


def grid(rows: Sequence[RawRow], n: int) -> list[list[str | None]]:
    """Every row's number texts laid out on ``n`` columns (None where a cell is missing).

    Column positions come from the rows that have all ``n`` numbers; a row with fewer (an
    unreadable cell) or more (a cell split in two) places each word at the nearest column.
    Positions are taken page by page (a table may continue on the next page).
    """
    pages = sorted({r.page for r in rows})
    if len(pages) > 1:
        by_page = {p: grid([r for r in rows if r.page == p], n) for p in pages}
        seen = dict.fromkeys(pages, 0)
        out_rows = []
        for r in rows:
            out_rows.append(by_page[r.page][seen[r.page]])
            seen[r.page] += 1
        return out_rows
    full = [r for r in rows if len(r.numbers) == n]
    centers: list[float | None] = []
    for i in range(n):
        found = [c for r in full if (c := _center(r.numbers[i])) is not None]
        centers.append(statistics.median(found) if found else None)
    out: list[list[str | None]] = []
    for row in rows:
        if len(row.numbers) == n:
            out.append([w.text for w in row.numbers])
            continue
        cells: list[str | None] = [None] * n
        positioned = all(c is not None for c in centers) and all(_center(w) is not None for w in row.numbers)
        for j, word in enumerate(row.numbers):
            if positioned:
                k = min(range(n), key=lambda i: abs(centers[i] - _center(word)))  # type: ignore[operator]
            else:
                k = n - len(row.numbers) + j
                if k < 0:
                    continue
            previous = cells[k]
            cells[k] = word.text if previous is None else previous + word.text
        out.append(cells)
    return out


def header_keys(header: Header | None, rows: Sequence[RawRow], n: int) -> list[str | None]:
    """The key the header proposes for each column (None where it proposes none)."""
    if header is None or not header.keys:
        return [None] * n
    if len(header.keys) == n and None in header.centers:
        return list(header.keys)
    full = [r for r in rows if len(r.numbers) == n]
    proposed: list[str | None] = [None] * n
    for key, center in zip(header.keys, header.centers, strict=True):
        if center is None or not full:
            continue
        distance = [statistics.median(abs((_center(r.numbers[i]) or 0) - center) for r in full) for i in range(n)]
        i = min(range(n), key=distance.__getitem__)
        spacing = statistics.median(
            abs((_center(r.numbers[-1]) or 0) - (_center(r.numbers[0]) or 0)) / max(1, n - 1) for r in full)
        if distance[i] <= spacing * 0.6 and proposed[i] is None:
            proposed[i] = key
    return proposed


@dataclass
class TableContext:
    """What the rest of the card says about a table, for the arithmetic."""

    total_runs: int | None = None
    total_balls: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    credited_wickets: int | None = None


def _kinds(cells: list[list[str | None]], n: int) -> list[str]:
    """Per column: 'rate' (two decimals), 'overs' (one decimal digit or whole), 'int'."""
    kinds = []
    for i in range(n):
        texts = [t for row in cells if (t := row[i])]
        rate = sum(1 for t in texts if re.search(r"\d[.,:]\d\d$", t))
        single = sum(1 for t in texts if re.search(r"\d[.,:]\d$", t))
        kinds.append("rate" if rate > len(texts) / 2 else "overs" if single and not rate else "int")
    return kinds


def candidates(table: str, kinds: list[str]) -> list[tuple[str, ...]]:
    """Every key assignment the columns' contents allow."""
    rate_key = "strike_rate" if table == "batting" else "economy"
    pool = [k for k in (BATTING_KEYS if table == "batting" else BOWLING_KEYS) if k not in (rate_key, "fours", "sixes")
            or (table == "batting" and k != rate_key)]
    rate_cols = [i for i, k in enumerate(kinds) if k == "rate"]
    if len(rate_cols) > 1:
        return []
    ints = [i for i, k in enumerate(kinds) if k != "rate"]
    out = []
    for keys in itertools.permutations(pool, len(ints)):
        assignment = [""] * len(kinds)
        for i, key in zip(ints, keys, strict=True):
            assignment[i] = key
        for i in rate_cols:
            assignment[i] = rate_key
        if "runs" not in keys:
            continue
        if table == "bowling" and ("overs" not in keys or any(kinds[i] == "overs" and assignment[i] != "overs"
                                                              for i in ints)):
            continue
        if table == "batting" and "balls" not in keys and rate_cols:
            continue
        out.append(tuple(assignment))
    return out


def _usual(table: str, keys: tuple[str, ...]) -> bool:
    for order in USUAL_ORDERS[table]:
        positions = [order.index(k) for k in keys if k in order]
        if len(positions) == len(keys) and positions == sorted(positions):
            return True
    return False


def _value(text: str | None, key: str) -> Any:
    return None if text is None else READERS[key](text).value


def _row_score(table: str, row: dict[str, Any]) -> float:
    """How well one row's numbers, keyed one way, fit a row's own arithmetic."""
    g: Callable[[str], Any] = row.get
    score = 0.0
    if table == "batting":
        r, b, sr = g("runs"), g("balls"), g("strike_rate")
        if r is not None and b and sr is not None:
            score += 3 if printed_matches(sr, 100 * r / b) else -1
        if r is not None and g("fours") is not None and g("sixes") is not None:
            score += 0.5 if 4 * g("fours") + 6 * g("sixes") <= r else -1
        if r is not None and b is not None and r > 6 * max(b, 0) + 6:
            score -= 1.5
        return score
    balls = overs_to_balls(g("overs")) if isinstance(g("overs"), str) else None
    runs, econ = g("runs"), g("economy")
    if balls and runs is not None and econ is not None:
        score += 3 if printed_matches(econ, runs * 6 / balls) else -1
    if balls is not None and g("maidens") is not None and g("maidens") > balls // 6:
        score -= 2
    for key in ("wickets", "wides", "no_balls"):
        if g(key) is not None and g(key) > 10:
            score -= 1
    if balls is not None and g("dots") is not None and g("dots") > balls:
        score -= 2
    return score


def _sum(rows: list[dict[str, Any]], key: str) -> int | None:
    values = [r.get(key) for r in rows]
    if key == "overs":
        values = [overs_to_balls(v) if isinstance(v, str) else None for v in values]
    return None if not values or None in values else sum(values)  # type: ignore[arg-type]


def _table_score(table: str, rows: list[dict[str, Any]], ctx: TableContext) -> float:
    """How well a table's columns, keyed one way, fit the rest of the card."""
    score, e = 0.0, ctx.extras
    runs = _sum(rows, "runs")
    if table == "batting":
        if runs is not None and ctx.total_runs is not None and e.get("total") is not None:
            score += 6 if runs + e["total"] == ctx.total_runs else 0
        return score
    if runs is not None and ctx.total_runs is not None and e.get("byes") is not None and e.get("leg_byes") is not None:
        score += 6 if runs + e["byes"] + e["leg_byes"] + (e.get("penalty") or 0) == ctx.total_runs else 0
    checks = (("overs", ctx.total_balls, 4), ("wickets", ctx.credited_wickets, 4),
              ("wides", e.get("wides"), 3), ("no_balls", e.get("no_balls"), 3))
    for key, want, weight in checks:
        got = _sum(rows, key)
        # No wides (or no-balls) in the extras says nothing: any all-zero column (maidens) sums to 0.
        if got is not None and want is not None and got == want and (want or key in ("overs", "wickets")):
            score += weight
    return score


_LOST_POINT_RE = re.compile(r"^\d+0$")


def _with_point(text: str | None) -> str | None:
    """``40`` → ``4.0``: an overs figure whose decimal point OCR lost."""
    return text[:-1] + ".0" if text is not None and _LOST_POINT_RE.match(text.strip()) else text


def restore_overs_points(keys: Sequence[str], cells: list[list[str | None]], ctx: TableContext
                         ) -> list[list[str | None]]:
    """Overs printed ``4.0`` and read ``40``: restored when the column prints ``.0`` elsewhere,
    or when the bowlers' overs then add up to the innings' and did not before."""
    if "overs" not in keys:
        return cells
    i = list(keys).index("overs")
    texts = [row[i] for row in cells]
    restored = [_with_point(t) for t in texts]
    if restored == texts:
        return cells
    dotted = any(t is not None and re.search(r"\d\.0$", t.strip()) for t in texts)
    balls = [_sum([{"overs": read_overs(t).value if t is not None else None} for t in column], "overs")
             for column in (texts, restored)]
    if not dotted and (ctx.total_balls is None or balls[1] != ctx.total_balls or balls[0] == ctx.total_balls):
        return cells
    return [[restored[r] if j == i else cell for j, cell in enumerate(row)] for r, row in enumerate(cells)]


def assign_columns(table: str, rows: Sequence[RawRow], header: Header | None,
                   ctx: TableContext) -> tuple[list[str], list[list[str | None]], list[str | None]] | None:
    """The keys of a table's columns, its cells, and what the header proposed; None when
    the rows do not make a table."""
    n = column_count(rows)
    if n == 0:
        return None
    cells = grid(rows, n)
    proposed = header_keys(header, rows, n)
    best: tuple[float, int, tuple[str, ...]] | None = None
    values: dict[tuple[int, str], list[Any]] = {}
    for rank, keys in enumerate(candidates(table, _kinds(cells, n))):
        for i, k in enumerate(keys):
            if (i, k) not in values:
                values[i, k] = [_value(row[i], k) for row in cells]
        keyed = [{k: values[i, k][r] for i, k in enumerate(keys)} for r in range(len(cells))]
        score = sum(_row_score(table, r) for r in keyed) + _table_score(table, keyed, ctx)
        score += 1.5 if _usual(table, keys) else 0
        weight = 2 + 0.5 * len(cells)  # a header word that was read outweighs a few misread cells
        score += sum(weight if p == k else -weight for p, k in zip(proposed, keys, strict=True) if p is not None)
        # Columns few cards print are taken only when the header or the sums call for them.
        score -= sum(0.5 for k in ("minutes", "dots", "wides", "no_balls") if k in keys and k not in proposed)
        if best is None or (score, -rank) > (best[0], -best[1]):
            best = (score, rank, keys)
    if best is None:
        return None
    return list(best[2]), cells, proposed
