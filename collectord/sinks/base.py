"""What every sink implements, and what the pipeline hands it.

A sink is told of every flush on the event loop (`on_flush`, synchronous and cheap: it notes
what to write, or spools it), and writes in its own task (`run`), retrying with `Backoff` while
its backend is away. Its high-water mark (`state`) goes into every checkpoint, and is handed back
(`restore`) before the write-ahead log is replayed; the flushes replay produces are offered again
(`Flush.replaying`), so a sink resumes exactly where its last checkpointed state left off. Writes
are keyed by their natural key and overwrite, so offering a flush twice is harmless.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collectord.aggregation.aggregator import Aggregator, FlushRecord
    from collectord.aggregation.series import Series


@dataclass
class Flush:
    """What one `Aggregator.advance` closed, as every sink sees it."""

    # The StatsD flush view: one record per series per closed slice (plus idle gauges). A
    # record's cell may be its series' 1m cell (FlushRecord): read its numbers in on_flush.
    view: list[FlushRecord]
    # Series that took samples outside their open slice since the last flush (late, timestamped
    # samples landing in windows already rolled up), with the earliest time touched.
    touched: dict[Series, float]
    # Every slice starting before this has been closed and offered.
    closed_until: int
    aggregator: Aggregator
    replaying: bool = False


@dataclass
class SinkStatus:
    """A sink's health as /readyz, /api/v1/stats and /metrics show it."""

    name: str
    enabled: bool = True
    connected: bool = False
    # Seconds between the newest flush offered and the newest written (0 when caught up).
    lag_seconds: float = 0.0
    queued: int = 0
    written: int = 0
    errors: int = 0
    retries: int = 0
    dropped: int = 0
    last_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "lagSeconds": round(self.lag_seconds, 3),
            "queued": self.queued,
            "written": self.written,
            "errors": self.errors,
            "retries": self.retries,
            "dropped": self.dropped,
            "lastError": self.last_error,
            **self.extra,
        }


class Sink(Protocol):
    name: str

    def on_flush(self, flush: Flush) -> None:
        """Note (or spool) what this flush means for the backend; never blocks."""

    async def run(self) -> None:
        """Write until cancelled, retrying with backoff while the backend is away."""

    async def drain(self) -> None:
        """Write what is queued (at stop; the daemon bounds the wait)."""

    async def close(self) -> None:
        """Release connections."""

    def state(self) -> Any:
        """The high-water mark to keep in checkpoints: msgpack-encodable, small."""

    def restore(self, state: Any) -> None:
        """Take back `state` from the checkpoint being loaded (before the log replays)."""

    def status(self) -> SinkStatus: ...


class Backoff:
    """Capped exponential backoff with full jitter (a fleet of sidecars must not retry in step)."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self, retry_after: float | None = None) -> float:
        """The wait before the next attempt; a server's Retry-After wins when longer."""
        ceiling = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        delay = self._rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap * 4))
        return delay

    def reset(self) -> None:
        self.attempt = 0
