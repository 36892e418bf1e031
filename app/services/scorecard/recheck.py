"""The second look: which table rows of a page deserve a re-read, and what to keep from it.

Pure logic, no I/O. The OCR service reads the page once, asks ``suspects`` which rows'
numbers look wrong, re-reads only the boxes of those numbers (a digit whitelist, one
line each), and hands the new readings to ``merge``, which keeps a new value only when
the row's own arithmetic, or a cleaner reading of a damaged cell, says it is better.

A row is suspect when one of its number words

- does not read as a number even after the OCR repairs of ``numbers``,
- looks like two cells run together (``O38`` for maidens 0 and runs 38, ``3031``: a
  leading zero, or four digits), or has a confidence under ``CONF_MIN``, or
- when its rate (a two-decimal number: strike rate or economy) fits no pair of the
  row's other numbers (runs ÷ balls, runs ÷ overs).

Rows whose damage the repairs already undo (``O`` for ``0``) are not read again.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.services.scorecard.columns import row_words
from app.services.scorecard.numbers import (
    Line,
    Word,
    clean_name,
    is_debris,
    overs_to_balls,
    printed_matches,
    read_decimal,
    read_int,
    read_overs,
)

#: Tesseract word confidence (0–100) under which a number is read again.
CONF_MIN = 30.0
#: Lines that end in numbers but are not table rows (the parser reads them its own way).
_NOT_A_ROW = re.compile(r"^(?:t[o0]ta[l1I]|e[xk]tras?|sundries|fall|did|result)", re.I)
#: At most this many rows a page are re-read (the cost stays a fraction of the page's).
MAX_ROWS = 40


@dataclass(frozen=True)
class Suspect:
    """The number words of one row that are read again, and the box around them."""

    line: int  # index of the line in the page's lines
    start: int  # index of the first number word in that line
    count: int  # how many number words
    box: tuple[int, int, int, int]  # left, top, right, bottom (page pixels)


def _clean(word: Word) -> bool:
    """A number read without any repair."""
    int_reading, dec_reading = read_int(word.text), read_decimal(word.text)
    if int_reading.ok and not int_reading.repaired:
        return True
    if dec_reading.ok and not dec_reading.repaired:
        return True
    return word.text.rstrip("*").isdigit()  # a not-out star is print, not damage


def _readable(word: Word) -> bool:
    return read_int(word.text).ok or read_decimal(word.text).ok


def _merged(word: Word) -> bool:
    """Two cells read as one word: a leading zero (``O38`` → ``038``) or four digits."""
    reading = read_int(word.text)
    if not reading.ok:
        return False
    digits = str(reading.value)
    text = word.text.strip("*").strip()
    value = int(reading.value)  # type: ignore[arg-type]
    return value >= 1000 or (value > 0 and len(text) > 1 and len(digits) < len(text.strip("()'.,")))


def _suspect(numbers: Sequence[Word]) -> bool:
    if any(not _readable(w) or _merged(w) for w in numbers):
        return True
    if any(w.conf is not None and 0 <= w.conf < CONF_MIN and len(w.text.strip("*")) > 1 and _clean(w)
           for w in numbers):
        return True
    return rate_fits([w.text for w in numbers]) is False


def _values(texts: Sequence[str]) -> tuple[list[float], list[tuple[str, int]], list[tuple[int, int]]]:
    """Rates (two decimals); every cell as ("rate" | "int" | "other", value); overs in balls
    with their positions."""
    rates: list[float] = []
    cells: list[tuple[str, int]] = []
    balls: list[tuple[int, int]] = []
    for i, text in enumerate(texts):
        core = text.rstrip("*")
        dec = read_decimal(core)
        if dec.ok and "." in core and len(core.partition(".")[2]) == 2:
            rates.append(float(dec.value))  # type: ignore[arg-type]
            cells.append(("rate", 0))
            continue
        whole = read_int(core)
        cells.append(("int", int(whole.value)) if whole.ok else ("other", 0))  # type: ignore[arg-type]
        overs = read_overs(core)
        if overs.ok and (b := overs_to_balls(str(overs.value))):
            balls.append((i, b))
    return rates, cells, balls


def rate_cells(texts: Sequence[str]) -> set[int] | None:
    """The positions of the row's rate and of the pair of numbers it fits (runs ÷ balls,
    runs ÷ overs); an empty set when it fits none; None when no rate is printed."""
    rates, ints, balls = _values(texts)
    if len(rates) != 1:
        return None
    rate, (rate_at,) = rates[0], [i for i, (kind, _v) in enumerate(ints) if kind == "rate"] or [-1]
    numbers = [(i, v) for i, (kind, v) in enumerate(ints) if kind == "int"]
    for (i, a), (j, b) in itertools.permutations(numbers, 2):
        if b and printed_matches(rate, 100 * a / b):
            return {rate_at, i, j}
    for (i, runs), (j, b) in itertools.product(numbers, balls):
        if i != j and printed_matches(rate, runs * 6 / b):
            return {rate_at, i, j}
    return set()


def rate_fits(texts: Sequence[str]) -> bool | None:
    """Whether the row's rate fits some pair of its numbers (None: no rate printed)."""
    cells = rate_cells(texts)
    return None if cells is None else bool(cells)


def _words(line: Line) -> list[Word]:
    """A line's words without rule and shading marks (the parser drops them too)."""
    return [w for w in line if w.text.strip() and not is_debris(w.text)]


def _row_words(line: Line) -> tuple[int, list[Word]] | None:
    """The start index (in ``_words``) and number words of a table row, or None for any other line."""
    words = _words(line)
    label, numbers = row_words(words)
    if len(numbers) < 3 or not clean_name(w.text for w in label) or _NOT_A_ROW.match(label[0].text):
        return None
    if any(w.left is None or w.top is None or w.width is None or w.height is None for w in numbers):
        return None
    return len(label), numbers


def suspects(lines: Sequence[Line]) -> list[Suspect]:
    """The table rows of one page whose numbers deserve a second look."""
    found = []
    for index, line in enumerate(lines):
        row = _row_words(line)
        if row is None:
            continue
        start, numbers = row
        if not _suspect(numbers):
            continue
        box = (min(w.left for w in numbers), min(w.top for w in numbers),  # type: ignore[type-var]
               max(w.left + w.width for w in numbers),  # type: ignore[operator]
               max(w.top + w.height for w in numbers))  # type: ignore[operator]
        found.append(Suspect(index, start, len(numbers), box))  # type: ignore[arg-type]
    return found[:MAX_ROWS]


def _same_boxes(old: list[Word], new: list[Word]) -> list[Word]:
    """The new texts in the first reading's boxes (which keep the columns exact)."""
    return [Word(n.text, o.left, o.top, o.width, o.height, n.conf) for o, n in zip(old, new, strict=True)]


def _center(word: Word) -> float:
    return (word.left or 0) + (word.width or 0) / 2


def aligned(old: list[Word], new: list[Word]) -> list[Word | None]:
    """For each first-reading cell, the one re-read word nearest to it (None when no
    word, or several, fell nearest to it): cells are matched by position, so a word the
    second look split or joined does not shift its neighbours."""
    if len(new) == len(old):
        return list(new)
    nearest: dict[int, list[Word]] = {}
    for word in new:
        i = min(range(len(old)), key=lambda k: abs(_center(old[k]) - _center(word)))
        nearest.setdefault(i, []).append(word)
    return [found[0] if len(found := nearest.get(i, [])) == 1 else None for i in range(len(old))]


def _replaces(old: Word, new: Word | None) -> bool:
    """Whether a re-read cell replaces the first reading when the row's rate cannot judge:
    the first could not be read, looked like two cells run together, or lost a decimal
    point the second look saw (``40`` for ``4.0``)."""
    if new is None or not _clean(new) or _merged(new):
        return False
    if len(new.text) > 1 and new.conf is not None and 0 <= new.conf < CONF_MIN:
        return False  # a guess: the parser's arithmetic does better with an empty cell
    if not _readable(old) or _merged(old):
        return True
    return "." in new.text and new.text.replace(".", "") == old.text and "." not in old.text


def choose(old: list[Word], new: list[Word]) -> list[Word]:
    """The row's numbers after the second look (``new`` carries page positions).

    The whole new reading is taken when it satisfies the row's rate and the first did
    not; a new reading with more cells when the first had cells run together and the
    new one has none; otherwise cell by cell (``_replaces``), as long as the row's rate
    is not broken by it.
    """
    new = [w for w in new if w.text.strip("-.")]
    if not new:
        return old
    old_fits, new_fits = rate_fits([w.text for w in old]), rate_fits([w.text for w in new])
    if new_fits and not old_fits and all(_clean(w) for w in new):
        if len(new) != len(old):
            return new
        # The cells the rate vouches for; the others only where the first reading was damaged.
        vouched = rate_cells([w.text for w in new]) or set()
        return [Word(n.text, o.left, o.top, o.width, o.height, n.conf) if i in vouched or _replaces(o, n) else o
                for i, (o, n) in enumerate(zip(old, new, strict=True))]
    if len(new) > len(old) and any(_merged(w) for w in old) and all(_clean(w) and not _merged(w) for w in new) \
            and new_fits is not False:
        return new
    pairs = list(zip(old, aligned(old, new), strict=True))
    out = [Word(n.text, o.left, o.top, o.width, o.height, n.conf) if n is not None and _replaces(o, n) else o
           for o, n in pairs]
    if rate_fits([w.text for w in out]) is False:
        # One re-read cell that makes the rate fit (``2`` read again as ``7.2`` overs).
        for i, (o, n) in enumerate(pairs):
            trial = out[:i] + [Word(n.text, o.left, o.top, o.width, o.height, n.conf)] + out[i + 1:] \
                if n is not None and _clean(n) else out
            if rate_fits([w.text for w in trial]):
                return trial
    return out if rate_fits([w.text for w in out]) is not False or old_fits is False else old


def merge(lines: Sequence[Line], found: Sequence[Suspect], rereads: Sequence[list[Word]]) -> list[list[Word]]:
    """The page's lines with each suspect row's numbers replaced by what ``choose`` keeps."""
    out = [list(line) for line in lines]
    for suspect in found:
        out[suspect.line] = _words(out[suspect.line])
    for suspect, new in zip(found, rereads, strict=True):
        line = out[suspect.line]
        old = line[suspect.start:suspect.start + suspect.count]
        line[suspect.start:suspect.start + suspect.count] = choose(old, new)
    return out
