"""Bulk fan-out benchmark: a 10,000-recipient campaign enqueued by the real campaign path."""
