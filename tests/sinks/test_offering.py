"""The pipeline hands sinks every flush, keeps their state in checkpoints and, after a crash,
gives it back and offers again what the replay closes."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from collectord.clock import ManualClock
from collectord.config import load_config
from collectord.model import Sample
from collectord.pipeline import Pipeline
from collectord.protocols.statsd import StatsdParser
from collectord.ring import PAYLOAD_STATSD, Batch
from collectord.sinks.base import Backoff, Flush, SinkStatus

START = 1_800_000_000.0  # a minute boundary


class RecordingSink:
    """Keeps what it was offered; its state is the newest slice it has seen closed."""

    name = "recording"

    def __init__(self) -> None:
        self.flushes: list[Flush] = []
        self.closed_until = -1
        self.restored: Any = None

    def on_flush(self, flush: Flush) -> None:
        self.flushes.append(flush)
        self.closed_until = max(self.closed_until, flush.closed_until)

    async def run(self) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def state(self) -> Any:
        return {"closed_until": self.closed_until}

    def restore(self, state: Any) -> None:
        self.restored = state
        self.closed_until = state["closed_until"]

    def status(self) -> SinkStatus:
        return SinkStatus(self.name, connected=True)

    def slices(self) -> set[tuple[str, int]]:
        return {(r.series.name, r.period_start) for f in self.flushes for r in f.view}


def new_pipeline(tmp_path: Path, clock: ManualClock) -> tuple[Pipeline, RecordingSink]:
    config = load_config(None, {"COLLECTORD_STORAGE_DATA_DIR": str(tmp_path)})
    pipeline = Pipeline(config, clock)
    sink = RecordingSink()
    pipeline.add_sink(sink)
    return pipeline, sink


def send(pipeline: Pipeline, clock: ManualClock, packet: bytes) -> None:
    samples: list[Sample] = []
    StatsdParser(pipeline.config.limits).parse(packet, samples)
    pipeline.ring.offer(Batch("default", samples, clock.now(), PAYLOAD_STATSD, packet))
    pipeline.catch_up()


def test_each_closed_slice_is_offered_once_with_its_series(tmp_path: Path) -> None:
    clock = ManualClock(START)
    pipeline, sink = new_pipeline(tmp_path, clock)
    pipeline.recover()
    assert [f.replaying for f in sink.flushes] == [True]  # recovery tells where it starts
    sink.flushes.clear()
    send(pipeline, clock, b"hits:1|c\nlat:5|ms")
    pipeline.advance()
    assert sink.flushes == []  # nothing closed yet
    clock.advance(10)
    pipeline.advance()
    pipeline.advance()
    assert len(sink.flushes) == 1
    assert sink.slices() == {("hits", int(START)), ("lat", int(START))}
    assert sink.flushes[0].closed_until == START + 10 and not sink.flushes[0].replaying
    clock.advance(10)
    pipeline.advance()  # an empty slice closed: offered, so the high-water mark moves on
    assert len(sink.flushes) == 2 and sink.flushes[1].view == []


def test_late_samples_in_rolled_windows_are_offered_as_touched(tmp_path: Path) -> None:
    clock = ManualClock(START + 125)
    pipeline, sink = new_pipeline(tmp_path, clock)
    pipeline.recover()
    sink.flushes.clear()
    send(pipeline, clock, b"hits:1|c")
    clock.advance(10)
    pipeline.advance()
    late = int(START + 30)
    send(pipeline, clock, b"hits:4|c|T%d" % late)
    pipeline.advance()
    touched = sink.flushes[-1].touched
    assert [(series.name, when) for series, when in touched.items()] == [("hits", late)]
    pipeline.advance()
    assert len(sink.flushes) == 2  # touched once, not again


def test_sink_state_survives_a_crash_and_replay_offers_what_it_closes(tmp_path: Path) -> None:
    clock = ManualClock(START)
    pipeline, sink = new_pipeline(tmp_path, clock)
    pipeline.recover()
    rng = random.Random(3)
    for _ in range(6):
        for _ in range(20):
            send(pipeline, clock, b"m%d:%d|c" % (rng.randrange(5), rng.randrange(100)))
            clock.advance(0.25)
        pipeline.advance()
        if clock.now() >= START + 20 and sink.restored is None and not pipeline.journal.checkpoints.candidates():  # type: ignore[union-attr]
            pipeline.checkpoint()
    state_file = pipeline.journal.checkpoints.candidates()  # type: ignore[union-attr]
    assert state_file
    live_slices = sink.slices()
    pipeline.journal.wal.commit()  # type: ignore[union-attr]
    pipeline.journal.wal.abandon()  # type: ignore[union-attr]
    # "kill -9": no stop, no final checkpoint; a new pipeline recovers from the same data dir.
    clock.advance(60)
    again, resumed = new_pipeline(tmp_path, clock)
    again.recover()
    assert resumed.restored is not None
    checkpointed_until = resumed.restored["closed_until"]
    assert START <= checkpointed_until < START + 30
    assert all(f.replaying for f in resumed.flushes)
    replayed = resumed.slices()
    # Every slice closed after the checkpoint is offered again; none before it.
    assert {s for s in live_slices if s[1] >= checkpointed_until} <= replayed
    assert all(start >= checkpointed_until for _, start in replayed)


def test_backoff_grows_caps_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(4.0 <= d <= 8.0 for d in delays[3:])
    assert backoff.next_delay(retry_after=20.0) >= 20.0
    backoff.reset()
    assert backoff.next_delay() <= 1.0
