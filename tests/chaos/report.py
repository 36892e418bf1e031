"""The chaos suite's summary: a table for the terminal and for docs/reliability.md.

The test writes its summary as JSON to ``CHAOS_SUMMARY`` (when set) and, with
``CHAOS_WRITE_DOCS=1``, rewrites the chaos section of docs/reliability.md itself.
From a saved summary:

    python -m tests.chaos.report SUMMARY.json            print the section
    python -m tests.chaos.report SUMMARY.json --write-docs   and write it into the doc
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"
COLUMNS = ("submitted", "accepted", "completed", "failed", "duplicates", "lost")


def table(summary: dict[str, Any]) -> str:
    """The per-family figures as a Markdown table, with a total row."""
    lines = ["| family | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    totals = dict.fromkeys(COLUMNS, 0)
    for family, row in summary["families"].items():
        lines.append(f"| {family} | " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
        for c in COLUMNS:
            totals[c] += row[c]
    lines.append("| **total** | " + " | ".join(f"**{totals[c]}**" for c in COLUMNS) + " |")
    return "\n".join(lines)


def reasons(summary: dict[str, Any]) -> str:
    rows = [(family, reason, n) for family, row in summary["families"].items()
            for reason, n in sorted(row["reasons"].items(), key=lambda kv: -kv[1])]
    if not rows:
        return "No item failed."
    return "\n".join(["| family | failed with reason | items |", "|---|---|---:|"]
                     + [f"| {f} | {r.replace('|', '/')} | {n} |" for f, r, n in rows])


def section(summary: dict[str, Any]) -> str:
    """The whole doc section: what the run did, the table, the failure reasons, the notes."""
    chaos = summary["chaos"]
    kills = chaos["kills"]
    extra = summary["extra"]
    out = [
        f"Last run: {summary['date']} on {summary['machine']}, {summary['wall_seconds']:.0f} s in all "
        f"(load submitted over {summary['load_seconds']:.0f} s, drained in {summary['drain_seconds']:.0f} s).",
        "",
        "What broke during the load:",
        "",
        f"- {kills['child']} worker pool processes and {kills['main']} worker main processes SIGKILLed "
        f"(one every {chaos['kill_every'][0]:g}–{chaos['kill_every'][1]:g} s, across all "
        f"{len(summary['queues'])} queues; dead main processes restarted as a supervisor would);",
        f"- the broker (Redis, also the result backend and the locks) stopped for {chaos['broker_down_seconds']:.0f} s "
        "and started again;",
        f"- PostgreSQL restarted once (fast shutdown: every connection dropped, open transactions rolled back; "
        f"{chaos['pg_restart_seconds']:.0f} s without a database);",
        f"- `dockerd` restarted once while scans were running ({chaos['docker_down_seconds']:.0f} s without Docker; "
        "the scan containers and the test sites died with it).",
        "",
        table(summary),
        "",
        "*accepted*: the API answered 2xx with an id (requests are retried on 5xx and connection errors); "
        "*duplicates*: a side effect seen more than once (a second channel delivery, OCR result or voice score, "
        "more scan containers than attempts, a second merged object); *lost*: accepted but not in a terminal "
        "state after the drain and the sweepers.",
        "",
        reasons(summary),
        "",
        f"Also counted: {extra['api_retries']} API calls retried by the client; "
        f"{extra['double_accepted']} scan/voice submissions accepted twice (no idempotency key; a retried "
        f"request whose first answer was lost); {extra['orphans']} OCR/file uploads created but never "
        f"completed (their creation's answer was lost); {extra['leftover_containers']} scan containers left; "
        f"{extra.get('redelivered', 0)} outbox events published again because no worker had taken their task "
        f"within `OUTBOX_REDELIVER_AFTER` (60 s here): lost by the broker, or only waiting in a queue.",
        "",
        "Regenerate: `CHAOS_WRITE_DOCS=1 .venv/bin/python -m pytest tests/chaos -q` (or "
        "`CHAOS_SUMMARY=path.json` then `python -m tests.chaos.report path.json --write-docs`).",
    ]
    return "\n".join(out)


def write_docs(summary: dict[str, Any], doc: Path = DOC) -> None:
    """Replace what lies between the chaos markers of docs/reliability.md."""
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{section(summary)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    print(section(summary))
    if args.write_docs:
        write_docs(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
