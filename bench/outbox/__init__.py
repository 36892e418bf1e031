"""Outbox benchmark (``python -m bench.outbox``)."""
