"""Randomized scorecard layouts, grouped in families, rendered and degraded.

A **family** fixes the style choices a real card's publisher makes once (which columns
and in what order, what the headers are called, how the header row is drawn, whether
the dismissal sits beside or under the name, how overs, extras and totals are printed);
each card of a family then draws its font, size, resolution, spacing and match at
random from a seed. Families are split in two: the **development** families, used while
the parser and the image preparation were built, and the **held-out** families, only
ever scored (``python -m bench.ocr.heldout``). Holding out by family, not by seed, is
what tests layouts the parser has never seen.

The truth of every card is a ball-by-ball simulation (``bench.ocr.simulate``).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench.ocr.simulate import simulate_match

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
#: Debian fonts-dejavu-core / fonts-dejavu-extra and fonts-liberation, whichever files are installed.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansCondensed.ttf", "DejaVuSansMono.ttf",
              "DejaVuSerifCondensed.ttf", "DejaVuSans-Bold.ttf", "LiberationSans-Regular.ttf",
              "LiberationSerif-Regular.ttf", "LiberationMono-Regular.ttf", "LiberationSansNarrow-Regular.ttf",
              "LiberationSans-Bold.ttf", "LiberationSerif-Bold.ttf", "LiberationSans-Italic.ttf")

BAT_LABELS = {"runs": ("R", "Runs"), "balls": ("B", "Balls"), "minutes": ("M", "Mins"), "fours": ("4s", "Fours"),
              "sixes": ("6s", "Sixes"), "strike_rate": ("SR", "S/R")}
BOWL_LABELS = {"overs": ("O", "Overs", "Ov"), "maidens": ("M", "Mdns"), "runs": ("R", "Runs"),
               "wickets": ("W", "Wkts"), "economy": ("Econ", "ER"), "wides": ("Wd", "WD"),
               "no_balls": ("Nb", "NB"), "dots": ("0s", "Dots")}


@dataclass(frozen=True)
class Family:
    """The style a publisher keeps from card to card; every tuple is a set of choices per card."""

    name: str
    header: tuple[str, ...]  # plain | bold | inverse | shaded | underlined | none
    bat_columns: tuple[tuple[str, ...], ...]
    bowl_columns: tuple[tuple[str, ...], ...]
    label_style: int  # index into the *_LABELS choices (0 short, 1 long; clipped)
    dismissal_below: bool
    whole_overs: str  # "" → "10", ".0" → "10.0"
    annotate: bool  # bowling figures followed by "(2w, 1nb)"
    extras: tuple[str, ...]
    totals: tuple[str, ...]
    innings_title: tuple[str, ...]
    caps: bool
    rules: bool
    shading: bool
    align: str  # right | center
    formats: tuple[str, ...] = ("T20", "ODI", "Test")


EXTRAS = {
    "paren_after": "Extras  ({b})  {t}",  # Extras (b 1, lb 2, w 3, nb 0) 6
    "total_first": "Extras  {t}  ({b})",
    "colon": "Extras: {t} ({b})",
    "sundries": "Sundries  {t}  ({b})",
}
TOTALS = {
    "wkts_ov": "Total  ({w}, {o} ov)  {r}",
    "slash": "Total  {r}/{wn}  ({o} overs)",
    "for": "TOTAL  {r} for {wn}  ({o} overs)",
    "colon": "Total: {r} ({w}; {o} overs)",
}
INNINGS = {"innings": "{team} innings", "caps": "{TEAM} INNINGS", "nth": "{team} 1st innings",
           "overs_max": "{team} innings ({max} overs maximum)"}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    # --- development families ---------------------------------------------------------------------
    Family("dev-classic", ("plain", "bold"), (("runs", "balls", "fours", "sixes", "strike_rate"),),
           (("overs", "maidens", "runs", "wickets", "economy"),), 0, False, "", False,
           ("paren_after",), ("wkts_ov",), ("overs_max", "innings"), False, False, False, "right"),
    Family("dev-inverse", ("inverse",), (("runs", "balls", "fours", "sixes", "strike_rate"),
                                         ("runs", "balls", "minutes", "fours", "sixes", "strike_rate")),
           (("overs", "maidens", "runs", "wickets", "economy"), ("overs", "maidens", "runs", "wickets")), 0,
           False, ".0", False, ("total_first",), ("slash",), ("caps",), False, True, False, "right"),
    Family("dev-below", ("plain", "underlined"), (("runs", "balls", "fours", "sixes", "strike_rate"),),
           (("overs", "maidens", "runs", "wickets", "economy", "dots"),), 1, True, "", True,
           ("colon",), ("colon",), ("innings",), False, False, True, "right"),
    Family("dev-caps", ("shaded", "none"), (("runs", "balls", "fours", "sixes"),
                                            ("runs", "minutes", "balls", "fours", "sixes", "strike_rate")),
           (("overs", "maidens", "runs", "wickets", "wides", "no_balls"),), 0, False, ".0", False,
           ("paren_after", "colon"), ("wkts_ov", "slash"), ("caps", "nth"), True, True, False, "center"),
    Family("dev-mixed", ("bold", "inverse", "none"), (("runs", "balls", "fours", "sixes", "strike_rate"),),
           (("overs", "maidens", "runs", "wickets", "economy"),), 1, True, ".0", True,
           ("total_first", "paren_after"), ("for", "wkts_ov"), ("overs_max",), False, True, True, "right"),
    # --- held-out families: never looked at while developing, only scored ---------------------------
    Family("held-league", ("inverse", "bold"), (("runs", "balls", "minutes", "fours", "sixes", "strike_rate"),),
           (("overs", "maidens", "runs", "wickets", "economy", "wides"),), 1, False, ".0", True,
           ("sundries",), ("for",), ("innings",), True, False, True, "right"),
    Family("held-club", ("underlined", "none"), (("runs", "balls", "fours", "sixes", "strike_rate"),),
           (("overs", "maidens", "runs", "wickets"), ("overs", "maidens", "runs", "wickets", "economy")), 0,
           True, "", False, ("colon", "sundries"), ("slash", "colon"), ("nth",), False, True, False, "center"),
    Family("held-press", ("shaded", "inverse"), (("runs", "balls", "fours", "sixes"),
                                                 ("runs", "balls", "fours", "sixes", "strike_rate")),
           (("overs", "maidens", "runs", "wickets", "no_balls", "wides"),
            ("overs", "maidens", "runs", "wickets", "economy")), 1, True, ".0", True,
           ("total_first",), ("wkts_ov", "for"), ("caps", "overs_max"), True, True, True, "right"),
)}
DEV_FAMILIES = tuple(n for n in FAMILIES if n.startswith("dev-"))
HELD_OUT_FAMILIES = tuple(n for n in FAMILIES if n.startswith("held-"))


def fonts() -> list[Path]:
    found = []
    for name in FONT_FILES:
        for directory in FONT_DIRS:
            if (directory / name).exists():
                found.append(directory / name)
                break
    return found


# --- text of a card ------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    key: str  # column key ("name", "dismissal", "runs", …) or "text" for a free line


@dataclass
class Row:
    kind: str  # title | innings | bat_header | bat | dismissal | extras | total | text | bowl_header | bowl | blank
    cells: list[Cell]


def _overs(text: str, whole: str) -> str:
    return text + whole if "." not in text else text


def _fmt(key: str, row: dict[str, Any], fam: Family) -> str:
    value = row[key]
    if key in ("strike_rate", "economy"):
        return f"{value:.2f}"
    if key == "overs":
        return _overs(value, fam.whole_overs)
    return str(value)


def _name(name: str, fam: Family) -> str:
    return name.upper() if fam.caps else name


def _labels(keys: tuple[str, ...], table: dict[str, tuple[str, ...]], style: int) -> list[str]:
    return [table[k][min(style, len(table[k]) - 1)] for k in keys]


def innings_rows(rng: random.Random, inn: dict[str, Any], fam: Family, fmt: str) -> list[Row]:
    bat_keys = rng.choice(fam.bat_columns)
    bowl_keys = rng.choice(fam.bowl_columns)
    team = inn["team"]
    title = INNINGS[rng.choice(fam.innings_title)].format(team=team, TEAM=team.upper(),
                                                          max={"T20": 20, "ODI": 50}.get(fmt, 90))
    rows = [Row("innings", [Cell(title, "text")])]
    rows.append(Row("bat_header", [Cell("BATTER" if fam.caps else "Batter", "name"),
                                   Cell("" if fam.dismissal_below else "Dismissal", "dismissal")]
                    + [Cell(t, k) for t, k in zip(_labels(bat_keys, BAT_LABELS, fam.label_style), bat_keys, strict=True)]))
    for r in inn["batting"]:
        numbers = [Cell(_fmt(k, r, fam), k) for k in bat_keys]
        if fam.dismissal_below:
            rows.append(Row("bat", [Cell(_name(r["batter"], fam), "name"), Cell("", "dismissal")] + numbers))
            rows.append(Row("dismissal", [Cell(r["dismissal"], "name")]))
        else:
            rows.append(Row("bat", [Cell(_name(r["batter"], fam), "name"), Cell(r["dismissal"], "dismissal")]
                            + numbers))
    e = inn["extras"]
    breakdown = f"b {e['byes']}, lb {e['leg_byes']}, w {e['wides']}, nb {e['no_balls']}"
    rows.append(Row("extras", [Cell(EXTRAS[rng.choice(fam.extras)].format(b=breakdown, t=e["total"]), "text")]))
    t = inn["total"]
    wk = "all out" if t["wickets"] == 10 else f"{t['wickets']} wkts" + (" dec" if t.get("declared") else "")
    total = TOTALS[rng.choice(fam.totals)].format(w=wk, wn=t["wickets"], o=_overs(t["overs"], fam.whole_overs),
                                                  r=t["runs"])
    rows.append(Row("total", [Cell(total, "text")]))
    if inn["did_not_bat"]:
        rows.append(Row("text", [Cell("Did not bat: " + ", ".join(_name(n, fam) for n in inn["did_not_bat"]),
                                      "text")]))
    if inn["fall_of_wickets"]:
        items = [f"{f['wicket']}-{f['score']} ({_name(f['batter'], fam)}, {f['over']} ov)"
                 for f in inn["fall_of_wickets"]]
        lines = [", ".join(items[i:i + 3]) for i in range(0, len(items), 3)]
        lines = [ln + ("," if i < len(lines) - 1 else "") for i, ln in enumerate(lines)]
        rows.append(Row("text", [Cell("Fall of wickets: " + lines[0], "text")]))
        rows += [Row("text", [Cell(ln, "text")]) for ln in lines[1:]]
    rows.append(Row("blank", []))
    rows.append(Row("bowl_header", [Cell("BOWLER" if fam.caps else "Bowler", "name")]
                    + [Cell(t, k) for t, k in zip(_labels(bowl_keys, BOWL_LABELS, fam.label_style), bowl_keys, strict=True)]))
    for b in inn["bowling"]:
        cells = [Cell(_name(b["bowler"], fam), "name")] + [Cell(_fmt(k, b, fam), k) for k in bowl_keys]
        notes = [f"{b['wides']}w" if b["wides"] else "", f"{b['no_balls']}nb" if b["no_balls"] else ""]
        if fam.annotate and any(notes):
            cells.append(Cell("(" + ", ".join(n for n in notes if n) + ")", "note"))
        rows.append(Row("bowl", cells))
    rows.append(Row("blank", []))
    return rows


def card_rows(rng: random.Random, match: dict[str, Any], fam: Family) -> list[Row]:
    rows = [Row("title", [Cell(match["title"], "text")]),
            Row("text", [Cell(f"{match['format']} match, {rng.choice(['Riverside Park', 'The Oval Ground', 'Mill Lane'])}",
                              "text")]), Row("blank", [])]
    for inn in match["innings"]:
        rows += innings_rows(rng, inn, fam, match["format"])
    rows.append(Row("text", [Cell(f"Result: {match['result']}", "text")]))
    return rows


# --- drawing ---------------------------------------------------------------------------------------
@dataclass
class Style:
    font: Path
    dpi: int
    size_pt: float
    line_gap: float
    header: str


def _column_plan(draw: ImageDraw.ImageDraw, rows: list[Row], font: Any, x0: int, gap: int) -> dict[str, dict[str, int]]:
    """Left and right edge of every column, per table kind, from the widest text in it."""
    plans: dict[str, dict[str, int]] = {}
    for table, kinds in (("bat", ("bat_header", "bat")), ("bowl", ("bowl_header", "bowl"))):
        widths: dict[str, int] = {}
        order: list[str] = []
        for row in rows:
            if row.kind not in kinds:
                continue
            for cell in row.cells:
                if cell.key not in order:
                    order.append(cell.key)
                widths[cell.key] = max(widths.get(cell.key, 0), int(draw.textlength(cell.text, font=font)))
        x, plan = x0, {}
        for key in order:
            if key == "dismissal" and widths.get(key, 0) == 0:
                continue
            width = max(widths[key], gap)
            plan[key] = x
            plan[key + ":right"] = x + width
            x += width + gap * (3 if key in ("name", "dismissal") else 2)
        plans[table] = plan
    return plans


def render(rows: list[Row], style: Style, rng: random.Random, fam: Family) -> Image.Image:
    px = max(8, int(style.size_pt * style.dpi / 72))
    font = ImageFont.truetype(str(style.font), px)
    width = int(8.27 * style.dpi)
    margin = int(0.45 * style.dpi)
    probe = ImageDraw.Draw(Image.new("L", (10, 10)))
    plans = _column_plan(probe, rows, font, margin, int(px * 0.9))
    widest = max(v for plan in plans.values() for v in plan.values())
    if widest > width - margin // 2:
        return render(rows, Style(style.font, style.dpi, style.size_pt * 0.9, style.line_gap, style.header), rng, fam)
    line_h = int(px * style.line_gap)
    image = Image.new("L", (width, 2 * margin + line_h * len(rows)), 255)
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(rows):
        y = margin + i * line_h
        _draw_row(draw, row, plans, font, y, line_h, px, width, margin, style.header, fam, i)
    return image


def _draw_row(draw: ImageDraw.ImageDraw, row: Row, plans: dict[str, dict[str, int]], font: Any, y: int, line_h: int,
              px: int, width: int, margin: int, header: str, fam: Family, index: int) -> None:
    ink = 0
    top, bottom, middle = y + 1, y + line_h - 1, y + line_h // 2
    if row.kind in ("bat_header", "bowl_header"):
        if header == "none":
            return
        if header == "inverse":
            draw.rectangle((margin - px // 2, top, width - margin // 2, bottom), fill=35)
            ink = 250
        elif header == "shaded":
            draw.rectangle((margin - px // 2, top, width - margin // 2, bottom), fill=205)
        elif header == "underlined":
            draw.line((margin, bottom - 2, width - margin, bottom - 2), fill=0, width=max(1, px // 12))
    elif row.kind in ("bat", "bowl") and fam.shading and index % 2:
        draw.rectangle((margin - px // 2, top, width - margin // 2, bottom), fill=232)
    if fam.rules and row.kind in ("bat", "bowl", "dismissal"):
        draw.line((margin, bottom, width - margin, bottom), fill=150, width=1)
    plan = plans["bat" if row.kind in ("bat_header", "bat", "dismissal") else "bowl"]
    for cell in row.cells:
        if not cell.text:
            continue
        if cell.key == "text" or row.kind == "dismissal":
            x = margin + (int(px * 1.5) if row.kind == "dismissal" else 0)
        elif cell.key == "note":
            x = max(v for k, v in plan.items() if k.endswith(":right")) + px
        elif cell.key in ("name", "dismissal"):
            x = plan[cell.key]
        else:
            w = int(draw.textlength(cell.text, font=font))
            left, right = plan[cell.key], plan[cell.key + ":right"]
            x = right - w if fam.align == "right" else (left + right - w) // 2
        draw.text((x, middle), cell.text, font=font, fill=ink, anchor="lm")


# --- degradations ------------------------------------------------------------------------------------
def degrade(image: Image.Image, kinds: tuple[str, ...], rng: random.Random) -> Image.Image:
    import numpy as np

    for kind in kinds:
        if kind == "rotate":
            image = image.rotate(rng.uniform(-2, 2), resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
        elif kind == "noise":
            arr = np.asarray(image, dtype=np.int16)
            nrng = np.random.default_rng(rng.randrange(1 << 30))
            arr = arr + nrng.normal(0, rng.uniform(10, 22), arr.shape).astype(np.int16)
            speck = nrng.random(arr.shape) < rng.uniform(0.002, 0.01)
            arr[speck] = nrng.choice([0, 90, 200], size=int(speck.sum()))
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        elif kind == "blur":
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.7, 1.3)))
        elif kind == "photo":
            image = photograph(image, rng)
    return image


def photograph(image: Image.Image, rng: random.Random) -> Image.Image:
    """The page lying on a table, shot at an angle under a lamp: perspective and uneven light."""
    import cv2
    import numpy as np

    page = np.asarray(image, dtype=np.float32)
    h, w = page.shape
    out_w, out_h = int(w * 1.12), int(h * 1.1)
    jitter = lambda s: rng.uniform(0.01, 0.06) * s  # noqa: E731
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[w * 0.05 + jitter(w), h * 0.04 + jitter(h) * 0.5], [w * 1.07 - jitter(w), h * 0.04],
                      [w * 1.07 - jitter(w) * 0.3, h * 1.06 - jitter(h) * 0.3], [w * 0.05, h * 1.06]])
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(page, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=70)
    yy, xx = np.mgrid[0:out_h, 0:out_w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8) * out_w, rng.uniform(0.2, 0.8) * out_h
    light = 1.0 - rng.uniform(0.25, 0.45) * np.sqrt(((xx - cx) / out_w) ** 2 + ((yy - cy) / out_h) ** 2)
    lit = warped * light * rng.uniform(0.85, 1.0)
    return Image.fromarray(np.clip(cv2.GaussianBlur(lit, (0, 0), 0.7), 0, 255).astype(np.uint8))


# --- one card --------------------------------------------------------------------------------------
@dataclass
class CardSpec:
    family: str
    seed: int
    condition: str  # clean | degraded | pdf

    @property
    def name(self) -> str:
        return f"{self.family}-{self.condition}-{self.seed}"


DEGRADATIONS = (("rotate", "noise"), ("jpeg",), ("blur", "jpeg"), ("lowdpi",), ("photo",), ("rotate", "blur"),
                ("lowdpi", "jpeg"), ("noise", "jpeg"))


def make_card(spec: CardSpec) -> tuple[str, bytes, dict[str, Any], dict[str, Any]]:
    """The card's file name, bytes, truth, and a description of how it was drawn."""
    rng = random.Random(f"{spec.family}/{spec.seed}/{spec.condition}")
    fam = FAMILIES[spec.family]
    fmt = rng.choice(fam.formats)
    match = simulate_match(rng.randrange(1 << 30), fmt)
    rows = card_rows(rng, match, fam)
    kinds: tuple[str, ...] = rng.choice(DEGRADATIONS) if spec.condition == "degraded" else ()
    dpi = 150 if "lowdpi" in kinds else rng.choice((200, 240, 300, 300))
    style = Style(rng.choice(fonts()), dpi, rng.uniform(8.5, 11.5), rng.uniform(1.45, 1.9), rng.choice(fam.header))
    about = {"family": spec.family, "condition": spec.condition, "format": fmt, "font": style.font.name,
             "size_pt": round(style.size_pt, 1), "dpi": dpi, "header": style.header, "degradations": list(kinds)}
    if spec.condition == "pdf":
        cut = rng.randrange(len(rows) // 3, 2 * len(rows) // 3)
        pages = [render(rows[:cut], style, rng, fam), render(rows[cut:], style, rng, fam)]
        out = io.BytesIO()
        pages[0].save(out, "PDF", resolution=dpi, save_all=True, append_images=pages[1:])
        about["split_after_row"] = cut
        return spec.name + ".pdf", out.getvalue(), match, about
    image = degrade(render(rows, style, rng, fam), kinds, rng)
    out = io.BytesIO()
    if "jpeg" in kinds:
        quality = rng.randint(10, 40)
        about["jpeg_quality"] = quality
        image.save(out, "JPEG", quality=quality, dpi=(dpi, dpi))
        return spec.name + ".jpg", out.getvalue(), match, about
    image.save(out, "PNG", dpi=(dpi, dpi))
    return spec.name + ".png", out.getvalue(), match, about


def card_set(families: tuple[str, ...], clean: int, degraded: int, pdf: int, first_seed: int = 1) -> list[CardSpec]:
    specs = []
    for fam in families:
        for condition, count in (("clean", clean), ("degraded", degraded), ("pdf", pdf)):
            specs += [CardSpec(fam, first_seed + i, condition) for i in range(count)]
    return specs
