"""SMTP sender for campaign and reminder emails (stdlib ``smtplib``, explicit timeouts).

One ``SmtpSender`` holds one connection for a batch of messages. Errors are sorted in
two kinds: ``PermanentEmailError`` (the server refused this recipient or message with a
5xx code: retrying cannot help) and ``TransientEmailError`` (connection trouble or a
4xx answer: the caller retries later).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from types import TracebackType

from app.settings import Settings

logger = logging.getLogger(__name__)


class EmailError(Exception):
    """A send that did not succeed."""


class PermanentEmailError(EmailError):
    """The server refused the recipient or message for good (5xx)."""


class TransientEmailError(EmailError):
    """The send may succeed later (connection trouble, 4xx)."""


def _classify(exc: Exception) -> EmailError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}"
                           for rcpt, (code, msg) in exc.recipients.items())
        kind = PermanentEmailError if codes and all(c >= 500 for c in codes) else TransientEmailError
        return kind(f"recipient refused: {detail}")
    if isinstance(exc, smtplib.SMTPResponseException):
        message = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        kind = PermanentEmailError if exc.smtp_code >= 500 else TransientEmailError
        return kind(f"SMTP {exc.smtp_code} {message}")
    return TransientEmailError(f"{type(exc).__name__}: {exc}")


class SmtpSender:
    """Send plain-text emails through the configured relay; reconnects when the server drops us."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        if s.smtp_tls == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                                  context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout)
            if s.smtp_tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
        if s.smtp_username:
            smtp.login(s.smtp_username, s.smtp_password.get_secret_value())
        return smtp

    def send(self, to: str, subject: str, body: str) -> str:
        """Send one email; returns its Message-ID. Raises Permanent/TransientEmailError."""
        msg = EmailMessage()
        msg["From"] = self.settings.smtp_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = make_msgid(domain=self.settings.smtp_from.rpartition("@")[2] or None)
        msg.set_content(body)
        for attempt in (1, 2):
            try:
                if self._smtp is None:
                    self._smtp = self._connect()
                self._smtp.send_message(msg)
                return str(msg["Message-ID"])
            except smtplib.SMTPServerDisconnected as exc:
                # A pooled connection the server closed (idle timeout): one fresh try.
                self._smtp = None
                if attempt == 2:
                    raise _classify(exc) from exc
            except (smtplib.SMTPException, OSError) as exc:
                self.close()
                raise _classify(exc) from exc
        raise TransientEmailError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Quit the connection (best effort)."""
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
            self._smtp = None
