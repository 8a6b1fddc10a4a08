"""PostgreSQL/TimescaleDB persistence: the schema (one module) and the writers."""
