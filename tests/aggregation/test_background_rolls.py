"""Coarse roll-ups queued and run series by series (`background_rolls`) read exactly as the
one-block roll-ups do, whatever runs between their steps: reads, late samples, more closes."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.aggregation.cells import Cell
from collectord.aggregation.query import merge_cells
from collectord.aggregation.series import LEVEL_COUNT, Series
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM, Sample
from collectord.ring import Batch

T0 = 1_800_000_000 - 3600 * 8 - 170  # 170 s before a day (and its hour, 5m, 1m) closes
KINDS = {"c": KIND_COUNTER, "h": KIND_HISTOGRAM}


def make(background: bool) -> Aggregator:
    agg = Aggregator(Limits(), AggregationSettings(flush_interval=10, late_allowance=900.0), T0)
    agg.background_rolls = background
    return agg


def state(cell: Cell | None) -> tuple[object, ...] | None:
    if cell is None:
        return None
    quantiles = tuple(cell.sketch.quantiles((0.5, 0.99))) if cell.sketch is not None else ()
    return (cell.count, cell.sum, cell.min, cell.max, cell.sum_squares, quantiles)


def every_window(agg: Aggregator) -> dict[tuple[object, ...], tuple[object, ...] | None]:
    """Every series' (and metric's) merged window at every level, over the test's span."""
    out: dict[tuple[object, ...], tuple[object, ...] | None] = {}
    targets: list[tuple[str, Series | None, str]] = [
        (f"{s.name}{s.tags}", s, s.name) for s in agg.table.all_series()
    ] + [(name, None, name) for (_, name) in agg.name_totals]
    for label, series, name in targets:
        for level in range(1, LEVEL_COUNT):
            seconds = agg.level_seconds[level]
            first = int((T0 - 900) // seconds) * seconds
            for start in range(first, int(agg.now) + 1, seconds):
                if series is None:
                    parts = agg.read_name_totals("default", name, level, start)
                else:
                    parts = agg.read(series, level, start)
                out[(label, level, start)] = state(merge_cells(parts))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=900),  # seconds after T0 the batch arrives
            st.sampled_from(["c", "h"]),
            st.integers(min_value=0, max_value=3),  # series
            st.integers(min_value=1, max_value=1000),  # value
            st.one_of(st.none(), st.integers(min_value=1, max_value=800)),  # late by
            st.integers(min_value=0, max_value=5),  # series rolled before it (background)
        ),
        min_size=1,
        max_size=120,
    )
)
def test_queued_rollups_read_and_end_as_the_one_block_rollups(
    events: list[tuple[int, str, int, int, int | None, int]],
) -> None:
    sync, background = make(False), make(True)
    events.sort(key=lambda e: e[0])
    for at, kind, index, value, late_by, steps in events:
        when = T0 + at
        ts = None if late_by is None else when - late_by
        sample: Sample = ((f"m.{kind}", (("id", str(index)),)), KINDS[kind], float(value), 1.0, ts)
        for agg in (sync, background):
            agg.advance(when)
            agg.apply(Batch("default", [sample], when))
        background.roll_some(steps)
    assert every_window(background) == every_window(sync)
    background.advance(T0 + 4000)  # an hour closes with roll-ups still queued
    sync.advance(T0 + 4000)
    assert every_window(background) == every_window(sync)
    background.settle_rolls()
    assert not background.rolling
    assert every_window(background) == every_window(sync)
    for mine, theirs in zip(
        [*background.table.all_series(), *background.name_totals.values()],
        [*sync.table.all_series(), *sync.name_totals.values()],
        strict=True,
    ):
        for level in range(LEVEL_COUNT):
            assert {k: state(c) for k, c in mine.levels[level].items()} == {
                k: state(c) for k, c in theirs.levels[level].items()
            }


def test_queued_prune_drops_what_prune_drops_after_the_rollups() -> None:
    """With background_rolls, expiry and retention run from roll_some, after the roll-ups
    queued before them; the end state is the synchronous one."""
    settings_ = AggregationSettings(
        flush_interval=10, series_idle_expiry=600.0, retention=(300.0, 900.0, 7200.0, 86400.0)
    )
    aggs = [Aggregator(Limits(), settings_, T0) for _ in range(2)]
    aggs[1].background_rolls = True
    for agg in aggs:
        for minute in range(30):
            at = T0 + minute * 60
            agg.advance(at)
            idle = [] if minute > 5 else [(("gone", ()), KIND_COUNTER, 1.0, 1.0, None)]
            agg.apply(Batch("default", [(("kept", ()), KIND_COUNTER, 1.0, 1.0, None), *idle], at))
            if minute % 7 == 0:
                agg.roll_some(1)  # partly done when the next close comes
    sync, background = aggs
    assert background.rolling
    background.settle_rolls()
    assert not background.rolling
    assert (
        sorted(s.name for s in background.table.all_series()) == ["kept"] == [s.name for s in sync.table.all_series()]
    )
    for mine, theirs in zip(background.table.all_series(), sync.table.all_series(), strict=True):
        assert [sorted(level) for level in mine.levels] == [sorted(level) for level in theirs.levels]
    assert sorted(background.name_totals) == sorted(sync.name_totals)


def test_checkpoint_and_restart_see_the_rollups_done(tmp_path: Path) -> None:
    """Pipeline.checkpoint finishes queued roll-ups first; a daemon restarted from it (and its
    log) reads every window as the one that queued them."""
    from collectord.clock import ManualClock
    from collectord.config import load_config
    from collectord.pipeline import Pipeline

    clock = ManualClock(T0)
    config = load_config(None, {"COLLECTORD_STORAGE_DATA_DIR": str(tmp_path)})
    pipeline = Pipeline(config, clock)
    pipeline.recover()
    pipeline.aggregator.background_rolls = True
    for i in range(18):  # the last advance closes the day
        sample: Sample = ((f"m.{i % 2}", (("id", str(i % 5)),)), KIND_HISTOGRAM, float(i), 1.0, None)
        pipeline.write_acknowledged(Batch("default", [sample], clock.now()))
        clock.advance(10)
        pipeline.advance()
    assert pipeline.aggregator.rolling  # the day's close queued the 1m, 5m and 1h roll-ups
    assert pipeline.aggregator.roll_some(1)  # one series rolled, more to do
    before = every_window(pipeline.aggregator)
    assert pipeline.checkpoint()
    assert not pipeline.aggregator.rolling
    assert every_window(pipeline.aggregator) == before
    assert pipeline.journal is not None
    pipeline.journal.close()
    restarted = Pipeline(config, clock)
    restarted.recover()
    assert every_window(restarted.aggregator) == before
