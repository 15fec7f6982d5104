"""Counters a parser keeps about what it saw: lines, accepted lines, rejections by reason."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["EXAMPLE_BYTES", "ParseStats", "Rejection"]

# Rejected lines are kept as examples for logs and error bodies; this bounds what we keep.
EXAMPLE_BYTES = 200


class Rejection(NamedTuple):
    """One rejected line: 1-based line number in its packet, reason, the line (<= 200 bytes)."""

    line_no: int
    reason: str
    line: bytes


class ParseStats:
    """Mutable ingest counters, updated once per packet by a parser.

    Invariant: `lines == accepted + sum(rejected.values())`. `lines` counts non-blank lines
    (blank = empty or only ASCII whitespace, so "\\r\\n" endings and a trailing "\\n" add nothing);
    line-protocol comment lines are not counted either.
    """

    __slots__ = (
        "accepted",
        "events",
        "fields_skipped",
        "last_rejected",
        "lines",
        "rejected",
        "service_checks",
    )

    def __init__(self) -> None:
        self.lines = 0
        # Lines that produced samples, plus DogStatsD events and service checks, plus
        # line-protocol lines whose fields were all strings (valid, nothing to aggregate).
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.events = 0
        self.service_checks = 0
        self.fields_skipped = 0
        # reason -> latest example line, so the caller can log at a bounded rate.
        self.last_rejected: dict[str, bytes] = {}

    def merge_into(self, other: ParseStats) -> None:
        """Add these counters to `other` (for example per-connection stats into a total)."""
        other.lines += self.lines
        other.accepted += self.accepted
        other.events += self.events
        other.service_checks += self.service_checks
        other.fields_skipped += self.fields_skipped
        for reason, count in self.rejected.items():
            other.rejected[reason] = other.rejected.get(reason, 0) + count
        other.last_rejected.update(self.last_rejected)

    def reject(self, reason: str, line: bytes) -> None:
        """Count one rejected line (the parsers call this; `lines` is counted separately)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.last_rejected[reason] = line[:EXAMPLE_BYTES]

    def __repr__(self) -> str:
        return (
            f"ParseStats(lines={self.lines}, accepted={self.accepted}, "
            f"rejected={self.rejected}, events={self.events}, "
            f"service_checks={self.service_checks}, fields_skipped={self.fields_skipped})"
        )
