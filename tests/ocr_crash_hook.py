"""Loaded into a test OCR worker with ``--include tests.ocr_crash_hook``: an upload whose
file name starts with ``crash-`` ends its pool process in the middle of the OCR, as a
file that crashes Tesseract's host process or exhausts its memory would. Every other
upload is processed as usual. Never loaded outside the tests."""

from __future__ import annotations

import os
from typing import Any

import app.services.ocr as ocr
from app.models.ocr import Upload

_real_ocr_file = ocr._ocr_file


def _crashing_ocr_file(deps: Any, upload_id: str, *args: Any, **kwargs: Any) -> Any:
    with deps.scope() as session:
        upload = session.get(Upload, upload_id)
        name = upload.filename if upload is not None else ""
    if name.startswith("crash-"):
        os._exit(9)  # no finally, no cleanup: the way a killed process goes
    return _real_ocr_file(deps, upload_id, *args, **kwargs)


ocr._ocr_file = _crashing_ocr_file
