"""API benchmark: submit endpoints under gunicorn against a bare Flask endpoint."""
