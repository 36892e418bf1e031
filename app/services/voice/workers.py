"""Remote voice workers: their tokens, authentication, heartbeats and counters.

A worker token is a JWT (HS256, PyJWT) naming the worker (``sub``) with an expiry, signed
with a key derived from the deployment's SECRET_KEY. The signature rejects forged and
altered tokens without a database read; the database then holds only the token's
SHA-256, so a revoked worker is refused at once and a database leak reveals no token.
The token is shown once, when the worker is created.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models.base import utcnow
from app.models.voice import RemoteWorker

logger = logging.getLogger(__name__)

TOKEN_TYPE = "voice-worker"
ALGORITHM = "HS256"


class TokenRejected(Exception):
    """The bearer token is not a valid, current worker token; the message says why."""


def token_key(signing_key: bytes) -> bytes:
    """A key used only for worker tokens, derived from the deployment's secret."""
    return hmac.new(signing_key, b"voice-worker-token", hashlib.sha256).digest()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def holder_of(worker: RemoteWorker) -> str:
    """How a remote worker appears in ``VoiceJob.claimed_by``."""
    return f"remote:{worker.id}"


def create_worker(session: Session, name: str, signing_key: bytes, token_days: int,
                  now: datetime | None = None) -> tuple[RemoteWorker, str]:
    """A new worker and its token (returned once, never stored)."""
    now = now or utcnow()
    worker_id = "rw_" + secrets.token_hex(8)
    claims = {"sub": worker_id, "typ": TOKEN_TYPE, "jti": secrets.token_hex(12),
              "iat": int(now.timestamp()), "exp": int((now + timedelta(days=token_days)).timestamp())}
    token = jwt.encode(claims, token_key(signing_key), algorithm=ALGORITHM)
    worker = RemoteWorker(id=worker_id, name=name, token_hash=token_hash(token), created_at=now,
                          tasks_completed=0, tasks_failed=0)
    session.add(worker)
    session.flush()
    logger.info("remote worker created", extra={"worker_id": worker_id, "worker_name": name})
    return worker, token


def authenticate(session: Session, token: str, signing_key: bytes, now: datetime | None = None) -> RemoteWorker:
    """The worker a bearer token belongs to; ``TokenRejected`` for anything else."""
    try:
        claims = jwt.decode(token, token_key(signing_key), algorithms=[ALGORITHM],
                            options={"require": ["sub", "exp", "iat"]})
    except jwt.ExpiredSignatureError:
        raise TokenRejected("worker token has expired") from None
    except jwt.InvalidTokenError:
        raise TokenRejected("not a valid worker token") from None
    if claims.get("typ") != TOKEN_TYPE:
        raise TokenRejected("not a worker token")
    worker = session.get(RemoteWorker, claims["sub"])
    if worker is None or not hmac.compare_digest(worker.token_hash, token_hash(token)):
        raise TokenRejected("unknown worker token")
    if worker.revoked_at is not None:
        raise TokenRejected("worker token has been revoked")
    worker.last_seen_at = now or utcnow()
    return worker


def heartbeat(worker: RemoteWorker, instance: str | None, info: dict[str, Any] | None,
              now: datetime | None = None) -> None:
    """Record that the worker is alive, and which machine it runs on."""
    now = now or utcnow()
    worker.last_heartbeat_at = now
    worker.last_seen_at = now
    if instance:
        worker.instance = instance[:200]
    if info is not None:
        worker.info = info


def count(session: Session, worker_id: str, *, completed: int = 0, failed: int = 0) -> None:
    """Add to a worker's counters with an atomic UPDATE (concurrent requests add up)."""
    session.execute(update(RemoteWorker).where(RemoteWorker.id == worker_id).values(
        tasks_completed=RemoteWorker.tasks_completed + completed,
        tasks_failed=RemoteWorker.tasks_failed + failed,
    ))


def revoke_worker(session: Session, worker_id: str, now: datetime | None = None) -> RemoteWorker | None:
    """Revoke a worker's token; its next call gets 401. ``None`` when there is no such worker."""
    worker = session.get(RemoteWorker, worker_id)
    if worker is None:
        return None
    if worker.revoked_at is None:
        worker.revoked_at = now or utcnow()
        logger.info("remote worker revoked", extra={"worker_id": worker_id})
    return worker


@dataclass
class WorkerView:
    """A worker as the admin list shows it."""

    worker: RemoteWorker
    active: bool

    @property
    def last_active_at(self) -> datetime | None:
        return self.worker.last_seen_at or self.worker.last_heartbeat_at


def list_workers(session: Session, active_seconds: float, now: datetime | None = None) -> list[WorkerView]:
    """Every worker, newest first, with whether it has been seen within ``active_seconds``."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=active_seconds)
    views = []
    for worker in session.scalars(select(RemoteWorker).order_by(RemoteWorker.created_at.desc())):
        seen = worker.last_seen_at or worker.last_heartbeat_at
        views.append(WorkerView(worker, worker.revoked_at is None and seen is not None and seen >= cutoff))
    return views
