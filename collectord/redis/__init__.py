"""Redis, shared by a fleet of daemons: realtime values, the query cache and cross-host streams."""
