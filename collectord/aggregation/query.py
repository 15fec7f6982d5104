"""Answering a query over the in-memory windows: pick series, merge cells, build rows.

Without group_by every matching series of a metric is merged into one row per period; with it,
one row per period per group. Merging is exact (see cells.py), so a group's p99 is the p99 of
all its samples to within the sketch's 1%, never an average of percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache

from collectord.aggregation.aggregator import LEVEL_OF_GRANULARITY, Aggregator
from collectord.aggregation.cells import Cell
from collectord.aggregation.series import Series
from collectord.aggregation.windows import GRANULARITY_SECONDS, align
from collectord.model import MetricType

AGGREGATIONS = ("AVG", "SUM", "MIN", "MAX", "COUNT", "P50", "P90", "P95", "P99")


@dataclass
class Query:
    """A validated query (the API layer checks the seed's limits before building one)."""

    tenant: str
    metrics: list[str]
    start: float
    end: float
    granularity: str
    aggregation: str = "AVG"
    tags: list[tuple[str, str]] = field(default_factory=list)
    group_by: list[str] = field(default_factory=list)
    limit: int = 1000


@lru_cache(maxsize=65536)
def iso(when: float) -> str:
    """RFC 3339 in UTC with milliseconds, as the seed's JSON dates are."""
    moment = datetime.fromtimestamp(when, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def merge_cells(parts: Sequence[Cell]) -> Cell | None:
    """The merge of `parts` as a cell to read; the stored cells are never modified."""
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]  # callers only read it
    merged = parts[0].empty_like()
    merged.merge_all(parts)
    return merged


def finite_or_none(value: float) -> float | None:
    """JSON has no infinities: an empty cell's min/max (+-inf) or a NaN become null."""
    return value if math.isfinite(value) else None


def build_row(
    name: str,
    metric_type: MetricType,
    period_start: int,
    seconds: int,
    cell: Cell,
    tags: dict[str, str],
    aggregation: str,
) -> dict[str, object]:
    """One row of the seed's AggregatedMetric shape plus `value`, `type` and, for counters,
    the per-second `rate`."""
    if metric_type is MetricType.SET:
        distinct = float(cell.distinct())
        count = total = low = high = mean = distinct
        pcts: list[float | None] = [None] * 4
    else:
        count, total = cell.count, cell.sum
        low, high = cell.min, cell.max
        mean = total / count if count else math.nan
        pcts = cell.percentiles()
    by_aggregation: dict[str, float | None] = {
        "AVG": finite_or_none(mean),
        "SUM": total,
        "MIN": finite_or_none(low),
        "MAX": finite_or_none(high),
        "COUNT": count,
        "P50": pcts[0],
        "P90": pcts[1],
        "P95": pcts[2],
        "P99": pcts[3],
    }
    row: dict[str, object] = {
        "metricName": name,
        "type": metric_type.value,
        "periodStart": iso(period_start),
        "periodEnd": iso(period_start + seconds),
        "count": count,
        "sum": total,
        "min": finite_or_none(low),
        "max": finite_or_none(high),
        "avg": finite_or_none(mean),
        "p50": pcts[0],
        "p90": pcts[1],
        "p95": pcts[2],
        "p99": pcts[3],
        "tags": tags,
        "value": by_aggregation[aggregation],
    }
    if metric_type is MetricType.COUNTER:
        row["rate"] = total / seconds
    return row


def _group(series: list[Series], group_by: Sequence[str]) -> dict[tuple[str, ...], list[Series]]:
    groups: dict[tuple[str, ...], list[Series]] = {}
    for one in series:
        held = dict(one.tags)
        groups.setdefault(tuple(held.get(k, "") for k in group_by), []).append(one)
    return groups


def run_query(aggregator: Aggregator, query: Query) -> list[dict[str, object]]:
    """Rows ordered by metric, group and period; the newest `limit` rows are kept."""
    level = LEVEL_OF_GRANULARITY[query.granularity]
    seconds = GRANULARITY_SECONDS[query.granularity]
    periods = range(align(query.start, seconds), math.ceil(query.end), seconds)
    filter_tags = dict(query.tags)
    rows: list[dict[str, object]] = []
    for name in dict.fromkeys(query.metrics):
        if not query.tags and not query.group_by:
            rows.extend(_rows_from_totals(aggregator, query, name, level, seconds, periods))
            continue
        matching = aggregator.matching_series(query.tenant, name, query.tags)
        if not matching:
            continue
        metric_type = matching[0].type
        for values, members in sorted(_group(matching, query.group_by).items()):
            tags = {**filter_tags, **dict(zip(query.group_by, values, strict=True))}
            for start in periods:
                parts = [cell for s in members for cell in aggregator.read(s, level, start)]
                row = _row(aggregator, name, metric_type, start, seconds, parts, tags, query.aggregation)
                if row is not None:
                    rows.append(row)
    rows.sort(key=lambda row: str(row["periodStart"]))
    if len(rows) > query.limit:
        rows = rows[-query.limit :]
    return rows


def _rows_from_totals(
    aggregator: Aggregator, query: Query, name: str, level: int, seconds: int, periods: range
) -> list[dict[str, object]]:
    metric_type = aggregator.metric_type_of(query.tenant, name)
    if metric_type is None:
        return []
    rows = []
    for start in periods:
        parts = aggregator.read_name_totals(query.tenant, name, level, start)
        row = _row(aggregator, name, metric_type, start, seconds, parts, {}, query.aggregation)
        if row is not None:
            rows.append(row)
    return rows


# Rows built from one stored cell are kept, keyed by that cell: closed windows are read far
# more often than they change, and a change raises the cell's count, which invalidates them.
ROW_CACHE_LIMIT = 200_000


def _row(
    aggregator: Aggregator,
    name: str,
    metric_type: MetricType,
    start: int,
    seconds: int,
    parts: list[Cell],
    tags: dict[str, str],
    aggregation: str,
) -> dict[str, object] | None:
    if len(parts) != 1:
        merged = merge_cells(parts)
        if merged is None or merged.is_empty:
            return None
        return build_row(name, metric_type, start, seconds, merged, tags, aggregation)
    cell = parts[0]
    cache = aggregator.row_cache
    key = (id(cell), name, start, seconds, aggregation, tuple(tags.items()))
    held = cache.get(key)
    if held is not None and held[0] is cell and held[1] == cell.count and held[2] == cell.distinct():
        return held[3]
    if cell.is_empty:
        return None
    row = build_row(name, metric_type, start, seconds, cell, tags, aggregation)
    if len(cache) >= ROW_CACHE_LIMIT:
        cache.clear()
    cache[key] = (cell, cell.count, cell.distinct(), row)
    return row
