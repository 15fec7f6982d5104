"""The daemon's core, without sockets: parsers, ring, aggregation and the counters around them.

Sources push into `ring`; `catch_up` applies whatever is queued (the consumer task calls it
as batches arrive, and every query calls it first, so a sample is visible the moment it is
parsed); `advance` closes periods on the clock and returns the flush view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from collectord.aggregation.aggregator import AggregationSettings, Aggregator, FlushRecord
from collectord.clock import Clock
from collectord.config import Config
from collectord.counters import SourceCounters
from collectord.model import MetricType
from collectord.protocols.line import LineParser
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.ring import PAYLOAD_AUDIT, PAYLOAD_PURGE, Batch, Ring
from collectord.selfmetrics import SelfMetrics
from collectord.sinks.base import Flush, Sink
from collectord.sinks.postgres.purge import purge_memory
from collectord.storage.journal import Journal
from collectord.streams.hub import StreamHub


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


# Series rolled up between checks of roll_slice's budget (a few to tens of microseconds each).
ROLL_STEP = 64


class PurgeRecord(msgspec.Struct):
    """A purge as the write-ahead log keeps it."""

    names: list[str]
    olderThan: float


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
        self.self_metrics = SelfMetrics()
        # Called with (old, new) Config after a SIGHUP reload applied `new`; may be async.
        # Sinks and APIs register here to pick up their settings (collectord/reload.py).
        self.reload_hooks: list[Callable[[Config, Config], object]] = []
        # Told of every flush; their high-water marks ride in every checkpoint.
        self.sinks: list[Sink] = []
        # Applied samples go to stream followers (a flag check when there are none).
        self.hub = StreamHub(config.streams.queue_size, config.streams.max_per_tenant)
        self._offered_until = -1
        # Worker frames in the ring (collectord/ingest): drains split them from other batches.
        self.frames_enabled = False
        # Raised at every checkpoint: workers' key definitions are logged again after it.
        self.frame_generation = 0
        # Told of every applied batch (and audit event), with replaying=True during recovery:
        # sinks that store raw points or audit records.
        self.batch_taps: list[Callable[[Batch, bool], None]] = []
        if self.journal is not None:
            self.journal.extra_state = self._checkpoint_extra
            self.journal.on_replayed = self._tap_replayed
            self.journal.on_purge = self._replay_purge

    def add_sink(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def _tap_replayed(self, batch: Batch) -> None:
        for tap in self.batch_taps:
            tap(batch, True)

    def audit(self, tenant: str, payload: bytes) -> None:
        """Keep an audit event (JSON) on the durable path: logged, then handed to the taps.
        JournalUnavailable when the log cannot take it. Nothing to do without a tap."""
        if not self.batch_taps:
            return
        batch = Batch(tenant, [], time.time(), PAYLOAD_AUDIT, payload)
        if self.journal is not None:
            self.journal.log_audit(tenant, batch.received_at, payload)
        for tap in self.batch_taps:
            tap(batch, False)

    def purge(self, tenant: str, names: list[str], older_than: float) -> int:
        """Drop the tenant's in-memory windows (of `names`, or all) that end by `older_than`;
        returns how many. Logged first (JournalUnavailable when the log cannot take it), after
        closing periods as of now: a replay after kill -9 closes the same periods and purges
        at the same point, so purged windows do not come back."""
        self.advance()
        self.aggregator.settle_rolls()
        if self.journal is not None:
            payload = msgspec.json.encode({"names": names, "olderThan": older_than})
            self.journal.log_audit(tenant, self.clock.now(), payload, kind=PAYLOAD_PURGE)
        return purge_memory(self.aggregator, tenant, names, older_than)

    @staticmethod
    def _replay_purge(aggregator: Aggregator, tenant: str, payload: bytes) -> None:
        try:
            logged = msgspec.json.decode(payload, type=PurgeRecord)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        purge_memory(aggregator, tenant, logged.names, logged.olderThan)

    def _checkpoint_extra(self) -> dict[str, object]:
        return {"sinks": {sink.name: sink.state() for sink in self.sinks}}

    def _restore_sinks(self, extra: dict[str, object]) -> None:
        states = extra.get("sinks")
        if not isinstance(states, dict):
            return
        for sink in self.sinks:
            if sink.name in states:
                sink.restore(states[sink.name])

    def _offer(self, aggregator: Aggregator, view: list[FlushRecord], replaying: bool = False) -> None:
        """Hand a flush to every sink: when a slice closed, or late samples touched old windows."""
        closed_until = aggregator.rolled_until[0]
        if not self.sinks:
            aggregator.touched.clear()
            return
        if not view and not aggregator.touched and closed_until == self._offered_until:
            return
        self._offered_until = closed_until
        flush = Flush(view, aggregator.take_touched(), closed_until, aggregator, replaying)
        for sink in self.sinks:
            sink.on_flush(flush)

    def new_aggregator(self) -> Aggregator:
        return Aggregator(self.config.limits, aggregation_settings(self.config), self.clock.now())

    def recover(self) -> None:
        """Load the newest checkpoint and replay the write-ahead log after it."""
        if self.journal is not None:
            # Without taps a replayed batch needs no Sample tuples: timers replay in bulk.
            self.journal.on_replayed = self._tap_replayed if self.batch_taps else None
            self.aggregator = self.journal.recover(
                self.new_aggregator,
                on_loaded=self._restore_sinks,
                on_advance=lambda aggregator, view: self._offer(aggregator, view, replaying=True),
            )
            self._offer(self.aggregator, self.aggregator.advance(self.clock.now()), replaying=True)

    def checkpoint(self, background: bool = False) -> bool:
        if self.journal is None:
            return False
        self.catch_up()
        # A checkpoint holds no roll-up half done (replay rolls up in one block).
        self.aggregator.settle_rolls()
        # Late touches noted since the last flush are not in the log after this checkpoint.
        self._offer(self.aggregator, [])
        self.frame_generation += 1
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
        for tap in self.batch_taps:
            tap(batch, False)
        if self.hub.active:
            self.hub.publish_batch(batch)

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
        applied = self._apply_frames(batches) if self.frames_enabled else self.aggregator.apply_many(batches)
        for tap in self.batch_taps:
            for batch in batches:
                tap(batch, False)
        if self.hub.active:
            for batch in batches:
                self.hub.publish_batch(batch)
        return applied

    def roll_slice(self, budget: float) -> bool:
        """Run queued coarse roll-ups (and a queued prune) for about `budget` seconds; True
        while some remain. The daemon calls it with its loop running in between, so a close of
        an hour or a day for 100,000 series never holds ingest, queries or streams for long."""
        aggregator = self.aggregator
        began = time.perf_counter()
        while aggregator.roll_some(ROLL_STEP):
            if time.perf_counter() - began >= budget:
                return True
        return False

    def rolls_pending(self) -> bool:
        """Whether queued roll-ups (or a queued prune) remain for `roll_slice`."""
        return self.aggregator.rolling

    def sinks_writing(self) -> bool:
        """Whether a sink is writing a pass that reads the windows (the background roll-ups
        wait for it: collectord/rollups.py)."""
        return any(getattr(sink, "writing", False) for sink in self.sinks)

    def _apply_frames(self, batches: list[Batch]) -> int:
        """apply_many for a drain holding workers' frames: frames by apply_frame, the runs of
        other batches between them as before, in order."""
        aggregator = self.aggregator
        applied = 0
        start = 0
        for i, batch in enumerate(batches):
            if batch.frame is not None:
                if start < i:
                    applied += aggregator.apply_many(batches[start:i])
                aggregator.apply_frame(batch.frame)
                applied += batch.frame.samples
                start = i + 1
        if start < len(batches):
            applied += aggregator.apply_many(batches[start:])
        return applied

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
            self.self_metrics.flush_durations.observe(took)
        self._offer(self.aggregator, view)
        return view
