"""Outcome checks of the chaos suite: what the database, the channel server, the storage
directory, the Docker event stream and the workers' logs say happened, never what the
tasks claimed.

For every accepted item: terminal or not (lost), succeeded or failed (with the reason),
and how many times its side effect happened (duplicates).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from tests.chaos.load import Item

TERMINAL = {
    "messages": {"delivered": "completed", "failed": "failed"},
    "voice": {"completed": "completed", "failed": "failed"},
    "ocr": {"ready": "completed", "failed": "failed"},
    "scans": {"COMPLETED": "completed", "FAILED": "failed", "TIMED_OUT": "failed"},
    "files": {"COMPLETED": "completed", "FAILED": "failed"},
}
FAMILIES = tuple(TERMINAL)


@dataclass
class FamilyTally:
    submitted: int = 0
    accepted: int = 0
    completed: int = 0
    failed: int = 0
    duplicates: int = 0
    lost: int = 0
    double_accepted: int = 0
    orphans: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)


def states(engine: Engine, items: list[Item]) -> dict[str, dict[str, tuple[str, str | None]]]:
    """family → id → (status, failure reason) of every accepted item, from the database."""
    from app.models.files import File
    from app.models.messages import Message
    from app.models.ocr import Upload
    from app.models.scans import ScanJob
    from app.models.voice import VoiceJob

    ids: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if item.accepted and item.id:
            ids[item.family].append(item.id)
    queries = {
        "messages": (Message.id, Message.status, Message.last_error),
        "voice": (VoiceJob.id, VoiceJob.status, VoiceJob.error),
        "ocr": (Upload.id, Upload.status, Upload.error),
        "scans": (ScanJob.id, ScanJob.state, ScanJob.error),
        "files": (File.id, File.status, File.failure_reason),
    }
    out: dict[str, dict[str, tuple[str, str | None]]] = {}
    with engine.connect() as conn:
        for family, (col_id, col_status, col_error) in queries.items():
            rows = conn.execute(select(col_id, col_status, col_error).where(col_id.in_(ids[family]))).all() \
                if ids[family] else []
            out[family] = {r[0]: (r[1], r[2]) for r in rows}
    return out


def all_terminal(engine: Engine, items: list[Item]) -> bool:
    current = states(engine, items)
    for item in items:
        if item.accepted and item.id:
            status = current[item.family].get(item.id, ("missing", None))[0]
            if status not in TERMINAL[item.family]:
                return False
    return True


def outbox_trail(engine: Engine, aggregate_ids: list[str]) -> list[dict[str, Any]]:
    """The outbox events of some items: whether and when each was published (diagnostics)."""
    from app.models.outbox import OutboxEvent

    with engine.connect() as conn:
        rows = conn.execute(select(OutboxEvent.id, OutboxEvent.aggregate_id, OutboxEvent.event_type,
                                   OutboxEvent.created_at, OutboxEvent.published_at, OutboxEvent.attempts,
                                   OutboxEvent.dead, OutboxEvent.last_error)
                            .where(OutboxEvent.aggregate_id.in_(aggregate_ids or [""]))).all()
    return [dict(r._mapping) for r in rows]


def reason_class(reason: str | None) -> str:
    """A failure reason without ids, numbers and addresses, so equal causes group together."""
    text = (reason or "(no reason)").strip().splitlines()[0]
    text = re.sub(r"[0-9a-f]{32}", "<id>", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return text[:140]


def log_events(paths: list[Path], message: str, key: str) -> Counter[str]:
    """How many JSON log lines with ``message`` each ``key`` value has, over ``paths``."""
    counts: Counter[str] = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            if message not in line or not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("message") == message and record.get(key):
                counts[str(record[key])] += 1
    return counts


class ContainerCounter:
    """Counts ``create`` events of scan-labelled containers per scan id, following the
    Docker event stream across a restart of the daemon (``since`` replays the gap)."""

    def __init__(self, client_factory: Any, label: str, job_label: str) -> None:
        self.client_factory = client_factory
        self.label = label
        self.job_label = job_label
        self.creates: Counter[str] = Counter()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._since = int(time.time()) - 1
        self._thread = threading.Thread(target=self._run, name="chaos-docker-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                client = self.client_factory()
                stream = client.events(decode=True, since=self._since,
                                       filters={"type": "container", "event": "create", "label": f"{self.label}=1"})
                for event in stream:
                    cid = event.get("id") or event.get("Actor", {}).get("ID")
                    self._since = max(self._since, int(event.get("time", self._since)))
                    if cid in self.seen:
                        continue
                    self.seen.add(cid)
                    job = event.get("Actor", {}).get("Attributes", {}).get(self.job_label)
                    if job:
                        self.creates[job] += 1
                    if self._stop.is_set():
                        break
            except Exception:  # the daemon is restarting: reconnect, replaying from the last event
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()


def tally(engine: Engine, items: list[Item], *, deliveries: list[dict[str, Any]], storage_root: Path,
          worker_logs: dict[str, list[Path]], container_creates: Counter[str], run: str) -> dict[str, FamilyTally]:
    """The table's figures per family (see the module docstring)."""
    from app.models.files import File
    from app.models.messages import MessageDelivery
    from app.models.ocr import Upload
    from app.models.scans import ScanJob, ScanResult
    from app.models.voice import VoiceJob

    table = {f: FamilyTally() for f in FAMILIES}
    current = states(engine, items)
    for item in items:
        t = table[item.family]
        t.submitted += 1
        if not item.accepted or not item.id:
            t.reasons[f"not accepted by the API: {reason_class(item.error)}"] += 1
            continue
        t.accepted += 1
        status, reason = current[item.family].get(item.id, ("missing", "row missing"))
        outcome = TERMINAL[item.family].get(status)
        if outcome == "completed":
            t.completed += 1
        elif outcome == "failed":
            t.failed += 1
            t.reasons[reason_class(reason)] += 1
        else:
            t.lost += 1
            t.lost_ids.append(f"{item.id} ({status})")

    accepted = {f: {i.id: i for i in items if i.family == f and i.accepted and i.id} for f in FAMILIES}

    # messages: one request per (message, channel) at the channel server, and one for each accepted delivery
    received: Counter[tuple[str, str]] = Counter()
    for d in deliveries:
        body = d.get("body") or {}
        mid = body.get("biz_opaque_callback_data") or (body.get("message") or {}).get("metadata")
        if mid:
            received[(str(mid), d.get("channel", ""))] += 1
    with engine.connect() as conn:
        rows = conn.execute(select(MessageDelivery.message_id, MessageDelivery.channel, MessageDelivery.status)
                            .where(MessageDelivery.message_id.in_(list(accepted["messages"]) or [""]))).all()
    for mid, channel, status in rows:
        n = received[(mid, channel)]
        if n > 1:
            table["messages"].duplicates += 1
            table["messages"].duplicate_ids.append(f"{mid}/{channel} x{n}")
        if status == "accepted" and n == 0:
            table["messages"].lost += 1  # marked accepted but the channel never got it
            table["messages"].lost_ids.append(f"{mid}/{channel} accepted but never received")

    # voice and OCR: the completion is logged once per scored task / processed upload
    voice_done = log_events(worker_logs["voice"], "voice task completed", "task_id")
    ocr_done = log_events(worker_logs["ocr"], "upload ready", "upload_id")
    for family, done in (("voice", voice_done), ("ocr", ocr_done)):
        for tid in accepted[family]:
            if done[tid] > 1:
                table[family].duplicates += 1
                table[family].duplicate_ids.append(f"{tid} x{done[tid]}")

    with engine.connect() as conn:
        # voice: the same client ref accepted twice (a retried request that had committed)
        metas = conn.execute(select(VoiceJob.meta)).scalars().all()
        refs = Counter((m or {}).get("chaos_ref") for m in metas if (m or {}).get("chaos_ref", "").startswith(run))
        table["voice"].double_accepted = sum(n - 1 for n in refs.values() if n > 1)
        scan_urls = conn.execute(select(ScanJob.url).where(ScanJob.url.like(f"%ref={run}-%"))).scalars().all()
        table["scans"].double_accepted = sum(n - 1 for n in Counter(scan_urls).values() if n > 1)
        # scans: one result row per job, one container per attempt
        results = Counter(conn.execute(select(ScanResult.job_id)
                                       .where(ScanResult.job_id.in_(list(accepted["scans"]) or [""]))).scalars())
        attempts = dict(conn.execute(select(ScanJob.id, ScanJob.attempts)
                                     .where(ScanJob.id.in_(list(accepted["scans"]) or [""]))).all())
        # orphans: created, never completed because the creation's answer was lost
        table["ocr"].orphans = conn.execute(select(func.count()).select_from(Upload).where(
            Upload.filename.like(f"{run}-%"), Upload.status == "uploaded")).scalar_one()
        table["files"].orphans = conn.execute(select(func.count()).select_from(File).where(
            File.filename.like(f"{run}-%"), File.status == "UPLOADING")).scalar_one()
        files = {r[0]: r for r in conn.execute(select(File.id, File.status, File.sha256, File.object_key)
                                               .where(File.id.in_(list(accepted["files"]) or [""]))).all()}
    for sid in accepted["scans"]:
        extra = []
        if results[sid] > 1:
            extra.append(f"{results[sid]} results")
        if container_creates[sid] > attempts.get(sid, 0):
            extra.append(f"{container_creates[sid]} containers for {attempts.get(sid, 0)} attempts")
        if extra:
            table["scans"].duplicates += 1
            table["scans"].duplicate_ids.append(f"{sid}: {', '.join(extra)}")

    # files: exactly one merged object per completed file, equal to what was sent
    for fid, item in accepted["files"].items():
        row = files.get(fid)
        if row is None or row[1] != "COMPLETED":
            continue
        objects = [p for p in (storage_root / "files" / fid).rglob("*")
                   if p.is_file() and "chunks" not in p.parts and not p.name.startswith(".tmp-")]
        if len(objects) != 1 or row[2] != item.spec["sha256"]:
            table["files"].duplicates += 1
            table["files"].duplicate_ids.append(f"{fid}: {len(objects)} objects, sha256 ok={row[2] == item.spec['sha256']}")
        elif hashlib.sha256(objects[0].read_bytes()).hexdigest() != item.spec["sha256"]:
            table["files"].lost += 1
            table["files"].lost_ids.append(f"{fid}: merged object differs from what was sent")
    return table
