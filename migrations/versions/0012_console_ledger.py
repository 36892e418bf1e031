"""the job ledger: one SQL view over every job family's table, and the indexes its filters use

Revision ID: 0012_console_ledger
Revises: 0011_public_ids
Create Date: 2026-12-03

The view is a UNION ALL of one SELECT per family table, so it is never out of step with
them (docs/console.md, "The ledger"). Each family maps its own statuses to the ledger's
states (pending, queued, running, succeeded, failed, dead); ``app.models.console.STATES``
holds the same table and a test checks the two agree.
"""

from __future__ import annotations

from alembic import op

revision = "0012_console_ledger"
down_revision = "0011_public_ids"
branch_labels = None
depends_on = None

#: family -> its table, the columns the ledger reads and its {status: ledger state}
OUTBOX_STATUS = ("CASE WHEN dead THEN 'dead' WHEN published_at IS NULL THEN 'pending' "
                 "WHEN consumed_at IS NULL THEN 'published' ELSE 'consumed' END")
FAMILIES: dict[str, dict[str, object]] = {
    "ocr": dict(table="uploads", id="id", status="status", client="client_id", attempts="attempts",
                started="started_at", finished="finished_at", error="error",
                states={"uploaded": "pending", "queued": "queued", "processing": "running", "ready": "succeeded",
                        "failed": "failed"}),
    "scans": dict(table="scan_jobs", id="id", status="state", client="client_id", attempts="attempts",
                  started="started_at", finished="finished_at", error="error",
                  states={"QUEUED": "queued", "FETCHING": "running", "ANALYZING": "running", "COMPLETED": "succeeded",
                          "FAILED": "failed", "TIMED_OUT": "failed"}),
    "voice": dict(table="voice_tasks", id="id", status="status", client="client_id", attempts="attempts",
                  started="claimed_at", finished="finished_at", error="error",
                  states={"pending": "queued", "claimed": "running", "processing": "running", "completed": "succeeded",
                          "failed": "failed"}),
    "messages": dict(table="messages", id="id", status="status", client="client_id", attempts="attempts",
                     started="NULL", finished="CASE WHEN status IN ('delivered', 'failed') THEN updated_at END",
                     error="last_error",
                     states={"queued": "queued", "sent": "running", "delivered": "succeeded", "failed": "failed"}),
    "files": dict(table="files", id="id", status="status", client="client_id", attempts="merge_attempts",
                  started="NULL", finished="CASE WHEN status = 'FAILED' THEN updated_at ELSE completed_at END",
                  error="failure_reason",
                  states={"UPLOADING": "pending", "MERGING": "running", "COMPLETED": "succeeded", "FAILED": "failed"}),
    "campaigns": dict(table="campaigns", id="public_id", status="status", client="client_id", attempts="batches",
                      started="started_at", finished="finished_at", error="last_error",
                      states={"scheduled": "queued", "sending": "running", "sent": "succeeded", "failed": "failed"}),
    "calls": dict(table="call_requests", id="public_id", status="status", client="client_id", attempts="attempts",
                  started="NULL", finished="finished_at", error="last_error",
                  states={"queued": "queued", "dialing": "running", "done": "succeeded", "failed": "failed",
                          "expired": "failed"}),
    "outbox": dict(table="outbox_events", id="id", status=OUTBOX_STATUS, client="NULL", attempts="attempts",
                   started="published_at", finished="consumed_at", error="last_error",
                   states={"pending": "queued", "published": "running", "consumed": "succeeded", "dead": "dead"}),
}


def _traceparent(dialect: str) -> str:
    if dialect == "postgresql":
        return "payload->'_trace'->>'traceparent'"
    return "json_extract(payload, '$._trace.traceparent')"


def _ts(dialect: str, expr: str) -> str:
    """A timestamp column of every branch typed alike (PostgreSQL; SQLite keeps its text)."""
    return f"CAST({expr} AS TIMESTAMP WITH TIME ZONE)" if dialect == "postgresql" else expr


def _select(dialect: str, name: str, f: dict[str, object]) -> str:
    """One family's SELECT. Every column is cast to the one type of every branch, so
    PostgreSQL flattens the UNION ALL into an append of index scans (a merge of each
    table's (created_at, id) index for the newest-first page) instead of a subquery."""
    states = f["states"]
    assert isinstance(states, dict)
    case = " ".join(f"WHEN '{raw}' THEN '{state}'" for raw, state in states.items())
    status = f["status"]
    outbox = f["table"] == "outbox_events"
    client = "CAST(NULL AS INTEGER)" if f["client"] == "NULL" else f"j.{f['client']}"
    started = _ts(dialect, "NULL" if f["started"] == "NULL" else f"j.{f['started']}")
    finished = _ts(dialect, str(f["finished"]) if " " in str(f["finished"]) else f"j.{f['finished']}")
    trace = f"substr({_traceparent(dialect)}, 4, 32)" if outbox else "NULL"
    return (f"SELECT CAST('{name}' AS TEXT) AS family, CAST(j.{f['id']} AS TEXT) AS id, {client} AS client_id, "
            f"CAST({status} AS TEXT) AS status, CAST(CASE {status} {case} ELSE 'failed' END AS TEXT) AS state, "
            f"j.{f['attempts']} AS attempts, j.created_at AS created_at, {started} AS started_at, "
            f"{finished} AS finished_at, CAST(j.{f['error']} AS TEXT) AS last_error, "
            f"CAST({trace} AS TEXT) AS trace_id FROM {f['table']} j")


def _indexes() -> list[tuple[str, str, str]]:
    """(name, table, columns) of the indexes the ledger's order and filters use."""
    out = []
    for name, f in FAMILIES.items():
        ident = f["id"] if f["table"] != "outbox_events" else "(CAST(id AS TEXT))"
        status = f["status"] if f["table"] != "outbox_events" else f"({OUTBOX_STATUS})"
        out.append((f"ix_ledger_{name}_created", str(f["table"]), f"created_at, {ident}"))
        out.append((f"ix_ledger_{name}_status", str(f["table"]), f"{status}, created_at, {ident}"))
        if f["client"] != "NULL":
            out.append((f"ix_ledger_{name}_client", str(f["table"]), f"{f['client']}, created_at, {ident}"))
    return out


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for name, table, columns in _indexes():
        op.execute(f"CREATE INDEX {name} ON {table} ({columns})")
    body = "\nUNION ALL\n".join(_select(dialect, name, f) for name, f in FAMILIES.items())
    op.execute(f"CREATE VIEW job_ledger AS\n{body}")


def downgrade() -> None:
    op.execute("DROP VIEW job_ledger")
    for name, _, _ in _indexes():
        op.execute(f"DROP INDEX {name}")
