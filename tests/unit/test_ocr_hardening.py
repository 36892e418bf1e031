"""OCR hardening, the service called directly: the PDF size guard reads the box pdftoppm
renders (a tiny CropBox over a huge MediaBox is refused before any rendering), attempts
are bounded across worker deaths, and a direct upload over the size limit is deleted at
``complete`` on both storage backends."""

from __future__ import annotations

import io
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import update

import app.services.ocr as ocr
from app.db import session_scope
from app.models.ocr import Upload
from app.services.ocr import (
    OcrDeps,
    OcrLimits,
    UploadRejected,
    complete_upload,
    create_upload,
    pdf_page_count,
    process_upload,
    storage_key,
)
from app.settings import get_settings
from app.storage import Storage, get_storage
from tests.conftest import need


def _pdf(media: float, crop: float | None) -> bytes:
    """One blank page with a ``media`` pt square MediaBox and, if given, a ``crop`` pt CropBox."""
    from pypdf import PdfWriter
    from pypdf.generic import RectangleObject

    writer = PdfWriter()
    page = writer.add_blank_page(width=media, height=media)
    if crop is not None:
        page.cropbox = RectangleObject([0, 0, crop, crop])
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


@pytest.fixture
def poppler() -> None:
    need(shutil.which("pdfinfo") is not None and shutil.which("pdftoppm") is not None, "poppler-utils")


def _queued(data: bytes, name: str) -> str:
    storage = get_storage(get_settings())
    with session_scope() as session:
        upload = create_upload(session, storage, filename=name, stream=io.BytesIO(data), size=len(data),
                               limits=OcrLimits())
        assert upload.status == "uploaded", upload.error
        upload.status = "queued"
        return upload.id


def _row(upload_id: str) -> Upload:
    with session_scope() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None
        session.expunge(upload)
        return upload


# --- PDF boxes ---------------------------------------------------------------------------------


def test_a_tiny_cropbox_over_a_huge_mediabox_is_refused_by_its_rendered_size(poppler, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "trick.pdf"
    path.write_bytes(_pdf(media=14400, crop=72))  # 200 × 200 in shown as a 1 × 1 in page
    with pytest.raises(UploadRejected) as info:
        pdf_page_count(path, OcrLimits())
    reason = info.value.reason
    assert "page 1 is 200×200 in (MediaBox" in reason, reason
    assert "3,600,000,000 pixels, over the limit of 40,000,000" in reason, reason


def test_a_huge_page_is_refused_and_a_normal_page_passes(poppler, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "huge.pdf"
    path.write_bytes(_pdf(media=14400, crop=None))
    with pytest.raises(UploadRejected, match="over the limit"):
        pdf_page_count(path, OcrLimits())
    letter = tmp_path / "letter.pdf"
    letter.write_bytes(_pdf(media=612, crop=500))
    assert pdf_page_count(letter, OcrLimits()) == 1


def test_the_oversized_pdf_fails_the_upload_before_anything_is_rendered(poppler, pg_database, tmp_path,
                                                                        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    rendered: list[int] = []

    def render(path: Path, number: int, tmp: Path, limits: OcrLimits) -> Path:
        rendered.append(number)
        raise AssertionError("the oversized page reached the renderer")

    monkeypatch.setattr(ocr, "render_pdf_page", render)
    upload_id = _queued(_pdf(media=14400, crop=72), "trick.pdf")
    deps = OcrDeps(scope=session_scope, storage=get_storage(get_settings()), limits=OcrLimits(), tmp_root=tmp_path)
    outcome = process_upload(deps, upload_id)
    assert rendered == []
    assert outcome.result == "failed", outcome
    row = _row(upload_id)
    assert row.status == "failed" and row.error is not None
    assert "(MediaBox, the area that is rendered)" in row.error and "over the limit" in row.error
    assert row.pages_done == 0


# --- attempts --------------------------------------------------------------------------------------


def test_an_upload_whose_attempts_are_used_up_is_failed_not_claimed(pg_database, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What a redelivery finds after its worker died twice mid-file: attempts at the bound."""
    upload_id = _queued(_pdf(media=612, crop=None), "card.pdf")
    with session_scope() as session:
        session.execute(update(Upload).where(Upload.id == upload_id)
                        .values(status="processing", attempts=2, claim_token="dead"))
    called: list[str] = []
    monkeypatch.setattr(ocr, "_ocr_file", lambda *a, **k: called.append("ocr"))
    deps = OcrDeps(scope=session_scope, storage=get_storage(get_settings()), limits=OcrLimits(max_attempts=2),
                   tmp_root=tmp_path)
    outcome = process_upload(deps, upload_id)
    assert called == []
    assert outcome.result == "failed", outcome
    row = _row(upload_id)
    assert (row.status, row.attempts, row.claim_token) == ("failed", 2, None)
    assert row.error is not None and row.error.startswith("gave up after 2 attempts that never finished")
    # A further redelivery leaves the failed upload alone.
    assert process_upload(deps, upload_id).result == "already_done"


# --- direct uploads over the limit -------------------------------------------------------------


def _direct_row(storage: Storage, data: bytes) -> str:
    """A direct upload as ``start_direct_upload`` leaves it (no size yet) and the bytes a
    client PUT to its key; made by hand so both backends run the ``complete`` check."""
    upload_id = uuid.uuid4().hex
    with session_scope() as session:
        session.add(Upload(id=upload_id, filename="big.png", storage_key=storage_key(upload_id), status="uploaded"))
    storage.put_bytes(storage_key(upload_id), data)
    return upload_id


def _check_oversized_direct_upload_is_deleted(storage: Storage) -> None:
    limits = OcrLimits(max_file_bytes=1000)
    upload_id = _direct_row(storage, b"\x89PNG\r\n\x1a\n" + b"\0" * 5000)
    with session_scope() as session:
        upload, queued = complete_upload(session, storage, upload_id, limits)
        assert not queued
    row = _row(upload_id)
    assert row.status == "failed" and row.size == 5008
    assert row.error == "the file is 5,008 bytes, over the limit of 1,000 bytes"
    assert row.original_purged_at is not None
    assert not storage.exists(storage_key(upload_id))
    # One within the limit is kept and queued.
    from PIL import Image

    png = io.BytesIO()
    Image.new("L", (20, 20), 255).save(png, "PNG")
    assert len(png.getvalue()) < 1000
    small = _direct_row(storage, png.getvalue())
    with session_scope() as session:
        upload, queued = complete_upload(session, storage, small, limits)
        assert queued and upload.status == "queued", upload.error
    assert storage.exists(storage_key(small))


def test_oversized_direct_upload_is_deleted_at_complete_local(pg_database) -> None:  # type: ignore[no-untyped-def]
    _check_oversized_direct_upload_is_deleted(get_storage(get_settings()))


def test_oversized_direct_upload_is_deleted_at_complete_s3(pg_database, s3_settings) -> None:  # type: ignore[no-untyped-def]
    _check_oversized_direct_upload_is_deleted(get_storage(s3_settings))
