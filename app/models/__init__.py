"""SQLAlchemy models, one module per job family; importing this package registers them all."""

from __future__ import annotations

from app.models.base import Base
from app.models.auth import ApiKey

__all__ = ["Base", "ApiKey"]
