"""Plain business logic, one module per family; never imports Celery or Flask."""
