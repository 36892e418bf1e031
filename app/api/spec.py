"""The OpenAPI document and request validation, both from the same pydantic models.

spectree validates query/JSON bodies against pydantic models and builds the OpenAPI 3
document from those very models, so the document cannot drift from what is enforced.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeAlias, TypeVar, get_type_hints

from flask.json.provider import DefaultJSONProvider
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData
from werkzeug.wrappers import Response

from app.api.errors import ApiError

F = TypeVar("F", bound=Callable[..., Any])

_Body: TypeAlias = Response | str | dict[str, Any]
#: What a view returns: a body, with a status and headers. A concrete spelling of Flask's
#: ``ResponseReturnValue``, which names its parts lazily, so spectree (which resolves a
#: view's annotations at request time) could not read it.
ViewResult: TypeAlias = _Body | tuple[_Body, int] | tuple[_Body, int, dict[str, str]]


def guarded(view: F, check: Callable[[], None]) -> F:
    """``view`` with ``check()`` (which raises ``ApiError``) run before it: the one view
    wrapper of the API (authentication, quotas).

    The view's annotations are resolved here, against the view's own module: spectree reads
    them from the outermost wrapper, and would otherwise look the names of the request
    models and the return type up in the module that defined the wrapper.
    """

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        check()
        return view(*args, **kwargs)

    wrapper.__annotations__ = _parameter_hints(view)
    return wrapper  # type: ignore[return-value]


def _parameter_hints(view: Callable[..., Any]) -> dict[str, Any]:
    """The view's parameter annotations, resolved in its own module (the return type is
    left out: it is for the type checker, and Flask's names its parts lazily)."""
    def proxy() -> None: ...

    proxy.__annotations__ = {name: hint for name, hint in view.__annotations__.items() if name != "return"}
    return get_type_hints(proxy, globalns=inspect.unwrap(view).__globals__)


def _validation_error_to_api_error(req: Any, resp: Any, req_validation_error: Any, instance: Any,
                                   model_adapter: Any) -> None:
    from flask import current_app, request

    from app.api.auth import authenticate_route

    view = current_app.view_functions.get(request.endpoint or "")
    if req_validation_error is not None:
        # Authenticate before saying anything about the request's shape.
        authenticate_route(view)
        # A body that is not JSON at all is named as such, not as missing fields.
        _check_json_body(view)
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
            for err in req_validation_error.errors(include_url=False, include_context=False)
        ]
        # A model-wide error (e.g. extra fields over their size cap together) has no loc.
        fields = ", ".join(".".join(str(p) for p in d["loc"]) or "body" for d in details)
        raise ApiError(400, "validation_error", f"invalid request: {fields}", details)
    _check_json_body(view)
    _check_no_nul(view)


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, except that a body nested deeper than the parser's recursion limit is
    malformed JSON (a ValueError, so a 400) instead of a RecursionError (a 500)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


#: Media types a body may come in besides JSON, where the route also takes a form.
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _check_json_body(view: Callable[..., Any] | None) -> None:
    """Refuse what spectree lets through on a JSON route: it reads the body with
    ``get_json(silent=True) or {}``, so a body that is not JSON (wrong content type or
    malformed) or not an object (``[]``, ``null``) would be validated as ``{}`` and a
    route whose fields are all optional would accept it."""
    from flask import request

    from app.api.auth import authenticate_route

    metadata = spec.get_function_metadata(view) if view is not None else None
    if metadata is None or metadata.json is None or (not request.content_length and not request.data):
        return
    if metadata.form is not None and request.mimetype in _FORM_TYPES:
        return
    if not request.is_json:
        authenticate_route(view)
        accepted = "application/json" + (" or multipart/form-data" if metadata.form is not None else "")
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as {accepted}, not {request.mimetype or 'no content type'}")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        authenticate_route(view)
        problem = "is not valid JSON" if body is None and request.data.strip() != b"null" else "is not a JSON object"
        raise ApiError(400, "validation_error", f"invalid request: body {problem}",
                       [{"loc": ["body"], "msg": f"the body {problem}", "type": "json_invalid"}])


def _nul_at(value: Any, loc: list[Any]) -> list[Any] | None:
    """Where in ``value`` (a JSON value) a string holds a NUL character, if anywhere.
    Iterative: a body nested as deep as the parser allows must not overflow the stack."""
    stack: list[tuple[Any, list[Any]]] = [(value, loc)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and "\x00" in key:
                    return where + [key]
                stack.append((child, where + [key]))
        elif isinstance(item, list):
            stack.extend((child, where + [index]) for index, child in enumerate(item))
    return None


def _check_no_nul(view: Callable[..., Any] | None) -> None:
    """Refuse a NUL character in a path segment, query value, form field or JSON string:
    PostgreSQL cannot store one in text, so it would fail the insert with a 500."""
    from flask import request

    from app.api.auth import authenticate_route

    sources: list[tuple[str, Any]] = [("path", request.view_args or {}), ("query", request.args.to_dict(flat=False))]
    # Bodies only where the route declares one: a raw body (a file chunk) is streamed by
    # its view and must not be read here.
    metadata = spec.get_function_metadata(view) if view is not None else None
    if metadata is not None and metadata.form is not None and request.mimetype in _FORM_TYPES:
        sources.append(("body", request.form.to_dict(flat=False)))
        sources.append(("body", {name: f.filename or "" for name, f in request.files.items()}))
    elif metadata is not None and metadata.json is not None and request.is_json:
        sources.append(("body", request.get_json(silent=True)))
    for where, value in sources:
        loc = _nul_at(value, [where])
        if loc is not None:
            authenticate_route(view)
            field = ".".join(str(p) for p in loc)
            raise ApiError(400, "validation_error", f"invalid request: {field}: NUL characters are not allowed",
                           [{"loc": loc, "msg": "NUL characters are not allowed", "type": "string_nul"}])


BEARER: dict[str, list[str]] = {"bearer": []}
ADMIN: dict[str, list[str]] = {"admin": []}

spec = SpecTree(
    "flask",
    title="Task application API",
    version="1.0.0",
    path="docs",
    page_templates={},  # its pages load their UI from a CDN; the reference is /docs/ (app/api/home.py)
    annotations=True,
    validation_error_status=400,
    before=_validation_error_to_api_error,
    # Only the routes this instance validates: the server-rendered admin page and
    # /metrics are not JSON API operations and would be documented without responses.
    mode="strict",
    security_schemes=[
        SecurityScheme(name="bearer", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", description="Client API key")),
        SecurityScheme(name="admin", data=SecuritySchemeData(type=SecureType.HTTP, scheme="bearer", description="ADMIN_TOKEN")),
    ],
)


#: Error answers an operation can give besides those its view declares, with why.
#: 400: spectree documents its own ValidationError body, but every error here is the
#: one JSON ``ErrorResponse`` shape (app/api/errors.py), so a client and a fuzzer can
#: trust the document.
_ALWAYS = {"400": "Bad Request: the body, query or path does not match the schema."}
#: Answered by gunicorn itself, before the application, as a small HTML page: a request
#: line over 4094 bytes (414) or a header over 8190 bytes (431 / 400). Declared without
#: a body, so the document still tells the truth about the served API.
_SERVER = {
    "414": "URI Too Long: answered by the HTTP server (gunicorn) before the application; not JSON.",
    "431": "Request Header Fields Too Large: answered by the HTTP server (gunicorn); not JSON.",
}
_SECURED = {
    "401": "Unauthorized: missing, unknown, expired or revoked credential.",
    "429": "Too Many Requests: too many authentication failures from this address (Retry-After).",
}
_ADMIN = {"403": "Forbidden: admin routes are disabled (ADMIN_TOKEN is not set)."}
_WITH_BODY = {"413": "Payload Too Large: the body exceeds MAX_REQUEST_BYTES or the route's own limit."}
_TAKES_BODY = {"415": "Unsupported Media Type: the body is not in a media type the operation takes."}

_document: dict[str, Any] | None = None


def _error_schema_ref(doc: dict[str, Any]) -> str:
    """The component name spectree gave ``ErrorResponse`` (it appends a hash)."""
    for name in doc.get("components", {}).get("schemas", {}):
        if name == "ErrorResponse" or (name.startswith("ErrorResponse.") and name.count(".") == 1):
            return f"#/components/schemas/{name}"
    raise RuntimeError("no route declares ErrorResponse; the OpenAPI document cannot describe errors")


def with_error_responses(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` in which every operation declares the error answers the app
    really gives it (400 always; 401 and 429 when it needs a credential; 403 for admin
    operations; 413 when it may carry a body; 415 when it declares one), each with the JSON
    error schema."""
    doc = copy.deepcopy(doc)
    ref = _error_schema_ref(doc)
    for item in doc.get("paths", {}).values():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            extra = dict(_ALWAYS)
            for status, description in _SERVER.items():
                operation["responses"].setdefault(status, {"description": description})
            security = operation.get("security") or []
            if security:
                extra |= _SECURED
            if any("admin" in requirement for requirement in security):
                extra |= _ADMIN
            if method in ("post", "put", "patch"):
                extra |= _WITH_BODY
            if "requestBody" in operation:
                extra |= _TAKES_BODY
            responses = operation["responses"]
            for status, description in extra.items():
                current = responses.get(status)
                # A view's own declaration of the error keeps its description.
                if current is None or status == "400":
                    responses[status] = {
                        "description": (current or {}).get("description") or description,
                        "content": {"application/json": {"schema": {"$ref": ref}}},
                    }
                else:
                    current["content"] = {"application/json": {"schema": {"$ref": ref}}}
    return doc


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3 document: spectree's, with every error answer declared (built once)."""
    global _document
    if _document is None:
        _document = with_error_responses(spec.spec)
    return _document
