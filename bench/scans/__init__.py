"""URL-scan benchmark (``python -m bench.scans``)."""
