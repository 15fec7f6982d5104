"""Series: one (tenant, name, tags) with its type, windows and realtime values.

The SeriesTable admits new series: it enforces the global series cap and the seed's cap on
distinct values per tag key per metric name, and counts what it turns away by metric name so
`/api/v1/cardinality` can say who is blowing up memory.
"""

from __future__ import annotations

import math
from collections import defaultdict

from collectord.aggregation.cells import Cell
from collectord.limits import Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    TYPE_OF_KIND,
    MetricType,
    SeriesKey,
    Tags,
)

# Slices (one flush interval), then 1m, 5m, 1h, 1d.
LEVEL_COUNT = 5
# Metric names whose rejections are counted one by one (for /api/v1/cardinality); past it the
# names rejected least are forgotten, so a flood of new names beyond the series cap cannot
# grow memory (every rejection is still counted by reason).
MAX_REJECTED_NAMES = 10_000
# Shared by every level that holds nothing yet (an empty dict costs 64 bytes per level per
# series); never written to: `Series.writable` swaps in a dict of the series' own first.
_NO_CELLS: dict[int, Cell] = {}


class Series:
    """Everything held for one series. `levels[k]` maps a period start to its Cell."""

    __slots__ = (
        "first_seen",
        "key",
        "kind",
        "last_seen",
        "last_timestamp",
        "last_value",
        "levels",
        "name",
        "slice_cell",
        "slice_start",
        "tags",
        "tenant",
        "total",
        "type",
    )

    def __init__(self, tenant: str, name: str, tags: Tags, kind: int, now: float, key: SeriesKey | None = None) -> None:
        self.tenant = tenant
        self.name = name
        self.tags = tags
        # (name, tags): the table's key object, the one the hot path's identity index checks
        # hits against.
        self.key: SeriesKey = key if key is not None else (name, tags)
        self.kind = kind
        self.type: MetricType = TYPE_OF_KIND[kind]
        self.first_seen = now
        self.last_seen = now
        # Realtime values: counter total since first seen, newest value (gauge value,
        # latest distribution sample) and when it came.
        self.total = 0.0
        self.last_value = 0.0 if kind == KIND_GAUGE else math.nan
        # No sample yet: the first one sets the realtime value, however old its timestamp.
        self.last_timestamp = -math.inf
        self.levels: list[dict[int, Cell]] = [_NO_CELLS] * LEVEL_COUNT
        # The hot path's shortcut to the open slice.
        self.slice_start = -1
        self.slice_cell: Cell | None = None

    def writable(self, level: int) -> dict[int, Cell]:
        cells = self.levels[level]
        if cells is _NO_CELLS:
            cells = self.levels[level] = {}
        return cells

    def release(self, level: int) -> None:
        """Give back an emptied level's dict (it keeps its table's size after its last key goes)."""
        if not self.levels[level]:
            self.levels[level] = _NO_CELLS

    def new_cell(self) -> Cell:
        if self.kind in (KIND_HISTOGRAM, KIND_SUMMARY):
            return Cell.for_distribution()
        if self.kind == KIND_SET:
            return Cell.for_set()
        return Cell()

    @property
    def is_counter(self) -> bool:
        return self.kind == KIND_COUNTER

    def realtime_value(self) -> float | None:
        if self.kind == KIND_COUNTER:
            return self.total
        if self.kind == KIND_SET:
            cell = self.slice_cell
            return float(cell.distinct()) if cell is not None else None
        return None if math.isnan(self.last_value) else self.last_value

    def nbytes(self) -> int:
        """Memory held by this series (object, key strings, dicts, cells)."""
        size = 56 + 8 * len(self.__slots__) + len(self.name) + 49
        size += sum(64 + len(k) + len(v) + 98 for k, v in self.tags)
        for level in self.levels:
            size += 64 + 100 * len(level) + sum(cell.nbytes() for cell in level.values())
        return size


class SeriesTable:
    """All series, per tenant, with admission control."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.by_tenant: dict[str, dict[SeriesKey, Series]] = {}
        # (tenant, name) -> {tag key -> {tag value -> number of series using it}}
        self._tag_values: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
        # (tenant, name) -> the series of that name, for queries by metric name.
        self.by_name: dict[tuple[str, str], dict[Tags, Series]] = {}
        self.count = 0
        # Gauges, for re-emitting idle ones at each flush without walking every series.
        self.gauges: set[Series] = set()
        self.rejected_by_metric: dict[tuple[str, str], int] = defaultdict(int)

    def tenant_table(self, tenant: str) -> dict[SeriesKey, Series]:
        table = self.by_tenant.get(tenant)
        if table is None:
            table = self.by_tenant[tenant] = {}
        return table

    def admit(self, tenant: str, key: SeriesKey, kind: int, now: float) -> Series | str:
        """Create the series, or return the reason it is turned away."""
        name, tags = key
        if self.count >= self.limits.max_series:
            self._count_rejection(tenant, name)
            return "series_limit"
        per_key = self._tag_values.get((tenant, name))
        cap = self.limits.max_tag_values_per_key
        if per_key is not None:
            for tag_key, tag_value in tags:
                values = per_key.get(tag_key)
                if values is not None and tag_value not in values and len(values) >= cap:
                    self._count_rejection(tenant, name)
                    return "tag_cardinality"
        else:
            per_key = self._tag_values[(tenant, name)] = {}
        for tag_key, tag_value in tags:
            values = per_key.setdefault(tag_key, {})
            values[tag_value] = values.get(tag_value, 0) + 1
        series = Series(tenant, name, tags, kind, now, key)
        if kind == KIND_GAUGE:
            self.gauges.add(series)
        self.tenant_table(tenant)[key] = series
        self.by_name.setdefault((tenant, name), {})[tags] = series
        self.count += 1
        return series

    def _count_rejection(self, tenant: str, name: str) -> None:
        counts = self.rejected_by_metric
        key = (tenant, name)
        if key not in counts and len(counts) >= MAX_REJECTED_NAMES:
            # Keep the half rejected most: amortised, one sort per MAX_REJECTED_NAMES / 2 names.
            kept = sorted(counts.items(), key=lambda item: -item[1])[: MAX_REJECTED_NAMES // 2]
            counts.clear()
            counts.update(kept)
        counts[key] += 1

    def restore(self, series: Series) -> None:
        """Register a series loaded from a checkpoint, bypassing the caps (it was admitted)."""
        per_key = self._tag_values.setdefault((series.tenant, series.name), {})
        for tag_key, tag_value in series.tags:
            values = per_key.setdefault(tag_key, {})
            values[tag_value] = values.get(tag_value, 0) + 1
        self.tenant_table(series.tenant)[series.key] = series
        self.by_name.setdefault((series.tenant, series.name), {})[series.tags] = series
        if series.kind == KIND_GAUGE:
            self.gauges.add(series)
        self.count += 1

    def remove(self, series: Series) -> None:
        tenant, name = series.tenant, series.name
        table = self.by_tenant.get(tenant)
        if table is None or table.pop((name, series.tags), None) is None:
            return
        self.count -= 1
        self.gauges.discard(series)
        named = self.by_name.get((tenant, name))
        if named is not None:
            named.pop(series.tags, None)
            if not named:
                del self.by_name[(tenant, name)]
        per_key = self._tag_values.get((tenant, name))
        if per_key is not None:
            for tag_key, tag_value in series.tags:
                values = per_key.get(tag_key)
                if values is None:
                    continue
                left = values.get(tag_value, 0) - 1
                if left > 0:
                    values[tag_value] = left
                else:
                    values.pop(tag_value, None)
                    if not values:
                        del per_key[tag_key]
            if not per_key:
                del self._tag_values[(tenant, name)]

    def all_series(self) -> list[Series]:
        return [s for table in self.by_tenant.values() for s in table.values()]

    def distinct_tag_values(self, tenant: str, name: str) -> dict[str, int]:
        per_key = self._tag_values.get((tenant, name), {})
        return {tag_key: len(values) for tag_key, values in per_key.items()}
