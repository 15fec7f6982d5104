"""Fleet-wide answers to /api/v1/query: this daemon's own source from memory (fresh to the
sample), every other source from PostgreSQL (at most one flush interval behind), and this
source's own periods that memory no longer holds (older than its retention, or from before a
restart with a new data directory) from PostgreSQL too. Cells of one metric, group and period
merge exactly (counts and sums add, extremes combine, sketches merge), so a fleet p99 is the
p99 of every host's samples to within the sketch's 1%.

Tag filters and group_by mean the same on both paths: memory filters series by their tags,
PostgreSQL by `tags @> filter` over the per-series rows; without either, both read the
name-level aggregate (scope 1 rows), one row per period per source.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

import asyncpg

from collectord.aggregation.aggregator import LEVEL_OF_GRANULARITY, Aggregator
from collectord.aggregation.cells import Cell
from collectord.aggregation.query import Query, build_row, merge_cells, run_query
from collectord.aggregation.windows import GRANULARITY_SECONDS, align
from collectord.model import MetricType
from collectord.sinks.postgres.rows import CELL_COLUMNS, SCOPE_NAME, SCOPE_SERIES, cell_from_row

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline
    from collectord.sinks.postgres.sink import PostgresSink

log = logging.getLogger("collectord.fleet")

# (metric name, group values, period start)
CellKey = tuple[str, tuple[str, ...], int]

FETCH = (
    f"SELECT source, metric_name, {CELL_COLUMNS} FROM metrics_aggregated "
    "WHERE tenant_id = $1 AND metric_name = ANY($2::text[]) AND granularity = $3 AND scope = $4 "
    "AND period_start >= $5 AND period_start < $6 AND ($7::jsonb IS NULL OR tags @> $7::jsonb)"
)


def memory_cells(aggregator: Aggregator, query: Query) -> dict[CellKey, tuple[MetricType, Cell]]:
    """The in-memory side: the same series, groups and periods as run_query, as cells."""
    level = LEVEL_OF_GRANULARITY[query.granularity]
    seconds = GRANULARITY_SECONDS[query.granularity]
    periods = range(align(query.start, seconds), math.ceil(query.end), seconds)
    out: dict[CellKey, tuple[MetricType, Cell]] = {}
    for name in dict.fromkeys(query.metrics):
        if not query.tags and not query.group_by:
            named = aggregator.table.by_name.get((query.tenant, name))
            totals = aggregator.name_totals.get((query.tenant, name))
            if named:
                metric_type = next(iter(named.values())).type
            elif totals is not None:
                metric_type = totals.type
            else:
                continue
            for start in periods:
                cell = merge_cells(aggregator.read_name_totals(query.tenant, name, level, start))
                if cell is not None and not cell.is_empty:
                    out[(name, (), start)] = (metric_type, cell)
            continue
        matching = aggregator.matching_series(query.tenant, name, query.tags)
        groups: dict[tuple[str, ...], list[Any]] = {}
        for series in matching:
            held = dict(series.tags)
            groups.setdefault(tuple(held.get(k, "") for k in query.group_by), []).append(series)
        for values, members in groups.items():
            for start in periods:
                cell = merge_cells([c for s in members for c in aggregator.read(s, level, start)])
                if cell is not None and not cell.is_empty:
                    out[(name, values, start)] = (members[0].type, cell)
    return out


async def stored_cells(
    conn: asyncpg.Connection, query: Query, source: str
) -> tuple[dict[CellKey, tuple[MetricType, list[Cell]]], dict[CellKey, tuple[MetricType, list[Cell]]], set[str]]:
    """(own source's cells, every other source's cells, the other sources seen)."""
    seconds = GRANULARITY_SECONDS[query.granularity]
    scope = SCOPE_SERIES if query.tags or query.group_by else SCOPE_NAME
    rows = await conn.fetch(
        FETCH,
        query.tenant,
        list(dict.fromkeys(query.metrics)),
        query.granularity,
        scope,
        float(align(query.start, seconds)),
        float(math.ceil(query.end)),
        dict(query.tags) if query.tags else None,
    )
    own: dict[CellKey, tuple[MetricType, list[Cell]]] = {}
    others: dict[CellKey, tuple[MetricType, list[Cell]]] = {}
    sources: set[str] = set()
    for row in rows:
        tags = row["tags"]
        values = tuple(str(tags.get(k, "")) for k in query.group_by)
        key = (row["metric_name"], values, int(row["period_start"]))
        target = own if row["source"] == source else others
        if row["source"] != source:
            sources.add(row["source"])
        held = target.get(key)
        if held is None:
            target[key] = (MetricType(row["metric_type"]), [cell_from_row(row)])
        else:
            held[1].append(cell_from_row(row))
    return own, others, sources


def merged_rows(
    query: Query,
    memory: dict[CellKey, tuple[MetricType, Cell]],
    own: dict[CellKey, tuple[MetricType, list[Cell]]],
    others: dict[CellKey, tuple[MetricType, list[Cell]]],
) -> tuple[list[dict[str, object]], int]:
    """Rows in run_query's order and shape; also how many periods of this source came from
    PostgreSQL because memory no longer held them."""
    seconds = GRANULARITY_SECONDS[query.granularity]
    order = {name: i for i, name in enumerate(dict.fromkeys(query.metrics))}
    keys = sorted({*memory, *own, *others}, key=lambda k: (order[k[0]], k[1], k[2]))
    filter_tags = dict(query.tags)
    rows: list[dict[str, object]] = []
    from_history = 0
    for key in keys:
        parts: list[Cell] = []
        metric_type: MetricType | None = None
        if key in memory:
            metric_type, cell = memory[key]
            parts.append(cell)
        elif key in own:
            metric_type, cells = own[key]
            parts.extend(cells)
            from_history += 1
        if key in others:
            metric_type = metric_type or others[key][0]
            parts.extend(others[key][1])
        merged = merge_cells(parts) if len(parts) > 1 else (parts[0] if parts else None)
        if merged is None or merged.is_empty or metric_type is None:
            continue
        name, values, start = key
        tags = {**filter_tags, **dict(zip(query.group_by, values, strict=True))}
        rows.append(build_row(name, metric_type, start, seconds, merged, tags, query.aggregation))
    rows.sort(key=lambda row: str(row["periodStart"]))
    if len(rows) > query.limit:
        rows = rows[-query.limit :]
    return rows, from_history


def postgres_sink(pipeline: Pipeline) -> PostgresSink | None:
    from collectord.sinks.postgres.sink import PostgresSink

    for sink in pipeline.sinks:
        if isinstance(sink, PostgresSink):
            return sink
    return None


async def fleet_query(pipeline: Pipeline, query: Query) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Rows for the whole fleet, and what answered them (for the response's metadata).
    Without PostgreSQL (or while it is away) the answer is this daemon's memory alone, and the
    metadata says so."""
    sink = postgres_sink(pipeline)
    pool = sink.pool if sink is not None and sink.disabled_reason is None else None
    if sink is None:
        return run_query(pipeline.aggregator, query), {"sources": ["memory"]}
    memory = memory_cells(pipeline.aggregator, query)
    if pool is None:
        rows, _ = merged_rows(query, memory, {}, {})
        return rows, {"sources": [sink.source], "postgres": "unavailable"}
    try:
        async with pool.acquire(timeout=sink.settings.query_timeout) as conn:
            own, others, seen = await asyncio.wait_for(
                stored_cells(conn, query, sink.source), sink.settings.query_timeout
            )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
        log.warning("fleet query answered from memory only", extra={"error": str(error)})
        rows, _ = merged_rows(query, memory, {}, {})
        return rows, {"sources": [sink.source], "postgres": "unavailable"}
    rows, from_history = merged_rows(query, memory, own, others)
    return rows, {
        "sources": [sink.source, *sorted(seen)],
        "postgres": "ok",
        "paths": {"memory": sink.source, "postgres": sorted(seen), "ownHistoryPeriods": from_history},
    }
