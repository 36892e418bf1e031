"""URL scans: API blueprint."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("scans", __name__)
