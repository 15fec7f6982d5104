"""Plain counters the sources update on their hot path; read by /api/v1/stats and /metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SourceCounters:
    """What one listener saw. Plain attributes: incrementing one costs a few nanoseconds."""

    packets: int = 0
    bytes: int = 0
    # Samples parsed but not queued because the ring was full (UDP only; TCP waits instead).
    dropped_samples: int = 0
    errors: int = 0
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    idle_closed: int = 0
    lines_too_long: int = 0
    paused: int = 0
    # Datagrams larger than ingest.max_datagram, dropped whole.
    oversized: int = 0
