"""The StatsD flush view: what each series did during one flush interval, as sinks write it.

Counters give count and per-second rate; gauges their value; distributions count, sum, min,
max, mean, median, p90, p95, p99 and standard deviation; sets their distinct count. A series
with no samples in the interval is left out, except gauges when `emit_idle_gauges` is on (as
Etsy statsd re-sends gauges by default).
"""

from __future__ import annotations

from collectord.aggregation.aggregator import FlushRecord
from collectord.aggregation.query import finite_or_none
from collectord.model import MetricType


def flush_fields(record: FlushRecord, interval: float) -> dict[str, float | None]:
    """The fields of one flush record, named as Etsy statsd names them."""
    series, cell = record.series, record.cell
    kind = series.type
    if kind is MetricType.COUNTER:
        return {"count": cell.sum, "rate": cell.sum / interval}
    if kind is MetricType.GAUGE:
        return {"value": finite_or_none(cell.last)}
    if kind is MetricType.SET:
        return {"count": float(cell.distinct())}
    p50, p90, p95, p99 = cell.percentiles()
    return {
        "count": cell.count,
        "sum": cell.sum,
        "min": finite_or_none(cell.min),
        "max": finite_or_none(cell.max),
        "mean": cell.sum / cell.count if cell.count else None,
        "median": p50,
        "p90": p90,
        "p95": p95,
        "p99": p99,
        "stddev": cell.stddev(),
    }
