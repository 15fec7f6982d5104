"""The StatsD flush view as InfluxDB line protocol: one line per series per closed slice.

A point is `<metric name>,<tags>,source=..,tenant=.. <fields> <slice start>`. Its series and
timestamp are a function of the flush record alone, so a point sent twice is the same point
(InfluxDB overwrites it; VictoriaMetrics with -dedup.minScrapeInterval keeps one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from collectord.aggregation.aggregator import FlushRecord
from collectord.aggregation.flush_view import flush_fields
from collectord.aggregation.series import Series
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


# A backslash before a character line protocol escapes (or at the end) would escape it: doubled.
_BACKSLASH_BEFORE_SPECIAL = re.compile(r"\\(?=[,= \n\r\t]|$)")


def escape_tag(text: str) -> str:
    """A tag key or value as line protocol spells it; newlines become the two characters
    `\\n` (a line cannot hold them). Other backslashes stay as they are, so a Windows path
    reads the same in InfluxDB and VictoriaMetrics."""
    return _BACKSLASH_BEFORE_SPECIAL.sub(r"\\\\", text).translate(_TAG_ESCAPES)


def escape_name(text: str) -> str:
    return _BACKSLASH_BEFORE_SPECIAL.sub(r"\\\\", text).translate(_NAME_ESCAPES)


def point_fields(record: FlushRecord, interval: float) -> list[tuple[str, float]]:
    """The fields one record writes, finite values only (none: the record writes no point)."""
    view = flush_fields(record, interval)
    out: list[tuple[str, float]] = []
    for field in FIELDS[record.series.type]:
        value = view.get(_VIEW_NAME.get(field, field))
        if value is not None and math.isfinite(value):
            out.append((field, float(value)))
    return out


class PointEncoder:
    """Encodes flush records; remembers each series' escaped measurement and tags between
    flushes (only those seen in the latest flush, so expired series are let go)."""

    def __init__(self, interval: float, source: str, precision: str = "s") -> None:
        self.interval = interval
        self.source = source
        self.factor = PRECISION_FACTOR[precision]
        self._keys: dict[Series, str] = {}

    def series_key(self, series: Series) -> str:
        tags = [(key, value) for key, value in series.tags if value and key not in (TENANT_TAG, SOURCE_TAG)]
        tags.append((TENANT_TAG, series.tenant))
        if self.source:
            tags.append((SOURCE_TAG, self.source))
        tags.sort()
        return ",".join([escape_name(series.name), *(f"{escape_tag(k)}={escape_tag(v)}" for k, v in tags)])

    def encode(self, records: Iterable[FlushRecord]) -> list[bytes]:
        """One line per record with at least one finite field, tags sorted by key (as InfluxDB
        stores them). The series' own `tenant` and `source` tags give way to the daemon's."""
        known: dict[Series, str] = self._keys
        keys: dict[Series, str] = {}
        interval, factor = self.interval, self.factor
        lines: list[bytes] = []
        counter, gauge = MetricType.COUNTER, MetricType.GAUGE
        isfinite = math.isfinite
        for record in records:
            series, cell = record.series, record.cell
            kind = series.type
            # The two common types inline (same fields as point_fields, without its dict).
            if kind is counter and isfinite(cell.sum):
                body = f"count={cell.sum!r},rate={cell.sum / interval!r}"
            elif kind is gauge:
                if not isfinite(cell.last):
                    continue
                body = f"value={cell.last!r}"
            else:
                fields = point_fields(record, interval)
                if not fields:
                    continue
                body = ",".join([f"{name}={value!r}" for name, value in fields])
            key = known.get(series) or keys.get(series)
            if key is None:
                key = self.series_key(series)
            keys[series] = key
            lines.append(f"{key} {body} {record.period_start * factor}".encode())
        self._keys = keys
        return lines


def encode_points(records: Iterable[FlushRecord], interval: float, source: str, precision: str = "s") -> list[bytes]:
    """The lines of `records` (see PointEncoder.encode)."""
    return PointEncoder(interval, source, precision).encode(records)
