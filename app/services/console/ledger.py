"""The job ledger: filter, count and page the ``job_ledger`` view.

Filters: family, ledger state, client, creation time range, a job id (``q``) and a part
of the last error (``error``; a scan of the rows the other filters leave, so narrow it). Pages are keyset-paginated on ``(created_at, id)``, newest
first, so a page costs the same at any depth and a row inserted meanwhile never shifts
the next page.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select, tuple_
from sqlalchemy.orm import Session

from app.models.console import FAMILIES, LEDGER_STATES, STATES, job_ledger

MAX_PAGE = 200
MAX_TEXT = 200
MAX_ID = 2**31 - 1


class FilterError(ValueError):
    """A filter value the ledger cannot take (unknown family or state, bad time, ...)."""


@dataclass(frozen=True)
class LedgerFilter:
    families: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    client_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # a job id (exact)
    error: str | None = None  # a part of the last error (case-insensitive)

    def is_empty(self) -> bool:
        return not (self.families or self.states or self.client_id is not None or self.since or self.until
                    or self.text or self.error)

    def as_dict(self) -> dict[str, Any]:
        """The filter as plain JSON values, for the audit log and the API."""
        out = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        for key in ("since", "until"):
            if key in out:
                out[key] = out[key].isoformat()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def describe(self) -> str:
        """Readable summary: ``failed messages since 2026-12-03 10:00 UTC``."""
        parts = [" or ".join(self.states) or "all", " or ".join(self.families) or "jobs"]
        if self.client_id is not None:
            parts.append(f"of client {self.client_id}")
        if self.since:
            parts.append(f"since {self.since:%Y-%m-%d %H:%M} UTC")
        if self.until:
            parts.append(f"until {self.until:%Y-%m-%d %H:%M} UTC")
        if self.text:
            parts.append(f"with id {self.text!r}")
        if self.error:
            parts.append(f"with error like {self.error!r}")
        return " ".join(parts)


def _listed(params: Mapping[str, Any], key: str) -> list[str]:
    raw = params.get(key)
    values = raw if isinstance(raw, (list, tuple)) else ([raw] if raw else [])
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def _time(value: Any, name: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        at = value
    else:
        try:
            at = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise FilterError(f"{name}: {value!r} is not an ISO 8601 time such as 2026-12-03T10:00") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _client(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        client_id = int(value)
    except (TypeError, ValueError):
        raise FilterError(f"client_id: {value!r} is not a client id (a number)") from None
    if not 1 <= client_id <= MAX_ID:
        raise FilterError(f"client_id: between 1 and {MAX_ID}")
    return client_id


def parse_filter(params: Mapping[str, Any]) -> LedgerFilter:
    """A filter from query or form values (``family``, ``state``: comma-separated or
    repeated; ``client_id``, ``since``, ``until``, ``q``); bad values raise ``FilterError``."""
    families, states = _listed(params, "family"), _listed(params, "state")
    for value, known, name in ((families, FAMILIES, "family"), (states, LEDGER_STATES, "state")):
        unknown = [v for v in value if v not in known]
        if unknown:
            raise FilterError(f"{name}: unknown {', '.join(map(repr, unknown))}; one of {', '.join(known)}")
    text = str(params.get("q") or "").strip() or None
    error = str(params.get("error") or "").strip() or None
    if any(v is not None and len(v) > MAX_TEXT for v in (text, error)):
        raise FilterError(f"q, error: at most {MAX_TEXT} characters")
    if any(v is not None and "\x00" in v for v in (text, error)):
        raise FilterError("q, error: NUL characters are not allowed")
    since, until = _time(params.get("since"), "since"), _time(params.get("until"), "until")
    if since and until and since >= until:
        raise FilterError("since must be before until")
    return LedgerFilter(tuple(dict.fromkeys(families)), tuple(dict.fromkeys(states)),
                        _client(params.get("client_id")), since, until, text, error)


def _family_state_clause(f: LedgerFilter) -> ColumnElement[bool] | None:
    """Family and state as ``(family = F AND status IN (its raw statuses)) OR ...``: each
    branch of the view then keeps only its own condition on an indexed column."""
    families = f.families or (FAMILIES if f.states else ())
    if not families:
        return None
    c = job_ledger.c
    if not f.states:
        return c.family.in_(families)
    terms = []
    for family in families:
        raw = [status for status, state in STATES[family].items() if state in f.states]
        if raw:
            terms.append(and_(c.family == family, c.status.in_(raw)))
    return or_(*terms) if terms else false()


def conditions(f: LedgerFilter) -> list[ColumnElement[bool]]:
    """The WHERE conditions of a filter on ``job_ledger``."""
    c = job_ledger.c
    out = []
    family_state = _family_state_clause(f)
    if family_state is not None:
        out.append(family_state)
    if f.client_id is not None:
        out.append(c.client_id == f.client_id)
    if f.since is not None:
        out.append(c.created_at >= f.since)
    if f.until is not None:
        out.append(c.created_at < f.until)
    if f.text:
        out.append(c.id == f.text)
    if f.error:
        pattern = "%" + f.error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        out.append(c.last_error.ilike(pattern, escape="\\"))
    return out


@dataclass
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    filter: LedgerFilter = field(default_factory=LedgerFilter)


def encode_cursor(created_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(at), job_id
    except (ValueError, UnicodeDecodeError):
        raise FilterError("after: not a cursor this ledger gave") from None


def list_jobs(session: Session, f: LedgerFilter, limit: int = 50, after: str | None = None) -> Page:
    """One page of jobs matching ``f``, newest first; ``after`` is the previous page's cursor."""
    if not 1 <= limit <= MAX_PAGE:
        raise FilterError(f"limit: between 1 and {MAX_PAGE}")
    c = job_ledger.c
    stmt = select(job_ledger).where(*conditions(f))
    if after:
        at, job_id = decode_cursor(after)
        stmt = stmt.where(tuple_(c.created_at, c.id) < tuple_(at, job_id))
    stmt = stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
    rows = [dict(r._mapping) for r in session.execute(stmt)]
    more = len(rows) > limit
    rows = fill_traces(session, rows[:limit])
    cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return Page(rows, cursor, f)


def count_jobs(session: Session, f: LedgerFilter, at_most: int | None = None) -> int:
    """How many jobs match ``f``; with ``at_most``, counting stops at ``at_most + 1``."""
    inner = select(job_ledger.c.id).where(*conditions(f))
    if at_most is not None:
        inner = inner.limit(at_most + 1)
    return int(session.scalar(select(func.count()).select_from(inner.subquery())) or 0)


def get_row(session: Session, family: str, job_id: str) -> dict[str, Any] | None:
    """The ledger row of one job, or None."""
    if family not in FAMILIES:
        raise FilterError(f"family: unknown {family!r}; one of {', '.join(FAMILIES)}")
    row = session.execute(select(job_ledger).where(job_ledger.c.family == family, job_ledger.c.id == job_id)).first()
    return fill_traces(session, [dict(row._mapping)])[0] if row is not None else None


#: The outbox aggregate type of each family whose jobs are enqueued through the outbox.
AGGREGATES = {"ocr": "upload", "scans": "scan", "voice": "voice_task", "messages": "message", "files": "file"}


def fill_traces(session: Session, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each row the trace id of the request that made it: the W3C trace context of
    its first outbox event. Read for the rows of a page only (one indexed query), not in
    the view, so that filtering and ordering never touch the outbox payloads."""
    from app.models.outbox import OutboxEvent
    from app.tracing import TRACE_KEY

    wanted = {(AGGREGATES[r["family"]], r["id"]) for r in rows if r["family"] in AGGREGATES and not r["trace_id"]}
    if not wanted:
        return rows
    stmt = (select(OutboxEvent.aggregate_type, OutboxEvent.aggregate_id, OutboxEvent.payload)
            .where(tuple_(OutboxEvent.aggregate_type, OutboxEvent.aggregate_id).in_(list(wanted)))
            .order_by(OutboxEvent.id.desc()))
    traces = {}
    for kind, aggregate_id, payload in session.execute(stmt):
        parent = ((payload or {}).get(TRACE_KEY) or {}).get("traceparent") or ""
        if len(parent) >= 35:
            traces[(kind, aggregate_id)] = parent[3:35]  # the last assignment is the first event
    for r in rows:
        if r["family"] in AGGREGATES and not r["trace_id"]:
            r["trace_id"] = traces.get((AGGREGATES[r["family"]], r["id"]))
    return rows


#: Jobs finished in the last hour are looked for among those created in this window before it.
FINISHED_LOOKBACK = timedelta(days=7)


def summary(session: Session, since: datetime, finished: bool = False) -> dict[str, dict[str, int]]:
    """Jobs created since ``since`` (or, ``finished``, that finished since ``since``, among
    those created up to FINISHED_LOOKBACK before it) by family and ledger state."""
    c = job_ledger.c
    where = [c.finished_at >= since, c.created_at >= since - FINISHED_LOOKBACK] if finished else [c.created_at >= since]
    stmt = select(c.family, c.state, func.count()).where(*where).group_by(c.family, c.state)
    out: dict[str, dict[str, int]] = {}
    for family, state, n in session.execute(stmt):
        out.setdefault(family, {})[state] = int(n)
    return out
