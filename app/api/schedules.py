"""Scheduled jobs: API blueprint."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("schedules", __name__)
