"""The StatsD flush view per interval, as Etsy statsd would report the same samples."""

from __future__ import annotations

import statistics

import pytest

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.aggregation.flush_view import flush_fields
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, KIND_SET
from collectord.ring import Batch

T0 = 1_800_000_000


def view_after(samples: list[tuple[str, int, float | str, float]], emit_idle_gauges: bool = True) -> dict[str, dict]:  # type: ignore[type-arg]
    agg = Aggregator(Limits(), AggregationSettings(emit_idle_gauges=emit_idle_gauges), T0)
    agg.apply(
        Batch("default", [((name, ()), kind, value, weight, None) for name, kind, value, weight in samples], T0 + 1)
    )
    return {r.series.name: flush_fields(r, 10.0) for r in agg.advance(T0 + 10)}


def test_counter_gives_count_and_rate() -> None:
    view = view_after([("c", KIND_COUNTER, 3.0, 1.0), ("c", KIND_COUNTER, 1.0, 10.0)])
    assert view["c"] == {"count": 13.0, "rate": 1.3}


def test_distribution_gives_statsd_timer_fields() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 1000.0]
    view = view_after([("t", KIND_HISTOGRAM, v, 1.0) for v in values])
    fields = view["t"]
    assert fields["count"] == 5 and fields["sum"] == sum(values)
    assert fields["min"] == 10.0 and fields["max"] == 1000.0 and fields["mean"] == statistics.fmean(values)
    assert fields["median"] == pytest.approx(30.0, rel=0.01)
    assert fields["stddev"] == pytest.approx(statistics.pstdev(values), rel=1e-9)


def test_gauge_and_set() -> None:
    view = view_after(
        [
            ("g", KIND_GAUGE, 4.0, 1.0),
            ("g", KIND_GAUGE, 5.0, 1.0),
            ("s", KIND_SET, "a", 1.0),
            ("s", KIND_SET, "b", 1.0),
            ("s", KIND_SET, "a", 1.0),
        ]
    )
    assert view["g"] == {"value": 5.0}
    assert view["s"] == {"count": 2.0}


def test_idle_series_are_not_reemitted_except_gauges_when_configured() -> None:
    for emit in (True, False):
        agg = Aggregator(Limits(), AggregationSettings(emit_idle_gauges=emit), T0)
        agg.apply(
            Batch(
                "default", [(("c", ()), KIND_COUNTER, 1.0, 1.0, None), (("g", ()), KIND_GAUGE, 7.0, 1.0, None)], T0 + 1
            )
        )
        agg.advance(T0 + 10)
        second = {r.series.name: flush_fields(r, 10.0) for r in agg.advance(T0 + 20)}
        assert second == ({"g": {"value": 7.0}} if emit else {})
