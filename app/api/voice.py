"""Voice scoring: API blueprint."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("voice", __name__)
