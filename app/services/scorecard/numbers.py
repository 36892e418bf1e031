"""Reading one cell: OCR words, numbers with their OCR confusions repaired, names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal


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
_STRAY = "()[]{}'\"`´‘’“”,;:*~_^-–—.=«»#"
#: Marks a ruled or shaded row leaves between cells (``=``, ``~``, ``«``): not a cell.
_DEBRIS = set("=~_«»—–^")
#: Letters that stand for a one, even with a bracket after them.
_ONE_LIKE = set("lIi|!]")
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
    letters = core2.strip("()")
    if set(text) & set("()") and 0 < len(letters) <= 2 and letters.isalpha() and not set(letters) <= _ONE_LIKE \
            and (any(ch.islower() for ch in letters) or set(letters) <= set("OCQD")):
        # ... or as "(e)", "c)", "ce)", "it)", "tt)": small letters with a bracket (a bold or
        # italic oval split in two glyphs); "l)" and "I)" stay ones, "S)" a five.
        return "0", True
    if text in ("6)", "(6)", "(6"):
        # ... or, in italic faces, as "6)" or "(6)": the slanted oval split in two glyphs.
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


def decimals_of(reading: Reading | None) -> int:
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


def is_debris(text: str) -> bool:
    """A word made only of rule and shading marks (``=``, ``~=—``): dropped before a line is read."""
    text = text.strip()
    return bool(text) and set(text) <= _DEBRIS


def _unstutter(word: str) -> str:
    """A wide capital read as itself with small copies around it (``WwW``, ``kK`` for ``W``, ``K``)."""
    if 1 < len(word) <= 3 and word.isalpha() and len(set(word.lower())) == 1 and \
            any(ch.islower() for ch in word) and any(ch.isupper() for ch in word):
        return word.upper()[0]
    return word


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
        word = _unstutter(word)
        if len(word) == 1 and word.islower():
            word = word.upper()  # an initial
        out.append(word)
    return " ".join(out).strip()


CAPTAIN_KEEPER = re.compile(r"\s*(\((?:c|wk|c\s*&\s*wk|capt)\)|†|\*)\s*", re.I)



def mean_conf(words: Sequence[Word]) -> float:
    """The mean Tesseract confidence of some words, 0–1 (1 when they carry none)."""
    confs = [w.conf for w in words if w.conf is not None and w.conf >= 0]
    return sum(confs) / len(confs) / 100 if confs else 1.0
