"""The embedded store on local disk: the write-ahead log and checkpoints of the aggregation state."""
