"""Render docs/configuration.md from the Settings class, so the page cannot drift."""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.settings import ROOT, Settings

DOC_PATH = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration

Every setting is an environment variable (or a line of an optional `.env` file in the
working directory). Names are case-insensitive. An invalid value stops every process at
start-up with a message naming the variable, for example:

```
$ DATABASE_URL=nope python -m app check
invalid configuration:
  DATABASE_URL: Value error, not a SQLAlchemy database URL: ...
```

This page is generated from `app/settings.py` by `python -m app config-docs`; a test
fails when it is out of date.

| variable | type | default | description |
|---|---|---|---|
"""


def _default(name: str, field: FieldInfo) -> str:
    value = field.default
    if isinstance(value, SecretStr):
        return "(empty)" if not value.get_secret_value() else "(set)"
    elif isinstance(value, Path):
        try:
            value = "`" + str(value.relative_to(ROOT)) + "`"
        except ValueError:
            value = f"`{value}`"
        return value
    if isinstance(value, str) and str(ROOT) in value:
        value = value.replace(str(ROOT) + "/", "")
    if value == "":
        return "(empty)"
    return f"`{value}`"


def _type(field: FieldInfo) -> str:
    from typing import Literal, get_args, get_origin

    if get_origin(field.annotation) is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in get_args(field.annotation))
    if field.annotation is SecretStr:
        return "secret"
    text = getattr(field.annotation, "__name__", None) or str(field.annotation)
    return text.replace("|", "\\|")


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name.upper()}` | {_type(field)} | {_default(name, field)} | {desc} |")
    return HEADER + "\n".join(rows) + "\n"


def write() -> Path:
    DOC_PATH.write_text(render())
    return DOC_PATH
