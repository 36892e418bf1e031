"""The life of a voice task, shared by the Celery path and the HTTP pull path.

Every transition is a conditional UPDATE on ``(id, status, version)`` (plus the holder
for a held task) whose row count is checked before anything else happens, so two
claimants — a Celery worker and a remote worker, or a redelivered task — can never both
hold or both complete one task. The claim is committed before scoring starts; scoring
happens only in the claimant, so each task is scored once.

Leases bound a claim: ``sweep_expired`` returns a task whose lease ran out to
``pending`` (re-dispatching it through the outbox when Celery owns it), or fails it
after ``max_attempts`` claims.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import requests
from sqlalchemy import bindparam, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from app import outbound
from app.db import rows_changed
from app.models.base import utcnow
from app.models.voice import VoiceJob, VoiceJobStatus
from app.services.outbox import add_event

logger = logging.getLogger(__name__)

SCORE_TASK = "app.tasks.voice.score"
HELD = (VoiceJobStatus.CLAIMED, VoiceJobStatus.PROCESSING)


class JobNotFound(LookupError):
    """No voice task has this id."""


class NotHolder(Exception):
    """The caller does not hold this task (never did, or its lease was taken back)."""

    def __init__(self, task: VoiceJob) -> None:
        super().__init__(f"voice task {task.id} is {task.status}"
                         + (" and held by another worker" if task.status in HELD else "")
                         + "; only the worker holding its lease may update it")
        self.status = task.status


class AudioFetchError(Exception):
    """The task's audio could not be fetched (transient: the source may come back)."""


class AudioURLBlocked(Exception):
    """The outbound address policy refuses the task's ``audio_url`` (or a redirect of it):
    final, the task fails with ``blocked_address``."""


def new_job_id() -> str:
    return uuid.uuid4().hex


def audio_key_for(task_id: str) -> str:
    """Deterministic storage key of an uploaded clip: a retried upload overwrites itself."""
    return f"voice/{task_id}/audio"


def key_in_voice_area(session: Session, key: str, client_id: int | None) -> bool:
    """Whether ``key`` lies in the voice area of ``client_id``: the clip of one of its own
    voice tasks, or a merged file of its own (``files/<id>/data``). ``client_id`` None
    (the admin credential) may name any key. Another client's key is judged exactly like
    a missing one by the caller."""
    if client_id is None:
        return True
    from app.models.files import COMPLETED, File
    from app.services.files import object_key

    parts = key.split("/")
    if len(parts) == 3 and parts[0] == "voice" and parts[2] == "audio" and audio_key_for(parts[1]) == key:
        task = session.get(VoiceJob, parts[1])
        return task is not None and task.client_id == client_id
    if len(parts) == 3 and parts[0] == "files" and object_key(parts[1]) == key:
        file = session.get(File, parts[1])
        return file is not None and file.client_id == client_id and file.status == COMPLETED
    return False


def create_job(
    session: Session,
    *,
    task_id: str,
    target: str,
    audio_key: str | None = None,
    audio_url: str | None = None,
    transcript: str | None = None,
    meta: dict[str, Any] | None = None,
    api_key_id: int | None = None,
    client_id: int | None = None,
) -> VoiceJob:
    """Add a pending task of ``client_id``; a Celery-targeted one gets its outbox event in
    the same transaction."""
    task = VoiceJob(id=task_id, target=target, audio_key=audio_key, audio_url=audio_url, transcript=transcript,
                     meta=meta or {}, status=VoiceJobStatus.PENDING, attempts=0, version=0, api_key_id=api_key_id,
                     client_id=client_id)
    session.add(task)
    session.flush()
    if target == "celery":
        _dispatch(session, task)
    return task


def _dispatch(session: Session, task: VoiceJob) -> None:
    add_event(session, aggregate_type="voice_task", aggregate_id=task.id, event_type="voice.score",
              task_name=SCORE_TASK, payload={"task_id": task.id})


def _transition(session: Session, task: VoiceJob, expect: tuple[str, ...], holder: str | None,
                **values: Any) -> bool:
    """One conditional UPDATE; on success the in-memory row is brought up to date.

    The version condition means the row is exactly as read, so the new values can be
    computed here (``attempts + 1``) and copied onto the object without a re-read.
    """
    values |= {"version": task.version + 1, "updated_at": utcnow()}
    stmt = update(VoiceJob).where(VoiceJob.id == task.id, VoiceJob.version == task.version,
                                   VoiceJob.status.in_(expect))
    if holder is not None:
        stmt = stmt.where(VoiceJob.claimed_by == holder)
    if rows_changed(session, stmt.values(**values), synchronize=False) != 1:
        return False
    for key, value in values.items():
        set_committed_value(task, key, value)
    return True


def claim(session: Session, task_id: str, holder: str, lease_seconds: float,
          now: datetime | None = None) -> VoiceJob | None:
    """pending → claimed by ``holder``; ``None`` when someone else got there first.

    One conditional ``UPDATE … RETURNING``: the check and the claim are a single
    statement, so there is no read before it.
    """
    stmt = (update(VoiceJob).where(VoiceJob.id == task_id, VoiceJob.status == VoiceJobStatus.PENDING)
            .values(_claimed(VoiceJobStatus.CLAIMED, holder, lease_seconds, now or utcnow())).returning(VoiceJob))
    task = _returned(session, stmt)
    if task is None and session.get(VoiceJob, task_id, populate_existing=True) is None:
        raise JobNotFound(task_id)
    return task


def _claimed(status: str, holder: str, lease_seconds: float, now: datetime) -> dict[str, Any]:
    # The values of a claim: one more attempt, held by ``holder`` until the lease ends.
    return {"status": status, "claimed_by": holder, "claimed_at": now,
            "lease_until": now + timedelta(seconds=lease_seconds), "attempts": VoiceJob.attempts + 1,
            "version": VoiceJob.version + 1, "updated_at": now}


def _returned(session: Session, stmt: Any) -> VoiceJob | None:
    # The row as the UPDATE left it, replacing whatever this session held for it.
    return session.scalars(stmt, execution_options={"synchronize_session": False,
                                                    "populate_existing": True}).one_or_none()


def claim_many(session: Session, task_ids: list[str], holder: str, lease_seconds: float,
               now: datetime | None = None) -> dict[str, Claimed]:
    """pending → processing by ``holder`` for each of ``task_ids`` still pending, in one statement.

    What scoring needs of each task claimed, by id; an id missing from the answer was
    not pending (someone else holds it, it is finished, or it does not exist:
    ``statuses`` tells which).
    """
    stmt = (update(VoiceJob).where(VoiceJob.id.in_(task_ids), VoiceJob.status == VoiceJobStatus.PENDING)
            .values(_claimed(VoiceJobStatus.PROCESSING, holder, lease_seconds, now or utcnow()))
            .returning(VoiceJob.id, VoiceJob.audio_key, VoiceJob.audio_url, VoiceJob.transcript))
    rows = session.execute(stmt, execution_options={"synchronize_session": False})
    return {row.id: Claimed(row.audio_key, row.audio_url, row.transcript) for row in rows}


@dataclass(frozen=True)
class Claimed:
    """The inputs of a claimed task."""

    audio_key: str | None
    audio_url: str | None
    transcript: str | None


def statuses(session: Session, task_ids: list[str]) -> dict[str, str]:
    """Current status by id (ids that do not exist are left out)."""
    if not task_ids:
        return {}
    rows = session.execute(select(VoiceJob.id, VoiceJob.status).where(VoiceJob.id.in_(task_ids)))
    return {row.id: row.status for row in rows}


def renew_leases(session: Session, task_ids: list[str], holder: str, lease_seconds: float,
                 now: datetime | None = None) -> int:
    """Push out the leases of tasks ``holder`` still holds; how many it still holds."""
    if not task_ids:
        return 0
    now = now or utcnow()
    return rows_changed(
        session,
        update(VoiceJob).where(VoiceJob.id.in_(task_ids), VoiceJob.status.in_(HELD),
                                VoiceJob.claimed_by == holder)
        .values(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now),
        synchronize=False,
    )


def claim_next(session: Session, holder: str, targets: list[str], lease_seconds: float,
               now: datetime | None = None) -> VoiceJob | None:
    """Claim the oldest pending task of ``targets``; ``None`` when there is none."""
    now = now or utcnow()
    for _ in range(5):  # a lost race moves on to the next candidate
        stmt = (select(VoiceJob.id).where(VoiceJob.status == VoiceJobStatus.PENDING, VoiceJob.target.in_(targets))
                .order_by(VoiceJob.created_at, VoiceJob.id).limit(1))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        task_id = session.scalar(stmt)
        if task_id is None:
            return None
        task = claim(session, task_id, holder, lease_seconds, now)
        if task is not None:
            return task
    return None


def _held(session: Session, task_id: str, holder: str, fresh: bool = True) -> VoiceJob:
    # ``fresh=False`` trusts a row this session already holds; the conditional UPDATE
    # still checks it against the database.
    task = session.get(VoiceJob, task_id, populate_existing=fresh)
    if task is None:
        raise JobNotFound(task_id)
    if task.status not in HELD or task.claimed_by != holder:
        raise NotHolder(task)
    return task


def start(session: Session, task_id: str, holder: str, lease_seconds: float,
          now: datetime | None = None) -> VoiceJob:
    """claimed/processing → processing, renewing the lease; ``NotHolder`` otherwise."""
    now = now or utcnow()
    task = _held(session, task_id, holder, fresh=False)
    if not _transition(session, task, HELD, holder, status=VoiceJobStatus.PROCESSING,
                       lease_until=now + timedelta(seconds=lease_seconds)):
        raise NotHolder(session.get(VoiceJob, task_id, populate_existing=True) or task)
    return task


def _complete_stmt(task_id: Any, holder: Any, result: Any, now: datetime) -> Any:
    # Plain values, or bind parameters for an executemany. (Statuses compared one by one:
    # an IN list would be expanded per execution, which executemany cannot do.)
    return (update(VoiceJob)
            .where(VoiceJob.id == task_id, or_(*(VoiceJob.status == s for s in HELD)),
                   VoiceJob.claimed_by == holder)
            .values(status=VoiceJobStatus.COMPLETED, result=result, error=None, lease_until=None, finished_at=now,
                    version=VoiceJob.version + 1, updated_at=now))


def complete(session: Session, task_id: str, holder: str, result: dict[str, Any],
             now: datetime | None = None) -> VoiceJob:
    """Record the result of a held task; ``NotHolder`` if the lease was lost.

    One conditional ``UPDATE … RETURNING`` on (status held, holder): no read first; the
    row is read only when the update matched nothing, to say why.
    """
    task = _returned(session, _complete_stmt(task_id, holder, result, now or utcnow()).returning(VoiceJob))
    if task is None:
        current = session.get(VoiceJob, task_id, populate_existing=True)
        raise JobNotFound(task_id) if current is None else NotHolder(current)
    return task


def record_results(session: Session, holder: str, results: list[tuple[str, dict[str, Any]]],
                   now: datetime | None = None) -> dict[str, str]:
    """``complete`` for several held tasks in one statement (executed once per row, sent at
    once); the tasks whose lease was lost, with their status now."""
    if not results:
        return {}
    stmt = _complete_stmt(bindparam("b_id"), bindparam("b_holder"),
                          bindparam("b_result", type_=VoiceJob.result.type), now or utcnow())
    done = session.connection().execute(
        stmt, [{"b_id": task_id, "b_holder": holder, "b_result": result} for task_id, result in results]).rowcount
    if done == len(results):
        return {}
    # Some lease ran out (rare): the rows say which.
    ids = [task_id for task_id, _ in results]
    rows = session.execute(select(VoiceJob.id, VoiceJob.status, VoiceJob.claimed_by).where(VoiceJob.id.in_(ids)))
    found = {row.id: (row.status, row.claimed_by) for row in rows}
    return {task_id: found.get(task_id, ("missing", None))[0] for task_id in ids
            if found.get(task_id) != (VoiceJobStatus.COMPLETED, holder)}


def fail(session: Session, task_id: str, holder: str, reason: str, *, retryable: bool, max_attempts: int,
         now: datetime | None = None) -> VoiceJob:
    """A held task failed: back to ``pending`` while attempts remain and it may help, else ``failed``."""
    now = now or utcnow()
    task = _held(session, task_id, holder)
    reason = reason.strip()[:2000] or "no reason given"
    if retryable and task.attempts < max_attempts:
        ok = _transition(session, task, HELD, holder, status=VoiceJobStatus.PENDING, claimed_by=None, lease_until=None,
                         error=reason)
        if ok and task.target == "celery":
            _dispatch(session, task)
    else:
        if retryable:
            reason = f"{reason} (gave up after {task.attempts} attempts)"
        ok = _transition(session, task, HELD, holder, status=VoiceJobStatus.FAILED, error=reason, lease_until=None,
                         finished_at=now)
    if not ok:
        raise NotHolder(session.get(VoiceJob, task_id, populate_existing=True) or task)
    return task


def fail_unclaimed(session: Session, task_id: str, reason: str, now: datetime | None = None) -> bool:
    """Fail a pending task that can never be scored (e.g. it has neither audio nor text)."""
    now = now or utcnow()
    task = session.get(VoiceJob, task_id, populate_existing=True)
    if task is None or task.status != VoiceJobStatus.PENDING:
        return False
    return _transition(session, task, (VoiceJobStatus.PENDING,), None, status=VoiceJobStatus.FAILED, error=reason, finished_at=now)


@dataclass
class SweepResult:
    returned: int = 0
    failed: int = 0


def sweep_expired(session: Session, max_attempts: int, now: datetime | None = None,
                  limit: int = 500) -> SweepResult:
    """Take back every claim whose lease has run out (the holder died or went silent)."""
    now = now or utcnow()
    result = SweepResult()
    stmt = (select(VoiceJob).where(VoiceJob.status.in_(HELD), VoiceJob.lease_until < now)
            .order_by(VoiceJob.lease_until).limit(limit))
    for task in session.scalars(stmt):
        holder = task.claimed_by
        if task.attempts >= max_attempts:
            if not _transition(session, task, HELD, holder, status=VoiceJobStatus.FAILED, lease_until=None, finished_at=now,
                               error=f"lease expired {task.attempts} times (last holder {holder}); giving up"):
                continue
            result.failed += 1
        else:
            if not _transition(session, task, HELD, holder, status=VoiceJobStatus.PENDING, claimed_by=None, lease_until=None,
                               error=f"lease of {holder} expired; returned to the queue"):
                continue
            result.returned += 1
            if task.target == "celery":
                _dispatch(session, task)
        logger.info("voice lease expired", extra={"task_id": task.id, "holder": holder, "status": task.status})
    return result


def read_audio(audio_key: str | None, audio_url: str | None, open_key: Any, *, timeout: float, max_bytes: int,
               allow: list[outbound.AllowRule] | None = None) -> bytes | None:
    """A task's audio bytes from storage (``open_key(key)`` context manager) or its URL; ``None``: no audio.

    The URL is the client's, so it is fetched under the outbound address policy
    (``app.outbound``; ``allow`` holds its exceptions): ``AudioURLBlocked`` when the policy
    refuses it, ``AudioFetchError`` when it cannot be had.
    """
    if audio_key:
        with open_key(audio_key) as stream:
            return _read_capped(stream, max_bytes)
    if audio_url:
        try:
            return outbound.get(audio_url, allow=allow, timeout=timeout, max_bytes=max_bytes)
        except outbound.Refused as exc:
            raise AudioURLBlocked(str(exc)) from None
        except outbound.FetchFailed as exc:
            raise AudioFetchError(str(exc)) from None
    return None


def _read_capped(stream: IO[bytes], max_bytes: int) -> bytes:
    # One byte past the limit is enough for the decoder to report the size. Read in
    # chunks: a single read(max_bytes + 1) allocates the whole limit for every clip.
    chunks, size = [], 0
    while size <= max_bytes:
        chunk = stream.read(min(1 << 20, max_bytes + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def fetch_url(url: str, *, timeout: float, max_bytes: int, http: requests.Session | None = None,
              headers: dict[str, str] | None = None) -> bytes:
    """GET a clip with a timeout and a size cap; ``AudioFetchError`` when it cannot be had.

    No address policy: for the links the server itself hands out (a remote worker's
    signed download link). A client's URL goes through ``read_audio``.
    """
    getter = http or requests
    try:
        with getter.get(url, timeout=timeout, stream=True, headers=headers or {}) as resp:
            if resp.status_code != 200:
                raise AudioFetchError(f"audio URL answered HTTP {resp.status_code}")
            chunks, size = [], 0
            for chunk in resp.iter_content(64 * 1024):
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    break
            return b"".join(chunks)
    except requests.RequestException as exc:
        raise AudioFetchError(f"audio URL could not be fetched: {type(exc).__name__}") from None
