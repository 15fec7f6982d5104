"""Semantics of the aggregation stage: types, sample rates, deltas, sets, late data, windows."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.aggregation.query import Query, run_query
from collectord.limits import Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    Sample,
)
from collectord.ring import Batch

T0 = 1_800_000_000  # 2027-01-15T08:00:00Z, a whole day boundary minus 8h
KEY = ("api.latency", (("endpoint", "/users"),))


def make(flush: int = 10, late: float = 300.0, limits: Limits | None = None, start: float = T0) -> Aggregator:
    return Aggregator(limits or Limits(), AggregationSettings(flush_interval=flush, late_allowance=late), start)


def feed(agg: Aggregator, at: float, samples: list[Sample], tenant: str = "default") -> None:
    agg.apply(Batch(tenant, samples, at))


def query(
    agg: Aggregator,
    name: str,
    granularity: str = "1m",
    start: float = T0 - 86400,
    end: float = T0 + 86400 * 2,
    **kw: object,
) -> list[dict[str, object]]:
    q = Query(
        tenant=str(kw.pop("tenant", "default")), metrics=[name], start=start, end=end, granularity=granularity, **kw
    )  # type: ignore[arg-type]
    return run_query(agg, q)


def test_counter_applies_sample_rate() -> None:
    agg = make()
    feed(agg, T0 + 1, [(("x", ()), KIND_COUNTER, 2.0, 10.0, None)])
    (row,) = query(agg, "x")
    assert row["sum"] == 20.0
    assert row["count"] == 10.0
    assert row["rate"] == pytest.approx(20.0 / 60)


@pytest.mark.parametrize(
    ("samples", "expected_last", "expected_min", "expected_max"),
    [
        ([(KIND_GAUGE, 5.0), (KIND_GAUGE, 7.0)], 7.0, 5.0, 7.0),
        ([(KIND_GAUGE, 5.0), (KIND_GAUGE_DELTA, -2.0)], 3.0, 3.0, 5.0),
        ([(KIND_GAUGE_DELTA, 4.0), (KIND_GAUGE_DELTA, 4.0)], 8.0, 4.0, 8.0),
        ([(KIND_GAUGE, 10.0), (KIND_GAUGE_DELTA, 1.5), (KIND_GAUGE, 0.0), (KIND_GAUGE_DELTA, -1.0)], -1.0, -1.0, 11.5),
    ],
)
def test_gauge_sets_and_deltas(
    samples: list[tuple[int, float]], expected_last: float, expected_min: float, expected_max: float
) -> None:
    agg = make()
    for i, (kind, value) in enumerate(samples):
        feed(agg, T0 + 1 + i, [(("g", ()), kind, value, 1.0, None)])
    (row,) = query(agg, "g", aggregation="MAX")
    assert row["min"] == expected_min
    assert row["max"] == expected_max
    series = agg.table.tenant_table("default")[("g", ())]
    assert series.realtime_value() == expected_last


def test_set_counts_distinct_members_across_slices_and_windows() -> None:
    agg = make()
    feed(agg, T0 + 1, [(("users", ()), KIND_SET, m, 1.0, None) for m in ["a", "b", "a"]])
    feed(agg, T0 + 15, [(("users", ()), KIND_SET, m, 1.0, None) for m in ["b", "c"]])
    agg.advance(T0 + 400)
    (row,) = query(agg, "users")
    assert row["count"] == 3.0
    (row5,) = query(agg, "users", granularity="5m")
    assert row5["value"] == 3.0


def test_type_mismatch_is_rejected_not_mixed() -> None:
    agg = make()
    feed(agg, T0 + 1, [(("m", ()), KIND_COUNTER, 1.0, 1.0, None)])
    feed(agg, T0 + 2, [(("m", ()), KIND_HISTOGRAM, 1.0, 1.0, None)])
    assert agg.counters.rejected == {"type_mismatch": 1}
    (row,) = query(agg, "m")
    assert row["sum"] == 1.0


def test_windows_are_aligned_to_utc_boundaries() -> None:
    agg = make()
    # One sample just before and one just after a minute boundary.
    feed(agg, T0 + 59.999, [(("c", ()), KIND_COUNTER, 1.0, 1.0, None)])
    feed(agg, T0 + 60.0, [(("c", ()), KIND_COUNTER, 2.0, 1.0, None)])
    rows = query(agg, "c")
    assert [(r["periodStart"], r["sum"]) for r in rows] == [
        ("2027-01-15T08:00:00.000Z", 1.0),
        ("2027-01-15T08:01:00.000Z", 2.0),
    ]
    (hour,) = query(agg, "c", granularity="1h")
    assert hour["periodStart"] == "2027-01-15T08:00:00.000Z" and hour["sum"] == 3.0
    (day,) = query(agg, "c", granularity="1d")
    assert day["periodStart"] == "2027-01-15T00:00:00.000Z" and day["periodEnd"] == "2027-01-16T00:00:00.000Z"


def test_timestamped_samples_land_in_their_window_and_late_ones_are_dropped() -> None:
    agg = make(late=120.0)
    now = T0 + 3600
    agg.advance(now)
    feed(
        agg,
        now,
        [
            (("t", ()), KIND_COUNTER, 1.0, 1.0, float(now - 100)),  # within the allowance
            (("t", ()), KIND_COUNTER, 5.0, 1.0, float(now - 1000)),  # too late
            (("t", ()), KIND_COUNTER, 7.0, 1.0, float(now + 3600)),  # from the future
        ],
    )
    assert agg.counters.rejected == {"late": 1, "future_timestamp": 1}
    rows = query(agg, "t")
    assert [(r["periodStart"], r["sum"]) for r in rows] == [("2027-01-15T08:58:00.000Z", 1.0)]


def test_late_sample_after_rollup_is_counted_once_at_every_granularity() -> None:
    agg = make(late=600.0)
    feed(agg, T0 + 5, [(("late", ()), KIND_HISTOGRAM, 10.0, 1.0, None)])
    agg.advance(T0 + 400)  # the first 5m period is closed and rolled up
    feed(agg, T0 + 400, [(("late", ()), KIND_HISTOGRAM, 20.0, 1.0, float(T0 + 30))])
    agg.advance(T0 + 3700)
    for granularity in ("1m", "5m", "1h", "1d"):
        rows = query(agg, "late", granularity=granularity)
        assert sum(r["count"] for r in rows) == 2.0, granularity  # type: ignore[misc]
        assert sum(r["sum"] for r in rows) == 30.0, granularity  # type: ignore[misc]


def test_open_and_closed_windows_agree_after_rollup() -> None:
    rng = np.random.default_rng(7)
    agg = make()
    values = rng.lognormal(3, 1, 5000)
    for i, value in enumerate(values):
        feed(agg, T0 + i * 0.5, [(KEY, KIND_HISTOGRAM, float(value), 1.0, None)])
    before = {g: query(agg, KEY[0], granularity=g) for g in ("1m", "5m", "1h")}
    agg.advance(T0 + 7200)
    after = {g: query(agg, KEY[0], granularity=g) for g in ("1m", "5m", "1h")}
    for granularity, rows in before.items():
        assert len(rows) == len(after[granularity])
        for old, new in zip(rows, after[granularity], strict=True):
            for field, value in old.items():
                if isinstance(value, float):  # merge order may change the last bit of a sum
                    assert math.isclose(value, new[field], rel_tol=1e-12), field  # type: ignore[arg-type]
                else:
                    assert value == new[field], field
    (hour,) = after["1h"]
    exact = np.percentile(values, 99)
    assert abs(hour["p99"] - exact) / exact <= 0.01  # type: ignore[operator]


def test_group_by_and_tag_filters() -> None:
    agg = make()
    feed(
        agg,
        T0 + 1,
        [
            (("req", (("code", "200"), ("host", "a"))), KIND_COUNTER, 1.0, 1.0, None),
            (("req", (("code", "200"), ("host", "b"))), KIND_COUNTER, 2.0, 1.0, None),
            (("req", (("code", "500"), ("host", "a"))), KIND_COUNTER, 4.0, 1.0, None),
        ],
    )
    (total,) = query(agg, "req", aggregation="SUM")
    assert total["value"] == 7.0
    by_code = query(agg, "req", group_by=["code"], aggregation="SUM")
    assert [(r["tags"], r["value"]) for r in by_code] == [({"code": "200"}, 3.0), ({"code": "500"}, 4.0)]
    (host_a,) = query(agg, "req", tags=[("host", "a")], aggregation="SUM")
    assert host_a["value"] == 5.0


def test_tenants_never_see_each_other() -> None:
    agg = make()
    feed(agg, T0 + 1, [(("x", ()), KIND_COUNTER, 1.0, 1.0, None)], tenant="acme")
    feed(agg, T0 + 1, [(("x", ()), KIND_COUNTER, 100.0, 1.0, None)], tenant="globex")
    (acme,) = query(agg, "x", tenant="acme")
    assert acme["sum"] == 1.0
    assert query(agg, "x", tenant="initech") == []


def test_series_cap_and_tag_value_cap_reject_and_count() -> None:
    agg = make(limits=Limits(max_series=3, max_tag_values_per_key=2))
    feed(agg, T0 + 1, [((f"m{i}", ()), KIND_COUNTER, 1.0, 1.0, None) for i in range(5)])
    assert agg.counters.rejected == {"series_limit": 2}
    agg2 = make(limits=Limits(max_tag_values_per_key=2))
    feed(agg2, T0 + 1, [(("m", (("user", str(i)),)), KIND_COUNTER, 1.0, 1.0, None) for i in range(5)])
    assert agg2.counters.rejected == {"tag_cardinality": 3}
    assert agg2.table.rejected_by_metric[("default", "m")] == 3


def test_retention_and_idle_expiry_bound_memory() -> None:
    agg = Aggregator(Limits(), AggregationSettings(series_idle_expiry=600.0), T0)
    feed(agg, T0 + 1, [(("old", ()), KIND_COUNTER, 1.0, 1.0, None)])
    agg.advance(T0 + 300)
    feed(agg, T0 + 300, [(("new", ()), KIND_COUNTER, 1.0, 1.0, None)])
    agg.advance(T0 + 700)
    assert agg.table.count == 1
    assert ("old", ()) not in agg.table.tenant_table("default")


def test_flush_view_has_each_interval_once_and_reemits_gauges() -> None:
    agg = make()
    feed(agg, T0 + 1, [(("c", ()), KIND_COUNTER, 3.0, 1.0, None), (("g", ()), KIND_GAUGE, 9.0, 1.0, None)])
    view = agg.advance(T0 + 10)
    assert sorted((r.series.name, r.cell.sum) for r in view) == [("c", 3.0), ("g", 9.0)]
    view = agg.advance(T0 + 20)
    assert [(r.series.name, r.cell.last) for r in view] == [("g", 9.0)]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=7200, allow_nan=False),
            st.sampled_from(["a", "b", "c"]),
            st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
        ),
        min_size=1,
        max_size=300,
    ),
    st.sampled_from(["1m", "5m", "1h", "1d"]),
)
def test_property_counts_and_percentiles_survive_any_rollup_order(
    events: list[tuple[float, str, float]], granularity: str
) -> None:
    """Whatever the arrival pattern and wherever the clock stops, every window's count, sum
    and percentiles equal the exact values over the samples in it (percentiles within 1%)."""
    agg = make()
    events.sort()
    for offset, host, value in events:
        agg.advance(T0 + offset)
        feed(agg, T0 + offset, [(("h", (("host", host),)), KIND_SUMMARY, value, 1.0, None)])
    rows = query(agg, "h", granularity=granularity)
    from collectord.aggregation.windows import GRANULARITY_SECONDS

    seconds = GRANULARITY_SECONDS[granularity]
    total = 0.0
    for row in rows:
        start = _parse_iso(str(row["periodStart"]))
        assert start % seconds == 0
        inside = [v for o, _, v in events if start <= T0 + o < start + seconds]
        assert row["count"] == len(inside)
        assert math.isclose(float(row["sum"]), sum(inside), rel_tol=1e-9)  # type: ignore[arg-type]
        exact = float(np.percentile(inside, 99, method="lower"))
        high = float(np.percentile(inside, 99, method="higher"))
        assert exact * 0.99 <= float(row["p99"]) <= high * 1.01  # type: ignore[arg-type]
        total += float(row["count"])  # type: ignore[arg-type]
    assert total == len(events)


def _parse_iso(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
