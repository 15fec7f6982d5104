"""The typed sample that flows from protocols through the ring into aggregation.

Samples are plain tuples, not objects: the hot path builds millions of them a second and a
parser that sees the same line twice hands out the very same tuple. Field positions:

    (key, kind, value, weight, timestamp)

- key: SeriesKey = (name, tags), tags a tuple of (key, value) pairs sorted by key; interned by
  the parser so that equal keys are usually the same object.
- kind: one of the KIND_* ints below (what the sample does to its series).
- value: float, or str for KIND_SET (the member).
- weight: 1 / sample_rate (1.0 when no rate was given); a sample stands for `weight` events.
- timestamp: unix seconds (float) from the line, or None for "when it was received".
"""

from __future__ import annotations

from enum import StrEnum

Tags = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Tags]
Sample = tuple[SeriesKey, int, float | str, float, float | None]

KIND_COUNTER = 0
KIND_GAUGE = 1
KIND_GAUGE_DELTA = 2
KIND_HISTOGRAM = 3
KIND_SUMMARY = 4
KIND_SET = 5

# Field positions inside a Sample tuple.
KEY, KIND, VALUE, WEIGHT, TIMESTAMP = 0, 1, 2, 3, 4


class MetricType(StrEnum):
    """The seed's metric types plus SET; the value is the name used on the wire and in JSON."""

    COUNTER = "COUNTER"
    GAUGE = "GAUGE"
    HISTOGRAM = "HISTOGRAM"
    SUMMARY = "SUMMARY"
    SET = "SET"


TYPE_OF_KIND: dict[int, MetricType] = {
    KIND_COUNTER: MetricType.COUNTER,
    KIND_GAUGE: MetricType.GAUGE,
    KIND_GAUGE_DELTA: MetricType.GAUGE,
    KIND_HISTOGRAM: MetricType.HISTOGRAM,
    KIND_SUMMARY: MetricType.SUMMARY,
    KIND_SET: MetricType.SET,
}

KIND_OF_TYPE: dict[MetricType, int] = {
    MetricType.COUNTER: KIND_COUNTER,
    MetricType.GAUGE: KIND_GAUGE,
    MetricType.HISTOGRAM: KIND_HISTOGRAM,
    MetricType.SUMMARY: KIND_SUMMARY,
    MetricType.SET: KIND_SET,
}

DEFAULT_TENANT = "default"
