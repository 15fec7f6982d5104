"""Checkpoints: a restored aggregator answers every query exactly as the original did."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.aggregation.query import Query, run_query
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_DELTA, KIND_HISTOGRAM, KIND_SET, Sample
from collectord.ring import Batch
from collectord.storage.checkpoint import CheckpointError, CheckpointStore, capture, restore

T0 = 1_800_000_000


def _busy_aggregator() -> Aggregator:
    rng = random.Random(4)
    agg = Aggregator(Limits(max_series=500, max_tag_values_per_key=20), AggregationSettings(), T0)
    kinds = [KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_DELTA, KIND_HISTOGRAM, KIND_SET]
    for step in range(400):
        now = T0 + step * 7.3
        agg.advance(now)
        samples: list[Sample] = []
        for _ in range(25):
            kind = rng.choice(kinds)
            name = f"m{kinds.index(kind if kind != KIND_GAUGE_DELTA else KIND_GAUGE)}"
            key = (name, (("host", f"h{rng.randrange(30)}"),))
            value: float | str = f"u{rng.randrange(50)}" if kind == KIND_SET else rng.lognormvariate(2, 1)
            samples.append((key, kind, value, rng.choice([1.0, 10.0]), None))
        agg.apply(Batch(rng.choice(["acme", "globex"]), samples, now))
    return agg


def _answers(agg: Aggregator) -> list[list[dict[str, object]]]:
    out = []
    for tenant in ("acme", "globex"):
        for name in ("m0", "m1", "m3", "m4"):
            for granularity in ("1m", "5m", "1h"):
                for group_by in ([], ["host"]):
                    query = Query(
                        tenant, [name], T0 - 3600, T0 + 7200, granularity, "P99", group_by=group_by, limit=10000
                    )
                    out.append(run_query(agg, query))
    return out


def test_restored_state_answers_exactly_as_the_original() -> None:
    original = _busy_aggregator()
    data = capture(original, (3, 1234))
    copy = Aggregator(Limits(max_series=500, max_tag_values_per_key=20), AggregationSettings(), T0)
    state = restore(copy, data)
    assert state.wal_position == (3, 1234)
    assert _answers(copy) == _answers(original)
    assert copy.counters.rejected == original.counters.rejected
    assert copy.table.count == original.table.count
    # Both keep going identically afterwards (pending roll-ups were rebuilt).
    for agg in (original, copy):
        agg.apply(Batch("acme", [(("m0", (("host", "h1"),)), KIND_COUNTER, 5.0, 1.0, None)], T0 + 3000))
        agg.advance(T0 + 4000)
    assert _answers(copy) == _answers(original)


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_damaged_checkpoints_are_refused(damage: str) -> None:
    data = bytearray(capture(_busy_aggregator(), None))
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "empty":
        data = bytearray()
    else:
        data[:8] = b"NOTMINE!"
    with pytest.raises(CheckpointError):
        restore(Aggregator(Limits(), AggregationSettings(), T0), bytes(data))


def test_store_keeps_the_newest_two_and_writes_atomically(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for i in range(4):
        store.write(b"x" * (i + 1))
    files = store.candidates()
    assert [f.read_bytes() for f in files] == [b"xxxx", b"xxx"]
    assert not list(tmp_path.glob("*.tmp"))


def _legacy_v1(agg: Aggregator) -> bytes:
    """A checkpoint as version 1 wrote it (a tuple per cell, wire-form sketches)."""
    import zlib

    import msgspec

    from collectord.storage.checkpoint import _HEADER, MAGIC_V1, CheckpointState

    def cell(c: Any) -> tuple[Any, ...]:
        sketch = c.sketch.to_bytes() if c.sketch is not None else None
        members = sorted(c.members) if c.members is not None else None
        return (c.count, c.sum, c.sum_squares, c.min, c.max, c.last, sketch, members)

    def series(s: Any) -> list[Any]:
        levels = [[[start, cell(c)] for start, c in level.items()] for level in s.levels]
        head = [s.tenant, s.name, [list(p) for p in s.tags], s.kind, s.first_seen, s.last_seen, s.total]
        return [*head, s.last_value, s.last_timestamp, levels]

    state = CheckpointState(
        version=1,
        wal_position=None,
        now=agg.now,
        rolled_until=list(agg.rolled_until),
        samples=agg.counters.samples,
        rejected=dict(agg.counters.rejected),
        rejected_by_metric=[],
        series=[series(s) for s in agg.table.all_series()],
        name_totals=[series(s) for s in agg.name_totals.values()],
        extra={},
    )
    body = zlib.compress(msgspec.msgpack.encode(state), 1)
    return _HEADER.pack(MAGIC_V1, len(body), zlib.crc32(body)) + body


def test_a_version_1_checkpoint_still_restores_after_an_upgrade() -> None:
    original = _busy_aggregator()
    restored = Aggregator(original.table.limits, AggregationSettings(), T0)
    restore(restored, _legacy_v1(original))
    assert _answers(restored) == _answers(original)


def test_restored_sketches_stay_independent_and_writable() -> None:
    """Restored sketch stores share one buffer: writing one must never touch another."""
    original = _busy_aggregator()
    restored = Aggregator(original.table.limits, AggregationSettings(), T0)
    restore(restored, capture(original, None))
    cells = [c for s in restored.table.all_series() for level in s.levels for c in level.values() if c.sketch]
    before = [c.sketch.to_bytes() for c in cells if c.sketch is not None]
    first = cells[0].sketch
    assert first is not None
    for value in (0.5, 3.0, 1e6, -2.0):
        first.add(value, 1.0)
    after = [c.sketch.to_bytes() for c in cells if c.sketch is not None]
    assert after[0] != before[0]
    assert after[1:] == before[1:]


def test_a_name_sent_with_two_types_still_checkpoints() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    agg.apply(Batch("t", [(("x", (("k", "a"),)), KIND_COUNTER, 1.0, 1.0, None)], T0 + 1))
    agg.advance(T0 + 11)
    agg.apply(Batch("t", [(("x", (("k", "b"),)), KIND_GAUGE, 5.0, 1.0, None)], T0 + 12))
    agg.advance(T0 + 21)
    restored = Aggregator(Limits(), AggregationSettings(), T0)
    restore(restored, capture(agg, None))
    assert restored.table.count == 2
