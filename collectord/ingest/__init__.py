"""Multi-core ingest: worker processes that receive, parse and pre-aggregate, and the owner's side
of them (docs/design.md, "Multi-core ingest")."""
