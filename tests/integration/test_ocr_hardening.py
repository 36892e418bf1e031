"""OCR hardening through a real OCR worker (prefork, real poppler): an upload that keeps
killing its pool process ends FAILED after OCR_MAX_ATTEMPTS with the reason, and a PDF
whose huge MediaBox hides behind a tiny CropBox is refused before it is rendered."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from app.db import session_scope
from app.models.ocr import Upload
from app.services.ocr import OcrLimits, create_upload
from app.settings import get_settings
from app.storage import get_storage
from tests.conftest import need
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker

MAX_ATTEMPTS = 2


@pytest.fixture(scope="module")
def crashing_ocr_worker(redis_client, pg_database, tmp_path_factory) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """An OCR worker with the test hook that makes ``crash-*`` uploads end their pool process."""
    need(shutil.which("pdfinfo") is not None and shutil.which("pdftoppm") is not None, "poppler-utils")
    tmp_root = tmp_path_factory.mktemp("ocr-crash-tmp")
    env = {"OCR_TMP_DIR": str(tmp_root), "OCR_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
    worker = Worker(["ocr"], name="ocr-crash", pool="prefork", concurrency=1, extra_env=env,
                    extra_args=["--include", "tests.ocr_crash_hook"]).start()
    try:
        worker.wait_ready()
        yield SimpleNamespace(worker=worker, tmp_root=tmp_root)
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()


def _queued(data: bytes, name: str) -> str:
    """A stored upload set to ``queued`` and committed, as ``complete`` leaves it."""
    with session_scope() as session:
        upload = create_upload(session, get_storage(get_settings()), filename=name, stream=io.BytesIO(data),
                               size=len(data), limits=OcrLimits())
        assert upload.status == "uploaded", upload.error
        upload.status = "queued"
        return upload.id


def _finished(upload_id: str, timeout: float = 60) -> Upload:
    def done() -> Upload | None:
        with session_scope() as session:
            row = session.get(Upload, upload_id)
            if row is None or row.status not in ("ready", "failed"):
                return None
            session.expunge(row)
            return row

    return wait_for(done, timeout=timeout, interval=0.1, message=f"upload {upload_id} finished")  # type: ignore[return-value]


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (200, 100), 255).save(out, "PNG")
    return out.getvalue()


def test_an_upload_that_keeps_killing_its_worker_fails_after_the_bounded_attempts(crashing_ocr_worker) -> None:  # type: ignore[no-untyped-def]
    worker = crashing_ocr_worker.worker
    upload_id = _queued(_png(), "crash-card.png")
    worker.client.send_task("app.tasks.ocr.process", kwargs={"upload_id": upload_id})
    row = _finished(upload_id)
    assert row.status == "failed"
    assert row.attempts == MAX_ATTEMPTS  # two claims died with their process; the third delivery gave up
    assert row.error is not None and row.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts that never finished")
    assert "the worker processing this upload stopped each time" in row.error
    log = worker.log_path.read_text(errors="replace")
    assert log.count("exitcode 9") >= MAX_ATTEMPTS, worker.log_tail()
    # Giving up removed the temp dirs the dead attempts could not.
    assert list(crashing_ocr_worker.tmp_root.glob(f"ocr-{upload_id}-*")) == []
    # The worker replaced its dead pool processes and still answers.
    assert worker.client.control.ping(destination=[worker.nodename], timeout=2)


def test_a_huge_mediabox_behind_a_tiny_cropbox_is_refused_before_rendering(crashing_ocr_worker) -> None:  # type: ignore[no-untyped-def]
    from pypdf import PdfWriter
    from pypdf.generic import RectangleObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=14400, height=14400)  # 200 × 200 in
    page.cropbox = RectangleObject([0, 0, 72, 72])  # shown as 1 × 1 in
    out = io.BytesIO()
    writer.write(out)
    upload_id = _queued(out.getvalue(), "trick.pdf")
    crashing_ocr_worker.worker.client.send_task("app.tasks.ocr.process", kwargs={"upload_id": upload_id})
    row = _finished(upload_id, timeout=30)
    assert row.status == "failed"
    assert row.error is not None and row.error.startswith("page 1 is 200×200 in (MediaBox, the area that is rendered)")
    assert "over the limit of 40,000,000" in row.error
    assert row.pages_done == 0 and row.ocr_seconds is None
    assert list(crashing_ocr_worker.tmp_root.glob(f"ocr-{upload_id}-*")) == []  # no rendered page left behind
