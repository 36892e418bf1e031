"""HTTP adapter of the telephony provider: start one outbound call.

``POST <TELEPHONY_URL>/calls`` with ``{"to", "call_request_id", "tenant_id"}`` and an
``Idempotency-Key`` header; the provider answers ``{"id": <provider call id>}``. The key is
``call-<id>-<attempt>``, so a task redelivered after a crash asks for the same call again
and gets the same id back instead of ringing the lead twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import requests

from app.settings import Settings

logger = logging.getLogger(__name__)


class TelephonyError(Exception):
    """A dial that did not succeed."""


class TelephonyTransient(TelephonyError):
    """Connection trouble, timeout, 429 or 5xx: try again later."""


class TelephonyRejected(TelephonyError):
    """The provider refused the call (4xx other than 429): retrying cannot help."""


@dataclass
class TelephonyClient:
    """A thin client over one ``requests.Session`` with the configured timeout."""

    base_url: str
    token: str
    timeout: float
    http: requests.Session

    @classmethod
    def from_settings(cls, settings: Settings, http: requests.Session) -> TelephonyClient:
        base = settings.telephony_url or f"http://127.0.0.1:{settings.dev_telephony_port}"
        return cls(base.rstrip("/"), settings.telephony_token.get_secret_value(), settings.telephony_timeout, http)

    def dial(self, to: str, idempotency_key: str, call_request_id: int, tenant_id: int) -> str:
        """Ask the provider to call ``to``; returns the provider's call id."""
        try:
            response = self.http.post(
                f"{self.base_url}/calls",
                json={"to": to, "call_request_id": call_request_id, "tenant_id": tenant_id},
                headers={"Authorization": f"Bearer {self.token}", "Idempotency-Key": idempotency_key},
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TelephonyTransient(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TelephonyTransient(f"provider answered {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise TelephonyRejected(f"provider refused the call ({response.status_code}): {response.text[:200]}")
        try:
            return str(response.json()["id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TelephonyTransient(f"unreadable provider answer: {response.text[:200]}") from exc
