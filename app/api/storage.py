"""``GET /storage/download/<token>``: serves the local storage backend's download links.

The local backend's ``presigned_get_url`` mints these links (its ``link_base_url`` is
the API's); where the store serves its own links (S3) this route answers 404.
"""

from __future__ import annotations

import logging
import os

from flask import Blueprint, current_app, request
from spectree import Response
from werkzeug.utils import send_file
from werkzeug.wrappers import Response as WerkzeugResponse

from app.api.errors import ApiError, ErrorResponse
from app.api.spec import ViewResult, spec
from app.storage import StorageKeyNotFound, StorageTokenExpired, StorageTokenInvalid, get_storage, guess_content_type

logger = logging.getLogger(__name__)

bp = Blueprint("storage", __name__)


@bp.get("/storage/download/<token>")
@spec.validate(
    resp=Response(
        HTTP_200=(None, "The object's bytes (Content-Type guessed from its name)."),
        HTTP_206=(None, "The requested byte range."),
        HTTP_304=(None, "Not modified (If-None-Match / If-Modified-Since)."),
        HTTP_403=ErrorResponse,
        HTTP_404=ErrorResponse,
    ),
    tags=["storage"],
    path_parameter_descriptions={"token": "Signed token from a download URL."},
)
def download(token: str) -> ViewResult:
    """Stream a stored object to whoever holds an unexpired signed link.

    403 `link_expired` after the link's expiry, 403 `invalid_link` for a token not
    signed by this deployment, 404 `not_found` when the object is gone.
    """
    storage = get_storage(current_app.config["SETTINGS"])
    if storage.link_base_url is None:
        raise ApiError(404, "not_found", "download links are served by the object store in this deployment")
    # Open first and describe the open file (not the path): a concurrent put replaces
    # the path atomically, and the length, ETag and body must all be of one version.
    try:
        f, key, filename = storage.open_link(token)
    except StorageTokenExpired:
        raise ApiError(403, "link_expired", "this download link has expired") from None
    except StorageTokenInvalid:
        raise ApiError(403, "invalid_link", "this download link is not valid") from None
    except StorageKeyNotFound:
        raise ApiError(404, "not_found", "the file of this link no longer exists") from None
    try:
        st = os.fstat(f.fileno())
        # werkzeug's own Response class, not Flask's: spectree reads a flask.Response's
        # whole body into memory to validate it, which would defeat streaming.
        response = send_file(
            f,
            request.environ,
            mimetype=guess_content_type(filename or key),
            as_attachment=filename is not None,
            download_name=filename,
            conditional=False,
            etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}",
            last_modified=st.st_mtime,
            max_age=0,
            response_class=WerkzeugResponse,
        )
        response.content_length = st.st_size
        # Range and conditional requests, done here because send_file can only size
        # a file it opened from a path.
        response = response.make_conditional(request.environ, accept_ranges=True, complete_length=st.st_size)
    except BaseException:
        f.close()
        raise
    # The status goes back explicitly so that spectree keeps a 206 or 304.
    return response, response.status_code
