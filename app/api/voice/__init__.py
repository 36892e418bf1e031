"""Voice scam scoring API, one module per audience.

- ``clients``: ``POST /api/voice``, ``GET /api/voice/<id>`` (client API key): submit a call recording
  and/or its transcript; poll the status and result.
- ``workers``: ``/api/v1/worker/...`` (worker token): the HTTP pull protocol of remote workers —
  next job, status, complete, fail, heartbeat — exactly the old worker's endpoints.
- ``admin``: ``/api/admin/workers`` (ADMIN_TOKEN) to create (token shown once), list and revoke
  workers, and ``/admin/workers``, the same as a server-rendered page.

The one blueprint ``voice`` is defined here; each module adds its routes to it.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, request

from app.api.errors import ApiError
from app.api.spec import BEARER
from app.settings import Settings

logger = logging.getLogger(__name__)

bp = Blueprint("voice", __name__, template_folder="templates")

MAX_TRANSCRIPT_CHARS = 20_000
MAX_METADATA_BYTES = 16 * 1024
#: Worker routes take a worker token as their bearer credential.
WORKER = BEARER
_MULTIPART_OVERHEAD = 64 * 1024


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@bp.before_request
def _guard_size() -> None:
    """Refuse an oversized clip from Content-Length, before the body is spooled."""
    limit = _settings().voice_max_audio_bytes
    if request.endpoint == "voice.submit" and request.content_length \
            and request.content_length > limit + _MULTIPART_OVERHEAD:
        raise ApiError(413, "audio_too_large", f"the request is {request.content_length:,} bytes; audio is limited "
                       f"to {limit:,} bytes", {"limit": limit})


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", f"invalid request: {field}: {message}",
                    [{"loc": [field], "msg": message, "type": "value_error"}])


from app.api.voice import admin, clients, workers  # noqa: E402,F401  (their routes)
