"""Clients and their API keys: create, verify and revoke. Only a SHA-256 hash is stored.

Verified keys are kept in-process (``KEY_CACHE``), keyed by the token's hash, for at most
AUTH_KEY_CACHE_SECONDS: a request whose key was verified moments ago by the same process
does not read ``api_keys`` again. Only a key found active is kept (an unknown or revoked
token is looked up every time, and each such failure counts for the failure limiter), so
a new key works at once; a revoked key is refused at once by the process that revoked it
(``revoke_api_key`` empties its cache) and by every other process within
AUTH_KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models.auth import ApiKey, Client
from app.models.base import utcnow

KEY_PREFIX = "ak_"
#: ``last_used_at`` is moved forward only when it is at least this old.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UnknownClient(LookupError):
    """``--client`` names no client."""


def find_client(session: Session, ref: str | int) -> Client | None:
    """A client by id (digits) or by name; a name shared by several clients names none."""
    if isinstance(ref, int) or str(ref).isdigit():
        client = session.get(Client, int(ref))
        if client is not None:
            return client
    found = list(session.scalars(select(Client).where(Client.name == str(ref)).limit(2)))
    if len(found) > 1:
        raise UnknownClient(f"several clients are named {ref!r}; give the client's id")
    return found[0] if found else None


def create_client(session: Session, name: str) -> Client:
    """Add a client (an account of the API: a service or team)."""
    client = Client(name=name)
    session.add(client)
    session.flush()
    return client


def create_api_key(session: Session, name: str, client: str | int | None = None) -> tuple[ApiKey, str]:
    """Add a key and return it with its plaintext, which is shown once and never stored.

    ``client`` (id or name) adds the key to that client, which keeps access to all its
    work; None makes a new client named ``name``.
    """
    if client is None:
        owner = create_client(session, name)
    else:
        found = find_client(session, client)
        if found is None:
            raise UnknownClient(f"no client {client!r}")
        owner = found
    token = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, client_id=owner.id, prefix=token[:10], key_hash=_hash(token))
    session.add(key)
    session.flush()
    return key, token


def verify_api_key(session: Session, token: str) -> ApiKey | None:
    """The active key matching ``token``, or None."""
    if not token.startswith(KEY_PREFIX):
        return None
    key = session.scalars(select(ApiKey).where(ApiKey.key_hash == _hash(token))).first()
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(key.key_hash, _hash(token)):
        return None
    now = utcnow()
    # Recorded at most once a minute: a write (and a durable commit, and a lock on the
    # one row every request of this client shares) per request would cost more than the
    # request's own work, for a field an operator reads to the minute.
    if key.last_used_at is None or now - _aware(key.last_used_at) >= LAST_USED_RESOLUTION:
        key.last_used_at = now
    return key


def _aware(value: datetime) -> datetime:
    # SQLite returns naive datetimes for timezone-aware columns.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def revoke_api_key(session: Session, key_id: int) -> bool:
    key = session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    KEY_CACHE.clear()  # this process refuses it at once; the others within their cache time
    return True


@dataclass(frozen=True)
class VerifiedKey:
    """What a request needs of its verified key: who the caller is."""

    id: int
    name: str
    client_id: int | None


class KeyCache:
    """Verified keys by the token's SHA-256, each kept for at most ``ttl`` seconds."""

    def __init__(self, capacity: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.clock = capacity, clock
        self._entries: dict[str, tuple[float, VerifiedKey]] = {}
        self._lock = threading.Lock()

    def get(self, token: str, ttl: float) -> VerifiedKey | None:
        """The key verified for ``token`` less than ``ttl`` seconds ago, or None."""
        if ttl <= 0:
            return None
        entry = self._entries.get(_hash(token))
        if entry is None or self.clock() - entry[0] >= ttl:
            return None
        return entry[1]

    def put(self, token: str, key: VerifiedKey) -> None:
        with self._lock:
            if len(self._entries) >= self.capacity:
                self._entries.clear()  # a flood of distinct valid keys: start over, stay bounded
            self._entries[_hash(token)] = (self.clock(), key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: The process's cache of verified keys (see the module docstring).
KEY_CACHE = KeyCache()


def verify_api_key_cached(scope: Callable[[], AbstractContextManager[Session]], token: str,
                          ttl: float) -> VerifiedKey | None:
    """``verify_api_key`` through ``KEY_CACHE``: the database is read (in a transaction of
    ``scope``) only when the token has no entry younger than ``ttl`` seconds."""
    found = KEY_CACHE.get(token, ttl)
    if found is not None:
        return found
    with scope() as session:
        key = verify_api_key(session, token)
        if key is None:
            return None
        found = VerifiedKey(key.id, key.name, key.client_id)
    if ttl > 0:
        KEY_CACHE.put(token, found)
    return found


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def list_clients(session: Session) -> list[Client]:
    return list(session.scalars(select(Client).order_by(Client.id)))
