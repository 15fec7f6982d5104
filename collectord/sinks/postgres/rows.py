"""Rows as PostgreSQL receives them (COPY records), built from cells and batches, and cells
rebuilt from stored rows (for fleet queries)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec

from collectord.aggregation.cells import Cell
from collectord.aggregation.sketch import Sketch
from collectord.model import KIND_GAUGE_DELTA, KIND_SET, TYPE_OF_KIND, MetricType, Sample, Tags

GRANULARITY_OF_LEVEL = {1: "1m", 2: "5m", 3: "1h", 4: "1d"}
SCOPE_SERIES = 0
SCOPE_NAME = 1

AGGREGATE_COLUMNS = (
    "tenant_id",
    "source",
    "metric_name",
    "metric_type",
    "scope",
    "tags",
    "series_hash",
    "granularity",
    "period_start",
    "period_end",
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "p50",
    "p90",
    "p95",
    "p99",
    "last",
    "sketch",
    "members",
)
RAW_COLUMNS = (
    "tenant_id",
    "source",
    "metric_name",
    "metric_value",
    "metric_type",
    "weight",
    "tags",
    "timestamp",
    "received_at",
    "aggregation_type",
)
# The columns a query reads back to rebuild a cell.
CELL_COLUMNS = "metric_type, tags, period_start, count, sum, min, max, last, sketch, members"


def tags_json(tags: Tags) -> str:
    return msgspec.json.encode(dict(tags)).decode()


def series_hash(tags: Tags | None) -> bytes:
    """The tags' identity in the unique key (scope-1 rows have none)."""
    if tags is None:
        return b""
    return hashlib.blake2b(msgspec.msgpack.encode(tags), digest_size=16).digest()


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def aggregate_row(
    tenant: str,
    source: str,
    name: str,
    metric_type: MetricType,
    tags: Tags | None,
    level: int,
    start: int,
    seconds: int,
    cell: Cell,
    hashed: bytes,
    tags_text: str,
) -> tuple[Any, ...]:
    if cell.members is not None:
        distinct = float(len(cell.members))
        count: float = distinct
        total = distinct
        low = high = mean = distinct
        pcts: list[float | None] = [None] * 4
    else:
        count, total = cell.count, cell.sum
        low, high = cell.min, cell.max
        mean = total / count if count else math.nan
        pcts = cell.percentiles()
    return (
        tenant,
        source,
        name,
        metric_type.value,
        SCOPE_NAME if tags is None else SCOPE_SERIES,
        tags_text,
        hashed,
        GRANULARITY_OF_LEVEL[level],
        float(start),
        float(start + seconds),
        count,
        total,
        _finite(low),
        _finite(high),
        _finite(mean),
        pcts[0],
        pcts[1],
        pcts[2],
        pcts[3],
        _finite(cell.last),
        cell.sketch.to_bytes() if cell.sketch is not None else None,
        sorted(cell.members) if cell.members is not None else None,
    )


def cell_from_row(row: Any) -> Cell:
    """The cell a stored row stands for (merges exactly with in-memory cells)."""
    cell = Cell()
    members = row["members"]
    if members is not None:
        cell.members = set(members)
        return cell
    cell.count = row["count"]
    cell.sum = row["sum"]
    cell.min = row["min"] if row["min"] is not None else math.inf
    cell.max = row["max"] if row["max"] is not None else -math.inf
    cell.last = row["last"] if row["last"] is not None else math.nan
    sketch = row["sketch"]
    if sketch is not None:
        cell.sketch = Sketch.from_bytes(sketch)
    return cell


class RawRows:
    """Turns applied batches into raw-point records, caching each series key's JSON tags."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._tags: dict[Tags, str] = {}

    def records(self, tenant: str, received_at: float, samples: list[Sample]) -> list[tuple[Any, ...]]:
        out = []
        cache = self._tags
        if len(cache) > 100_000:
            cache.clear()
        for (name, tags), kind, value, weight, ts in samples:
            if kind == KIND_SET:
                continue  # a member is a string, not a value; sets are stored aggregated
            text = cache.get(tags)
            if text is None:
                text = cache[tags] = tags_json(tags)
            out.append(
                (
                    tenant,
                    self.source,
                    name,
                    value,
                    TYPE_OF_KIND[kind].value,
                    weight,
                    text,
                    received_at if ts is None else ts,
                    received_at,
                    "DELTA" if kind == KIND_GAUGE_DELTA else None,
                )
            )
        return out
