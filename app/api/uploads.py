"""OCR uploads: API blueprint."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("uploads", __name__)
