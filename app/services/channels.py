"""Channel adapters: real HTTP clients for the WhatsApp Cloud API and the Instagram
Messaging API shapes, with timeouts, and a classification of every failure.

5xx, 429 (with its ``Retry-After``) and timeouts / connection errors are transient; any
other 4xx is permanent. Adapters receive their ``requests.Session`` and settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from app.settings import Settings


class ChannelError(Exception):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientChannelError(ChannelError):
    """Worth retrying: 5xx, 429, timeout, connection failure."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class PermanentChannelError(ChannelError):
    """Not worth retrying: a 4xx other than 429, or a malformed answer."""


@dataclass
class OutgoingMessage:
    id: str
    recipient: str
    content: str


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _post(http: requests.Session, url: str, token: str, body: dict, timeout: float) -> dict:
    try:
        resp = http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=timeout)
    except (requests.Timeout, requests.ConnectionError) as exc:
        raise TransientChannelError(f"{type(exc).__name__}: {exc}"[:500]) from exc
    if resp.status_code == 429 or resp.status_code >= 500:
        raise TransientChannelError(
            f"HTTP {resp.status_code}: {resp.text[:300]}",
            resp.status_code,
            parse_retry_after(resp.headers.get("Retry-After")),
        )
    if resp.status_code >= 400:
        raise PermanentChannelError(f"HTTP {resp.status_code}: {resp.text[:300]}", resp.status_code)
    try:
        return resp.json()
    except ValueError as exc:
        raise PermanentChannelError(f"HTTP {resp.status_code} with a non-JSON body", resp.status_code) from exc


class HttpChannel:
    """A chat provider's send endpoint with a bearer token: each channel says its URL, the
    body of a text message and where the provider's message id is in the answer."""

    name = ""
    label = ""

    def __init__(self, url: str, token: str, timeout: float, http: requests.Session) -> None:
        self.url, self.token, self.timeout, self.http = url, token, timeout, http

    def body(self, message: OutgoingMessage) -> dict[str, Any]:
        raise NotImplementedError

    def provider_id(self, data: Any) -> str:
        raise NotImplementedError

    def send(self, message: OutgoingMessage) -> str:
        data = _post(self.http, self.url, self.token, self.body(message), self.timeout)
        try:
            return self.provider_id(data)
        except (KeyError, IndexError, TypeError) as exc:
            raise PermanentChannelError(f"unexpected {self.label} answer: {str(data)[:200]}") from exc


class WhatsAppChannel(HttpChannel):
    """``POST {base}/{phone_number_id}/messages`` with a bearer token."""

    name, label = "whatsapp", "WhatsApp"

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        super().__init__(f"{settings.whatsapp_base_url.rstrip('/')}/{settings.whatsapp_phone_number_id}/messages",
                         settings.whatsapp_token.get_secret_value(), settings.channel_timeout, http)

    def body(self, message: OutgoingMessage) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.recipient,
            "type": "text",
            "text": {"preview_url": False, "body": message.content},
            "biz_opaque_callback_data": message.id,
        }

    def provider_id(self, data: Any) -> str:
        return str(data["messages"][0]["id"])


class InstagramChannel(HttpChannel):
    """``POST {base}/me/messages`` with a bearer token."""

    name, label = "instagram", "Instagram"

    def __init__(self, settings: Settings, http: requests.Session) -> None:
        super().__init__(f"{settings.instagram_base_url.rstrip('/')}/me/messages",
                         settings.instagram_token.get_secret_value(), settings.channel_timeout, http)

    def body(self, message: OutgoingMessage) -> dict[str, Any]:
        return {"recipient": {"id": message.recipient}, "message": {"text": message.content, "metadata": message.id}}

    def provider_id(self, data: Any) -> str:
        return str(data["message_id"])


def make_channels(settings: Settings, http: requests.Session) -> dict[str, HttpChannel]:
    return {"whatsapp": WhatsAppChannel(settings, http), "instagram": InstagramChannel(settings, http)}
