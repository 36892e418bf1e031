"""The OCR service called directly (no broker): claims and idempotency, starting over after
a crash, a lost claim, deadlines and transient errors, temp-dir hygiene, real Tesseract."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models.ocr import Upload
from app.services.ocr import (
    OcrDeps,
    OcrLimits,
    create_upload,
    detect_content_type,
    process_upload,
    sanitize_filename,
    set_thread_limit,
)
from app.settings import get_settings
from app.storage import get_storage
from tests.conftest import need
from tests.ocr_fixtures import Layout, card_rows, font_path, make_match, render_page


@pytest.fixture(scope="module")
def small_card(tmp_path_factory) -> bytes:  # type: ignore[no-untyped-def]
    """One innings, drawn small enough for a quick OCR."""
    import shutil

    need(shutil.which("tesseract") is not None, "tesseract (Debian tesseract-ocr)")
    font = font_path("dejavu-sans")
    need(font is not None, "DejaVu fonts (Debian fonts-dejavu-core)")
    image = render_page(card_rows(make_match(11), [0], Layout(), header=True), font, 36)  # type: ignore[arg-type]
    out = io.BytesIO()
    image.save(out, "PNG")
    set_thread_limit(1)
    return out.getvalue()


def _queued(data: bytes, name: str = "card.png") -> str:
    storage = get_storage(get_settings())
    with session_scope() as session:
        upload = create_upload(session, storage, filename=name, stream=io.BytesIO(data), size=len(data),
                               limits=OcrLimits())
        upload.status = "queued"
        return upload.id


def _deps(tmp_root: Path, **kwargs) -> OcrDeps:  # type: ignore[no-untyped-def]
    return OcrDeps(scope=session_scope, storage=get_storage(get_settings()), limits=OcrLimits(),
                   tmp_root=tmp_root, **kwargs)


def _row(upload_id: str) -> Upload:
    with session_scope() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        session.expunge(upload)
        return upload


def test_processes_a_card_and_a_second_run_does_nothing(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)
    outcome = process_upload(_deps(tmp_path), upload_id)
    assert outcome.result == "ready", outcome
    row = _row(upload_id)
    assert (row.status, row.pages_total, row.pages_done, row.attempts) == ("ready", 1, 1, 1)
    assert row.parsed_preview is not None and len(row.parsed_preview["innings"]) == 1
    assert row.page_confidences is not None and row.page_confidences[0] > 80
    assert "Riverside CC innings" in (row.text or "")
    assert list(tmp_path.iterdir()) == []

    again = process_upload(_deps(tmp_path), upload_id)
    assert again.result == "already_done"
    after = _row(upload_id)
    assert (after.attempts, after.updated_at, after.parsed_preview) == (row.attempts, row.updated_at, row.parsed_preview)


def test_upload_found_processing_after_a_crash_starts_over_cleanly(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)
    # What a SIGKILLed attempt leaves: the row processing with its token and half the
    # progress, and its private temp dir with a rendered page in it.
    with session_scope() as session:
        session.execute(update(Upload).where(Upload.id == upload_id).values(
            status="processing", claim_token="dead", attempts=1, pages_total=3, pages_done=2, text="stale"))
    stale = tmp_path / f"ocr-{upload_id}-dead1234"
    stale.mkdir()
    (stale / "page-1.ppm").write_bytes(b"P5 1 1 255\n\x00")
    outcome = process_upload(_deps(tmp_path), upload_id)
    assert outcome.result == "ready"
    row = _row(upload_id)
    assert (row.status, row.attempts, row.pages_total, row.pages_done) == ("ready", 2, 1, 1)
    assert "stale" not in (row.text or "")
    assert list(tmp_path.iterdir()) == []


def test_an_attempt_that_lost_its_claim_writes_nothing(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)

    def taken_over(page: int, total: int) -> None:
        with session_scope() as session:
            session.execute(update(Upload).where(Upload.id == upload_id).values(claim_token="someone-else"))

    outcome = process_upload(_deps(tmp_path, on_page=taken_over), upload_id)
    assert outcome.result == "superseded"
    row = _row(upload_id)
    assert row.status == "processing" and row.parsed_preview is None and row.claim_token == "someone-else"
    assert list(tmp_path.iterdir()) == []


class Deadline(Exception):
    pass


def test_task_deadline_fails_the_upload_with_the_reason(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)

    def late(page: int, total: int) -> None:
        raise Deadline()

    outcome = process_upload(_deps(tmp_path, on_page=late, deadline_exceptions=(Deadline,), deadline_seconds=870),
                             upload_id)
    assert outcome.result == "failed"
    row = _row(upload_id)
    assert row.status == "failed" and row.error == "OCR took longer than the task time limit (870 s)"
    assert list(tmp_path.iterdir()) == []


def test_transient_error_is_raised_for_a_retry_and_cleans_up(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)

    def broken(page: int, total: int) -> None:
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError):
        process_upload(_deps(tmp_path, on_page=broken, transient_exceptions=(ConnectionError,)), upload_id)
    assert _row(upload_id).status == "processing"  # the retry claims it again
    assert list(tmp_path.iterdir()) == []
    assert process_upload(_deps(tmp_path), upload_id).result == "ready"
    assert _row(upload_id).attempts == 2


def test_missing_object_fails_with_a_reason(pg_database, small_card, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload_id = _queued(small_card)
    get_storage(get_settings()).delete(_row(upload_id).storage_key)
    outcome = process_upload(_deps(tmp_path), upload_id)
    assert outcome.error == "the uploaded file is missing from storage"
    assert _row(upload_id).status == "failed"


def test_unknown_upload_is_reported_missing(pg_database, tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert process_upload(_deps(tmp_path), "f" * 32).result == "missing"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("card.png", "card.png"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\score card.pdf", "score card.pdf"),
        ("\x00\x1b[31mred.png", "[31mred.png"),
        ("...hidden.png", "hidden.png"),
        ("", "upload"),
        (None, "upload"),
        ("Résumé de match.jpg", "Résumé de match.jpg"),
        ("a" * 300 + ".png", "a" * 251 + ".png"),
    ],
)
def test_sanitize_filename(name: str | None, safe: str) -> None:
    assert sanitize_filename(name, default="upload") == safe


def test_content_type_comes_from_the_bytes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    image = Image.new("L", (32, 32), 255)
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg"), ("TIFF", "image/tiff"),
                      ("WEBP", "image/webp"), ("PDF", "application/pdf"), ("GIF", "image/gif")):
        out = io.BytesIO()
        image.save(out, fmt)
        assert detect_content_type(out.getvalue()[:4096]) == mime
    assert detect_content_type(b"") == "application/x-empty"
    assert detect_content_type(b"plain words only\n") == "text/plain"
