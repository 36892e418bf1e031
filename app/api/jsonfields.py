"""Bounds on free-form JSON fields of request bodies.

A field typed ``dict[str, Any]`` (voice ``metadata``) or a model that keeps extra fields
(a remote worker's result and heartbeat) would otherwise store whatever fits in
MAX_REQUEST_BYTES, as deep as the parser allows, in a database row read back on every
poll. ``BoundedJson`` / ``BoundedObject`` cap each value at JSON_FIELD_MAX_BYTES as
compact JSON and JSON_FIELD_MAX_DEPTH levels of nesting (the key count follows from the
size); ``BoundedExtras`` applies the same caps to every extra field and to all of them
together. A value over a cap is a validation error at its field, so the API answers 400
naming it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, model_validator


def _limits() -> tuple[int, int]:
    from flask import current_app, has_app_context

    from app.settings import get_settings

    settings = current_app.config["SETTINGS"] if has_app_context() else get_settings()
    return settings.json_field_max_bytes, settings.json_field_max_depth


def json_depth(value: Any) -> int:
    """Levels of object/array nesting (a scalar is 0). Iterative: no recursion limit."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_bounded(value: Any) -> Any:
    """``value`` unchanged, or ValueError when it is nested or sized over the caps."""
    max_bytes, max_depth = _limits()
    depth = json_depth(value)
    if depth > max_depth:
        raise ValueError(f"nested {depth} levels deep; at most {max_depth} (JSON_FIELD_MAX_DEPTH)")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    if size > max_bytes:
        raise ValueError(f"{size:,} bytes as JSON; at most {max_bytes:,} (JSON_FIELD_MAX_BYTES)")
    return value


#: Any JSON value, bounded.
BoundedJson = Annotated[Any, AfterValidator(check_bounded)]
#: A JSON object, bounded.
BoundedObject = Annotated[dict[str, Any], AfterValidator(check_bounded)]


class BoundedExtras(BaseModel):
    """Base of a model that keeps extra fields: each is bounded, and so are all together."""

    __pydantic_extra__: dict[str, BoundedJson]

    @model_validator(mode="after")
    def _bound_extras_together(self) -> BoundedExtras:
        if self.model_extra:
            try:
                check_bounded(self.model_extra)
            except ValueError as exc:
                raise ValueError(f"extra fields together: {exc}") from None
        return self
