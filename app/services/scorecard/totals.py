"""The extras and total lines, in the wordings cards use.

``Extras (b 1, lb 2, w 3, nb 0) 6``, ``Extras 6 (b 1, …)``, ``Extras: 6 (…)``,
``Sundries 6 (…)``; ``Total (5 wkts, 20 ov) 145``, ``Total 145/5 (20 overs)``,
``TOTAL 145 for 5 (20.0 overs)``, ``Total: 145 (all out; 18.3 overs)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.services.scorecard.numbers import Reading, Word, mean_conf, overs_to_balls, read_int, read_overs

_PIECE_RE = re.compile(r"^\s*(?P<label>[l1I|][bo]|n\s?[bo]|wd|w|b|pen|p)\s*(?P<val>\S+)\s*$", re.I)
_KEYS = {"b": "byes", "w": "wides", "wd": "wides", "p": "penalty", "pen": "penalty"}


def _breakdown(inside: str) -> tuple[dict[str, int | None], bool]:
    found: dict[str, int | None] = {}
    repaired = False
    for piece in re.split(r"[,;]", inside):
        m = _PIECE_RE.match(piece)
        if not m:
            continue
        label = m["label"].lower().replace(" ", "")
        key = _KEYS.get(label) or ("no_balls" if label.startswith("n") else "leg_byes")
        reading = read_int(m["val"])
        repaired |= reading.repaired
        found[key] = reading.value  # type: ignore[assignment]
    return found, repaired


def read_extras(words: Sequence[Word], text: str) -> dict[str, Any]:
    body = text.split(None, 1)[1] if len(text.split(None, 1)) > 1 else ""
    inside = re.search(r"\(([^)]*)\)?", body)
    breakdown, repaired = _breakdown(inside.group(1)) if inside else ({}, False)
    outside = (body[: inside.start()] + " " + body[inside.end():]) if inside else body
    total = Reading(None, "")
    after = outside.split()
    for token in reversed(after):
        if (reading := read_int(token)).ok:
            total = reading
            break
    extras: dict[str, Any] = {"total": total.value}
    for key in ("byes", "leg_byes", "wides", "no_balls", "penalty"):
        extras[key] = breakdown.get(key)
    extras["_readings"] = {"total": total}
    extras["_repaired"] = repaired or total.repaired
    extras["_conf"] = mean_conf(words)
    return extras


def _runs_and_wickets(outside: str) -> tuple[Reading, int | None]:
    if (m := re.search(r"(\S+)\s*/\s*(\S+)", outside)) and read_int(m.group(1)).ok:
        return read_int(m.group(1)), read_int(m.group(2)).value  # type: ignore[return-value]
    if (m := re.search(r"(\S+)\s+for\s*(\S+)", outside, re.I)) and read_int(m.group(1)).ok:
        return read_int(m.group(1)), read_int(m.group(2)).value  # type: ignore[return-value]
    for token in reversed(outside.split()):
        if (reading := read_int(token)).ok:
            return reading, None
    return Reading(None, ""), None


def read_total(words: Sequence[Word], text: str) -> dict[str, Any]:
    body = text.split(None, 1)[1] if len(text.split(None, 1)) > 1 else ""
    inside_m = re.search(r"\(([^)]*)\)?", body)
    inside = inside_m.group(1) if inside_m else ""
    outside = (body[: inside_m.start()] + " " + body[inside_m.end():]) if inside_m else body
    outside = re.sub(r"\ball\s*out\b", " ", outside, flags=re.I)
    runs, wickets = _runs_and_wickets(outside)
    if re.search(r"all\s*out", text, re.I):
        wickets = 10
    elif wickets is None and (m := re.search(r"(\S+)\s*(?:wkts?|wickets?|wk)\b", inside, re.I)):
        wickets = read_int(m.group(1)).value  # type: ignore[assignment]
    overs = None
    if m := re.search(r"(\S+)\s*(?:ov|overs?)\b", inside + " " + outside, re.I):
        overs = read_overs(m.group(1)).value
    return {"runs": runs.value, "wickets": wickets, "overs": overs,
            "balls": overs_to_balls(overs) if isinstance(overs, str) else None,
            "_readings": {"runs": runs}, "_repaired": runs.repaired, "_conf": mean_conf(words)}
