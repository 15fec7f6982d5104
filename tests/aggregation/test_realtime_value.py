"""The realtime value of a new series comes from its first sample, even a timestamped one."""

from __future__ import annotations

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.limits import Limits
from collectord.model import KIND_GAUGE, KIND_HISTOGRAM
from collectord.ring import Batch

NOW = 1_800_000_000.0


def test_first_timestamped_sample_sets_the_realtime_value() -> None:
    aggregator = Aggregator(Limits(), AggregationSettings(), NOW)
    samples = [
        (("g", ()), KIND_GAUGE, 12.5, 1.0, NOW - 0.9),
        (("h", ()), KIND_HISTOGRAM, 3.0, 1.0, NOW - 0.9),
    ]
    aggregator.apply(Batch("t", samples, NOW))
    gauge = aggregator.matching_series("t", "g", [])[0]
    assert gauge.realtime_value() == 12.5 and gauge.last_timestamp == NOW - 0.9
    assert aggregator.matching_series("t", "h", [])[0].realtime_value() == 3.0
    # An older sample after it does not replace the newest value.
    aggregator.apply(Batch("t", [(("g", ()), KIND_GAUGE, 1.0, 1.0, NOW - 5)], NOW))
    assert gauge.realtime_value() == 12.5
