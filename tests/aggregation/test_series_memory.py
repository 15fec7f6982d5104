"""What keeps memory per series down: emptied slice dicts go back to the shared empty one, period
starts are one int object shared by every series, and a coarse window gets its cell only once
it has closed."""

from __future__ import annotations

import gc
import tracemalloc

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.aggregation.series import MAX_REJECTED_NAMES
from collectord.aggregation.sketch import Sketch
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM
from collectord.ring import Batch

T0 = 1_800_000_000


def test_rolled_slices_release_their_dict_and_share_period_starts() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    keys = [(f"m.{i}", ()) for i in range(3)]
    agg.apply(Batch("default", [(k, KIND_COUNTER, 1.0, 1.0, None) for k in keys], T0 + 1))
    agg.advance(T0 + 61)
    series = [agg.table.tenant_table("default")[k] for k in keys]
    assert all(not s.levels[0] for s in series)
    assert len({id(s.levels[0]) for s in series}) == 1  # the one shared empty dict
    # The minute rolled into its 1m cell; the open 5m, hour and day hold no cell yet.
    assert all(len(s.levels[1]) == 1 and not any(s.levels[2:]) for s in series)
    starts = [next(iter(s.levels[1])) for s in series]
    assert len({id(start) for start in starts}) == 1
    # A new slice after the release gets a dict of its own again, and the totals stay exact.
    agg.apply(Batch("default", [(keys[0], KIND_COUNTER, 2.0, 1.0, None)], T0 + 65))
    assert series[0].levels[0] and not series[1].levels[0]
    assert series[0].total == 3.0


def test_coarse_cells_only_for_closed_periods_and_reads_unchanged() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    key = ("m.lazy", ())
    for minute in range(7):  # 1..7 every minute: T0 is a 5m, hour (not a day) boundary
        agg.apply(Batch("default", [(key, KIND_COUNTER, float(minute + 1), 1.0, None)], T0 + 60 * minute + 1))
        agg.advance(T0 + 60 * minute + 61)
    series = agg.table.tenant_table("default")[key]
    assert sorted(series.levels[1]) == [T0 + 60 * m for m in range(7)]
    assert list(series.levels[2]) == [T0]  # the closed 5m; the open one is its 1m cells
    assert not series.levels[3] and not series.levels[4]

    def total(level: int, start: int) -> float:
        return sum(cell.sum for cell in agg.read(series, level, start))

    assert total(2, T0) == 15.0 and total(2, T0 + 300) == 13.0
    assert total(3, T0) == 28.0 and total(4, T0 - T0 % 86400) == 28.0
    # A late sample for the closed 5m goes to its 1m cell and the 5m cell, counted once.
    agg.apply(Batch("default", [(key, KIND_COUNTER, 100.0, 1.0, T0 + 250)], T0 + 7 * 60 + 5))
    assert total(1, T0 + 240) == 105.0 and total(2, T0) == 115.0 and total(3, T0) == 128.0


def test_names_rejected_past_the_cap_are_bounded() -> None:
    agg = Aggregator(Limits(max_series=1), AggregationSettings(), T0)
    loud = ("loud", ())
    batch = [(loud, KIND_COUNTER, 1.0, 1.0, None)] * 3 + [
        ((f"new.{i}", ()), KIND_COUNTER, 1.0, 1.0, None) for i in range(MAX_REJECTED_NAMES * 2)
    ]
    agg.apply(Batch("default", [(("first", ()), KIND_COUNTER, 1.0, 1.0, None), *batch], T0 + 1))
    assert agg.counters.rejected["series_limit"] == 3 + 2 * MAX_REJECTED_NAMES
    assert len(agg.table.rejected_by_metric) <= MAX_REJECTED_NAMES
    assert agg.table.rejected_by_metric[("default", "loud")] == 3  # the loudest name is kept


def test_a_series_keeps_its_key_when_an_equal_key_object_arrives() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    first = ("m.key", (("host", "a"),))
    agg.apply(Batch("default", [(first, KIND_COUNTER, 1.0, 1.0, None)], T0 + 1))
    # The same key made again (a parser's caches started over): equal, not the same object.
    again = ("".join(["m.", "key"]), (("host", "".join(["a"])),))
    assert again == first and again is not first
    for _ in range(3):
        agg.apply(Batch("default", [(again, KIND_COUNTER, 1.0, 1.0, None)], T0 + 2))
    series = agg.table.tenant_table("default")[first]
    assert series.key is first  # no second copy of the key kept alive
    assert series.total == 4.0 and agg.table.count == 1


def test_a_minutes_first_slice_becomes_its_minute_and_packs_its_values() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    key = ("t.first", ())
    agg.apply(Batch("default", [(key, KIND_HISTOGRAM, 5.0, 1.0, None), (key, KIND_HISTOGRAM, 7.0, 1.0, None)], T0 + 1))
    view = agg.advance(T0 + 11)
    series = agg.table.tenant_table("default")[key]
    (record,) = view
    assert series.levels[1][T0] is record.cell  # no copy while the view holds the slice
    assert record.cell.count == 2.0 and record.cell.sum == 12.0
    sketch = record.cell.sketch
    assert sketch is not None and isinstance(sketch._pending, bytes)  # 8 bytes a value
    # The next slice of the minute merges into it, as into any minute.
    agg.apply(Batch("default", [(key, KIND_HISTOGRAM, 9.0, 1.0, None)], T0 + 12))
    (second,) = agg.advance(T0 + 21)
    assert second.cell is not record.cell and second.cell.sum == 9.0
    (minute,) = agg.read(series, 1, T0)
    assert minute.count == 3.0 and minute.sum == 21.0
    fed = Sketch()
    for value in (5.0, 7.0, 9.0):
        fed.add(value)
    assert minute.sketch == fed


def test_slices_of_one_minute_rolled_together_are_each_read_as_sent() -> None:
    # A catch-up (or a replay) closes several slices of one minute in one advance: the view
    # still holds each slice as it was, and the name's totals count each once.
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    key = ("c.catch_up", ())
    for second, value in ((1, 1.0), (11, 10.0), (21, 100.0)):
        agg.apply(Batch("default", [(key, KIND_COUNTER, value, 1.0, None)], T0 + second))
    view = agg.advance(T0 + 61)
    assert [record.cell.sum for record in view] == [1.0, 10.0, 100.0]
    series = agg.table.tenant_table("default")[key]
    assert [cell.sum for cell in agg.read(series, 1, T0)] == [111.0]
    assert [cell.sum for cell in agg.read_name_totals("default", "c.catch_up", 1, T0)] == [111.0]


def test_the_roll_of_many_series_needs_little_memory_beyond_what_it_keeps() -> None:
    # The flush view holds every closed slice while the roll runs; were each minute a new cell
    # besides, the peak would be a second cell per series (about 800 bytes for a timer).
    agg = Aggregator(Limits(max_series=100_000), AggregationSettings(emit_idle_gauges=True), T0)
    count = 20_000
    samples = [
        ((f"t.{i // 100}", (("host", str(i % 100)),)), KIND_HISTOGRAM, float(i % 97), 1.0, None) for i in range(count)
    ]
    agg.apply(Batch("default", samples, T0 + 1))
    del samples
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        view = agg.advance(T0 + 11)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(view) == count
    # Measured: 334 bytes (the 1m dicts, the view's records, the packed values) against 711
    # when each minute was a new cell.
    assert (peak - before) / count < 450
