"""The second look: which rows are read again, what is kept from the new reading, and
the whole path through real Tesseract on a page whose first reading ran cells together;
and the denoising step of the image preparation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app.services.scorecard import Word
from app.services.scorecard.numbers import read_int
from app.services.scorecard.recheck import choose, merge, rate_fits, suspects


def _row(label: str, numbers: list[tuple[str, float]], top: int = 100) -> list[Word]:
    words = [Word(t, 10 + 60 * i, top, 50, 30, 95.0) for i, t in enumerate(label.split())]
    x = 600
    for text, conf in numbers:
        words.append(Word(text, x, top, 20 * len(text), 30, conf))
        x += 120
    return words


def test_rate_fits_strike_rate_and_economy() -> None:
    assert rate_fits(["52", "55", "2", "1", "94.55"]) is True
    assert rate_fits(["52", "56", "2", "1", "94.55"]) is False
    assert rate_fits(["4", "0", "24", "2", "6.00"]) is True  # 24 runs off 4 overs
    assert rate_fits(["7", "0", "36", "3", "5.43"]) is False  # 36 off 7 overs is 5.14
    assert rate_fits(["12", "10", "1", "0"]) is None  # no rate printed


def test_only_rows_that_look_wrong_are_suspects() -> None:
    lines = [
        [Word("Riverside"), Word("CC"), Word("innings")],
        _row("J Smith c Shah b Ali", [("52", 96), ("55", 95), ("2", 96), ("1", 96), ("94.55", 96)]),
        _row("A Brown not out", [("9", 96), ("7", 96), (")", 21), ("1", 96), ("128.57", 96)]),  # repaired: fine
        _row("R Mitchell", [("7", 96), ("O38", 12), ("3", 96), ("5.43", 96)], top=300),  # run together
        _row("I Shah", [("5", 96), ("0", 90), ("25", 96), ("0", 96), ("6.10", 96)], top=400),  # rate fails
        _row("Total (all out, 20 ov)", [("145", 96)], top=500),
        _row("K Price b Ali", [("1", 96), ("~=2", 10), ("0", 96), ("0", 96)], top=600),  # unreadable
    ]
    found = suspects(lines)
    assert [s.line for s in found] == [3, 4, 6]
    assert found[0].start == 2 and found[0].count == 4
    left, top, right, bottom = found[0].box
    assert (left, top, bottom) == (600, 300, 330) and right > left


def test_choose_takes_a_reading_that_satisfies_the_rate() -> None:
    old = _row("R Mitchell", [("7", 96), ("O38", 12), ("3", 96), ("5.43", 96)])[2:]
    new = [Word(t, 600 + 100 * i, 100, 40, 30, 90.0) for i, t in enumerate(["7", "0", "38", "3", "5.43"])]
    assert [w.text for w in choose(old, new)] == ["7", "0", "38", "3", "5.43"]
    # A new reading that breaks the rate is not taken.
    bad = [Word(t, 600 + 100 * i, 100, 40, 30, 90.0) for i, t in enumerate(["7", "0", "36", "3", "5.43"])]
    assert choose(old, bad) == old


def test_choose_replaces_only_unreadable_cells_when_the_rate_cannot_judge() -> None:
    old = _row("K Price", [("1", 96), ("~=2", 10), ("0", 96), ("0", 96)])[2:]
    new = [Word(t, 600, 100, 40, 30, 90.0) for t in ["7", "2", "0", "0"]]
    chosen = choose(old, new)
    assert [w.text for w in chosen] == ["1", "2", "0", "0"]  # the readable "1" stays
    assert chosen[1].left == old[1].left  # the first reading's box keeps the column


def test_merge_replaces_the_suspect_rows_in_place() -> None:
    lines = [_row("R Mitchell", [("7", 96), ("O38", 12), ("3", 96), ("5.43", 96)])]
    found = suspects(lines)
    new = [Word(t, 600 + 100 * i, 100, 40, 30, 90.0) for i, t in enumerate(["7", "0", "38", "3", "5.43"])]
    merged = merge(lines, found, [new])
    assert [w.text for w in merged[0]] == ["R", "Mitchell", "7", "0", "38", "3", "5.43"]
    assert [w.text for w in lines[0]][-3:] == ["O38", "3", "5.43"]  # the input is not changed


def test_an_italic_zero_read_as_six_bracket_is_zero() -> None:
    assert read_int("6)").value == 0 and read_int("6)").repaired
    assert read_int("16").value == 16


needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")


@needs_tesseract
def test_second_look_through_tesseract_reads_run_together_cells(tmp_path: Path) -> None:
    """A row rendered with maidens and runs close together, read by the real page path."""
    from PIL import Image, ImageDraw, ImageFont

    from app.services import ocr

    font = ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", 40)
    page = Image.new("L", (1600, 300), 255)
    draw = ImageDraw.Draw(page)
    draw.text((40, 60), "R Mitchell", font=font, fill=0)
    draw.text((700, 60), "7      0 38      3      5.43", font=font, fill=0)
    draw.text((40, 160), "I Shah", font=font, fill=0)
    draw.text((700, 160), "5      0 25      0      5.00", font=font, fill=0)
    path = tmp_path / "page.png"
    page.save(path)
    result = ocr.ocr_page(path, 1, ocr.OcrLimits(), workdir=tmp_path)
    numbers = [[w.text for w in line][-4:] for line in result.lines]
    assert numbers[0][-2:] == ["3", "5.43"] and numbers[1][-2:] == ["0", "5.00"]
    assert "second_look" in result.prep_seconds
    assert not list(tmp_path.glob("*crops*"))  # the crops and their TSV are removed


def test_denoise_only_noisy_pages(tmp_path: Path) -> None:
    import numpy as np

    from app.services.ocr_image import NOISE_LEVEL, denoise, noise_level

    rng = np.random.default_rng(1)
    clean = np.full((800, 600), 245, np.uint8)
    for y in range(200, 600, 40):
        clean[y:y + 4, 100:500] = 20  # rules of ink, 4 px thick
    assert noise_level(clean) < NOISE_LEVEL and denoise(clean) is None
    noisy = np.clip(clean + rng.normal(0, 18, clean.shape), 0, 255).astype(np.uint8)
    assert noise_level(noisy) > NOISE_LEVEL
    out = denoise(noisy)
    assert out is not None and noise_level(out) < noise_level(noisy)


def test_rule_marks_stuttered_capitals_and_bracketed_zeros() -> None:
    from app.services.scorecard.numbers import clean_name, is_debris

    assert is_debris("=") and is_debris("~=—") and not is_debris("-") and not is_debris("12")
    assert read_int("«13").value == 13 and read_int("«#15").value == 15
    assert [read_int(t).value for t in ("ce)", "fe)", "(e)", "c)", "it)", "tt)", "(6)", "a)")] == [0] * 8
    assert [read_int(t).value for t in ("l)", "I)", "S)", "12)")] == [1, 1, 5, 12]
    assert read_int("e").value is None  # a letter without brackets is not a zero
    assert clean_name(["WwW", "Hussain"]) == "W Hussain" and clean_name(["kK", "Ahmed"]) == "K Ahmed"
    assert clean_name(["AB", "Wilson"]) == "AB Wilson" and clean_name(["WW", "Smith"]) == "WW Smith"


def test_lines_with_rule_marks_and_confusable_notes_parse() -> None:
    from app.services.scorecard import parse_text

    text = "\n".join([
        "Riverside CC v Hilltop XI", "Riverside CC innings",
        "Batter R B 4s 6s SR",
        "J Smith c Shah b Mitchell 52 = 55 2 1 94.55",
        "A Brown not out 9 = «7 0 1 128.57",
        "Extras (b 1, lb 2, w 3, nb 0) 6",
        "Total (1 wkt, 10.2 ov) 67",
        "Bowler O M R W Econ",
        "R Mitchell 5.2 0 38 1 7.13 (lw, Inb)",
        "I Shah 5 0 25 0 5.00 (2w)",
    ])
    innings = parse_text(text)["innings"][0]
    assert [(r["batter"], r["runs"], r["balls"]) for r in innings["batting"]] == [("J Smith", 52, 55), ("A Brown", 9, 7)]
    assert [(r["bowler"], r["overs"], r["runs"]) for r in innings["bowling"]] == [("R Mitchell", "5.2", 38),
                                                                                    ("I Shah", "5", 25)]


def test_overs_whose_decimal_point_was_lost_are_restored_by_the_arithmetic() -> None:
    from app.services.scorecard import parse_text

    text = "\n".join([
        "A v B", "A innings", "Batter R B 4s 6s", "X Smith b Jones 10 12 1 0",
        "Extras (b 0, lb 0, w 0, nb 0) 0", "Total (1 wkt, 8 ov) 10",
        "Bowler O M R W", "K Jones 40 0 5 1", "L Price 40 0 5 0",
    ])
    bowling = parse_text(text)["innings"][0]["bowling"]
    assert [(r["overs"], r["balls"]) for r in bowling] == [("4", 24), ("4", 24)]
    # Without the total's overs to confirm it, "40" stays forty overs.
    bowling = parse_text(text.replace("Total (1 wkt, 8 ov) 10", "Total (1 wkt) 10"))["innings"][0]["bowling"]
    assert [r["overs"] for r in bowling] == ["40", "40"]


def test_aligned_matches_rereads_to_cells_by_position() -> None:
    from app.services.scorecard.recheck import aligned

    old = [Word(t, x, 0, 40, 30, 90.0) for t, x in (("60", 100), ("27", 200), ("R)", 300), ("222.22", 400))]
    new = [Word(t, x, 0, 40, 30, 90.0) for t, x in (("60", 101), ("27", 199), ("5", 302), ("222.22", 398),
                                                       ("32", 420))]
    assert [w.text if w else None for w in aligned(old, new)] == ["60", "27", "5", None]
    assert [w.text for w in choose(old, new)] == ["60", "27", "5", "222.22"]


def test_a_cell_with_marks_run_into_it_is_repaired_by_the_rate() -> None:
    from app.services.scorecard import parse_text

    text = "\n".join(["A v B", "A innings", "Batter R B 4s 6s SR", "L Patel b Okafor 26 8619 3 1 136.84",
                      "I Singh not out 70 838 7 3 184.21", "Extras (b 0, lb 0, w 0, nb 0) 0", "Total (1 wkt, 8 ov) 96"])
    rows = parse_text(text)["innings"][0]["batting"]
    assert [(r["balls"], r["inferred"]) for r in rows] == [(19, ["balls"]), (38, ["balls"])]


def test_deskew_levels_a_rotated_page(tmp_path: Path) -> None:
    """The page is turned back by the angle found, not further the same way."""
    import numpy as np
    from PIL import Image

    from app.services.ocr_image import _small, deskew, skew_angle
    from bench.ocr.cards import CardSpec, make_card

    name, data, _, _ = make_card(CardSpec("dev-classic", 2, "clean"))
    (tmp_path / name).write_bytes(data)
    page = Image.open(tmp_path / name).convert("L")
    for turn in (1.5, -1.5):
        rotated = np.asarray(page.rotate(turn, fillcolor=255, expand=True))
        before = skew_angle(_small(rotated)[0])
        levelled = deskew(rotated, _small(rotated)[0])
        assert levelled is not None and abs(before) >= 1.25
        assert abs(skew_angle(_small(levelled)[0])) <= 0.25


def test_an_all_zero_maidens_column_without_a_header_is_maidens() -> None:
    """No wides and no no-balls in the extras is no evidence that a column of zeros is one of them."""
    from app.services.scorecard import parse_text

    text = "\n".join([
        "A v B", "A innings", "X Smith b Ansari 100 60 8 2 166.67", "Y Jones not out 38 40 3 0 95.00",
        "Extras (b 1, lb 2, w 0, nb 0) 3", "TOTAL 141 for1 (16.4 overs)",
        "W Ansari 9.0 ) 59 1 6.56", "Z Sharma 4.5 ) 19 0 3.93", "V Walker 2.5 ) 60 0 21.18",
    ])
    innings = parse_text(text)["innings"][0]
    assert [r["maidens"] for r in innings["bowling"]] == [0, 0, 0]
    assert [r["wickets"] for r in innings["bowling"]] == [1, 0, 0]
    assert (innings["total"]["runs"], innings["total"]["wickets"]) == (141, 1)


def test_runs_and_balls_read_as_one_word_are_split_where_the_strike_rate_says() -> None:
    from app.services.scorecard import parse_text

    text = "\n".join(["A v B", "A innings", "Batter R B 4s 6s SR", "L Malik c Shah b Ali 5445 6 1 120.00",
                      "K Price not out 20 10 2 1 200.00", "Extras (b 0, lb 0, w 0, nb 0) 0", "Total (1 wkt, 9.1 ov) 74"])
    rows = parse_text(text)["innings"][0]["batting"]
    assert [(r["runs"], r["balls"], r["fours"]) for r in rows] == [(54, 45, 6), (20, 10, 2)]
    assert rows[0]["inferred"] == ["runs", "balls"]


def test_noise_after_a_rows_numbers_is_dropped() -> None:
    """A shaded bar or a rule beyond the table reads as words after the figures."""
    from app.services.scorecard.columns import row_words

    def numbers(text: str) -> list[str]:
        return [w.text for w in row_words([Word(t) for t in text.split()])[1]]

    assert numbers("P Jones 4.0 0 40 0 Gites LEAR pep terete hee MB ESE, Sage") == ["4.0", "0", "40", "0"]
    assert numbers("K Ansari st Head b Iqbal 22 20 30 3 0 110.00 Se 9g EL OR") == ["22", "20", "30", "3", "0",
                                                                                   "110.00"]
    assert numbers("N Conway 4.0 0.641 Ga a eee ee a") == []
    assert numbers("A Gayle not out 101 53 65 8 6 190.57") == ["101", "53", "65", "8", "6", "190.57"]
