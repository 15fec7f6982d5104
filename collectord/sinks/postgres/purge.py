"""Purging a tenant's metrics older than a time: stored rows in PostgreSQL (every source) and
this daemon's in-memory windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg

from collectord.aggregation.series import LEVEL_COUNT, Series

if TYPE_CHECKING:
    from collectord.aggregation.aggregator import Aggregator

PURGE_RAW = (
    'DELETE FROM metrics WHERE tenant_id = $1 AND "timestamp" < $2 '
    "AND ($3::text[] IS NULL OR metric_name = ANY($3::text[]))"
)
PURGE_AGGREGATES = (
    "DELETE FROM metrics_aggregated WHERE tenant_id = $1 AND period_end <= $2 "
    "AND ($3::text[] IS NULL OR metric_name = ANY($3::text[]))"
)


def purge_memory(aggregator: Aggregator, tenant: str, names: list[str], older_than: float) -> int:
    """Drop windows that end by `older_than`; returns how many were dropped."""
    wanted = set(names)
    targets: list[Series] = [
        series
        for (owner, name), named in aggregator.table.by_name.items()
        if owner == tenant and (not wanted or name in wanted)
        for series in named.values()
    ]
    targets += [
        t for (owner, name), t in aggregator.name_totals.items() if owner == tenant and (not wanted or name in wanted)
    ]
    removed = 0
    for series in targets:
        for level in range(LEVEL_COUNT):
            cells = series.levels[level]
            length = aggregator.level_seconds[level]
            stale = [start for start in cells if start + length <= older_than]
            for start in stale:
                del cells[start]
            removed += len(stale)
            if level == 0 and series.slice_start != -1 and series.slice_start not in cells:
                series.slice_start, series.slice_cell = -1, None
    aggregator.row_cache.clear()
    return removed


async def purge_stored(conn: asyncpg.Connection, tenant: str, names: list[str], older_than: float) -> int:
    """Delete raw points and aggregate rows of every source; returns the rows deleted."""
    filter_names = names or None
    async with conn.transaction():
        raw = await conn.execute(PURGE_RAW, tenant, older_than, filter_names)
        aggregated = await conn.execute(PURGE_AGGREGATES, tenant, older_than, filter_names)
    return int(raw.rsplit(" ", 1)[-1]) + int(aggregated.rsplit(" ", 1)[-1])
