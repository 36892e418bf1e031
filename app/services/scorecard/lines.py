"""Line-level helpers: what a line is, fall of wickets, dismissals, page skew."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from typing import Any

from app.services.scorecard.numbers import Line, Word, clean_name, read_int, read_overs

#: The start of one fall-of-wickets item: ``3-100`` (wicket-score), OCR-damaged digits allowed.
_FOW_PAIR_RE = re.compile(r"(?<![\w.])(?P<w>[0-9OolI|]{1,2})\s*[-–—~]\s*(?P<s>[0-9OolI|SZ]{1,3})(?![\w])")


def fow_items(text: str) -> list[dict[str, Any]]:
    """Fall-of-wickets items (``1-23 (J Smith, 4.2 ov), 2-45 …``) found in one line."""
    starts = []
    for m in _FOW_PAIR_RE.finditer(text):
        wicket_read, score_read = read_int(m["w"]), read_int(m["s"])
        if wicket_read.ok and score_read.ok:
            starts.append((m, wicket_read.value, score_read.value))
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
def normalize_dismissal(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip(" ,;:")
    text = re.sub(r"^(?:[I1|]bw|low)\b", "lbw", text)
    text = re.sub(r"^c\s*&\s*b\b", "c & b", text)
    return text


def not_out(dismissal: str) -> bool:
    d = dismissal.lower()
    return d.startswith(("not out", "retired hurt", "retired not out", "absent", "dnb", "did not bat"))


def credited_to_bowler(dismissal: str) -> bool:
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
            shift = round(slope * w.center_y)
            row.append(Word(w.text, w.left + shift, w.top, w.width, w.height, w.conf))
        out.append(row)
    return out



#: Words that start a dismissal (lower case as printed); OCR variants of lbw included.
DISMISSAL_START = {"c", "b", "lbw", "Ibw", "ibw", "1bw", "|bw", "low", "run", "st", "not", "retired", "retd",
                   "hit", "handled", "obstructing", "timed", "absent", "c&b", "ct", "hw", "sub"}
