"""URL scans: models (filled in by the family's issue)."""

from __future__ import annotations
