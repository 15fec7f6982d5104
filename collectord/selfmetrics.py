"""The daemon's own measurements that are not ingest counters: plain objects that their owners
update and `/metrics` reads at scrape time (collectord/api/self_metrics.py exports them).

- `flush_durations`: every aggregation flush cycle (Pipeline.advance);
- `http`: requests by method, route template and status (the middleware in api/http_metrics.py);
- `reloads`: SIGHUP outcomes.

Sinks report through their `status()` (collectord/sinks/base.py); a sink that also keeps a
`write_durations` DurationHistogram attribute gets its write durations exported as well.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Seconds: from a fast flush of a few series to a sink write that is timing out.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class DurationHistogram:
    """Counts per upper bound (Prometheus `le` buckets, not cumulative here), sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    @contextmanager
    def time(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - began)

    def cumulative(self) -> list[tuple[str, int]]:
        """[(le, count of observations <= le)], ending with ("+Inf", count)."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass
class HttpRequests:
    """Requests by (method, route template, status), and durations by route template."""

    counts: dict[tuple[str, str, int], int] = field(default_factory=dict)
    durations: dict[str, DurationHistogram] = field(default_factory=dict)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        histogram = self.durations.get(route)
        if histogram is None:
            histogram = self.durations[route] = DurationHistogram()
        histogram.observe(seconds)


@dataclass
class ReloadStats:
    succeeded: int = 0
    failed: int = 0
    last_success: float = 0.0  # unix time; 0 before the first reload


@dataclass
class SelfMetrics:
    flush_durations: DurationHistogram = field(default_factory=DurationHistogram)
    http: HttpRequests = field(default_factory=HttpRequests)
    reloads: ReloadStats = field(default_factory=ReloadStats)
