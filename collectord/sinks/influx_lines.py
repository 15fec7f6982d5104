"""The StatsD flush view as InfluxDB line protocol: one line per series per closed slice.

A point is `<metric name>,<tags>,source=..,tenant=.. <fields> <slice start>`. Its series and
timestamp are a function of the flush record alone, so a point sent twice is the same point
(InfluxDB overwrites it; VictoriaMetrics with -dedup.minScrapeInterval keeps one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from collectord.aggregation.aggregator import FlushRecord
from collectord.aggregation.flush_view import flush_fields
from collectord.model import MetricType

# Fields written per type: the flush view's, with its median named p50 as Telegraf names it.
FIELDS: dict[MetricType, tuple[str, ...]] = {
    MetricType.COUNTER: ("count", "rate"),
    MetricType.GAUGE: ("value",),
    MetricType.SET: ("count",),
    MetricType.HISTOGRAM: ("count", "sum", "min", "max", "mean", "p50", "p90", "p95", "p99"),
    MetricType.SUMMARY: ("count", "sum", "min", "max", "mean", "p50", "p90", "p95", "p99"),
}
_VIEW_NAME = {"p50": "median"}

PRECISION_FACTOR = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}
TENANT_TAG = "tenant"
SOURCE_TAG = "source"

_TAG_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})
_NAME_ESCAPES = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\r": r"\r", "\t": r"\t"})


def escape_tag(text: str) -> str:
    """A tag key or value as line protocol spells it; newlines become the two characters
    `\\n` (a line cannot hold them), and a trailing backslash is doubled so that it cannot
    escape the separator after it."""
    escaped = text.translate(_TAG_ESCAPES)
    if escaped.endswith("\\"):
        escaped += "\\"
    return escaped


def escape_name(text: str) -> str:
    escaped = text.translate(_NAME_ESCAPES)
    if escaped.endswith("\\"):
        escaped += "\\"
    return escaped


def point_fields(record: FlushRecord, interval: float) -> list[tuple[str, float]]:
    """The fields one record writes, finite values only (none: the record writes no point)."""
    view = flush_fields(record, interval)
    out: list[tuple[str, float]] = []
    for field in FIELDS[record.series.type]:
        value = view.get(_VIEW_NAME.get(field, field))
        if value is not None and math.isfinite(value):
            out.append((field, float(value)))
    return out


def encode_points(records: Iterable[FlushRecord], interval: float, source: str, precision: str = "s") -> list[bytes]:
    """One line per record with at least one finite field, tags sorted by key (as InfluxDB
    stores them). The series' own `tenant` and `source` tags give way to the daemon's."""
    factor = PRECISION_FACTOR[precision]
    own = [(TENANT_TAG, "")]
    if source:
        own.append((SOURCE_TAG, source))
    lines: list[bytes] = []
    for record in records:
        fields = point_fields(record, interval)
        if not fields:
            continue
        series = record.series
        own[0] = (TENANT_TAG, series.tenant)
        tags = [(key, value) for key, value in series.tags if value and key not in (TENANT_TAG, SOURCE_TAG)]
        tags.extend(own)
        tags.sort()
        key = ",".join([escape_name(series.name), *(f"{escape_tag(k)}={escape_tag(v)}" for k, v in tags)])
        body = ",".join(f"{name}={value!r}" for name, value in fields)
        lines.append(f"{key} {body} {record.period_start * factor}".encode())
    return lines
