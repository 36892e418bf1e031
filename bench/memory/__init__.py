"""Memory benchmark: resident memory per worker process per queue, idle and after work."""
