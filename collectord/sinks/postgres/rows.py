"""Rows as PostgreSQL receives them (binary COPY bytes), built from cells and batches, and
cells rebuilt from stored rows (for fleet queries).

The parts of a row that depend only on the series (tenant, source, name, type, scope, tags,
hash) are encoded once per series and reused for every window and every flush."""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from math import isfinite
from typing import Any

import msgspec

from collectord.aggregation.cells import Cell
from collectord.aggregation.sketch import Sketch
from collectord.model import KIND_GAUGE_DELTA, KIND_SET, TYPE_OF_KIND, MetricType, Sample, Tags
from collectord.sinks.postgres import copy
from collectord.sinks.postgres.schema import PG_EPOCH

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
# In the order RawRows encodes them: what repeats per series first, then the numbers.
RAW_COLUMNS = (
    "tenant_id",
    "source",
    "metric_name",
    "metric_type",
    "tags",
    "aggregation_type",
    "metric_value",
    "weight",
    "timestamp",
    "received_at",
)
# period_start, period_end, count, sum: never NULL.
# granularity, period_start, period_end: the same for every row of a window (functools cache).
_PERIOD = struct.Struct(">iqiq")
_WINDOW = struct.Struct(">idid")
# metric_value, weight, timestamp, received_at.
_RAW_NUMBERS = struct.Struct(">ididiqiq")
_NO_PERCENTILES = copy.NULL * 4
# period_start, period_end, count, sum, min, max, avg: a row with no sketch, all finite.
_PLAIN = struct.Struct(">ididididid")
_PLAIN_TAIL = _NO_PERCENTILES
_F8 = struct.Struct(">id")
_NO_SKETCH_OR_MEMBERS = copy.NULL * 2
_GRANULARITY_FIELD = {level: copy.text(g) for level, g in GRANULARITY_OF_LEVEL.items()}
_AGGREGATE_FIELDS = copy.field_count(len(AGGREGATE_COLUMNS))
_RAW_FIELDS = copy.field_count(len(RAW_COLUMNS))
_DELTA = copy.text("DELTA")
# Prefix caches are dropped whole past this many entries (series come and go).
CACHE_LIMIT = 400_000


@functools.lru_cache(maxsize=256)
def _window_fields(level: int, start: int, seconds: int) -> bytes:
    """The granularity, period_start and period_end fields of a window's row."""
    return _GRANULARITY_FIELD[level] + _PERIOD.pack(8, copy.micros(start), 8, copy.micros(start + seconds))


def tags_json(tags: Tags) -> str:
    return msgspec.json.encode(dict(tags)).decode()


def series_hash(tags: Tags | None) -> bytes:
    """The tags' identity in the unique key (scope-1 rows have none)."""
    if tags is None:
        return b""
    return hashlib.blake2b(msgspec.msgpack.encode(tags), digest_size=16).digest()


class AggregateRows:
    """Encodes aggregate windows as COPY rows for one source."""

    def __init__(self, source: str) -> None:
        self.source = copy.text(source)
        # (tenant, name, tags) -> (type, prefix). Keyed without the type: an enum hashes in
        # Python, which cost more than the rest of the row; the type is compared by identity.
        self._prefixes: dict[tuple[str, str, Tags | None], tuple[MetricType, bytes]] = {}

    def prefix(self, tenant: str, name: str, tags: Tags | None, metric_type: MetricType) -> bytes:
        """Every field before the granularity; tags None = the metric's name-level row."""
        key = (tenant, name, tags)
        held = self._prefixes.get(key)
        if held is not None and held[0] is metric_type:
            return held[1]
        if len(self._prefixes) > CACHE_LIMIT:
            self._prefixes.clear()
        prefix = b"".join(
            (
                _AGGREGATE_FIELDS,
                copy.text(tenant),
                self.source,
                copy.text(name),
                copy.text(metric_type.value),
                copy.int2(SCOPE_NAME if tags is None else SCOPE_SERIES),
                copy.jsonb(b"{}" if tags is None else msgspec.json.encode(dict(tags))),
                copy.raw_bytes(series_hash(tags)),
            )
        )
        self._prefixes[key] = (metric_type, prefix)
        return prefix

    @staticmethod
    def row(
        prefix: bytes,
        level: int,
        start: int,
        seconds: int,
        cell: Cell,
        final: bool = True,
        sketch_bytes: bytes | None = None,
    ) -> bytes:
        """One window's row: `prefix` from `prefix()`. The p50..p99 columns (for readers of the
        table; queries merge the sketch) are NULL when not `final`. The sink always writes them:
        leaving an open window's for its final write (a quarter of its encoding cost) left them
        NULL for good where no sample came between the last flush and the close.
        `sketch_bytes`: the cell's sketch already encoded (`encode_distributions`), else encoded here."""
        f8 = copy.float8
        members = cell.members
        if members is not None:
            distinct = float(len(members))
            encoded_distinct = f8(distinct)
            return b"".join(
                (
                    prefix,
                    _window_fields(level, start, seconds),
                    _WINDOW.pack(8, distinct, 8, distinct),
                    encoded_distinct * 3,
                    _NO_PERCENTILES,
                    f8(cell.last),
                    copy.NULL,
                    copy.text_array(sorted(members)),
                )
            )
        count, total = cell.count, cell.sum
        sketch = cell.sketch
        if sketch is None and count:
            low, high, last = cell.min, cell.max, cell.last
            if isfinite(low) and isfinite(high) and isfinite(last) and isfinite(total):
                # Counters and gauges, the common rows: every number in one pack.
                return b"".join(
                    (
                        prefix,
                        _window_fields(level, start, seconds),
                        _PLAIN.pack(
                            8,
                            count,
                            8,
                            total,
                            8,
                            low,
                            8,
                            high,
                            8,
                            total / count,
                        ),
                        _PLAIN_TAIL,
                        _F8.pack(8, last),
                        _NO_SKETCH_OR_MEMBERS,
                    )
                )
        if sketch is not None:
            if final:
                p50, p90, p95, p99 = cell.percentiles()
                percentiles = f8(p50) + f8(p90) + f8(p95) + f8(p99)
            else:
                percentiles = _NO_PERCENTILES
            encoded_sketch = copy.raw_bytes(sketch.to_bytes() if sketch_bytes is None else sketch_bytes)
        else:
            percentiles = _NO_PERCENTILES
            encoded_sketch = copy.NULL
        return b"".join(
            (
                prefix,
                _window_fields(level, start, seconds),
                _WINDOW.pack(8, count, 8, total),
                f8(cell.min),
                f8(cell.max),
                f8(total / count) if count else copy.NULL,
                percentiles,
                f8(cell.last),
                encoded_sketch,
                copy.NULL,
            )
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
    """Turns applied batches into raw-point COPY rows, encoding what repeats per series once."""

    def __init__(self, source: str) -> None:
        self.source = copy.text(source)
        self._prefixes: dict[tuple[str, int, object], bytes] = {}

    def _prefix(self, tenant: str, kind: int, name: str, tags: Tags) -> bytes:
        return b"".join(
            (
                _RAW_FIELDS,
                copy.text(tenant),
                self.source,
                copy.text(name),
                copy.text(TYPE_OF_KIND[kind].value),
                copy.jsonb(msgspec.json.encode(dict(tags))),
                _DELTA if kind == KIND_GAUGE_DELTA else copy.NULL,
            )
        )

    def encode(
        self, tenant: str, received_at: float, samples: list[Sample], out: bytearray
    ) -> tuple[int, float, float]:
        """Append the batch's rows to `out`; (rows, earliest, latest point time). Sets are
        skipped: a member is a string, not a value; sets are stored aggregated."""
        prefixes = self._prefixes
        if len(prefixes) > CACHE_LIMIT:
            prefixes.clear()
        pack = _RAW_NUMBERS.pack
        received = round((received_at - PG_EPOCH) * 1_000_000)
        rows = 0
        low = high = received_at
        for key, kind, value, weight, ts in samples:
            if kind == KIND_SET:
                continue
            cache_key = (tenant, kind, key)
            prefix = prefixes.get(cache_key)
            if prefix is None:
                prefix = prefixes[cache_key] = self._prefix(tenant, kind, key[0], key[1])
            if ts is None:
                when = received
            else:
                when = round((ts - PG_EPOCH) * 1_000_000)
                if ts < low:
                    low = ts
                elif ts > high:
                    high = ts
            out += prefix
            out += pack(8, value, 8, weight, 8, when, 8, received)
            rows += 1
        return rows, low, high
