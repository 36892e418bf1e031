"""SQLAlchemy models, one module per job family; importing this package registers them all."""

from __future__ import annotations

from app.models import console, files, jobs, ocr, scans, schedules, voice  # noqa: F401  (registers their tables)
from app.models.auth import ApiKey, Client
from app.models.base import Base
from app.models.messages import DeadLetter, Message, MessageDelivery, MessageStatusUpdate
from app.models.outbox import OutboxEvent

__all__ = ["ApiKey", "Base", "Client", "DeadLetter", "Message", "MessageDelivery", "MessageStatusUpdate", "OutboxEvent"]
