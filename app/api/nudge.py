"""Nudge the outbox relay right after an API commit, without ever blocking a request.

Requests only set a flag; one background thread per API process sends at most one
relay task per wake-up, so a burst of requests costs one broker message, and a broker
outage costs nothing but a log line (beat's periodic relay covers the gap).
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger(__name__)

_wake = threading.Event()
_thread: threading.Thread | None = None
_lock = threading.Lock()


def nudge_relay() -> None:
    """Ask for a relay run soon; returns at once."""
    global _thread
    _wake.set()
    if _thread is None or not _thread.is_alive():
        with _lock:
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(target=_run, name="outbox-nudger", daemon=True)
                _thread.start()


def _run() -> None:
    from app.settings import get_settings
    from app.tasks.outbox import relay

    expires = max(1.0, get_settings().outbox_relay_interval * 5)
    while True:
        _wake.wait()
        _wake.clear()
        try:
            relay.apply_async(expires=expires, retry=False)
        except Exception as exc:  # broker down: the periodic relay publishes later
            logger.warning("outbox nudge failed", extra={"error": str(exc)[:200]})
