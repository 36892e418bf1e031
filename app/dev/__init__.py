"""Development helpers: servers that stand in for external services on loopback."""
