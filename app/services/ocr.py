"""OCR of uploaded scorecards: accept the bytes, validate them, render and OCR page by
page with Tesseract, report progress, and store the text and the parsed preview.

The API side (``create_upload``, ``start_direct_upload``, ``complete_upload``) writes
rows and outbox events in the caller's transaction. The worker side
(``process_upload``) takes an ``OcrDeps`` from the task and never builds its own
clients:

1. claim the row (``queued``/``processing`` → ``processing``) with a fresh token by a
   conditional UPDATE that also counts the attempt; an upload already ``ready`` or
   ``failed`` is left alone, one found ``processing`` (its worker died) starts over, and
   one that has used its ``OCR_MAX_ATTEMPTS`` (a file that keeps killing its worker
   process is redelivered after every death) is failed with the reason instead;
2. in a private temp dir (mode 0700, named after the upload so a dead attempt's dir is
   removed by the next one): check the stored size, download, detect the type from
   the bytes, then validate it as an image (pixel count before decoding, a full decode
   to catch truncation) or as a PDF (pdfinfo: damage, password, page count, and the
   size of the box pdftoppm renders, so an oversized page is refused before rendering);
3. one page at a time: render a PDF page to a file with pdftoppm at ``OCR_DPI``, run
   Tesseract ``--psm 6 --oem 3`` (``image_to_data``: words, boxes, confidences), delete
   the page file, and commit ``pages_done`` while the claim is still ours;
4. parse the words into the preview (``app.services.scorecard``) and set ``ready``;
   anything wrong with the file sets ``failed`` with a reason a person can act on.
   The temp dir is removed whatever happens.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import rows_changed
from app.filenames import sanitize_filename
from app.models.base import utcnow
from app.models.ocr import Upload, UploadStatus
from app.services.ocr_image import Prepared, prepare, write_crops
from app.services.outbox import add_event
from app.services.scorecard import Word, parse_scorecard, recheck
from app.storage import Storage, StorageKeyNotFound

logger = logging.getLogger(__name__)

PROCESS_TASK = "app.tasks.ocr.process"
#: ``--psm 6``: one uniform block of text, which a scorecard table is; ``--oem 3``: the
#: default engine (LSTM where the traineddata has it).
TESSERACT_CONFIG = "--psm 6 --oem 3"
#: Types Tesseract and Pillow read here, and the names people know them by.
SUPPORTED_TYPES = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/tiff": "TIFF",
    "image/webp": "WebP",
    "application/pdf": "PDF",
}
PILLOW_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "MPO": "image/jpeg", "TIFF": "image/tiff",
                  "WEBP": "image/webp"}
#: Enough of the file for libmagic to tell these formats apart.
MAGIC_BYTES = 4096


class UploadRejected(Exception):
    """The file cannot be OCR'd; ``reason`` says why, for the person who uploaded it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UploadStateError(Exception):
    """The upload is not in a state that allows the request (e.g. completing a failed one)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class LostClaim(Exception):
    """Another attempt took the upload over; this one must stop without writing."""


@dataclass(frozen=True)
class OcrLimits:
    """The limits and options that shape one OCR run (from settings)."""

    max_file_bytes: int = 20 * 1024 * 1024
    allowed_types: tuple[str, ...] = tuple(SUPPORTED_TYPES)
    max_pdf_pages: int = 20
    max_image_pixels: int = 40_000_000
    dpi: int = 300
    language: str = "eng"
    page_timeout: float = 60.0
    #: Claims of one upload before it is failed instead (each redelivery after a worker death is one).
    max_attempts: int = 3

    @classmethod
    def from_settings(cls, settings: Any) -> OcrLimits:
        return cls(
            max_file_bytes=settings.ocr_max_file_bytes,
            allowed_types=tuple(settings.ocr_allowed_types.split(",")),
            max_pdf_pages=settings.ocr_max_pdf_pages,
            max_image_pixels=settings.ocr_max_image_pixels,
            dpi=settings.ocr_dpi,
            language=settings.ocr_language,
            page_timeout=settings.ocr_page_timeout,
            max_attempts=settings.ocr_max_attempts,
        )

    def allowed_names(self) -> str:
        return ", ".join(SUPPORTED_TYPES[t] for t in self.allowed_types)


# --- names, types, sizes ----------------------------------------------------------------------



def detect_content_type(head: bytes) -> str:
    """The content type libmagic reads from the first bytes (the name is never trusted)."""
    import magic

    if not head:
        return "application/x-empty"
    return str(magic.from_buffer(head, mime=True))


def check_size(size: int, limits: OcrLimits) -> None:
    """Reject an empty file or one over the size limit."""
    if size == 0:
        raise UploadRejected("the file is empty (0 bytes)")
    if size > limits.max_file_bytes:
        raise UploadRejected(f"the file is {size:,} bytes, over the limit of {limits.max_file_bytes:,} bytes")


def check_type(content_type: str, limits: OcrLimits) -> None:
    """Reject a type that is not on the allowed list."""
    if content_type not in limits.allowed_types:
        raise UploadRejected(
            f"unsupported file type {content_type} (detected from the content, not the name); "
            f"allowed: {limits.allowed_names()}"
        )


def storage_key(upload_id: str) -> str:
    """Deterministic object key of an upload's original bytes."""
    return f"ocr/uploads/{upload_id}/original"


# --- API side ----------------------------------------------------------------------------------


def create_upload(session: Session, storage: Storage, *, filename: str | None, stream: IO[bytes],
                  size: int, limits: OcrLimits, client_id: int | None = None) -> Upload:
    """Store a multipart upload and its row (``uploaded``) of ``client_id``.

    The bytes are checked at once: an empty file or a type not allowed is recorded as
    ``failed`` with its reason and not stored, so the client has an id and a status
    that says what was wrong. The size limit is the caller's (413 before this).
    """
    upload_id = uuid.uuid4().hex
    head = stream.read(MAGIC_BYTES)
    stream.seek(0)
    content_type = detect_content_type(head)
    upload = Upload(id=upload_id, filename=sanitize_filename(filename, default="upload"), content_type=content_type, size=size,
                    storage_key=storage_key(upload_id), status=UploadStatus.UPLOADED, client_id=client_id)
    try:
        check_size(size, limits)
        check_type(content_type, limits)
    except UploadRejected as exc:
        upload.status, upload.error, upload.finished_at = UploadStatus.FAILED, exc.reason, utcnow()
        session.add(upload)
        session.flush()
        logger.info("upload rejected", extra={"upload_id": upload_id, "reason": exc.reason})
        return upload
    storage.put_stream(upload.storage_key, stream, content_type)
    session.add(upload)
    session.flush()
    return upload


def start_direct_upload(session: Session, storage: Storage, *, filename: str | None,
                        expires_in: int, client_id: int | None = None) -> tuple[Upload, str]:
    """Create a row and a presigned PUT URL the client uploads to (where the storage has one)."""
    upload_id = uuid.uuid4().hex
    url = storage.presigned_put_url(storage_key(upload_id), expires_in)
    if url is None:
        raise UploadStateError(
            "direct_upload_unavailable",
            "direct (presigned) uploads need STORAGE_BACKEND=s3; send the file as multipart/form-data instead",
        )
    upload = Upload(id=upload_id, filename=sanitize_filename(filename, default="upload"), storage_key=storage_key(upload_id),
                    status=UploadStatus.UPLOADED, client_id=client_id)
    session.add(upload)
    session.flush()
    return upload, url


def complete_upload(session: Session, storage: Storage, upload_id: str, limits: OcrLimits) -> tuple[Upload, bool]:
    """Queue the upload for OCR (``uploaded`` → ``queued`` plus its outbox event).

    Idempotent: an upload already queued, processing or ready is returned as it is
    (``queued_now`` False). A failed one raises ``UploadStateError``. For a direct
    upload the object must be there; its size and type are checked here, since the API
    never saw the bytes (the worker checks everything again): bad bytes come back as
    the upload set to ``failed``, for the caller to commit, and the object is deleted at
    once, so a presigned PUT cannot keep more than ``OCR_MAX_FILE_BYTES`` stored (one
    never completed is deleted by the retention purge, ``app.services.gc``).
    """
    upload = session.get(Upload, upload_id, with_for_update=True)
    if upload is None:
        raise LookupError(upload_id)
    if upload.status == UploadStatus.FAILED:
        raise UploadStateError("upload_failed", f"upload {upload_id} has failed: {upload.error}")
    if upload.status != UploadStatus.UPLOADED:
        return upload, False
    if upload.size is None:  # direct upload: look at what arrived
        try:
            size = storage.size(upload.storage_key)
        except StorageKeyNotFound:
            raise UploadStateError(
                "upload_missing", f"nothing has been uploaded for {upload_id} yet: PUT the file to its upload_url first"
            ) from None
        upload.size = size
        try:
            check_size(size, limits)
            with storage.open(upload.storage_key) as body:
                upload.content_type = detect_content_type(body.read(MAGIC_BYTES))
            check_type(upload.content_type, limits)
        except UploadRejected as exc:
            # Recorded, not raised: the caller commits the failure and answers 409.
            upload.status, upload.error, upload.finished_at = UploadStatus.FAILED, exc.reason, utcnow()
            storage.delete(upload.storage_key)
            upload.original_purged_at = utcnow()
            session.flush()
            logger.info("direct upload rejected and deleted", extra={"upload_id": upload_id, "reason": exc.reason})
            return upload, False
    claimed = rows_changed(
        session,
        update(Upload).where(Upload.id == upload_id, Upload.status == UploadStatus.UPLOADED)
        .values(status=UploadStatus.QUEUED, queued_at=utcnow(), updated_at=utcnow()),
        synchronize=False,
    )
    if claimed:
        add_event(session, aggregate_type="upload", aggregate_id=upload_id, event_type="upload.completed",
                  task_name=PROCESS_TASK, payload={"upload_id": upload_id})
    session.refresh(upload)
    return upload, bool(claimed)


# --- worker side ------------------------------------------------------------------------------


@dataclass
class PageResult:
    """What Tesseract found on one page."""

    lines: list[list[Word]]
    text: str
    mean_confidence: float | None
    seconds: float
    prep_seconds: dict[str, float] = field(default_factory=dict)  # per preparation step
    prep_applied: list[str] = field(default_factory=list)


@dataclass
class OcrDeps:
    """What ``process_upload`` needs, handed in by the task."""

    scope: Callable[[], AbstractContextManager[Session]]
    storage: Storage
    limits: OcrLimits
    tmp_root: Path
    #: Exceptions the task's own time limit raises inside us (Celery's soft limit).
    deadline_exceptions: tuple[type[BaseException], ...] = ()
    deadline_seconds: float | None = None
    #: Exceptions that are worth a retry (database or storage unreachable): re-raised.
    transient_exceptions: tuple[type[BaseException], ...] = ()
    on_page: Callable[[int, int], None] | None = None


@dataclass
class ProcessOutcome:
    result: str  # ready | failed | already_done | missing | superseded
    status: str | None = None
    error: str | None = None
    pages: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def _claim(deps: OcrDeps, upload_id: str) -> tuple[str | None, Upload | None]:
    token = uuid.uuid4().hex
    now = utcnow()
    with deps.scope() as session:
        claimed = rows_changed(
            session,
            update(Upload)
            .where(Upload.id == upload_id, Upload.status.in_((UploadStatus.QUEUED, UploadStatus.PROCESSING)),
                   Upload.attempts < deps.limits.max_attempts)
            .values(status=UploadStatus.PROCESSING, claim_token=token, attempts=Upload.attempts + 1, pages_done=0,
                    pages_total=None, text=None, page_confidences=None, parsed_preview=None, error=None,
                    started_at=now, finished_at=None, updated_at=now),
            synchronize=False,
        )
        upload = session.get(Upload, upload_id)
        if upload is not None:
            session.expunge(upload)
    return (token if claimed else None), upload


def _write(deps: OcrDeps, upload_id: str, token: str, **values: Any) -> None:
    """Update the row only while our claim stands; otherwise stop this attempt."""
    values.setdefault("updated_at", utcnow())
    with deps.scope() as session:
        changed = rows_changed(
            session,
            update(Upload).where(Upload.id == upload_id, Upload.claim_token == token, Upload.status == UploadStatus.PROCESSING)
            .values(**values),
            synchronize=False,
        )
    if not changed:
        raise LostClaim(upload_id)


@contextmanager
def private_tmpdir(root: Path, upload_id: str) -> Iterator[Path]:
    """A 0700 temp dir for one attempt, always removed; leftovers of dead attempts at the
    same upload (a SIGKILLed worker runs no cleanup) are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"ocr-{upload_id}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"ocr-{upload_id}-", dir=root))  # mkdtemp makes it 0700
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def process_upload(deps: OcrDeps, upload_id: str) -> ProcessOutcome:
    """OCR one upload end to end (see the module docstring); idempotent."""
    token, upload = _claim(deps, upload_id)
    if upload is None:
        return ProcessOutcome("missing")
    if token is None:
        if upload.status in (UploadStatus.QUEUED, UploadStatus.PROCESSING) and upload.attempts >= deps.limits.max_attempts:
            return _give_up(deps, upload_id, upload.attempts)
        logger.info("upload not claimable", extra={"upload_id": upload_id, "status": upload.status})
        return ProcessOutcome("already_done", upload.status)
    started = time.monotonic()
    limits = deps.limits
    try:
        with private_tmpdir(deps.tmp_root, upload_id) as tmp:
            pages, timings = _ocr_file(deps, upload_id, token, upload.storage_key, tmp, limits)
        preview = parse_scorecard([p.lines for p in pages])
        confidences = [p.mean_confidence for p in pages]
        _write(deps, upload_id, token, status=UploadStatus.READY, parsed_preview=preview,
               text="\f".join(p.text for p in pages), page_confidences=confidences, pages_done=len(pages),
               ocr_seconds=round(sum(p.seconds for p in pages), 3), finished_at=utcnow(), claim_token=None)
        logger.info("upload ready", extra={"upload_id": upload_id, "pages": len(pages),
                                            "seconds": round(time.monotonic() - started, 3)})
        return ProcessOutcome("ready", "ready", pages=len(pages), timings=timings)
    except UploadRejected as exc:
        return _fail(deps, upload_id, token, exc.reason)
    except LostClaim:
        logger.warning("upload taken over by another attempt; stopping", extra={"upload_id": upload_id})
        return ProcessOutcome("superseded")
    except deps.transient_exceptions:
        raise
    except deps.deadline_exceptions:
        limit = f" ({deps.deadline_seconds:.0f} s)" if deps.deadline_seconds else ""
        return _fail(deps, upload_id, token, f"OCR took longer than the task time limit{limit}")
    except Exception as exc:  # a bug or a tool crash: fail with a reason, keep the traceback in the log
        logger.exception("OCR failed unexpectedly", extra={"upload_id": upload_id})
        return _fail(deps, upload_id, token, f"OCR failed unexpectedly ({type(exc).__name__}: {exc})"[:500])


def _fail(deps: OcrDeps, upload_id: str, token: str, reason: str) -> ProcessOutcome:
    try:
        _write(deps, upload_id, token, status=UploadStatus.FAILED, error=reason, finished_at=utcnow(), claim_token=None)
    except LostClaim:
        return ProcessOutcome("superseded")
    logger.info("upload failed", extra={"upload_id": upload_id, "reason": reason})
    return ProcessOutcome("failed", "failed", error=reason)


def _give_up(deps: OcrDeps, upload_id: str, attempts: int) -> ProcessOutcome:
    """Fail an upload whose attempts are used up: each one was claimed and never finished,
    which is what a file that kills (or exhausts) the worker process looks like."""
    reason = (f"gave up after {attempts} attempts that never finished: the worker processing this upload stopped "
              "each time (killed, out of memory or crashed); the file may be too demanding to OCR")
    if not fail_upload(deps.scope, upload_id, reason):
        return ProcessOutcome("already_done")
    for stale in deps.tmp_root.glob(f"ocr-{upload_id}-*"):  # what the dead attempts left
        shutil.rmtree(stale, ignore_errors=True)
    logger.warning("upload failed: attempts used up", extra={"upload_id": upload_id, "attempts": attempts})
    return ProcessOutcome("failed", "failed", error=reason)


def fail_upload(scope: Callable[[], AbstractContextManager[Session]], upload_id: str, reason: str) -> bool:
    """Mark an unfinished upload failed (the task gave up on retries); False if it had finished."""
    with scope() as session:
        return bool(rows_changed(
            session,
            update(Upload).where(Upload.id == upload_id, Upload.status.in_((UploadStatus.QUEUED, UploadStatus.PROCESSING)))
            .values(status=UploadStatus.FAILED, error=reason, finished_at=utcnow(), updated_at=utcnow(), claim_token=None),
            synchronize=False,
        ))


def _ocr_file(deps: OcrDeps, upload_id: str, token: str, key: str, tmp: Path,
              limits: OcrLimits) -> tuple[list[PageResult], dict[str, float]]:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        size = deps.storage.size(key)
    except StorageKeyNotFound:
        raise UploadRejected("the uploaded file is missing from storage") from None
    check_size(size, limits)
    original = tmp / "original"
    deps.storage.download_to_path(key, original)
    if original.stat().st_size != size:
        raise UploadRejected(f"the stored file changed while it was read ({original.stat().st_size} of {size} bytes)")
    with open(original, "rb") as f:
        content_type = detect_content_type(f.read(MAGIC_BYTES))
    check_type(content_type, limits)
    timings["download"] = time.monotonic() - t0

    t0 = time.monotonic()
    if content_type == "application/pdf":
        count = pdf_page_count(original, limits)
        page_paths: Callable[[int], Path] = lambda n: render_pdf_page(original, n, tmp, limits)  # noqa: E731
    else:
        count, page_paths = image_pages(original, content_type, tmp, limits)
    timings["validate"] = time.monotonic() - t0
    _write(deps, upload_id, token, content_type=content_type, size=size, pages_total=count)

    results: list[PageResult] = []
    render_s = ocr_s = 0.0
    for number in range(1, count + 1):
        t0 = time.monotonic()
        path = page_paths(number)
        render_s += time.monotonic() - t0
        try:
            result = ocr_page(path, number, limits, workdir=tmp)
        finally:
            if path != original:
                path.unlink(missing_ok=True)  # one page on disk at a time
        ocr_s += result.seconds
        results.append(result)
        confidences = [r.mean_confidence for r in results]
        _write(deps, upload_id, token, pages_done=number, page_confidences=confidences)
        if deps.on_page is not None:
            deps.on_page(number, count)
    timings["render"], timings["ocr"] = render_s, ocr_s
    return results, timings


# --- images ----------------------------------------------------------------------------------


def image_pages(path: Path, content_type: str, tmp: Path,
                limits: OcrLimits) -> tuple[int, Callable[[int], Path]]:
    """Validate an image file; return its page count and a function giving each page's file.

    The pixel count is checked from the header before anything is decoded (the
    decompression-bomb guard); then every frame is decoded once, which is what finds a
    truncated or corrupt file. A plain single-frame image goes to Tesseract as it is;
    frames of a multi-page TIFF/WebP, images with transparency, 16-bit images and
    photos with an EXIF rotation are written out as PNG pages first.
    """
    with _open_image(path, content_type, limits) as image:
        if PILLOW_FORMATS.get(image.format or "") != content_type:
            raise UploadRejected(f"the content is not a valid {SUPPORTED_TYPES[content_type]} image")
        # The extra frames of a camera's multi-picture JPEG are previews, not pages.
        frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)
        if frames > limits.max_pdf_pages:
            raise UploadRejected(f"the image has {frames} pages, over the limit of {limits.max_pdf_pages}")
        rewrites = [_frame_needs_rewrite(image, index, limits) for index in range(frames)]
    if frames == 1 and not rewrites[0]:
        return 1, lambda _n: path
    return frames, lambda number: _png_page(path, tmp, number)


def _open_image(path: Path, content_type: str, limits: OcrLimits) -> Any:
    """The image, opened lazily; refused when its header already says too many pixels or
    it is not an image at all."""
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except Image.DecompressionBombError as exc:
        m = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
        raise UploadRejected(
            f"the image has {pixels}, over the limit of {limits.max_image_pixels:,} (decompression-bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise UploadRejected(f"the file looks like {SUPPORTED_TYPES.get(content_type, content_type)} "
                             "but cannot be read as an image (corrupt header)") from None


def _frame_needs_rewrite(image: Any, index: int, limits: OcrLimits) -> bool:
    """Decode frame ``index`` (refusing too many pixels or a corrupt frame); whether it must
    be written out as a PNG page before Tesseract reads it."""
    image.seek(index)
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise UploadRejected(
            f"the image is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{limits.max_image_pixels:,} (decompression-bomb guard)"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadRejected(f"the image is truncated or corrupt ({exc})") from None
    transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    rotated = image.getexif().get(0x0112, 1) not in (1, None)
    deep = image.mode not in ("1", "L", "P", "RGB", "CMYK", "RGBA", "LA", "PA")
    return bool(transparent or rotated or deep)


def _png_page(path: Path, tmp: Path, number: int) -> Path:
    """Page ``number`` of the image as an upright PNG on white, in a mode Tesseract reads."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.seek(number - 1)
        frame = ImageOps.exif_transpose(img) or img
        if frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info:
            rgba = frame.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            frame = canvas
        elif frame.mode not in ("1", "L", "P", "RGB", "CMYK"):
            frame = frame.convert("L") if frame.mode.startswith(("I", "F")) else frame.convert("RGB")
        out = tmp / f"page-{number}.png"
        frame.save(out, "PNG", compress_level=1)
    return out


# --- PDF -------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"^Page\s+(\d+)\s+(MediaBox|CropBox):\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$")
#: pdftoppm renders a page's MediaBox unless given ``-cropbox`` (pdf2image's ``use_cropbox``),
#: which ``render_pdf_page`` never passes; ``pdfinfo``'s "Page size" is the CropBox.
RENDER_USES_CROPBOX = False


def pdf_page_count(path: Path, limits: OcrLimits) -> int:
    """Check a PDF with pdfinfo (damage, password, pages, page sizes); return its page count."""
    from pdf2image import pdfinfo_from_path
    from pdf2image.exceptions import PDFPageCountError, PDFPopplerTimeoutError

    timeout = max(1, int(limits.page_timeout))
    try:
        info = pdfinfo_from_path(str(path), timeout=timeout)
    except PDFPopplerTimeoutError:
        raise UploadRejected(f"reading the PDF took longer than {timeout} s") from None
    except PDFPageCountError as exc:
        # pdf2image puts pdfinfo's stderr after its own first line; the last line names the damage.
        lines = [ln.strip() for ln in str(exc).split("\n")[1:] if ln.strip()]
        detail = lines[-1][:200] if lines else ""
        if "password" in detail.lower():
            raise UploadRejected("the PDF is encrypted with a password; upload an unprotected copy") from None
        raise UploadRejected(f"the PDF is damaged and cannot be read ({detail or 'pdfinfo found no pages'})") from None
    pages = int(info.get("Pages") or 0)
    if pages < 1:
        raise UploadRejected("the PDF has no pages")
    if pages > limits.max_pdf_pages:
        raise UploadRejected(f"the PDF has {pages} pages, over the limit of {limits.max_pdf_pages}")
    for number, (width_pt, height_pt, box) in pdf_render_boxes(path, pages, timeout).items():
        width, height = width_pt / 72 * limits.dpi, height_pt / 72 * limits.dpi
        if width * height > limits.max_image_pixels:
            raise UploadRejected(
                f"page {number} is {width_pt / 72:.0f}×{height_pt / 72:.0f} in ({box}, the area that is rendered); at "
                f"{limits.dpi} dpi that is {width * height:,.0f} pixels, over the limit of {limits.max_image_pixels:,}"
            )
    return pages


def pdf_render_boxes(path: Path, pages: int, timeout: int) -> dict[int, tuple[float, float, str]]:
    """Each page's width and height in points as pdftoppm will render it, and which box that is.

    Read from ``pdfinfo -box`` rather than its "Page size", which is the CropBox: a page
    with a tiny CropBox over a huge MediaBox would pass as small and render huge. The
    renderer's box is the MediaBox (``RENDER_USES_CROPBOX``); in doubt (poppler clips one
    box to the other) the larger of the two is taken, side by side. A page whose boxes
    cannot be read is refused: it is never rendered unchecked.
    """
    try:
        proc = subprocess.run(["pdfinfo", "-box", "-f", "1", "-l", str(pages), str(path)],
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UploadRejected(f"reading the PDF took longer than {timeout} s") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UploadRejected(f"the PDF is damaged and cannot be read ({detail[-1][:200] if detail else 'pdfinfo failed'})")
    boxes: dict[int, dict[str, tuple[float, float]]] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        m = _BOX_RE.match(line.strip())
        if not m:
            continue
        try:
            x0, y0, x1, y1 = (float(v) for v in m.group(3, 4, 5, 6))
        except ValueError:
            continue
        if all(map(math.isfinite, (x0, y0, x1, y1))):
            boxes.setdefault(int(m.group(1)), {})[m.group(2)] = (abs(x1 - x0), abs(y1 - y0))
    sizes: dict[int, tuple[float, float, str]] = {}
    for number in range(1, pages + 1):
        found = boxes.get(number, {})
        if "MediaBox" not in found:
            raise UploadRejected(f"the size of page {number} of the PDF cannot be read")
        media, crop = found["MediaBox"], found.get("CropBox", found["MediaBox"])
        rendered, other = (crop, media) if RENDER_USES_CROPBOX else (media, crop)
        width, height = max(rendered[0], other[0]), max(rendered[1], other[1])
        box = "MediaBox" if (width, height) == media else "CropBox" if (width, height) == crop else "MediaBox/CropBox"
        sizes[number] = (width, height, box)
    return sizes


def render_pdf_page(path: Path, number: int, tmp: Path, limits: OcrLimits) -> Path:
    """Render one PDF page to a grayscale PGM file with pdftoppm (never all pages in memory)."""
    from pdf2image import convert_from_path
    from pdf2image.exceptions import PDFPopplerTimeoutError, PDFSyntaxError

    timeout = max(1, int(limits.page_timeout))
    try:
        paths = convert_from_path(
            str(path), dpi=limits.dpi, first_page=number, last_page=number, output_folder=str(tmp),
            paths_only=True, fmt="ppm", grayscale=True, output_file=f"page-{number}", timeout=timeout,
            thread_count=1, use_cropbox=RENDER_USES_CROPBOX,  # the box pdf_render_boxes checked
        )
    except PDFPopplerTimeoutError:
        raise UploadRejected(f"rendering page {number} took longer than {timeout} s") from None
    except PDFSyntaxError as exc:
        raise UploadRejected(f"page {number} of the PDF is damaged ({exc})") from None
    rendered = [str(p) for p in paths]  # paths_only: file names, not images
    if len(rendered) != 1 or not Path(rendered[0]).exists():
        raise UploadRejected(f"page {number} of the PDF could not be rendered")
    return Path(rendered[0])


# --- Tesseract ----------------------------------------------------------------------------------


def ocr_page(path: Path, number: int, limits: OcrLimits, workdir: Path | None = None) -> PageResult:
    """Tesseract on one page file: words with boxes and confidences, grouped into lines.

    pytesseract's ``run_tesseract`` writes the TSV next to the page in our private dir
    (``image_to_data`` would use the system temp dir, where a killed worker's files stay).
    """
    from pytesseract import TesseractError, TesseractNotFoundError
    from pytesseract.pytesseract import run_tesseract

    timeout = limits.page_timeout
    out_base = (workdir or path.parent) / f"ocr-{number}"
    started = time.monotonic()
    prepared = prepare_page(path, workdir or path.parent)
    try:
        # The trailing "tsv" is Tesseract's own config file selecting TSV output, exactly as
        # on the command line: tesseract PAGE OUT -l eng --psm 6 --oem 3 tsv
        with _tesseract_env():
            run_tesseract(str(prepared.path), str(out_base), "tsv", limits.language, f"{TESSERACT_CONFIG} tsv",
                          timeout=timeout)
        tsv = Path(f"{out_base}.tsv").read_text(encoding="utf-8", errors="replace")
        lines, confidences = parse_tsv(tsv)
        lines = second_look(prepared, lines, out_base, limits)
    except RuntimeError as exc:
        if "timeout" in str(exc).lower():
            raise UploadRejected(f"OCR of page {number} took longer than {timeout:g} s") from None
        raise
    except TesseractNotFoundError:
        raise UploadRejected("Tesseract is not installed on the worker") from None
    except TesseractError as exc:
        raise UploadRejected(f"Tesseract could not read page {number} ({str(exc.message).strip()[:200]})") from None
    finally:
        Path(f"{out_base}.tsv").unlink(missing_ok=True)
        if prepared.path != path:
            prepared.path.unlink(missing_ok=True)
    seconds = time.monotonic() - started
    text = "\n".join(" ".join(w.text for w in line) for line in lines)
    mean = round(statistics.fmean(confidences), 2) if confidences else None
    return PageResult(lines, text, mean, seconds, prepared.steps, prepared.applied)


#: The second look: one line per crop, digits and what numbers are printed with only.
SECOND_LOOK_CONFIG = '--psm 7 --oem 3 -c "tessedit_char_whitelist=0123456789.*- "'


def second_look(prepared: Prepared, lines: list[list[Word]], out_base: Path, limits: OcrLimits) -> list[list[Word]]:
    """Re-read the numbers of the rows that look wrong (``scorecard.recheck``): their boxes,
    cropped from the prepared page, go to one Tesseract run with a digit whitelist and one
    line per crop; the parser's row arithmetic decides what is kept. Only suspect rows are
    read again, so a clean page costs the selection only."""
    from pytesseract.pytesseract import run_tesseract

    started = time.monotonic()
    found = recheck.suspects(lines)
    if not found or prepared.image is None:
        prepared.steps["second_look"] = time.monotonic() - started
        return lines
    crops = Path(f"{out_base}-crops.tif")
    try:
        where = write_crops(prepared.image, [s.box for s in found], crops)
        with _tesseract_env():
            run_tesseract(str(crops), f"{out_base}-crops", "tsv", limits.language, f"{SECOND_LOOK_CONFIG} tsv",
                          timeout=limits.page_timeout)
        tsv = Path(f"{out_base}-crops.tsv").read_text(encoding="utf-8", errors="replace")
    except Exception as exc:  # the page's first reading stands when the second look fails
        logger.warning("second look skipped", extra={"error": str(exc)[:200]})
        return lines
    finally:
        crops.unlink(missing_ok=True)
        Path(f"{out_base}-crops.tsv").unlink(missing_ok=True)
    rereads = [[Word(w.text, round(dx + (w.left or 0) / scale), round(dy + (w.top or 0) / scale),
                     round((w.width or 0) / scale), round((w.height or 0) / scale), w.conf) for w in words]
               for words, (dx, dy, scale) in zip(tsv_pages(tsv, len(found)), where, strict=True)]
    prepared.steps["second_look"] = time.monotonic() - started
    prepared.applied.append(f"second_look:{len(found)}")
    return recheck.merge(lines, found, rereads)


def tsv_pages(tsv: str, count: int) -> list[list[Word]]:
    """The words of a multi-page TSV, page by page (``count`` pages, empty ones included)."""
    pages: list[list[Word]] = [[] for _ in range(count)]
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or not cells[11].strip():
            continue
        try:
            page = int(cells[1]) - 1
            left, top, width, height = (int(c) for c in cells[6:10])
            conf = float(cells[10])
        except ValueError:
            continue
        if 0 <= page < count:
            pages[page].append(Word(cells[11].strip(), left, top, width, height, conf))
    return pages


def prepare_page(path: Path, workdir: Path) -> Prepared:
    """Image preparation (app.services.ocr_image); a page it cannot handle goes to Tesseract as it is."""
    try:
        return prepare(path, workdir)
    except Exception as exc:  # an optional step failing must not fail the page
        logger.warning("image preparation skipped", extra={"error": str(exc)[:200]})
        return Prepared(path)


def parse_tsv(tsv: str) -> tuple[list[list[Word]], list[float]]:
    """Tesseract's TSV (level, page, block, par, line, word, left, top, width, height, conf,
    text) as lines of words in reading order, and the confidences of the words."""
    lines: dict[tuple[int, int, int], list[Word]] = {}
    confidences: list[float] = []
    rows = tsv.splitlines()
    for row in rows[1:]:
        cells = row.split("\t")
        if len(cells) < 12 or not cells[11].strip():
            continue
        try:
            block, par, line = int(cells[2]), int(cells[3]), int(cells[4])
            left, top, width, height = (int(c) for c in cells[6:10])
            conf = float(cells[10])
        except ValueError:
            continue
        text = "\t".join(cells[11:]).strip()
        lines.setdefault((block, par, line), []).append(Word(text, left, top, width, height, conf))
        if conf >= 0:
            confidences.append(conf)
    return [lines[k] for k in sorted(lines)], confidences


_thread_limit: int | None = None


def set_thread_limit(limit: int) -> None:
    """Tesseract's OpenMP threads fight each other (and other workers) on a busy machine;
    one thread per process is about five times faster per page here.

    The limit is applied to the Tesseract subprocess only (see ``_tesseract_env``): set
    process-wide, ``OMP_THREAD_LIMIT`` would also cap other OpenMP users of the same
    worker process, such as the speech recogniser, and break them.
    """
    global _thread_limit
    _thread_limit = limit


@contextmanager
def _tesseract_env() -> Iterator[None]:
    """``OMP_THREAD_LIMIT`` in the environment while a Tesseract subprocess starts."""
    if _thread_limit is None:
        yield
        return
    previous = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = str(_thread_limit)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OMP_THREAD_LIMIT", None)
        else:
            os.environ["OMP_THREAD_LIMIT"] = previous


def default_tmp_root(configured: str) -> Path:
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "app-ocr"
