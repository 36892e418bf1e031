"""Scorecard fixtures for the OCR tests: consistent ground truth and a Pillow renderer.

``make_match(seed)`` simulates a two-innings limited-overs match whose numbers agree
with each other the way a printed scorecard's do (batting runs + extras = total,
bowlers' runs = total − byes − leg byes, strike rates and economies recomputed, the
bowlers' overs add up to the innings' overs, fall of wickets rising). The truth has
the shape of the parser's preview, so a test compares the two cell by cell.

``render_page`` draws a card with a TrueType font at 300 dpi; ``build`` writes the
fixtures the tests use: clean images in several fonts, sizes and formats, one rotated a
few degrees, one with noise and blur, and a two-page PDF made of lossless bilevel
images (CCITT G4). Run it to look at them::

    .venv/bin/python -m tests.ocr_fixtures OUTPUT_DIR
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

DPI = 300
PAGE_WIDTH = 2480  # A4 at 300 dpi

FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation"))
#: Debian packages fonts-dejavu-core and fonts-liberation (scripts/bootstrap installs them).
FONTS = {
    "dejavu-sans": "DejaVuSans.ttf",
    "dejavu-serif": "DejaVuSerif.ttf",
    "liberation-sans": "LiberationSans-Regular.ttf",
    "liberation-serif": "LiberationSerif-Regular.ttf",
}

TEAMS: dict[str, list[str]] = {
    "Riverside CC": ["J Smith", "A Brown", "R Patel", "M Khan", "T Wilson", "D Taylor",
                     "K Ahmed", "P Jones", "N Clarke", "H Ali", "G Evans"],
    "Hilltop XI": ["S Murphy", "L Walker", "V Sharma", "F Hughes", "E Robinson", "C Wright",
                   "O Turner", "Y Hussain", "W Baker", "I Shah", "R Mitchell"],
    "Northbridge": ["B Cooper", "Z Malik", "J Fraser", "T Okafor", "M Reid", "A Dunn",
                    "S Rahman", "P Lowe", "D Nash", "K Ward", "U Iqbal"],
    "Eastfield Town": ["C Marsh", "N Kapoor", "R Doyle", "G Price", "H Webb", "L Grant",
                       "F Ellis", "Q Ansari", "E Moss", "T Burke", "J Kerr"],
}


def font_path(name: str) -> Path | None:
    """The TrueType file of a fixture font, or None when its Debian package is missing."""
    for directory in FONT_DIRS:
        path = directory / FONTS[name]
        if path.exists():
            return path
    return None


def _round2(value: float) -> float:
    return float(Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _overs(balls: int) -> str:
    return f"{balls // 6}" if balls % 6 == 0 else f"{balls // 6}.{balls % 6}"


def _split(rng: random.Random, total: int, weights: list[float]) -> list[int]:
    """Integers proportional to ``weights`` (with noise) that add up to ``total``."""
    noisy = [w * rng.uniform(0.6, 1.4) for w in weights]
    scale = total / sum(noisy)
    parts = [int(w * scale) for w in noisy]
    for i in rng.sample(range(len(parts)), k=len(parts)):
        if sum(parts) >= total:
            break
        parts[i] += 1
    while sum(parts) < total:
        parts[rng.randrange(len(parts))] += 1
    return parts


def make_innings(rng: random.Random, batting: str, bowling: str, *, all_out: bool) -> dict[str, Any]:
    """One innings whose every printed number agrees with the others."""
    batters, fielders = TEAMS[batting], TEAMS[bowling]
    wickets = 10 if all_out else rng.randint(3, 8)
    batted = min(11, wickets + (1 if wickets == 10 else 2))
    balls_total = rng.randint(100, 119) if all_out else 120
    pool = fielders[5:] if rng.random() < 0.5 else fielders[6:]
    keeper = fielders[1]

    # Whole overs shared out at most four each (a T20 card); the last over may be partial.
    overs_each = {b: 0 for b in pool}
    for _ in range((balls_total + 5) // 6):
        overs_each[rng.choice([b for b in pool if overs_each[b] < 4])] += 1
    bowlers = [b for b in pool if overs_each[b] > 0]
    balls_each = {b: overs_each[b] * 6 for b in bowlers}
    if balls_total % 6:
        balls_each[rng.choice(bowlers)] -= 6 - balls_total % 6
    bowlers = [b for b in bowlers if balls_each[b] > 0]

    rows = []
    credited: list[str] = []
    for pos in range(batted):
        out = pos < wickets
        choices = (0, 1, 2, 4, 7, 9, 12, 15, 18, 23, 27, 31, 38, 44, 52, 61, 73) if pos < 6 else (0, 1, 2, 3, 5, 7, 9, 12, 15)
        runs = rng.choice(choices)
        balls = rng.randint(1, 6) if runs == 0 else max(1, round(runs * rng.uniform(0.7, 1.5)))
        sixes = rng.randint(0, min(3, runs // 6))
        fours = rng.randint(0, min(7, (runs - 6 * sixes) // 4))
        if out:
            bowler = rng.choice(bowlers)
            kind = rng.choices(["c", "b", "lbw", "run out", "st", "c&b"], [50, 20, 15, 8, 4, 3])[0]
            fielder = rng.choice([f for f in fielders if f != bowler])
            dismissal = {
                "c": f"c {fielder.split()[-1]} b {bowler.split()[-1]}",
                "b": f"b {bowler.split()[-1]}",
                "lbw": f"lbw b {bowler.split()[-1]}",
                "run out": f"run out ({fielder.split()[-1]})",
                "st": f"st {keeper.split()[-1]} b {bowler.split()[-1]}",
                "c&b": f"c & b {bowler.split()[-1]}",
            }[kind]
            if kind != "run out":
                credited.append(bowler)
        else:
            dismissal = "not out"
        rows.append({
            "batter": batters[pos], "dismissal": dismissal, "runs": runs, "balls": balls,
            "fours": fours, "sixes": sixes, "strike_rate": _round2(100 * runs / balls),
        })

    extras = {"byes": rng.randint(0, 4), "leg_byes": rng.randint(0, 6), "wides": rng.randint(0, 9),
              "no_balls": rng.randint(0, 3)}
    extras["total"] = sum(extras.values())
    total_runs = sum(r["runs"] for r in rows) + extras["total"]

    conceded = total_runs - extras["byes"] - extras["leg_byes"]
    runs_each = dict(zip(bowlers, _split(rng, conceded, [balls_each[b] for b in bowlers]), strict=True))
    bowling = []
    for b in bowlers:
        maidens = 1 if balls_each[b] >= 18 and runs_each[b] < balls_each[b] and rng.random() < 0.3 else 0
        bowling.append({
            "bowler": b, "overs": _overs(balls_each[b]), "maidens": maidens, "runs": runs_each[b],
            "wickets": credited.count(b), "economy": _round2(runs_each[b] * 6 / balls_each[b]),
        })

    scores = sorted(rng.sample(range(5, max(6 + wickets, total_runs - 5)), wickets))
    at_balls = sorted(rng.sample(range(3, balls_total), wickets))
    fow = [{"wicket": i + 1, "score": scores[i], "batter": rows[i]["batter"], "over": _overs(at_balls[i])}
           for i in range(wickets)]
    return {
        "team": batting,
        "batting": rows,
        "did_not_bat": batters[batted:],
        "extras": extras,
        "total": {"runs": total_runs, "wickets": wickets, "overs": _overs(balls_total)},
        "fall_of_wickets": fow,
        "bowling": bowling,
    }


def make_match(seed: int, home: str = "Riverside CC", away: str = "Hilltop XI") -> dict[str, Any]:
    """A consistent two-innings match: the ground truth of one card."""
    rng = random.Random(seed)
    first = make_innings(rng, home, away, all_out=rng.random() < 0.4)
    second = make_innings(rng, away, home, all_out=rng.random() < 0.5)
    a, b = first["total"]["runs"], second["total"]["runs"]
    if a > b:
        result = f"{home} won by {a - b} runs"
    elif b > a:
        left = 10 - second["total"]["wickets"]
        result = f"{away} won by {left} wickets" if left else f"{away} won"
    else:
        result = "Match tied"
    return {"title": f"{home} v {away}", "teams": [home, away], "innings": [first, second], "result": result}


# --- rendering --------------------------------------------------------------------------------
@dataclass
class Cell:
    text: str
    x: int
    align: str = "left"  # left | right


@dataclass
class Layout:
    """Column positions (pixels at 300 dpi, page 2480 wide)."""

    name: int = 120
    dismissal: int = 760
    bat_cols: tuple[int, ...] = (1700, 1860, 2000, 2130, 2360)  # R B 4s 6s SR, right edges
    bowl_cols: tuple[int, ...] = (1240, 1400, 1560, 1720, 1930)  # O M R W Econ, right edges
    wrap: int = 2360


def _fmt2(value: float) -> str:
    return f"{value:.2f}"


def innings_rows(innings: dict[str, Any], number: int, layout: Layout, max_overs: int = 20) -> list[list[Cell]]:
    """The lines of one innings as positioned cells (an empty list is a blank line)."""
    L = layout
    rows: list[list[Cell]] = [[Cell(f"{innings['team']} innings ({max_overs} overs maximum)", L.name)]]
    rows.append([Cell("Batter", L.name), Cell("Dismissal", L.dismissal)]
                + [Cell(h, x, "right") for h, x in zip(("R", "B", "4s", "6s", "SR"), L.bat_cols, strict=True)])
    for r in innings["batting"]:
        values = (str(r["runs"]), str(r["balls"]), str(r["fours"]), str(r["sixes"]), _fmt2(r["strike_rate"]))
        rows.append([Cell(r["batter"], L.name), Cell(r["dismissal"], L.dismissal)]
                    + [Cell(v, x, "right") for v, x in zip(values, L.bat_cols, strict=True)])
    e = innings["extras"]
    rows.append([Cell("Extras", L.name),
                 Cell(f"(b {e['byes']}, lb {e['leg_byes']}, w {e['wides']}, nb {e['no_balls']})", L.dismissal),
                 Cell(str(e["total"]), L.bat_cols[0], "right")])
    t = innings["total"]
    wk = "all out" if t["wickets"] == 10 else f"{t['wickets']} wkts"
    rows.append([Cell("Total", L.name), Cell(f"({wk}, {t['overs']} ov)", L.dismissal),
                 Cell(str(t["runs"]), L.bat_cols[0], "right")])
    if innings["did_not_bat"]:
        rows.append([Cell("Did not bat: " + ", ".join(innings["did_not_bat"]), L.name)])
    if innings["fall_of_wickets"]:
        rows.append([Cell("Fall of wickets:", L.name)])
        items = [f"{f['wicket']}-{f['score']} ({f['batter']}, {f['over']} ov)" for f in innings["fall_of_wickets"]]
        line: list[str] = []
        for item in items:  # three per line keeps every line inside the page
            line.append(item)
            if len(line) == 3:
                rows.append([Cell(", ".join(line) + ",", L.name)])
                line = []
        if line:
            rows.append([Cell(", ".join(line), L.name)])
        else:
            rows[-1][0].text = rows[-1][0].text.rstrip(",")
    rows.append([])
    rows.append([Cell("Bowler", L.name)]
                + [Cell(h, x, "right") for h, x in zip(("O", "M", "R", "W", "Econ"), L.bowl_cols, strict=True)])
    for b in innings["bowling"]:
        values = (b["overs"], str(b["maidens"]), str(b["runs"]), str(b["wickets"]), _fmt2(b["economy"]))
        rows.append([Cell(b["bowler"], L.name)] + [Cell(v, x, "right") for v, x in zip(values, L.bowl_cols, strict=True)])
    rows.append([])
    return rows


def card_rows(match: dict[str, Any], innings: list[int], layout: Layout, header: bool = True) -> list[list[Cell]]:
    """Title, the chosen innings and the result, as positioned lines."""
    rows: list[list[Cell]] = []
    if header:
        rows += [[Cell(match["title"], layout.name)], [Cell("T20 league, Riverside Park, 14 June", layout.name)], []]
    for i in innings:
        rows += innings_rows(match["innings"][i], i + 1, layout)
    if header and len(innings) == len(match["innings"]):
        rows.append([Cell(f"Result: {match['result']}", layout.name)])
    return rows


def render_page(rows: list[list[Cell]], font_file: Path, size: int, *, line_gap: float = 1.55) -> Image.Image:
    """Draw positioned lines in black on white, grayscale, at 300 dpi."""
    font = ImageFont.truetype(str(font_file), size)
    line_height = int(size * line_gap)
    height = 160 * 2 + line_height * len(rows)
    image = Image.new("L", (PAGE_WIDTH, height), 255)
    draw = ImageDraw.Draw(image)
    y = 160
    for row in rows:
        for cell in row:
            x = cell.x
            if cell.align == "right":
                x -= int(draw.textlength(cell.text, font=font))
            draw.text((x, y), cell.text, font=font, fill=0)
        y += line_height
    return image


def add_noise(image: Image.Image, seed: int, amount: float = 0.012) -> Image.Image:
    """Grey speckles, Gaussian grain and a slight blur, like a poor photocopy (deterministic)."""
    rng = random.Random(seed)
    noisy = image.copy()
    px = noisy.load()
    w, h = noisy.size
    for _ in range(int(w * h * amount)):
        px[rng.randrange(w), rng.randrange(h)] = rng.choice((0, 60, 200))
    # A seeded 256×256 grain tile repeated over the page: cheap, and the same every run.
    tile = Image.frombytes("L", (256, 256), bytes(max(0, min(255, int(rng.gauss(0, 24)))) for _ in range(256 * 256)))
    grain = Image.new("L", (w, h))
    for x in range(0, w, 256):
        for y in range(0, h, 256):
            grain.paste(tile, (x, y))
    noisy = ImageChops.subtract(noisy, grain)
    return noisy.filter(ImageFilter.GaussianBlur(0.8))


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)


# --- the fixture set ------------------------------------------------------------------------
@dataclass
class FixtureSpec:
    """One fixture file: which match, how it is drawn and saved, and its accuracy class."""

    name: str
    seed: int
    font: str
    size: int
    fmt: str  # png | jpeg | tiff | webp | pdf
    kind: str = "clean"  # clean | noisy | rotated
    rotate: float = 0.0
    noise: bool = False
    teams: tuple[str, str] = ("Riverside CC", "Hilltop XI")
    pages: list[list[int]] = field(default_factory=lambda: [[0, 1]])

    def match(self) -> dict[str, Any]:
        return make_match(self.seed, *self.teams)

    @property
    def filename(self) -> str:
        return f"{self.name}.{'jpg' if self.fmt == 'jpeg' else self.fmt}"


FIXTURES: dict[str, FixtureSpec] = {
    s.name: s
    for s in (
        FixtureSpec("clean-dejavu-sans", 11, "dejavu-sans", 36, "png"),
        FixtureSpec("clean-liberation-serif", 12, "liberation-serif", 42, "tiff",
                    teams=("Northbridge", "Eastfield Town")),
        FixtureSpec("clean-liberation-sans", 13, "liberation-sans", 38, "webp",
                    teams=("Eastfield Town", "Riverside CC")),
        FixtureSpec("rotated-dejavu-serif", 14, "dejavu-serif", 36, "png", kind="rotated", rotate=3.0,
                    teams=("Hilltop XI", "Northbridge")),
        FixtureSpec("noisy-liberation-sans", 15, "liberation-sans", 40, "jpeg", kind="noisy", noise=True,
                    teams=("Northbridge", "Riverside CC")),
        FixtureSpec("two-page-pdf", 16, "dejavu-sans", 40, "pdf", pages=[[0], [1]]),
    )
}


def missing_fonts(names: list[str] | None = None) -> list[str]:
    """Fixture fonts whose Debian package is not installed."""
    wanted = {FIXTURES[n].font for n in (names or FIXTURES)}
    return sorted(f for f in wanted if font_path(f) is None)


def page_images(spec: FixtureSpec) -> list[Image.Image]:
    """The rendered pages of a fixture, before saving."""
    match = spec.match()
    font = font_path(spec.font)
    if font is None:
        raise FileNotFoundError(f"font {spec.font} ({FONTS[spec.font]}) is not installed")
    images = []
    for number, innings in enumerate(spec.pages):
        rows = card_rows(match, innings, Layout(), header=number == 0)
        if len(spec.pages) > 1 and number == len(spec.pages) - 1:
            rows.append([Cell(f"Result: {match['result']}", Layout().name)])
        image = render_page(rows, font, spec.size)
        if spec.noise:
            image = add_noise(image, spec.seed)
        if spec.rotate:
            image = rotate(image, spec.rotate)
        images.append(image)
    return images


def build(spec: FixtureSpec, out_dir: Path) -> Path:
    """Render and save one fixture; returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.filename
    images = page_images(spec)
    dpi = (DPI, DPI)
    if spec.fmt == "pdf":
        # Bilevel pages are stored with CCITT G4: lossless, and small. The threshold keeps
        # the anti-aliased edge pixels black, so strokes stay as thick as drawn.
        pages = [im.point(lambda v: 255 if v > 200 else 0).convert("1") for im in images]
        pages[0].save(path, "PDF", resolution=DPI, save_all=True, append_images=pages[1:])
    elif spec.fmt == "jpeg":
        images[0].save(path, "JPEG", quality=85, dpi=dpi)
    elif spec.fmt == "tiff":
        images[0].save(path, "TIFF", compression="tiff_deflate", dpi=dpi)
    elif spec.fmt == "webp":
        images[0].save(path, "WEBP", lossless=True)
    else:
        images[0].save(path, "PNG", dpi=dpi, optimize=False)
    return path


def truth(spec: FixtureSpec) -> dict[str, Any]:
    """The ground truth of a fixture (only the innings it shows)."""
    match = spec.match()
    shown = sorted({i for page in spec.pages for i in page})
    return {"teams": match["teams"], "result": match["result"], "innings": [match["innings"][i] for i in shown]}


if __name__ == "__main__":  # pragma: no cover - writes the fixtures out to look at them
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures-out")
    for spec in FIXTURES.values():
        print(build(spec, target))


# --- scoring a preview against the truth ----------------------------------------------------------
BATTING_NUMBERS = ("runs", "balls", "fours", "sixes", "strike_rate")
BOWLING_NUMBERS = ("overs", "maidens", "runs", "wickets", "economy")
EXTRAS_NUMBERS = ("total", "byes", "leg_byes", "wides", "no_balls")
TOTAL_NUMBERS = ("runs", "wickets", "overs")


@dataclass
class Score:
    """How much of the truth a preview got exactly right."""

    cells: int = 0
    right: int = 0
    wrong: list[str] = field(default_factory=list)
    missing_batters: list[str] = field(default_factory=list)
    missing_bowlers: list[str] = field(default_factory=list)
    innings_expected: int = 0
    innings_found: int = 0

    @property
    def accuracy(self) -> float:
        return self.right / self.cells if self.cells else 0.0


def score(preview: dict[str, Any], expected: dict[str, Any]) -> Score:
    """Compare every numeric cell of the truth with the preview (rows matched by name, then order)."""
    result = Score(innings_expected=len(expected["innings"]), innings_found=len(preview.get("innings", [])))

    def cell(where: str, want: Any, got: Any) -> None:
        result.cells += 1
        if got == want:
            result.right += 1
        else:
            result.wrong.append(f"{where}: want {want!r}, got {got!r}")

    for i, want_inn in enumerate(expected["innings"]):
        got_inn = preview["innings"][i] if i < len(preview.get("innings", [])) else {}
        for table, key, numbers, missing in (
            ("batting", "batter", BATTING_NUMBERS, result.missing_batters),
            ("bowling", "bowler", BOWLING_NUMBERS, result.missing_bowlers),
        ):
            got_rows = got_inn.get(table) or []
            by_name = {r[key]: r for r in got_rows}
            for j, want_row in enumerate(want_inn[table]):
                got_row = by_name.get(want_row[key])
                if got_row is None:
                    missing.append(want_row[key])
                    got_row = got_rows[j] if j < len(got_rows) else {}
                for n in numbers:
                    cell(f"innings {i + 1} {want_row[key]} {n}", want_row[n], got_row.get(n))
        got_extras = got_inn.get("extras") or {}
        for n in EXTRAS_NUMBERS:
            cell(f"innings {i + 1} extras {n}", want_inn["extras"][n], got_extras.get(n))
        got_total = got_inn.get("total") or {}
        for n in TOTAL_NUMBERS:
            cell(f"innings {i + 1} total {n}", want_inn["total"][n], got_total.get(n))
        got_fow = got_inn.get("fall_of_wickets") or []
        for j, want_f in enumerate(want_inn["fall_of_wickets"]):
            got_f = got_fow[j] if j < len(got_fow) else {}
            for n in ("wicket", "score", "over"):
                cell(f"innings {i + 1} fow {j + 1} {n}", want_f[n], got_f.get(n))
    return result


# --- the same cards as parser input, without OCR -----------------------------------------------
def card_text(match: dict[str, Any], innings: list[int] | None = None) -> str:
    """A card as plain text, one line per printed line (cells separated by two spaces)."""
    rows = card_rows(match, innings if innings is not None else list(range(len(match["innings"]))), Layout())
    return "\n".join("  ".join(cell.text for cell in row) for row in rows)


def card_words(match: dict[str, Any], size: int = 36, skew: float = 0.0) -> list[list[Any]]:
    """A card as OCR-like words with boxes (and an optional skew: y shifts by ``skew × x``)."""
    from app.services.scorecard import Word

    rows = card_rows(match, list(range(len(match["innings"]))), Layout())
    lines = []
    y = 160
    for row in rows:
        words = []
        for cell in row:
            parts = cell.text.split()
            widths = [int(len(p) * size * 0.55) for p in parts]
            total = sum(widths) + int(size * 0.3) * (len(parts) - 1)
            x = cell.x - total if cell.align == "right" else cell.x
            for part, width in zip(parts, widths, strict=True):
                top = int(y + skew * x)
                words.append(Word(part, x, top, width, size, 95.0))
                x += width + int(size * 0.3)
        if words:
            lines.append(words)
        y += int(size * 1.55)
    return lines


# --- hostile files ----------------------------------------------------------------------------------
def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A valid 1-bit PNG of ``width`` × ``height`` white pixels: a ~100 KiB file that would
    decode to ``width × height`` pixels (900 million by default)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def small_pdf(pages: int) -> bytes:
    """A PDF of ``pages`` small blank pages (for the page limit)."""
    import io

    images = [Image.new("1", (200, 200), 1) for _ in range(pages)]
    out = io.BytesIO()
    images[0].save(out, "PDF", resolution=72, save_all=True, append_images=images[1:])
    return out.getvalue()


def encrypted_pdf(source: bytes, password: str = "secret") -> bytes:
    """``source`` encrypted with a user password (it cannot be opened without it)."""
    import io

    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(source)))
    writer.encrypt(user_password=password, owner_password=password + "-owner")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def corrupt_pdf(seed: int = 7) -> bytes:
    """A PDF header followed by noise: no xref table, no trailer."""
    rng = random.Random(seed)
    return b"%PDF-1.7\n" + bytes(rng.randrange(256) for _ in range(4000))
