"""Client-supplied file names, made safe to store and show (one rule for every family)."""

from __future__ import annotations

import re
import unicodedata

#: Longest stored name, in UTF-8 bytes (what most file systems and S3 metadata allow).
MAX_FILENAME_BYTES = 255
#: An extension up to this long is kept when a name is shortened.
_MAX_EXTENSION = 16


def sanitize_filename(name: str | None, default: str = "file") -> str:
    """A display name safe for storage metadata and Content-Disposition.

    Keeps only the last path component (either separator), turns whitespace into single
    spaces, drops control and format characters, leading dots and surrounding spaces,
    NFC-normalises, and bounds the length to 255 UTF-8 bytes keeping the extension;
    ``../../etc/passwd`` becomes ``passwd``. Unicode letters stay. ``default`` when
    nothing is left.
    """
    name = unicodedata.normalize("NFC", name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(" " if ch.isspace() else ch for ch in name if unicodedata.category(ch)[0] != "C" or ch.isspace())
    name = re.sub(r" {2,}", " ", name).strip().lstrip(".").strip()
    return _bounded(name) or default


def _bounded(name: str) -> str:
    """``name`` cut to MAX_FILENAME_BYTES, keeping a short extension."""
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not (dot and stem and 0 < len(ext) <= _MAX_EXTENSION):
        stem, dot, ext = name, "", ""
    room = MAX_FILENAME_BYTES - len((dot + ext).encode("utf-8"))
    stem = stem.encode("utf-8")[:room].decode("utf-8", "ignore").rstrip()
    return stem + dot + ext
