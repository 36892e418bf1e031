"""Task overhead benchmark: the project's instrumented no-op task against a bare Celery one."""
