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
from collectord.aggregation.sketch import merge_encoded
from collectord.aggregation.windows import GRANULARITY_SECONDS, align
from collectord.model import MetricType
from collectord.sinks.postgres.rows import GRANULARITY_OF_LEVEL, SCOPE_NAME, SCOPE_SERIES

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline
    from collectord.sinks.postgres.sink import PostgresSink

log = logging.getLogger("collectord.fleet")

# (metric name, group values, period start)
CellKey = tuple[str, tuple[str, ...], int]
# A coarse window (5m, 1h, 1d) is written once closed, within a few flushes (see sink.py); for
# windows that ended less than this long ago, the finer rows inside them are read as well and
# stand in for a coarse row not written yet.
OPEN_MARGIN = 1800.0
COLUMNS = (
    "SELECT source, metric_name, granularity, series_hash, tags, metric_type, period_start, "
    "count, sum, min, max, last, sketch, members FROM metrics_aggregated "
    "WHERE tenant_id = $1 AND metric_name = ANY($2::text[]) AND scope = $3 "
)
# The query's own granularity: a tag filter goes through the GIN index on tags.
TAGGED = "AND ($4::jsonb IS NULL OR tags @> $4::jsonb) "
# Finer granularities read only recent windows: the primary key's range is far narrower than
# every row holding the tags (at every granularity and period), so the filter is written in a
# form the GIN index cannot serve and the planner takes the range.
TAGGED_RECENT = "AND ($4::jsonb IS NULL OR (tags || '{}'::jsonb) @> $4::jsonb) "
# One branch per granularity read, each over its own period range: {granularity, from, to} as
# parameters $5.., never text.
FETCH = [
    " UNION ALL ".join(
        f"({COLUMNS}{TAGGED if i == 0 else TAGGED_RECENT}AND granularity = ${5 + 3 * i} "
        f"AND period_start >= ${6 + 3 * i} AND period_start < ${7 + 3 * i})"
        for i in range(branches)
    )
    for branches in range(1, 5)
]


def memory_cells(aggregator: Aggregator, query: Query) -> dict[CellKey, tuple[MetricType, Cell]]:
    """The in-memory side: the same series, groups and periods as run_query, as cells."""
    level = LEVEL_OF_GRANULARITY[query.granularity]
    seconds = GRANULARITY_SECONDS[query.granularity]
    periods = range(align(query.start, seconds), math.ceil(query.end), seconds)
    out: dict[CellKey, tuple[MetricType, Cell]] = {}
    for name in dict.fromkeys(query.metrics):
        if not query.tags and not query.group_by:
            metric_type = aggregator.metric_type_of(query.tenant, name)
            if metric_type is None:
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


def fetch_plan(query: Query, now: float) -> list[tuple[str, float, float]]:
    """(granularity, from, to) per granularity read: the query's own over its range, and each
    finer one over the recent windows of the next coarser one, which may not be written yet."""
    level = LEVEL_OF_GRANULARITY[query.granularity]
    seconds = GRANULARITY_SECONDS[query.granularity]
    low, high = float(align(query.start, seconds)), float(math.ceil(query.end))
    plan = [(query.granularity, low, high)]
    for finer in range(level - 1, 0, -1):
        coarser = GRANULARITY_SECONDS[GRANULARITY_OF_LEVEL[finer + 1]]
        since = max(low, float(align(now - OPEN_MARGIN, coarser)))
        if since < high:
            plan.append((GRANULARITY_OF_LEVEL[finer], since, high))
    return plan


def _maximal(rows: list[Any], query: Query) -> list[Any]:
    """The rows that partition each source's series' time: a row whose window lies inside a
    coarser row read for the same source and series is left out (the coarser one holds it);
    finer rows stand in for a coarse window only while it is not written."""
    top = LEVEL_OF_GRANULARITY[query.granularity]
    if all(row["granularity"] == query.granularity for row in rows):
        return rows
    level_of = LEVEL_OF_GRANULARITY
    present = {
        (row["source"], row["metric_name"], row["series_hash"], level_of[row["granularity"]], int(row["period_start"]))
        for row in rows
        if row["granularity"] != "1m"
    }
    kept = []
    for row in rows:
        level = level_of[row["granularity"]]
        start = int(row["period_start"])
        identity = (row["source"], row["metric_name"], row["series_hash"])
        covered = False
        for coarser in range(level + 1, top + 1):
            length = GRANULARITY_SECONDS[GRANULARITY_OF_LEVEL[coarser]]
            if (*identity, coarser, start - start % length) in present:
                covered = True
                break
        if not covered:
            kept.append(row)
    return kept


def cell_of_rows(rows: list[Any], base: Cell | None = None) -> Cell:
    """`base` (or nothing) merged with stored rows, in that order, as a new cell; the rows'
    sketches are merged from their bytes in one pass."""
    cell = Cell()
    if base is not None:
        cell.merge(base)  # a copy: the memory cell is never modified
    sketches = []
    for row in rows:
        members = row["members"]
        if members is not None:
            if cell.members is None:
                cell.members = set()
            cell.members.update(members)
            continue
        cell.count += row["count"]
        cell.sum += row["sum"]
        low, high, last = row["min"], row["max"], row["last"]
        if low is not None and low < cell.min:
            cell.min = low
        if high is not None and high > cell.max:
            cell.max = high
        if last is not None:
            cell.last = last
        if row["sketch"] is not None:
            sketches.append(row["sketch"])
    if sketches:
        merged = merge_encoded(sketches)
        if cell.sketch is None:
            cell.sketch = merged
        else:
            cell.sketch.merge(merged)
    return cell


StoredRows = dict[CellKey, tuple[MetricType, list[Any]]]


async def stored_rows(
    conn: asyncpg.Connection, query: Query, source: str, now: float
) -> tuple[StoredRows, StoredRows, set[str]]:
    """Rows per (metric, group, period): (own source's, every other source's, the other
    sources seen)."""
    seconds = GRANULARITY_SECONDS[query.granularity]
    scope = SCOPE_SERIES if query.tags or query.group_by else SCOPE_NAME
    plan = fetch_plan(query, now)
    args: list[Any] = [
        query.tenant,
        list(dict.fromkeys(query.metrics)),
        scope,
        dict(query.tags) if query.tags else None,
    ]
    for branch in plan:
        args.extend(branch)
    rows = _maximal(await conn.fetch(FETCH[len(plan) - 1], *args), query)
    if len(plan) > 1:
        rows.sort(key=lambda row: row["period_start"])
    own: StoredRows = {}
    others: StoredRows = {}
    sources: set[str] = set()
    group_by = query.group_by
    for row in rows:
        values = tuple(str(row["tags"].get(k, "")) for k in group_by) if group_by else ()
        key = (row["metric_name"], values, int(row["period_start"]) // seconds * seconds)
        if row["source"] == source:
            target = own
        else:
            target = others
            sources.add(row["source"])
        held = target.get(key)
        if held is None:
            target[key] = (MetricType(row["metric_type"]), [row])
        else:
            held[1].append(row)
    return own, others, sources


def merged_rows(
    query: Query,
    memory: dict[CellKey, tuple[MetricType, Cell]],
    own: StoredRows,
    others: StoredRows,
) -> tuple[list[dict[str, object]], int]:
    """Rows in run_query's order and shape; also how many periods of this source came from
    PostgreSQL because memory no longer held them. Per key: memory (else this source's stored
    rows), then the other sources' rows, merged in one pass."""
    seconds = GRANULARITY_SECONDS[query.granularity]
    order = {name: i for i, name in enumerate(dict.fromkeys(query.metrics))}
    keys = sorted({*memory, *own, *others}, key=lambda k: (order[k[0]], k[1], k[2]))
    filter_tags = dict(query.tags)
    rows: list[dict[str, object]] = []
    from_history = 0
    for key in keys:
        base: Cell | None = None
        stored: list[Any] = []
        metric_type: MetricType | None = None
        if key in memory:
            metric_type, base = memory[key]
        elif key in own:
            metric_type, stored = own[key]
            stored = list(stored)
            from_history += 1
        if key in others:
            metric_type = metric_type or others[key][0]
            stored += others[key][1]
        merged = cell_of_rows(stored, base) if stored else base
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
                stored_rows(conn, query, sink.source, pipeline.clock.now()), sink.settings.query_timeout
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
