"""The retention purge as beat sends it: ``app.tasks.gc.purge_expired`` run by a real
``gc`` worker on the real broker, against the test PostgreSQL and the local storage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from app.db import session_scope
from app.models.jobs import JobRun
from app.settings import get_settings
from app.storage import get_storage
from tests.unit.test_gc_retention import NOW, _check, _scenario, clean_rows  # noqa: F401  (fixture)


def test_the_beat_task_purges_through_a_real_gc_worker(clean_rows, start_worker) -> None:  # type: ignore[no-untyped-def]
    storage = get_storage(get_settings())
    ids = _scenario(storage)
    worker = start_worker(["gc"], name="gc-retention", pool="prefork", concurrency=1)
    worker.wait_ready()
    result: dict[str, Any] = worker.client.send_task(
        "app.tasks.gc.purge_expired", kwargs={"now": NOW.isoformat()}).get(timeout=60)
    assert result.pop("skipped") is False
    _check(storage, ids, result)
    with session_scope() as session:
        run = session.scalars(select(JobRun).where(JobRun.job == "retention-gc").order_by(JobRun.id.desc())).first()
        assert run is not None and run.counts["ocr_originals_deleted"] == 1
