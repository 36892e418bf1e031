"""Beat precision benchmark: how late each scheduled job starts after its slot."""
