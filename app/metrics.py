"""Prometheus metrics shared by every family (prometheus-client).

Families define their counters here so names stay unique and documented in one place.
"""

from __future__ import annotations

from prometheus_client import Counter

UPLOADS_CLEANED = Counter(
    "uploads_cleaned_total", "Abandoned chunked uploads removed by the garbage collector."
)
JOB_RUNS = Counter("job_runs_total", "Scheduled job runs by job and outcome.", ["job", "outcome"])
