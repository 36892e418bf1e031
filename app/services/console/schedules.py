"""Beat entries as RedBeat keeps them in Redis: last run, next run, last result; pause,
resume and run now.

The HA beat (``app.beat.HABeatScheduler``, RedBeat) reads every entry's definition from
Redis on each tick, in whichever beat holds the lock, so a pause written there is obeyed
by the active beat and by a standby that takes over: RedBeat's ``is_due`` answers "not
due" for an entry whose ``enabled`` is false. Run now publishes the entry's task once
from here (with the entry's options), never through a beat, so it cannot be sent twice
by two beats, and it leaves the entry's schedule as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.jobs import JobRun


class UnknownSchedule(LookupError):
    pass


@dataclass
class ScheduleView:
    name: str
    task: str
    schedule: str
    enabled: bool
    last_run_at: datetime | None
    next_run_at: datetime | None
    last_outcome: str | None
    last_detail: str | None


def _entry(celery: Any, name: str) -> Any:
    from redbeat.schedulers import RedBeatSchedulerEntry, ensure_conf

    ensure_conf(celery)
    if name not in (celery.conf.beat_schedule or {}):
        raise UnknownSchedule(f"no beat entry named {name!r}")
    try:
        return RedBeatSchedulerEntry.from_key(RedBeatSchedulerEntry.generate_key(celery, name), app=celery)
    except KeyError:
        # Not stored by a beat yet: made from the configuration, as beat would.
        conf = dict(celery.conf.beat_schedule[name])
        return RedBeatSchedulerEntry(name=name, app=celery, task=conf["task"], schedule=conf["schedule"],
                                     args=conf.get("args"), kwargs=conf.get("kwargs"), options=conf.get("options"))


def _last_runs(session: Session, names: list[str]) -> dict[str, JobRun]:
    out: dict[str, JobRun] = {}
    for name in names:
        run = session.scalars(select(JobRun).where(JobRun.job == name).order_by(JobRun.started_at.desc())
                              .limit(1)).first()
        if run is not None:
            out[name] = run
    return out


def list_schedules(celery: Any, session: Session) -> list[ScheduleView]:
    """Every entry of ``beat_schedule``, with RedBeat's state and the last recorded run."""
    names = sorted(celery.conf.beat_schedule or {})
    runs = _last_runs(session, names)
    out = []
    for name in names:
        entry = _entry(celery, name)
        run = runs.get(name)
        out.append(ScheduleView(name, entry.task, str(entry.schedule), bool(entry.enabled), entry.last_run_at,
                                entry.due_at if entry.enabled else None, run.outcome if run else None,
                                (run.detail or "") if run else None))
    return out


def set_enabled(celery: Any, name: str, enabled: bool) -> None:
    """Pause (``enabled=False``) or resume an entry for every beat, active or standby."""
    entry = _entry(celery, name)
    entry.enabled = enabled
    entry.save()


def run_now(celery: Any, name: str) -> str:
    """Publish the entry's task once, now; its task id."""
    entry = _entry(celery, name)
    options = {k: v for k, v in (entry.options or {}).items() if k != "expires"}
    result = celery.send_task(entry.task, args=entry.args or (), kwargs=entry.kwargs or {}, **options)
    return str(result.id)
