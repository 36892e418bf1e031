"""Ball-by-ball match simulation: the exact truth of a generated scorecard.

Every number a card prints comes from one simulated delivery after another (runs off
the bat, wides, no-balls, byes, leg byes, wickets, the strike changing ends), so the
card is internally consistent the way a real one is: batting runs + extras = total,
bowlers' runs + byes + leg byes = total, the bowlers' balls make the innings' overs,
maidens are overs in which the bowler conceded nothing, wickets add up.

The truth has the shape of the parser's preview (``app.services.scorecard``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

FIRST = ["J", "A", "R", "M", "T", "D", "K", "P", "N", "H", "G", "S", "L", "V", "F", "E", "C", "O", "Y", "W", "I",
         "B", "Z", "U", "JM", "AB", "MS", "KL", "RG", "SP", "DJ", "TA"]
SURNAMES = ["Smith", "Brown", "Patel", "Khan", "Wilson", "Taylor", "Ahmed", "Jones", "Clarke", "Ali", "Evans",
            "Murphy", "Walker", "Sharma", "Hughes", "Robinson", "Wright", "Turner", "Hussain", "Baker", "Shah",
            "Mitchell", "Cooper", "Malik", "Fraser", "Okafor", "Reid", "Dunn", "Rahman", "Lowe", "Nash", "Ward",
            "Iqbal", "Marsh", "Kapoor", "Doyle", "Price", "Webb", "Grant", "Ellis", "Ansari", "Moss", "Burke",
            "Kerr", "Fernando", "Perera", "de Silva", "Naidoo", "van Wyk", "O'Brien", "McLean", "Singh", "Chopra",
            "Mendis", "Gayle", "Holder", "Pollard", "Bravo", "Latham", "Conway", "Henry", "Starc", "Lyon", "Head"]
TEAMS = ["Riverside CC", "Hilltop XI", "Northbridge", "Eastfield Town", "Westbury", "Kingsmead",
         "Oakwood Strollers", "Harbour Lions", "Millbrook", "Southgate Rovers", "Ashford", "Lakeside"]
#: format: (overs per innings or None, most overs a bowler may bowl or None, innings per side)
FORMATS = {"T20": (20, 4, 1), "ODI": (50, 10, 1), "Test": (None, None, 1)}


def round2(value: float) -> float:
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def overs_text(balls: int) -> str:
    return f"{balls // 6}" if balls % 6 == 0 else f"{balls // 6}.{balls % 6}"


def squad(rng: random.Random) -> list[str]:
    names: list[str] = []
    for surname in rng.sample(SURNAMES, 11):
        names.append(f"{rng.choice(FIRST)} {surname}")
    return names


@dataclass
class _Bat:
    name: str
    runs: int = 0
    balls: int = 0
    fours: int = 0
    sixes: int = 0
    minutes: int = 0
    dismissal: str = "not out"
    out: bool = False


@dataclass
class _Bowl:
    name: str
    balls: int = 0
    runs: int = 0
    wickets: int = 0
    maidens: int = 0
    wides: int = 0
    no_balls: int = 0
    dots: int = 0


@dataclass
class _State:
    bats: list[_Bat]
    bowls: dict[str, _Bowl]
    fielders: list[str]
    extras: dict[str, int] = field(default_factory=lambda: {"byes": 0, "leg_byes": 0, "wides": 0, "no_balls": 0})
    total: int = 0
    wickets: int = 0
    legal: int = 0
    striker: int = 0
    other: int = 1
    next_in: int = 2
    fow: list[dict[str, Any]] = field(default_factory=list)


def _dismiss(rng: random.Random, st: _State, bowler: str) -> None:
    bat = st.bats[st.striker]
    keeper = st.fielders[1]
    kind = rng.choices(["c", "b", "lbw", "run out", "st", "c&b"], [50, 19, 15, 8, 4, 4])[0]
    fielder = rng.choice([f for f in st.fielders if f != bowler]).split()[-1]
    short = bowler.split()[-1]
    bat.dismissal = {"c": f"c {fielder} b {short}", "b": f"b {short}", "lbw": f"lbw b {short}",
                     "run out": f"run out ({fielder})", "st": f"st {keeper.split()[-1]} b {short}",
                     "c&b": f"c & b {short}"}[kind]
    bat.out = True
    if kind != "run out":
        st.bowls[bowler].wickets += 1
    st.wickets += 1
    st.fow.append({"wicket": st.wickets, "score": st.total, "batter": bat.name, "over": overs_text(st.legal)})
    if st.next_in < len(st.bats):
        st.striker = st.next_in
        st.next_in += 1


def _ball(rng: random.Random, st: _State, bowler: str, aggression: float) -> int:
    """One delivery; returns the runs it cost the bowler, or -1 when it was not a legal ball."""
    bowl, bat = st.bowls[bowler], st.bats[st.striker]
    kind = rng.choices(["wd", "nb", "b", "lb", "w", "bat"], [2.5, 0.8, 0.7, 1.6, 3.4 / aggression, 90])[0]
    if kind == "wd":
        extra = rng.choice((1, 1, 1, 1, 2, 5))
        st.extras["wides"] += extra
        bowl.wides += extra
        bowl.runs += extra
        st.total += extra
        return -1
    if kind == "nb":
        st.extras["no_balls"] += 1
        bowl.no_balls += 1
        off_bat = rng.choice((0, 0, 1, 4))
        bat.balls += 1
        bat.runs += off_bat
        bat.fours += off_bat == 4
        bowl.runs += 1 + off_bat
        st.total += 1 + off_bat
        if off_bat % 2:
            st.striker, st.other = st.other, st.striker
        return -1
    st.legal += 1
    bowl.balls += 1
    bat.balls += 1
    if kind in ("b", "lb"):
        runs = rng.choice((1, 1, 1, 2, 4))
        st.extras["byes" if kind == "b" else "leg_byes"] += runs
        st.total += runs
        bowl.dots += 1
        if runs % 2:
            st.striker, st.other = st.other, st.striker
        return 0
    if kind == "w":
        bowl.dots += 1
        _dismiss(rng, st, bowler)
        return 0
    weights = [38 / aggression, 34, 9, 1.2, 11 * aggression, 4 * aggression * aggression]
    runs = rng.choices((0, 1, 2, 3, 4, 6), weights)[0]
    bat.runs += runs
    bat.fours += runs == 4
    bat.sixes += runs == 6
    bowl.runs += runs
    bowl.dots += runs == 0
    st.total += runs
    if runs % 2:
        st.striker, st.other = st.other, st.striker
    return runs


def _next_bowler(rng: random.Random, st: _State, pool: list[str], last: str | None, limit: int | None) -> str:
    allowed = [b for b in pool if b != last and (limit is None or st.bowls[b].balls < limit * 6)]
    if not allowed:  # everyone at the limit but the last bowler: a part-timer comes on
        extra = next(f for f in st.fielders if f not in pool and f != last)
        pool.append(extra)
        st.bowls[extra] = _Bowl(extra)
        allowed = [extra]
    weights = [3.0 if i < 4 else 1.0 for i, b in enumerate(pool) if b in allowed]
    return rng.choices(allowed, weights)[0]


def simulate_innings(rng: random.Random, batting: tuple[str, list[str]], fielding: list[str], fmt: str,
                     target: int | None = None) -> dict[str, Any]:
    max_overs, limit, _ = FORMATS[fmt]
    declare_at = rng.randint(60, 120) if max_overs is None else None
    aggression = {"T20": 1.4, "ODI": 1.0, "Test": 0.75}[fmt]
    pool = fielding[-rng.randint(5, 6):]
    st = _State([_Bat(n) for n in batting[1]], {b: _Bowl(b) for b in pool}, fielding)
    last: str | None = None
    overs_cap = max_overs or declare_at or 90
    while st.legal < overs_cap * 6 and st.wickets < 10 and (target is None or st.total < target):
        bowler = _next_bowler(rng, st, pool, last, limit)
        last = bowler
        conceded_before, legal_before = st.bowls[bowler].runs, st.legal
        while st.legal - legal_before < 6 and st.wickets < 10 and (target is None or st.total < target):
            _ball(rng, st, bowler, aggression)
        if st.legal - legal_before == 6 and st.bowls[bowler].runs == conceded_before:
            st.bowls[bowler].maidens += 1
        st.striker, st.other = st.other, st.striker
    return _innings_truth(rng, batting[0], st, declared=max_overs is None and st.wickets < 10 and target is None)


def _innings_truth(rng: random.Random, team: str, st: _State, declared: bool) -> dict[str, Any]:
    batted = [b for i, b in enumerate(st.bats) if i < st.next_in]
    batting = []
    for b in batted:
        batting.append({"batter": b.name, "dismissal": b.dismissal, "not_out": not b.out, "runs": b.runs,
                        "balls": b.balls, "fours": b.fours, "sixes": b.sixes,
                        "minutes": max(1, int(b.balls * rng.uniform(1.1, 1.7))),
                        "strike_rate": round2(100 * b.runs / b.balls) if b.balls else 0.0})
    shown = {r["batter"] for r in batting}
    extras = dict(st.extras)
    extras["penalty"] = None
    extras["total"] = sum(v for k, v in st.extras.items())
    bowling = [{"bowler": b.name, "overs": overs_text(b.balls), "balls": b.balls, "maidens": b.maidens,
                "runs": b.runs, "wickets": b.wickets, "economy": round2(b.runs * 6 / b.balls),
                "wides": b.wides, "no_balls": b.no_balls, "dots": b.dots}
               for b in st.bowls.values() if b.balls > 0]
    return {
        "team": team, "batting": batting, "did_not_bat": [b.name for b in st.bats if b.name not in shown],
        "extras": extras, "total": {"runs": st.total, "wickets": st.wickets, "overs": overs_text(st.legal),
                                    "declared": declared},
        "fall_of_wickets": st.fow, "bowling": bowling,
    }


def simulate_match(seed: int, fmt: str) -> dict[str, Any]:
    """Two innings (one per side) of a match in ``fmt`` (T20, ODI, Test)."""
    rng = random.Random(seed)
    home, away = rng.sample(TEAMS, 2)
    squads = {home: squad(rng), away: squad(rng)}
    first = simulate_innings(rng, (home, squads[home]), squads[away], fmt)
    target = first["total"]["runs"] + 1 if fmt != "Test" else None
    second = simulate_innings(rng, (away, squads[away]), squads[home], fmt, target=target)
    a, b = first["total"]["runs"], second["total"]["runs"]
    if a > b:
        result = f"{home} won by {a - b} runs"
    elif b > a:
        result = f"{away} won by {10 - second['total']['wickets']} wickets"
    else:
        result = "Match tied"
    return {"title": f"{home} v {away}", "teams": [home, away], "format": fmt, "innings": [first, second],
            "result": result}
