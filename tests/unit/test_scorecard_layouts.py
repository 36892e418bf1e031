"""Layouts the parser must read by the rows' shape and the card's arithmetic: no header,
columns in another order, overs printed ``10.0``, ``(2w, 1nb)`` after bowling figures,
the dismissal on its own line, names in capitals; and the image preparation steps."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.services.scorecard import parse_text
from bench.ocr.cards import DEV_FAMILIES, FAMILIES, CardSpec, card_rows, make_card
from bench.ocr.heldout import score_card
from bench.ocr.simulate import simulate_match


def _text(family: str, seed: int, drop_headers: bool = False) -> tuple[str, dict]:
    rng = random.Random(seed)
    match = simulate_match(seed, rng.choice(("T20", "ODI", "Test")))
    lines = []
    for row in card_rows(rng, match, FAMILIES[family]):
        if drop_headers and row.kind in ("bat_header", "bowl_header", "innings"):
            continue
        lines.append("  ".join(c.text for c in row.cells if c.text))
    return "\n".join(lines), match


@pytest.mark.parametrize("family", DEV_FAMILIES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_development_layout_parses_exactly_from_text(family: str, seed: int) -> None:
    text, match = _text(family, seed)
    result = score_card(parse_text(text), match)
    assert result.accuracy == 1.0, result.wrong[:5]
    assert result.names_missing == []


@pytest.mark.parametrize("seed", [4, 5])
def test_tables_without_any_heading_are_still_read(seed: int) -> None:
    text, match = _text("dev-classic", seed, drop_headers=True)
    preview = parse_text(text)
    result = score_card(preview, match)
    # Without a header, a column of zeros only (no maidens bowled) may stay unassigned.
    assert result.accuracy >= 0.94, result.wrong[:5]
    assert result.names_missing == []
    assert len(preview["innings"]) == 2
    assert "columns_inferred" in {w["code"] for w in preview["warnings"]}


def test_columns_in_an_unusual_order_are_assigned_by_the_arithmetic() -> None:
    text = "\n".join([
        "A v B", "A innings",
        "J Smith  c Ali b Khan  32  4  1  25  128.00",  # R 4s 6s B SR: not the usual order
        "K Brown  not out  10  1  0  8  125.00",
        "Extras  (b 1, lb 0, w 2, nb 0)  3",
        "Total  (1 wkts, 5.3 ov)  45",
    ])
    bat = parse_text(text)["innings"][0]["batting"]
    assert [(r["runs"], r["balls"], r["fours"], r["sixes"]) for r in bat] == [(32, 25, 4, 1), (10, 8, 1, 0)]


def test_bowling_figures_with_notes_and_whole_overs() -> None:
    text = "\n".join([
        "A v B", "A innings", "Batter Dismissal R B 4s 6s SR",
        "J SMITH  c Ali b KHAN  40  30  4  1  133.33",
        "K BROWN  not out  12  10  1  0  120.00",
        "Extras (b 0, lb 1, w 2, nb 1) 4", "Total (1 wkt, 6.4 overs) 56",
        "Bowler O M R W Econ",
        "S KHAN  4.0  0  31  1  7.75  (2w, 1nb)",
        "R ALI  2.4  0  24  0  9.00",
    ])
    inn = parse_text(text)["innings"][0]
    assert [(r["bowler"], r["overs"], r["runs"], r["wickets"]) for r in inn["bowling"]] == [
        ("S KHAN", "4", 31, 1), ("R ALI", "2.4", 24, 0)]
    assert inn["checks"]["bowling_runs"] == "passed" and inn["checks"]["bowling_overs"] == "passed"


def test_dismissal_on_its_own_line() -> None:
    text, match = _text("dev-below", 2)
    preview = parse_text(text)
    want = [r["dismissal"] for r in match["innings"][0]["batting"]]
    assert [r["dismissal"] for r in preview["innings"][0]["batting"]] == want


def test_rows_carry_a_confidence_per_cell() -> None:
    text, _ = _text("dev-classic", 1)
    row = parse_text(text)["innings"][0]["batting"][0]
    assert set(row["cell_confidence"]) == {"runs", "balls", "fours", "sixes", "strike_rate"}


# --- image preparation ------------------------------------------------------------------------------
def _prepare(name: str, data: bytes, tmp_path: Path):  # type: ignore[no-untyped-def]
    from app.services.ocr_image import prepare

    path = tmp_path / name
    path.write_bytes(data)
    return prepare(path, tmp_path)


def test_a_clean_page_goes_to_tesseract_untouched(tmp_path: Path) -> None:
    name, data, _, _about = make_card(CardSpec("dev-classic", 1, "clean"))
    prepared = _prepare(name, data, tmp_path)
    assert prepared.applied == [] and prepared.path == tmp_path / name
    assert set(prepared.steps) >= {"load", "perspective", "lighting", "inversion", "deskew", "upscale"}


def test_inverse_bars_photos_rotation_and_low_resolution_are_prepared(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from app.services.ocr_image import skew_angle

    name, data, _, _ = make_card(CardSpec("dev-inverse", 1, "clean"))
    assert "inversion" in _prepare(name, data, tmp_path).applied
    name, data, _, _ = make_card(CardSpec("dev-classic", 1, "degraded"))  # a photographed page
    assert {"perspective", "lighting"} <= set(_prepare(name, data, tmp_path).applied)
    page = Image.open(tmp_path / name).convert("L")
    small = page.resize((600, int(600 * page.height / page.width)))
    assert abs(skew_angle(np.asarray(small.rotate(1.5, fillcolor=255))) - 1.5) <= 0.25
    low = page.resize((page.width // 3, page.height // 3))
    low.save(tmp_path / "low.png")
    prepared = _prepare("low2.png", (tmp_path / "low.png").read_bytes(), tmp_path)
    assert "upscale" in prepared.applied and prepared.path.suffix == ".pgm"
