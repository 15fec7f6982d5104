"""apply_many (runs of batches, repeated counter lines counted) must leave exactly the state that
apply() batch by batch leaves: the write-ahead log is replayed one batch at a time."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import COLLAPSE_MIN_SAMPLES, AggregationSettings, Aggregator
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_DELTA, KIND_HISTOGRAM, Sample
from collectord.ring import Batch

T0 = 1_800_000_000


def snapshot(agg: Aggregator) -> object:
    """Every observable number of every series and cell, NaN made comparable."""

    def same(x: object) -> object:
        return "nan" if isinstance(x, float) and math.isnan(x) else x

    state = []
    for series in agg.table.all_series():
        cells = []
        for level in series.levels:
            for start, cell in sorted(level.items()):
                fields = (cell.count, cell.sum, cell.sum_squares, cell.min, cell.max, cell.last)
                quantiles = tuple(cell.percentiles()) if cell.sketch is not None else ()
                cells.append((start, tuple(same(f) for f in fields), quantiles))
        state.append(
            (
                (series.tenant, series.name, series.tags),
                series.kind,
                same(series.total),
                same(series.last_value),
                series.last_seen,
                series.last_timestamp,
                tuple(cells),
            )
        )
    return sorted(state, key=repr), agg.counters.samples, dict(agg.counters.rejected), agg.now


def both(batches_of: list[list[Batch]]) -> tuple[object, object]:
    """The same batches through apply() one at a time and through apply_many, in the same drains."""
    one = Aggregator(Limits(), AggregationSettings(), T0)
    many = Aggregator(Limits(), AggregationSettings(), T0)
    for drain in batches_of:
        for batch in drain:
            one.apply(batch)
        assert many.apply_many(drain) == sum(len(b.samples) for b in drain)
    return snapshot(one), snapshot(many)


def interned(count: int, kind: int = KIND_COUNTER, value: float = 1.0, weight: float = 1.0) -> list[Sample]:
    """Sample tuples as the parser's line cache hands them out: one object per distinct line."""
    return [((f"c.{i}", (("host", "a"),)), kind, value, weight, None) for i in range(count)]


def test_counted_run_equals_one_by_one() -> None:
    rng = random.Random(1)
    lines = interned(50) + interned(10, value=3.0) + interned(5, weight=10.0)
    drains = []
    for d in range(20):
        drain = []
        for b in range(40):
            drain.append(Batch("default", [rng.choice(lines) for _ in range(25)], T0 + d * 0.7 + b * 0.001))
        drains.append(drain)
    one, many = both(drains)
    assert one == many


def test_counting_path_is_taken_for_repeated_counters() -> None:
    agg = Aggregator(Limits(), AggregationSettings(), T0)
    lines = interned(10)
    agg.apply(Batch("default", lines, T0))  # series created by the ordinary path
    before = agg.counters.samples
    run = [Batch("default", lines * 10, T0 + 0.5), Batch("default", lines * 10, T0 + 0.6)]
    assert agg._apply_counted(run, T0, 200)
    assert agg.counters.samples == before + 200
    series = agg.table.tenant_table("default")[lines[0][0]]
    assert series.slice_cell is not None
    assert series.slice_cell.count == 21.0
    assert series.last_seen == T0 + 0.6


def test_mixed_and_fractional_runs_fall_back_exactly() -> None:
    rng = random.Random(2)
    pool = (
        interned(20)
        + interned(5, value=0.1)  # not an integer: counted sums could round differently
        + interned(5, weight=1 / 0.3)
        + interned(5, kind=KIND_GAUGE, value=4.0)
        + interned(5, kind=KIND_GAUGE_DELTA, value=-1.0)
        + [((f"h.{i}", ()), KIND_HISTOGRAM, float(i), 1.0, None) for i in range(5)]
        + [(("c.0", (("host", "a"),)), KIND_COUNTER, 1.0, 1.0, T0 - 30.0)]  # timestamped
    )
    drains = [
        [Batch("default", [rng.choice(pool) for _ in range(25)], T0 + d * 3.1 + b * 0.01) for b in range(10)]
        for d in range(12)
    ]
    one, many = both(drains)
    assert one == many


def test_runs_split_at_slice_and_tenant_boundaries() -> None:
    lines = interned(8)
    drain = [
        Batch("default", lines * 5, T0 + 9.99),
        Batch("default", lines * 5, T0 + 10.0),  # the next slice
        Batch("other", lines * 5, T0 + 10.1),
        Batch("default", lines * 5, T0 + 10.2),
    ]
    one, many = both([[Batch("default", lines, T0)], drain, drain])
    assert one == many


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 11),  # line index
                st.integers(0, 3),  # tenant / time jitter
            ),
            min_size=0,
            max_size=COLLAPSE_MIN_SAMPLES * 3,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_drain_equals_one_by_one(drains: list[list[tuple[int, int]]]) -> None:
    pool = interned(6) + interned(2, value=2.0, weight=2.0) + interned(2, value=-5.0) + interned(2, value=0.5)
    batches_of = []
    for d, drain in enumerate(drains):
        batches = []
        for start in range(0, len(drain), 25):
            part = drain[start : start + 25]
            tenant = "default" if part[0][1] else "t2"
            batches.append(Batch(tenant, [pool[i] for i, _ in part], T0 + d * 4.0 + start * 0.01))
        batches_of.append(batches)
    one, many = both(batches_of)
    assert one == many
