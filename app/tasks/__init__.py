"""Thin Celery tasks, one module per job family; routing lives in celeryconfig."""
