"""The OpenAPI document and request validation, both from the same pydantic models.

spectree validates query/JSON bodies against pydantic models and builds the OpenAPI 3
document from those very models, so the document cannot drift from what is enforced.
"""

from __future__ import annotations

from typing import Any

from spectree import SecurityScheme, SpecTree
from spectree.models import SecuritySchemeData

from app.api.errors import ApiError


def _validation_error_to_api_error(req, resp, req_validation_error, instance, model_adapter):  # type: ignore[no-untyped-def]
    if req_validation_error is not None:
        # Authenticate before saying anything about the request's shape.
        from flask import current_app, request

        from app.api.auth import authenticate_route

        authenticate_route(current_app.view_functions.get(request.endpoint))
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
            for err in req_validation_error.errors(include_url=False, include_context=False)
        ]
        fields = ", ".join(".".join(str(p) for p in d["loc"]) for d in details)
        raise ApiError(400, "validation_error", f"invalid request: {fields}", details)


BEARER = {"bearer": []}
ADMIN = {"admin": []}

spec = SpecTree(
    "flask",
    title="Task application API",
    version="1.0.0",
    path="docs",
    annotations=True,
    validation_error_status=400,
    before=_validation_error_to_api_error,
    security_schemes=[
        SecurityScheme(name="bearer", data=SecuritySchemeData(type="http", scheme="bearer", description="Client API key")),
        SecurityScheme(name="admin", data=SecuritySchemeData(type="http", scheme="bearer", description="ADMIN_TOKEN")),
    ],
)


def openapi_document() -> dict[str, Any]:
    return spec.spec
