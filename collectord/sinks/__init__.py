"""Sinks: where flushed aggregates go (PostgreSQL, InfluxDB, Redis)."""
