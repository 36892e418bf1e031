"""WSGI entry point for gunicorn: ``gunicorn app.api.wsgi:application``."""

from __future__ import annotations

from app.api import create_app

application = create_app()
