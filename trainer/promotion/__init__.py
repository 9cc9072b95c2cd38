"""Production models: the candidate check, the gate, promotion and rollback, and the
production state per symbol."""
