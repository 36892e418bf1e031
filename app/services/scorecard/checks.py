"""The card's arithmetic: cells derived from the rest of the card, and the checks.

Inference first (a cell unreadable, or repaired and contradicted by its own row, is
derived when exactly one value fits), then every check in ``CHECKS`` runs on every
innings: each is a function returning what it found, so adding a check is one line.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

from app.services.scorecard.lines import credited_to_bowler, not_out
from app.services.scorecard.numbers import (
    Reading,
    balls_to_overs,
    decimals_of,
    overs_to_balls,
    printed_matches,
    round2,
)
from app.services.scorecard.parser import Innings

#: What a check reports: (code, passed / failed / None = skipped, message, row, extra fields).
Finding = tuple[str, bool | None, str, str | None, dict[str, Any]]


def _misread(reading: Reading | None, printed: Any, derived: Any) -> bool:
    """Whether a cell the row's rate contradicts may be replaced by the derived value: it
    was repaired from OCR damage, or it holds the derived digits with others run into it
    (``8619`` for 19 beside a mark OCR read as ``86``)."""
    if reading is None or printed == derived:
        return False
    if reading.repaired:
        return True
    return isinstance(printed, int) and isinstance(derived, int) and len(str(printed)) > len(str(derived)) \
        and str(derived) in str(printed)


def _split_runs_and_balls(row: dict[str, Any], decimals: int) -> None:
    """Runs and balls read as one word (``5445`` with the balls empty): split where the
    strike rate confirms it (54 off 45 is 120.00)."""
    r, b, sr = row["runs"], row["balls"], row["strike_rate"]
    merged = r if b is None else b
    if sr is None or (r is None) == (b is None) or merged is None or merged < 100:
        return
    digits = str(merged)
    fits = [(int(digits[:k]), int(digits[k:])) for k in range(1, len(digits))
            if not digits[k:].startswith("0") and int(digits[k:]) and printed_matches(sr, 100 * int(digits[:k])
                                                                                    / int(digits[k:]), decimals)]
    if len(fits) == 1:
        row["runs"], row["balls"] = fits[0]
        row["_inferred"].extend(["runs", "balls"])


def _resolve_batting_row(innings: Innings, row: dict[str, Any]) -> None:
    """Strike rate = 100 × runs / balls: derive one missing or contradicted cell."""
    readings: dict[str, Reading] = row["_readings"]
    row["_inferred"] = []
    _split_runs_and_balls(row, decimals_of(readings.get("strike_rate")))
    if row["_inferred"]:
        return
    r, b, sr = row["runs"], row["balls"], row["strike_rate"]
    decimals = decimals_of(readings.get("strike_rate"))
    if r is not None and b and sr is not None and printed_matches(sr, 100 * r / b, decimals):
        return
    candidates: list[tuple[str, Any]] = []
    if sr is not None and b:
        value = round(sr * b / 100)
        if printed_matches(sr, 100 * value / b, decimals):
            candidates.append(("runs", value))
    if sr and r is not None and r > 0:
        value = 100 * r / sr
        rounded = round(value)
        if rounded > 0 and printed_matches(sr, 100 * r / rounded, decimals):
            candidates.append(("balls", rounded))
    if r is not None and b:
        candidates.append(("strike_rate", round2(100 * r / b)))
    # Replace a missing cell first; otherwise the one that was repaired from OCR damage.
    _infer_one(row, readings, candidates)

def _infer_one(row: dict[str, Any], readings: dict[str, Reading], candidates: list[tuple[str, Any]]) -> None:
    """Take the first candidate for a missing cell; failing that, for one repaired from OCR
    damage; and say which cell was inferred."""
    pick = next(((k, v) for k, v in candidates if row[k] is None), None) or next(
        ((k, v) for k, v in candidates if _misread(readings.get(k), row[k], v)), None)
    if pick is not None:
        key, value = pick
        row[key] = value
        row["_inferred"].append(key)


def _resolve_bowling_row(innings: Innings, row: dict[str, Any]) -> None:
    """Economy = runs ÷ overs: derive one missing or contradicted cell."""
    readings: dict[str, Reading] = row["_readings"]
    row["_inferred"] = []
    balls, runs, econ = row["balls"], row["runs"], row["economy"]
    decimals = decimals_of(readings.get("economy"))
    if balls and runs is not None and econ is not None and printed_matches(econ, runs * 6 / balls, decimals):
        return
    candidates: list[tuple[str, Any]] = []
    if econ is not None and balls:
        value = econ * balls / 6
        rounded = round(value)
        if printed_matches(econ, rounded * 6 / balls, decimals):
            candidates.append(("runs", rounded))
    if runs is not None and balls:
        candidates.append(("economy", round2(runs * 6 / balls)))
    _infer_one(row, readings, candidates)

def _fill_from_total(innings: Innings) -> None:
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
                       if r["dismissal"] and not not_out(r["dismissal"]) and credited_to_bowler(r["dismissal"]))
        value = credited - sum(row["wickets"] for row in innings.bowling if row["wickets"] is not None)
        if value >= 0:
            unknown[0]["wickets"] = value
            unknown[0]["_inferred"].append("wickets")

def _resolve_with_totals(inn: Innings) -> None:
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
                candidate = round(sr * b / 100)
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
                candidate = round(econ * balls / 6)
                if candidate - r == gap and printed_matches(econ, candidate * 6 / balls):
                    fits.append((row, candidate))
        if len(fits) == 1:
            fits[0][0]["runs"] = fits[0][1]
            fits[0][0]["_inferred"].append("runs")



def infer(inn: Innings) -> None:
    """Every inference, in order: row rates first, then column sums."""
    for row in inn.batting:
        _resolve_batting_row(inn, row)
    for row in inn.bowling:
        _resolve_bowling_row(inn, row)
    _fill_from_total(inn)
    _resolve_with_totals(inn)


# --- the checks ---------------------------------------------------------------------------------
def _batting_total(inn: Innings) -> Iterator[Finding]:
    runs, total, extras = [r["runs"] for r in inn.batting], inn.total or {}, inn.extras or {}
    if not inn.batting or None in runs or total.get("runs") is None or extras.get("total") is None:
        yield "batting_total", None, "", None, {}
        return
    computed = sum(runs) + extras["total"]
    yield ("batting_total", computed == total["runs"], f"batting runs {sum(runs)} + extras {extras['total']} = "
           f"{computed}, but the total says {total['runs']}", None, {"printed": total["runs"], "computed": computed})


def _extras_breakdown(inn: Innings) -> Iterator[Finding]:
    extras = inn.extras or {}
    known: list[int] = [extras[k] for k in ("byes", "leg_byes", "wides", "no_balls", "penalty") if extras.get(k) is not None]
    if extras.get("total") is None or not known:
        yield "extras_breakdown", None, "", None, {}
        return
    yield ("extras_breakdown", sum(known) == extras["total"],
           f"extras breakdown adds up to {sum(known)}, but extras are {extras['total']}", None,
           {"printed": extras["total"], "computed": sum(known)})


def _overs_notation(inn: Innings) -> Iterator[Finding]:
    total = inn.total or {}
    bad = [("total", total["overs"])] if total.get("overs") is not None and total.get("balls") is None else []
    bad += [(r["bowler"], r["overs"]) for r in inn.bowling if r["overs"] is not None and r["balls"] is None]
    bad += [(f"wicket {f['wicket']}", f["over"]) for f in inn.fall_of_wickets
            if f["over"] is not None and overs_to_balls(f["over"]) is None]
    for where, overs in bad:
        yield ("overs_notation", False, f"{where}: {overs} overs is impossible (an over has 6 balls)", where,
               {"printed": overs})
    if not bad:
        yield "overs_notation", True if (total.get("overs") or inn.bowling) else None, "", None, {}


def _bowling_runs(inn: Innings) -> Iterator[Finding]:
    runs, total, extras = [r["runs"] for r in inn.bowling], inn.total or {}, inn.extras or {}
    if not inn.bowling or None in runs or total.get("runs") is None:
        yield "bowling_runs", None, "", None, {}
        return
    got = sum(runs)
    if extras.get("byes") is not None and extras.get("leg_byes") is not None:
        expected = total["runs"] - extras["byes"] - extras["leg_byes"] - (extras.get("penalty") or 0)
        yield ("bowling_runs", got == expected, f"bowlers conceded {got}, but total {total['runs']} less byes and "
               f"leg byes is {expected}", None, {"printed": got, "computed": expected})
    elif extras.get("total") is not None:
        low, high = total["runs"] - extras["total"], total["runs"]
        yield ("bowling_runs", low <= got <= high, f"bowlers conceded {got}, outside {low}–{high} (total "
               f"{total['runs']}, extras {extras['total']})", None, {"printed": got})
    else:
        yield "bowling_runs", None, "", None, {}


def _bowling_overs(inn: Innings) -> Iterator[Finding]:
    balls, total = [r["balls"] for r in inn.bowling], inn.total or {}
    if not inn.bowling or None in balls or total.get("balls") is None:
        yield "bowling_overs", None, "", None, {}
        return
    got = sum(balls)
    yield ("bowling_overs", got == total["balls"], f"bowlers bowled {balls_to_overs(got)} overs, but the innings "
           f"lasted {total['overs']}", None, {"printed": balls_to_overs(got), "computed": total["overs"]})


def _dismissed(inn: Innings) -> list[dict[str, Any]]:
    return [r for r in inn.batting if r["dismissal"] and not not_out(r["dismissal"])]


def _wickets(inn: Innings) -> Iterator[Finding]:
    total, out = inn.total or {}, len(_dismissed(inn))
    if total.get("wickets") is None or not inn.batting:
        yield "wickets", None, "", None, {}
        return
    yield ("wickets", out == total["wickets"], f"{out} batters are out, but the total says {total['wickets']} "
           "wickets", None, {"printed": total["wickets"], "computed": out})


def _bowling_wickets(inn: Innings) -> Iterator[Finding]:
    credited = sum(1 for r in _dismissed(inn) if credited_to_bowler(r["dismissal"]))
    wickets = [r["wickets"] for r in inn.bowling]
    if not inn.bowling or not inn.batting or None in wickets:
        yield "bowling_wickets", None, "", None, {}
        return
    yield ("bowling_wickets", sum(wickets) == credited, f"bowlers took {sum(wickets)} wickets, but {credited} "
           "dismissals are credited to a bowler", None, {"printed": sum(wickets), "computed": credited})


def _fall_of_wickets(inn: Innings) -> Iterator[Finding]:
    fow, total = inn.fall_of_wickets, inn.total or {}
    if not fow:
        yield "fall_of_wickets", None, "", None, {}
        return
    scores = [f["score"] for f in fow]
    problems = [text for bad, text in (
        ([f["wicket"] for f in fow] != list(range(1, len(fow) + 1)), "wickets are not numbered 1, 2, 3, …"),
        (any(a > b for a, b in itertools.pairwise(scores)), "scores go down"),
        (total.get("runs") is not None and scores[-1] > total["runs"],
         f"last score {scores[-1]} is above the total {total.get('runs')}"),
        (total.get("wickets") is not None and len(fow) != total["wickets"],
         f"{len(fow)} listed for {total.get('wickets')} wickets"),
    ) if bad]
    yield "fall_of_wickets", not problems, "fall of wickets: " + "; ".join(problems), None, {}


def _batting_rows(inn: Innings) -> Iterator[Finding]:
    for row in inn.batting:
        r, b, sr = row["runs"], row["balls"], row["strike_rate"]
        if r is not None and b and sr is not None:
            computed = round2(100 * r / b)
            ok = printed_matches(sr, 100 * r / b, decimals_of(row["_readings"].get("strike_rate")))
            yield ("strike_rate", ok, f"{row['batter']}: strike rate printed {sr:.2f}, {r} runs off {b} balls is "
                   f"{computed:.2f}", row["batter"], {"printed": sr, "computed": computed})
        if r is not None and row["fours"] is not None and row["sixes"] is not None:
            boundary = 4 * row["fours"] + 6 * row["sixes"]
            yield ("boundaries", boundary <= r, f"{row['batter']}: {row['fours']} fours and {row['sixes']} sixes "
                   f"make {boundary}, more than {r} runs", row["batter"], {"printed": r, "computed": boundary})


def _bowling_rows(inn: Innings) -> Iterator[Finding]:
    for row in inn.bowling:
        balls, runs, econ = row["balls"], row["runs"], row["economy"]
        if balls and runs is not None and econ is not None:
            computed = round2(runs * 6 / balls)
            ok = printed_matches(econ, runs * 6 / balls, decimals_of(row["_readings"].get("economy")))
            yield ("economy", ok, f"{row['bowler']}: economy printed {econ:.2f}, {runs} runs off {row['overs']} "
                   f"overs is {computed:.2f}", row["bowler"], {"printed": econ, "computed": computed})
        if balls and row["maidens"] is not None:
            yield ("maidens", row["maidens"] <= balls // 6, f"{row['bowler']}: {row['maidens']} maidens in "
                   f"{row['overs']} overs", row["bowler"], {"printed": row["maidens"]})


#: Every check, in the order its warnings are listed.
CHECKS: tuple[Callable[[Innings], Iterator[Finding]], ...] = (
    _batting_total, _extras_breakdown, _overs_notation, _bowling_runs, _bowling_overs, _wickets, _bowling_wickets,
    _fall_of_wickets, _batting_rows, _bowling_rows,
)
ROW_CHECKS = ("strike_rate", "boundaries", "economy", "maidens")


def run_checks(inn: Innings) -> list[Finding]:
    """Run every check on an innings; record each code's state; return the failures."""
    failures: list[Finding] = []
    for check in CHECKS:
        for code, ok, message, row, extra in check(inn):
            state = "skipped" if ok is None else ("passed" if ok else "failed")
            previous = inn.checks.get(code)
            if previous != "failed" and not (previous == "passed" and state == "skipped"):
                inn.checks[code] = state
            if ok is False:
                failures.append((code, ok, message, row, extra))
    for code in ROW_CHECKS:
        inn.checks.setdefault(code, "skipped")
    return failures
