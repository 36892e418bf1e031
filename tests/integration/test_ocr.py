"""OCR end to end: API → outbox → relay worker → OCR worker (real Tesseract, real poppler)
→ status API, on real Redis and PostgreSQL. Accuracy against the rendered fixtures'
ground truth, hostile files, and a worker SIGKILLed in the middle of a multi-page PDF."""

from __future__ import annotations

import io
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db import session_scope
from app.models.ocr import Upload
from app.models.outbox import OutboxEvent
from app.settings import get_settings
from app.storage import get_storage
from tests.conftest import need
from tests.fixtures.services import wait_for
from tests.fixtures.workers import Worker
from tests.ocr_fixtures import (
    FIXTURES,
    bomb_png,
    build,
    corrupt_pdf,
    encrypted_pdf,
    missing_fonts,
    score,
    small_pdf,
    truth,
)

MAX_PDF_PAGES = 3  # the worker's limit here, so a 4-page PDF is over it


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    need(shutil.which("tesseract") is not None, "tesseract (Debian tesseract-ocr)")
    need(shutil.which("pdftoppm") is not None and shutil.which("pdfinfo") is not None, "poppler-utils")
    need(not missing_fonts(), f"fixture fonts {missing_fonts()} (Debian fonts-dejavu-core, fonts-liberation)")
    out = tmp_path_factory.mktemp("ocr-fixtures")
    return {name: build(spec, out) for name, spec in FIXTURES.items()}


@pytest.fixture(scope="module")
def ocr_stack(redis_client, pg_database, tmp_path_factory) -> Iterator[SimpleNamespace]:  # type: ignore[no-untyped-def]
    """A relay worker on ``outbox`` and an OCR worker (prefork, one process) on ``ocr``,
    shared by this module's tests; the OCR worker's private temp dirs go under ``tmp_root``."""
    tmp_root = tmp_path_factory.mktemp("ocr-worker-tmp")
    env = {"OCR_TMP_DIR": str(tmp_root), "OCR_MAX_PDF_PAGES": str(MAX_PDF_PAGES)}
    relay = Worker(["outbox"], name="ocr-relay", pool="threads", concurrency=2, extra_env=env).start()
    ocr = Worker(["ocr"], name="ocr", pool="prefork", concurrency=1, extra_env=env).start()
    try:
        relay.wait_ready()
        ocr.wait_ready()
        yield SimpleNamespace(relay=relay, ocr=ocr, tmp_root=tmp_root)
    finally:
        codes = [relay.stop(), ocr.stop()]
    assert codes == [0, 0], ocr.log_tail()


def _upload(api, data: bytes, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    resp = api.post("/api/uploads", data={"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _submit(api, path: Path) -> str:  # type: ignore[no-untyped-def]
    body = _upload(api, path.read_bytes(), path.name)
    assert body["status"] == "uploaded", body
    resp = api.post(body["complete_url"])
    assert resp.status_code == 202, resp.get_json()
    return body["id"]


def _final(api, upload_id: str, timeout: float = 90) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    def done() -> dict[str, Any] | None:
        with session_scope() as session:
            row = session.get(Upload, upload_id)
            if row is None or row.status not in ("ready", "failed"):
                return None
        return api.get(f"/api/uploads/{upload_id}/status").get_json()

    return wait_for(done, timeout=timeout, interval=0.1, message=f"upload {upload_id} finished")  # type: ignore[return-value]


def _names_found(preview: dict[str, Any], expected: dict[str, Any]) -> None:
    result = score(preview, expected)
    assert result.missing_batters == [], result.missing_batters
    assert result.missing_bowlers == [], result.missing_bowlers


def test_clean_fixtures_parse_accurately(api, ocr_stack, fixture_files) -> None:  # type: ignore[no-untyped-def]
    names = ["clean-dejavu-sans", "clean-liberation-serif", "clean-liberation-sans"]
    ids = {name: _submit(api, fixture_files[name]) for name in names}
    for name, upload_id in ids.items():
        body = _final(api, upload_id)
        assert body["status"] == "ready", body["error"]
        assert body["progress"] == {"pages_done": 1, "pages_total": 1, "percent": 100.0}
        expected = truth(FIXTURES[name])
        result = score(body["parsed_preview"], expected)
        assert result.accuracy >= 0.98, (name, result.accuracy, result.wrong)
        _names_found(body["parsed_preview"], expected)
        assert body["parsed_preview"]["teams"] == expected["teams"]
        assert body["page_confidences"][0] > 80
        assert "innings" in body["text"]
    # The same task delivered again for a finished upload does nothing.
    upload_id = ids[names[0]]
    before = api.get(f"/api/uploads/{upload_id}/status").get_json()
    again = ocr_stack.ocr.client.send_task("app.tasks.ocr.process", kwargs={"upload_id": upload_id})
    assert again.get(timeout=30)["result"] == "already_done"
    after = api.get(f"/api/uploads/{upload_id}/status").get_json()
    assert (after["attempts"], after["updated_at"]) == (before["attempts"], before["updated_at"]) == (1, before["updated_at"])
    assert list(ocr_stack.tmp_root.iterdir()) == []


def test_noisy_and_rotated_fixtures_parse_well_enough(api, ocr_stack, fixture_files) -> None:  # type: ignore[no-untyped-def]
    names = ["noisy-liberation-sans", "rotated-dejavu-serif"]
    ids = {name: _submit(api, fixture_files[name]) for name in names}
    for name, upload_id in ids.items():
        body = _final(api, upload_id)
        assert body["status"] == "ready", body["error"]
        result = score(body["parsed_preview"], truth(FIXTURES[name]))
        assert result.accuracy >= 0.90, (name, result.accuracy, result.wrong)
        assert result.innings_found == 2


def test_two_page_pdf_gives_both_innings_with_visible_progress(api, ocr_stack, fixture_files) -> None:  # type: ignore[no-untyped-def]
    upload_id = _submit(api, fixture_files["two-page-pdf"])
    seen: list[tuple[str, int, int | None]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        progress = api.get(f"/api/uploads/{upload_id}/status").get_json()
        state = (progress["status"], progress["progress"]["pages_done"], progress["progress"]["pages_total"])
        if not seen or seen[-1] != state:
            seen.append(state)
        if progress["status"] in ("ready", "failed"):
            break
        time.sleep(0.02)
    assert ("processing", 1, 2) in seen, seen  # progress shows between the pages
    body = _final(api, upload_id)
    assert body["status"] == "ready" and body["content_type"] == "application/pdf"
    assert body["progress"] == {"pages_done": 2, "pages_total": 2, "percent": 100.0}
    preview = body["parsed_preview"]
    expected = truth(FIXTURES["two-page-pdf"])
    assert [i["team"] for i in preview["innings"]] == [i["team"] for i in expected["innings"]]
    assert [i["page"] for i in preview["innings"]] == [1, 2]
    result = score(preview, expected)
    assert result.accuracy >= 0.98, result.wrong
    _names_found(preview, expected)
    assert body["text"].count("\f") == 1
    assert list(ocr_stack.tmp_root.iterdir()) == []


def _hostile(fixture_files: dict[str, Path]) -> dict[str, tuple[bytes, str, str]]:
    """name → (bytes, file name, the reason the upload must end with)."""
    png = fixture_files["clean-dejavu-sans"].read_bytes()
    pdf = fixture_files["two-page-pdf"].read_bytes()
    return {
        "empty": (b"", "empty.png", "the file is empty (0 bytes)"),
        "text-renamed": (b"These are notes about the match and not a picture.\n" * 20, "card.png",
                         "unsupported file type text/plain"),
        "truncated-png": (png[: len(png) // 2], "truncated.png", "the image is truncated or corrupt"),
        "corrupt-pdf": (corrupt_pdf(), "corrupt.pdf", "the PDF is damaged and cannot be read"),
        "encrypted-pdf": (encrypted_pdf(pdf), "locked.pdf", "the PDF is encrypted with a password"),
        "too-many-pages": (small_pdf(MAX_PDF_PAGES + 1), "long.pdf",
                           f"the PDF has {MAX_PDF_PAGES + 1} pages, over the limit of {MAX_PDF_PAGES}"),
        "bomb": (bomb_png(30000, 30000), "bomb.png", "the image has 900,000,000 pixels, over the limit of"),
    }


def test_hostile_files_fail_with_a_specific_reason_and_leave_nothing_behind(api, ocr_stack, fixture_files) -> None:  # type: ignore[no-untyped-def]
    cases = _hostile(fixture_files)
    ids: dict[str, str] = {}
    for name, (data, filename, reason) in cases.items():
        body = _upload(api, data, filename)
        if body["status"] == "failed":  # refused from the bytes at upload: nothing stored, nothing queued
            assert name in ("empty", "text-renamed"), body
            assert not get_storage(get_settings()).exists(f"ocr/uploads/{body['id']}/original")
        else:
            assert api.post(body["complete_url"]).status_code == 202
        ids[name] = body["id"]
    for name, upload_id in ids.items():
        body = _final(api, upload_id)
        assert body["status"] == "failed", (name, body)
        assert body["error"].startswith(cases[name][2]), (name, body["error"])
        assert body["parsed_preview"] is None
    assert "decompression-bomb guard" in _final(api, ids["bomb"])["error"]
    # Over the size limit: refused at upload with 413 JSON, nothing recorded.
    with session_scope() as session:
        before = session.scalar(select(func.count()).select_from(Upload))
    limit = get_settings().ocr_max_file_bytes
    resp = api.post("/api/uploads", data={"file": (io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\x00" * limit), "big.png")},
                    content_type="multipart/form-data")
    assert resp.status_code == 413 and resp.get_json()["error"]["code"] == "file_too_large"
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Upload)) == before
    assert list(ocr_stack.tmp_root.iterdir()) == []


@pytest.mark.parametrize(("replacement", "reason"), [
    (b"", "the file is empty (0 bytes)"),
    (b"Plain words put where the picture was.\n" * 10, "unsupported file type text/plain"),
])
def test_worker_checks_the_stored_bytes_again(api, ocr_stack, fixture_files, replacement: bytes, reason: str) -> None:  # type: ignore[no-untyped-def]
    # The object is replaced after the API looked at it (as a direct upload to S3 can be).
    body = _upload(api, fixture_files["clean-dejavu-sans"].read_bytes(), "card.png")
    get_storage(get_settings()).put_bytes(f"ocr/uploads/{body['id']}/original", replacement)
    assert api.post(body["complete_url"]).status_code == 202
    final = _final(api, body["id"])
    assert final["status"] == "failed" and final["error"].startswith(reason), final["error"]
    assert list(ocr_stack.tmp_root.iterdir()) == []


def test_sigkill_during_a_multi_page_ocr_is_redelivered_and_finishes_once(api, ocr_stack, fixture_files) -> None:  # type: ignore[no-untyped-def]
    upload_id = _submit(api, fixture_files["two-page-pdf"])

    def first_page_done() -> bool:
        with session_scope() as session:
            row = session.get(Upload, upload_id)
            return row is not None and row.status == "processing" and row.pages_done >= 1

    wait_for(first_page_done, timeout=60, interval=0.01, message="first page done")
    children = ocr_stack.ocr.child_pids()
    assert children
    for pid in children:
        os.kill(pid, signal.SIGKILL)

    body = _final(api, upload_id, timeout=90)
    assert body["status"] == "ready", body["error"]
    assert body["attempts"] == 2  # the killed attempt, then the redelivered one from the start
    assert body["progress"] == {"pages_done": 2, "pages_total": 2, "percent": 100.0}
    assert len(body["page_confidences"]) == 2 and body["text"].count("\f") == 1
    assert len(body["parsed_preview"]["innings"]) == 2
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)
                              .where(OutboxEvent.aggregate_id == upload_id)) == 1
    # The redelivered attempt removed the dead attempt's temp dir and its own.
    assert list(ocr_stack.tmp_root.iterdir()) == []
    # The worker's main process replaced the killed pool process and still answers.
    assert ocr_stack.ocr.client.control.ping(destination=[ocr_stack.ocr.nodename], timeout=2)
