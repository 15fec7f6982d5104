"""The daemon's core, without sockets: parsers, ring, aggregation and the counters around them.

Sources push into `ring`; `catch_up` applies whatever is queued (the consumer task calls it
as batches arrive, and every query calls it first, so a sample is visible the moment it is
parsed); `advance` closes periods on the clock and returns the flush view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from collectord.aggregation.aggregator import AggregationSettings, Aggregator, FlushRecord
from collectord.clock import Clock
from collectord.config import Config
from collectord.counters import SourceCounters
from collectord.model import MetricType
from collectord.protocols.line import LineParser
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.ring import Batch, Ring
from collectord.storage.journal import Journal


def aggregation_settings(config: Config) -> AggregationSettings:
    aggregate = config.aggregate
    return AggregationSettings(
        flush_interval=int(aggregate.flush_interval),
        late_allowance=float(aggregate.late_allowance),
        series_idle_expiry=float(aggregate.series_idle_expiry),
        retention=(
            float(aggregate.retention_1m),
            float(aggregate.retention_5m),
            float(aggregate.retention_1h),
            float(aggregate.retention_1d),
        ),
        emit_idle_gauges=aggregate.emit_idle_gauges,
    )


@dataclass
class FlushStats:
    flushes: int = 0
    last_records: int = 0
    last_duration_s: float = 0.0
    total_duration_s: float = 0.0


class Pipeline:
    def __init__(self, config: Config, clock: Clock) -> None:
        self.config = config
        self.clock = clock
        self.started_at = clock.now()
        self.journal: Journal | None = Journal(config) if config.storage.wal else None
        # Accepted batches go to the log the moment the ring takes them.
        self.ring = Ring(config.ingest.ring_capacity, self.journal.accept if self.journal else None)
        self.statsd_stats = ParseStats()
        self.line_stats = ParseStats()
        self.statsd_parser = StatsdParser(
            config.limits, container_id=config.ingest.container_id, stats=self.statsd_stats
        )
        line_types = {name: MetricType(kind.upper()) for name, kind in config.ingest.line_types.items()}
        self.line_parser = LineParser(
            config.limits,
            precision=config.ingest.line_precision,
            types=line_types,
            stats=self.line_stats,
        )
        self.aggregator = self.new_aggregator()
        self.sources: dict[str, SourceCounters] = {}
        self.flush = FlushStats()

    def new_aggregator(self) -> Aggregator:
        return Aggregator(self.config.limits, aggregation_settings(self.config), self.clock.now())

    def recover(self) -> None:
        """Load the newest checkpoint and replay the write-ahead log after it."""
        if self.journal is not None:
            self.aggregator = self.journal.recover(self.new_aggregator)
            self.aggregator.advance(self.clock.now())

    def checkpoint(self, background: bool = False) -> bool:
        if self.journal is None:
            return False
        self.catch_up()
        if background:
            return self.journal.checkpoint_in_background(self.aggregator)
        return self.journal.checkpoint(self.aggregator)

    def write_acknowledged(self, batch: Batch) -> None:
        """For writes that are answered (HTTP): logged before applied, or JournalUnavailable.
        Queued batches go first so the log's order is the order of application."""
        self.catch_up()
        if self.journal is not None:
            self.journal.log_acknowledged(batch)
        self.aggregator.apply(batch)

    def counters_for(self, source: str) -> SourceCounters:
        counters = self.sources.get(source)
        if counters is None:
            counters = self.sources[source] = SourceCounters()
        return counters

    def catch_up(self) -> int:
        """Apply every queued batch; returns how many samples were applied."""
        batches = self.ring.drain()
        if not batches:
            return 0
        if self.journal is not None:
            self.journal.commit_pending()
        return self.aggregator.apply_many(batches)

    def advance(self) -> list[FlushRecord]:
        self.catch_up()
        began = time.perf_counter()
        view = self.aggregator.advance(self.clock.now())
        if view:
            took = time.perf_counter() - began
            flush = self.flush
            flush.flushes += 1
            flush.last_records = len(view)
            flush.last_duration_s = took
            flush.total_duration_s += took
        return view
