"""Apply Alembic migrations programmatically (``python -m app migrate``, set-up, tests)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

from app.settings import ROOT


def alembic_config() -> Config:
    return Config(str(ROOT / "alembic.ini"))


def upgrade(revision: str = "head") -> None:
    """Bring the configured database (DATABASE_URL) to ``revision``."""
    command.upgrade(alembic_config(), revision)


def downgrade(revision: str) -> None:
    command.downgrade(alembic_config(), revision)
