"""The PostgreSQL sink: schema and migrations, timed aggregate upserts, raw points, fleet
queries, retention, purge and the audit log."""
