"""The scorecard parser on its own: structure, every cross-check firing and not firing,
every OCR confusion it repairs, column assignment by word boxes, and inference."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.services.scorecard import (
    Word,
    clean_name,
    fow_items,
    overs_to_balls,
    parse_scorecard,
    parse_text,
    read_decimal,
    read_int,
    read_overs,
)
from tests.ocr_fixtures import card_text, card_words, make_match, score

SEED = 11
ALL_CHECKS = {"batting_total", "extras_breakdown", "overs_notation", "bowling_runs", "bowling_overs", "wickets",
              "bowling_wickets", "fall_of_wickets", "strike_rate", "boundaries", "economy", "maidens"}


def _match() -> dict[str, Any]:
    return make_match(SEED)


def _truth(match: dict[str, Any]) -> dict[str, Any]:
    return {"teams": match["teams"], "innings": match["innings"]}


def _parse_mutated(mutate) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    match = copy.deepcopy(_match())
    mutate(match["innings"][0])
    return parse_text(card_text(match))


def _codes(preview: dict[str, Any], innings: int = 1) -> list[str]:
    return [w["code"] for w in preview["warnings"] if w["innings"] == innings]


# --- structure ---------------------------------------------------------------------------------


def test_clean_text_card_parses_exactly_with_every_check_passing() -> None:
    match = _match()
    preview = parse_text(card_text(match))
    result = score(preview, _truth(match))
    assert result.accuracy == 1.0, result.wrong
    assert result.missing_batters == [] and result.missing_bowlers == []
    assert preview["teams"] == match["teams"]
    assert preview["title"] == match["title"]
    assert preview["result"] == match["result"]
    assert preview["warnings"] == []
    for innings, want in zip(preview["innings"], match["innings"], strict=True):
        assert innings["team"] == want["team"]
        assert set(innings["checks"]) == ALL_CHECKS
        assert set(innings["checks"].values()) == {"passed"}, innings["checks"]
        assert innings["did_not_bat"] == want["did_not_bat"]
        assert [b["dismissal"] for b in innings["batting"]] == [b["dismissal"] for b in want["batting"]]
        assert [f["batter"] for f in innings["fall_of_wickets"]] == [f["batter"] for f in want["fall_of_wickets"]]
        assert all(0 < row["confidence"] <= 1 for row in innings["batting"] + innings["bowling"])
    # The venue line belongs to no table: kept, not dropped.
    assert [u["text"] for u in preview["unparsed"]] == ["T20 league, Riverside Park, 14 June"]
    assert preview["unparsed"][0]["page"] == 1 and preview["unparsed"][0]["line"] == 2


@pytest.mark.parametrize("seed", range(1, 41))
def test_many_generated_cards_parse_exactly_from_text_and_from_boxes(seed: int) -> None:
    match = make_match(seed)
    for preview in (parse_text(card_text(match)), parse_scorecard([card_words(match)])):
        result = score(preview, _truth(match))
        assert result.accuracy == 1.0, result.wrong
        assert result.missing_batters == [] and result.missing_bowlers == []
        assert preview["warnings"] == []


def test_innings_split_over_pages_and_unparsed_lines_are_kept() -> None:
    match = _match()
    page1 = card_text(match, [0])
    page2 = card_text(match, [1]).split("\n", 3)[3]  # no title on the second page
    junk = "Umpires: A Umpire and B Umpire"
    preview = parse_text(page1 + "\f" + page2 + "\n" + junk)
    assert [i["team"] for i in preview["innings"]] == match["teams"]
    assert [i["page"] for i in preview["innings"]] == [1, 2]
    assert score(preview, _truth(match)).accuracy == 1.0
    assert {"page": 2, "text": junk} in [{"page": u["page"], "text": u["text"]} for u in preview["unparsed"]]


# --- cross-checks: each fires alone, and only when it should ---------------------------------------


def _bump_wides_and_extras(inn: dict[str, Any]) -> None:
    inn["extras"]["wides"] += 1
    inn["extras"]["total"] += 1  # the breakdown still adds up; batting + extras no longer do


def _bump_wides_only(inn: dict[str, Any]) -> None:
    inn["extras"]["wides"] += 1


def _impossible_overs(inn: dict[str, Any]) -> None:
    inn["bowling"][0]["overs"] = "3.7"


def _bowler_runs(inn: dict[str, Any]) -> None:
    row = inn["bowling"][0]
    row["runs"] += 6
    row["economy"] = round(row["runs"] * 6 / overs_to_balls(row["overs"]), 2)  # type: ignore[operator]


def _bowler_overs(inn: dict[str, Any]) -> None:
    row = inn["bowling"][0]
    balls = overs_to_balls(row["overs"]) - 1  # type: ignore[operator]
    row["overs"] = f"{balls // 6}" if balls % 6 == 0 else f"{balls // 6}.{balls % 6}"
    row["economy"] = round(row["runs"] * 6 / balls, 2)


def _one_more_dismissal(inn: dict[str, Any]) -> None:
    inn["fall_of_wickets"] = []  # so only the wickets check can see it
    not_out = next(r for r in inn["batting"] if r["dismissal"] == "not out")
    not_out["dismissal"] = "run out (Smith)"  # run outs are no bowler's wicket


def _bowler_wickets(inn: dict[str, Any]) -> None:
    inn["bowling"][0]["wickets"] += 1


def _fow_order(inn: dict[str, Any]) -> None:
    fow = inn["fall_of_wickets"]
    fow[0]["score"], fow[1]["score"] = fow[1]["score"], fow[0]["score"]


def _strike_rate(inn: dict[str, Any]) -> None:
    inn["batting"][0]["strike_rate"] += 1


def _economy(inn: dict[str, Any]) -> None:
    inn["bowling"][0]["economy"] += 1


def _boundaries(inn: dict[str, Any]) -> None:
    inn["batting"][0]["fours"] = inn["batting"][0]["runs"] // 4 + 5


def _maidens(inn: dict[str, Any]) -> None:
    inn["bowling"][0]["maidens"] = 9


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (_bump_wides_and_extras, "batting_total"),
        (_bump_wides_only, "extras_breakdown"),
        (_impossible_overs, "overs_notation"),
        (_bowler_runs, "bowling_runs"),
        (_bowler_overs, "bowling_overs"),
        (_one_more_dismissal, "wickets"),
        (_bowler_wickets, "bowling_wickets"),
        (_fow_order, "fall_of_wickets"),
        (_strike_rate, "strike_rate"),
        (_economy, "economy"),
        (_boundaries, "boundaries"),
        (_maidens, "maidens"),
    ],
)
def test_each_check_fires_alone(mutate, code: str) -> None:  # type: ignore[no-untyped-def]
    preview = _parse_mutated(mutate)
    assert _codes(preview, 1) == [code], preview["warnings"]
    assert _codes(preview, 2) == []
    checks = preview["innings"][0]["checks"]
    assert checks[code] == "failed"
    assert all(state in ("passed", "skipped") for name, state in checks.items() if name != code), checks
    warning = preview["warnings"][0]
    assert warning["message"]
    # The row a per-row warning points at carries a lower confidence than its neighbours.
    if warning["row"] is not None and code in ("strike_rate", "boundaries"):
        rows = {r["batter"]: r["confidence"] for r in preview["innings"][0]["batting"]}
        assert rows[warning["row"]] < max(rows.values())


def test_batting_total_mismatch_reports_both_numbers() -> None:
    preview = _parse_mutated(_bump_wides_and_extras)
    warning = preview["warnings"][0]
    # One more extra than the total allows: batting + extras comes out one over what is printed.
    assert warning["computed"] - warning["printed"] == 1
    assert str(warning["printed"]) in warning["message"] and str(warning["computed"]) in warning["message"]


def test_bowling_runs_without_breakdown_is_a_range_check() -> None:
    match = copy.deepcopy(_match())
    text = card_text(match, [0])
    extras = match["innings"][0]["extras"]
    no_breakdown = text.replace(
        f"(b {extras['byes']}, lb {extras['leg_byes']}, w {extras['wides']}, nb {extras['no_balls']})", ""
    )
    preview = parse_text(no_breakdown)
    assert preview["innings"][0]["checks"]["bowling_runs"] == "passed"
    assert preview["innings"][0]["checks"]["extras_breakdown"] == "skipped"
    assert preview["innings"][0]["extras"]["byes"] is None


# --- OCR confusions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("45", 45), ("4O", 40), ("o", 0), ("D", 0),  # O/0
        ("l2", 12), ("I7", 17), ("|", 1), ("1!", 11),  # l/1/I
        ("S2", 52), ("3s", 35),  # S/5
        ("Z7", 27), ("A2", 42), ("B", 8), ("Zt", 27),  # Z/2, A/4, B/8, t/7
        ("0)", 0), ("'12", 12), ("12.", 12), ("(7)", 7), (")", 0), ("()", 0), ("(e)", 0),  # stray punctuation
        ("45*", 45),  # not-out mark
    ],
)
def test_read_int_repairs_confusions(raw: str, value: int) -> None:
    reading = read_int(raw)
    assert reading.value == value
    assert reading.repaired is (raw not in ("45", "45*"))


@pytest.mark.parametrize("raw", ["af", "ALF", "", "-", "12345", "x7y"])
def test_read_int_refuses_what_is_not_a_number(raw: str) -> None:
    assert read_int(raw).value is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [("94.55", 94.55), ("135:29", 135.29), ("140,62", 140.62), ("1OO.OO", 100.0), ("l2.S0", 12.5),
     ("7.00.", 7.0), ("100", 100.0)],
)
def test_read_decimal_repairs_confusions(raw: str, value: float) -> None:
    assert read_decimal(raw).value == value


@pytest.mark.parametrize(("raw", "value"), [("19.3", "19.3"), ("l9.3", "19.3"), ("4", "4"), ("4.0", "4"),
                                            ("3,2", "3.2"), ("2O", "20")])
def test_read_overs(raw: str, value: str) -> None:
    assert read_overs(raw).value == value


def test_overs_to_balls_rejects_a_seventh_ball() -> None:
    assert overs_to_balls("19.5") == 119
    assert overs_to_balls("4") == 24
    assert overs_to_balls("3.6") is None


@pytest.mark.parametrize(("words", "name"), [(["|", "Shah"], "I Shah"), (["Z,", "Malik"], "Z Malik"),
                                             (["j", "Fraser"], "J Fraser"), (["0", "Turner"], "O Turner"),
                                             (["K", "Ahmed*"], "K Ahmed")])
def test_names_lose_ocr_debris(words: list[str], name: str) -> None:
    assert clean_name(words) == name


def _one_innings(lines: list[str]) -> dict[str, Any]:
    header = ["Riverside CC v Hilltop XI", "Riverside CC innings", "Batter Dismissal R B 4s 6s SR"]
    return parse_text("\n".join(header + lines))


def test_confused_row_is_read_and_marked_less_confident() -> None:
    preview = _one_innings([
        "J Smith c Shah b Mitchell S2 SS 2 l 94.55",
        "A Brown Ibw b Turner 9 7 0 1 128.57",
        "Extras (b 3, Ib 5, w6, nb O) l4",
        "Tota1 (2 wkts, 2O ov) 7S",
    ])
    inn = preview["innings"][0]
    smith, brown = inn["batting"]
    assert (smith["runs"], smith["balls"], smith["fours"], smith["sixes"], smith["strike_rate"]) == (52, 55, 2, 1, 94.55)
    assert smith["confidence"] < brown["confidence"]
    assert brown["dismissal"] == "lbw b Turner"
    assert {k: inn["extras"][k] for k in ("byes", "leg_byes", "wides", "no_balls", "total")} == {
        "byes": 3, "leg_byes": 5, "wides": 6, "no_balls": 0, "total": 14}
    assert (inn["total"]["runs"], inn["total"]["wickets"], inn["total"]["overs"]) == (75, 2, "20")
    assert inn["checks"]["batting_total"] == "passed"  # 52 + 9 + 14 = 75


def test_fall_of_wickets_with_confusions_and_a_continuation_line() -> None:
    items = fow_items("1-5 (J Smith, l.2 ov), 2-l5 (A Brown, 2.3 ov),")
    assert items == [
        {"wicket": 1, "score": 5, "batter": "J Smith", "over": "1.2"},
        {"wicket": 2, "score": 15, "batter": "A Brown", "over": "2.3"},
    ]
    preview = _one_innings(["J Smith c Shah b Mitchell 52 55 2 1 94.55", "Fall of wickets: 1-5 (J Smith, 1.2 ov),",
                            "2-15 (A Brown, 2.3 ov)"])
    assert [f["score"] for f in preview["innings"][0]["fall_of_wickets"]] == [5, 15]


# --- word boxes, skew and inference ---------------------------------------------------------------


def _garble(lines: list[list[Word]], batter: str, column: int, text: str) -> list[list[Word]]:
    """Replace the ``column``-th number (0 = runs) of a batter's row by ``text``."""
    out = []
    for line in lines:
        if " ".join(w.text for w in line).startswith(batter + " "):
            numbers = line[-5:]
            target = numbers[column]
            line = [Word(text, w.left, w.top, w.width, w.height, 20.0) if w is target else w for w in line]
        out.append(line)
    return out


def test_a_garbled_cell_does_not_shift_its_neighbours() -> None:
    match = _match()
    row = match["innings"][0]["batting"][0]
    preview = parse_scorecard([_garble(card_words(match), row["batter"], 2, "af")])
    got = preview["innings"][0]["batting"][0]
    assert got["fours"] is None  # unreadable, and nothing could derive it
    assert (got["runs"], got["balls"], got["sixes"], got["strike_rate"]) == (
        row["runs"], row["balls"], row["sixes"], row["strike_rate"])


def test_unreadable_runs_are_inferred_from_strike_rate_and_balls() -> None:
    match = _match()
    row = match["innings"][0]["batting"][0]
    preview = parse_scorecard([_garble(card_words(match), row["batter"], 0, "ALF")])
    got = preview["innings"][0]["batting"][0]
    assert got["runs"] == row["runs"] and got["inferred"] == ["runs"]
    assert [w["code"] for w in preview["warnings"]] == ["inferred"]
    assert got["confidence"] < 0.95 * 0.95


def test_misread_that_checks_expose_is_corrected() -> None:
    # "73" read as "13": no OCR repair flags it, but strike rate and the innings total agree on 73.
    match = copy.deepcopy(_match())
    inn = match["innings"][0]
    row = max(inn["batting"], key=lambda r: r["runs"])
    text = card_text(match).replace(
        f"{row['batter']}  {row['dismissal']}  {row['runs']}  ", f"{row['batter']}  {row['dismissal']}  {row['runs'] - 60}  ")
    preview = parse_text(text)
    got = next(r for r in preview["innings"][0]["batting"] if r["batter"] == row["batter"])
    assert got["runs"] == row["runs"] and got["inferred"] == ["runs"]
    assert preview["innings"][0]["checks"]["batting_total"] == "passed"


def test_missing_bowler_wickets_come_from_the_dismissals() -> None:
    match = _match()
    bowler = match["innings"][0]["bowling"][0]
    lines = card_words(match)
    out = []
    for line in lines:
        if " ".join(w.text for w in line).startswith(bowler["bowler"] + " "):
            line = line[:-2] + [Word("eee", line[-2].left, line[-2].top, line[-2].width, line[-2].height, 10.0),
                                line[-1]]
        out.append(line)
    got = parse_scorecard([out])["innings"][0]["bowling"][0]
    assert got["wickets"] == bowler["wickets"] and got["inferred"] == ["wickets"]


def test_skewed_page_columns_still_line_up() -> None:
    match = _match()
    preview = parse_scorecard([card_words(match, skew=0.05)])  # about 3 degrees
    assert score(preview, _truth(match)).accuracy == 1.0
    assert preview["warnings"] == []
