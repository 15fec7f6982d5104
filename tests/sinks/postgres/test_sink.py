"""PostgresSink in process (real PostgreSQL, a manual clock): what a flush writes, checked
with SQL; raw points; hostile tags stored verbatim; resuming after a crash."""

from __future__ import annotations

import asyncio
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest

from collectord.aggregation.cells import Cell
from collectord.aggregation.query import merge_cells
from collectord.aggregation.sketch import Sketch
from collectord.clock import ManualClock
from collectord.config import load_config
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM, Sample
from collectord.pipeline import Pipeline
from collectord.ring import PAYLOAD_SAMPLES, PAYLOAD_STATSD, Batch
from collectord.sinks.postgres import sink as sink_module
from collectord.sinks.postgres.sink import PostgresSink
from tests.integration.pg import query

DAY_START = 1_800_057_600.0  # midnight UTC


def new_pipeline(tmp_path: Path, dsn: str, clock: ManualClock, **env: str) -> tuple[Pipeline, PostgresSink]:
    environ = {
        "COLLECTORD_STORAGE_DATA_DIR": str(tmp_path),
        "COLLECTORD_POSTGRES_DSN": dsn,
        "COLLECTORD_INSTANCE_NAME": "host-a",
        **env,
    }
    config = load_config(None, environ)
    pipeline = Pipeline(config, clock)
    sink = PostgresSink(pipeline)
    pipeline.add_sink(sink)
    pipeline.recover()
    return pipeline, sink


def record(pipeline: Pipeline, samples: list[Sample], tenant: str = "acme") -> None:
    pipeline.write_acknowledged(Batch(tenant, samples, pipeline.clock.now(), PAYLOAD_SAMPLES))


async def flush(sink: PostgresSink) -> None:
    if sink.pool is None:
        await sink._open()
    await sink.write_pending()


def test_flush_writes_open_minutes_then_coarse_windows_once_closed(tmp_path: Path, pg_dsn: str) -> None:
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    values = [float(v) for v in range(1, 101)]
    sql = (
        "SELECT metric_name, scope, tags, granularity, period_start, count, sum, min, max, p99, sketch, source "
        "FROM metrics_aggregated WHERE tenant_id = 'acme' ORDER BY metric_name, scope, granularity"
    )

    async def go() -> None:
        for i, value in enumerate(values):
            record(pipeline, [(("lat", (("host", "a"),)), KIND_HISTOGRAM, value, 1.0, None)])
            record(pipeline, [(("hits", ()), KIND_COUNTER, 2.0, 1.0, None)])
            if i == 49:
                clock.advance(10)
                pipeline.advance()
                await flush(sink)
        clock.advance(10)
        pipeline.advance()
        await flush(sink)
        await sink.close()

    asyncio.run(go())
    # Windows still open: only their 1m rows, up to date.
    rows = query(pg_dsn, sql)
    assert {(r["metric_name"], r["scope"], r["granularity"]) for r in rows} == {
        (name, scope, "1m") for name in ("hits", "lat") for scope in (0, 1)
    }
    assert all(r["count"] == 100 for r in rows)
    # Percentile columns from the first write: no write may follow before the window closes.
    assert all(math.isclose(r["p99"], 99, rel_tol=0.01) for r in rows if r["metric_name"] == "lat")
    assert sink.status().lag_seconds == 0

    async def next_day() -> None:
        clock.advance(86400)
        pipeline.advance()
        await flush(sink)
        await sink.close()

    asyncio.run(next_day())
    rows = query(pg_dsn, sql)
    by = {(r["metric_name"], r["scope"], r["granularity"]): r for r in rows}
    assert len(rows) == 16  # 2 metrics x (series + name-level) x 4 granularities
    for granularity in ("1m", "5m", "1h", "1d"):
        lat = by[("lat", 0, granularity)]
        assert lat["count"] == 100 and lat["sum"] == sum(values)
        assert lat["min"] == 1 and lat["max"] == 100 and lat["tags"] == {"host": "a"}
        assert lat["period_start"] == DAY_START and lat["source"] == "host-a"
        assert math.isclose(Sketch.from_bytes(lat["sketch"]).quantile(0.99) or 0, 99, rel_tol=0.01)
        assert math.isclose(lat["p99"], 99, rel_tol=0.01)
        assert by[("hits", 1, granularity)]["sum"] == 200
    assert sink.status().lag_seconds == 0 and not sink._coarse_due(sink.offered_until)


def test_hostile_tags_are_stored_verbatim(tmp_path: Path, pg_dsn: str) -> None:
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    hostile = (
        ("k'); DROP TABLE metrics; --", "v' OR '1'='1"),
        ('quote"s', "$1 \\x00 ' \" ; DELETE FROM tenants"),
    )
    tags = tuple(sorted(hostile))

    async def go() -> None:
        record(pipeline, [(("safe.name", tags), KIND_COUNTER, 1.0, 1.0, None)], tenant="t'x")
        clock.advance(10)
        pipeline.advance()
        await flush(sink)
        await sink.close()

    asyncio.run(go())
    raw = query(pg_dsn, "SELECT tenant_id, tags FROM metrics")
    assert raw == [{"tenant_id": "t'x", "tags": dict(tags)}]
    agg = query(pg_dsn, "SELECT DISTINCT tags FROM metrics_aggregated WHERE scope = 0")
    assert agg == [{"tags": dict(tags)}]
    assert query(pg_dsn, "SELECT id FROM tenants") == [{"id": "t'x"}]
    assert {r["tablename"] for r in query(pg_dsn, "SELECT tablename FROM pg_tables")} >= {"tenants", "audit_log"}


def test_raw_points_only_for_configured_protocols(tmp_path: Path, pg_dsn: str) -> None:
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)

    async def go() -> None:
        record(pipeline, [(("api.metric", ()), KIND_COUNTER, 3.0, 1.0, DAY_START - 5)])
        samples: list[Sample] = [(("statsd.metric", ()), KIND_COUNTER, 1.0, 1.0, None)]
        pipeline.ring.offer(Batch("acme", samples, clock.now(), PAYLOAD_STATSD, b"statsd.metric:1|c"))
        pipeline.catch_up()
        clock.advance(10)
        pipeline.advance()
        await flush(sink)
        await sink.close()

    asyncio.run(go())
    raw = query(pg_dsn, 'SELECT metric_name, metric_value, "timestamp", received_at, source FROM metrics')
    assert len(raw) == 1
    row: dict[str, Any] = raw[0]
    assert row["metric_name"] == "api.metric" and row["metric_value"] == 3.0 and row["source"] == "host-a"
    assert row["timestamp"] == DAY_START - 5 and row["received_at"] == DAY_START


def test_crash_after_checkpoint_rewrites_without_doubling(tmp_path: Path, pg_dsn: str) -> None:
    """Written after the checkpoint, then kill -9: the restart deletes and rewrites raw points
    past the checkpointed high-water mark; aggregates overwrite. Same rows, none doubled."""
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)

    async def first() -> None:
        for i in range(30):
            record(pipeline, [(("m", (("i", str(i % 3)),)), KIND_COUNTER, 1.0, 1.0, None)])
            clock.advance(1)
            pipeline.advance()
            if i == 10:
                await flush(sink)
                pipeline.checkpoint()
        await flush(sink)  # written past the checkpoint
        await sink.close()

    asyncio.run(first())
    before_raw = query(pg_dsn, "SELECT count(*) AS n FROM metrics")[0]["n"]
    before = query(pg_dsn, "SELECT granularity, tags, count, sum FROM metrics_aggregated ORDER BY 1, 2::text")
    assert before_raw == 30
    assert pipeline.journal is not None
    pipeline.journal.wal.commit()
    pipeline.journal.wal.abandon()  # kill -9
    _again, resumed = new_pipeline(tmp_path, pg_dsn, clock)

    async def second() -> None:
        await flush(resumed)
        await resumed.close()

    asyncio.run(second())
    assert query(pg_dsn, "SELECT count(*) AS n FROM metrics")[0]["n"] == 30
    after = query(pg_dsn, "SELECT granularity, tags, count, sum FROM metrics_aggregated ORDER BY 1, 2::text")
    assert after == before


def test_newer_schema_disables_the_sink_not_ingest(tmp_path: Path, pg_dsn: str) -> None:
    query(pg_dsn, "CREATE TABLE schema_version (version integer PRIMARY KEY, name text, applied_at timestamptz)")
    query(pg_dsn, "INSERT INTO schema_version VALUES (42, 'future', now())")
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)

    async def go() -> None:
        task = asyncio.create_task(sink.run())
        record(pipeline, [(("m", ()), KIND_COUNTER, 1.0, 1.0, None)])
        await asyncio.wait_for(task, 10)  # run() returns: the sink is off

    asyncio.run(go())
    status = sink.status()
    assert not status.enabled and "version 42" in (status.last_error or "")
    assert pipeline.aggregator.counters.samples == 1


@pytest.mark.parametrize("coarse_per_pass", [50_000, 0])
def test_fleet_answers_match_the_writer_memory_while_coarse_windows_are_open(
    tmp_path: Path, pg_dsn: str, coarse_per_pass: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Source b writes; a daemon with none of the data (source a) answers from PostgreSQL at
    every granularity, after every flush, across 5m and 1h closes: the same rows as b's own
    memory, whether b's coarse window is written yet or stands in as finer rows (with no
    coarse rows written at all, closed windows come from finer rows within OPEN_MARGIN)."""
    monkeypatch.setattr(sink_module, "COARSE_PER_PASS", coarse_per_pass)
    clock = ManualClock(DAY_START + 3600 - 130)  # two minutes before an hour closes
    reader, reader_sink = new_pipeline(tmp_path / "a", pg_dsn, clock)
    writer, writer_sink = new_pipeline(tmp_path / "b", pg_dsn, clock, COLLECTORD_INSTANCE_NAME="host-b")
    rng = random.Random(7)
    from collectord.aggregation.query import Query, run_query
    from collectord.sinks.postgres.fleet import fleet_query

    def compare(rows: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
        assert [(r["periodStart"], r["tags"]) for r in rows] == [(r["periodStart"], r["tags"]) for r in expected]
        for got, want in zip(rows, expected, strict=True):
            assert got["count"] == want["count"] and got["min"] == want["min"] and got["max"] == want["max"]
            assert math.isclose(got["sum"], want["sum"], rel_tol=1e-12)
            assert got["p99"] == want["p99"] and got["p50"] == want["p50"]

    async def go() -> None:
        await reader_sink._open()
        for step in range(30):
            for _ in range(20):
                host = f"h{rng.randrange(3)}"
                record(writer, [(("q.lat", (("host", host),)), KIND_HISTOGRAM, rng.lognormvariate(2, 1), 1.0, None)])
            clock.advance(10)
            writer.advance()
            reader.advance()
            await flush(writer_sink)
            if step % 3:
                continue
            now = clock.now()
            for granularity in ("1m", "5m", "1h", "1d"):
                for group_by, tags in (([], []), (["host"], []), ([], [("host", "h1")])):
                    query = Query("acme", ["q.lat"], now - 7200, now, granularity, "P99", tags=tags, group_by=group_by)
                    rows, meta = await fleet_query(reader, query)
                    assert meta["sources"] == ["host-a", "host-b"]
                    compare(rows, run_query(writer.aggregator, query))
        await writer_sink.close()
        await reader_sink.close()

    asyncio.run(go())


def test_a_large_flush_leaves_the_event_loop_free(tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """40,000 active series (a fifth histograms): while their rows are built and written, a
    probe task standing in for ingest and HTTP keeps running; the loop is never held for more
    than a small part of the flush (building all rows in one go held it for the whole)."""
    clock = ManualClock(DAY_START + 3600 - 5)  # the flush closes an hour: coarse rows too
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock, COLLECTORD_LIMITS_MAX_SERIES="100000")
    monkeypatch.setattr(sink_module, "COARSE_PER_PASS", 1_000_000)  # every closed window in this pass
    series = 40_000
    kinds = (KIND_HISTOGRAM, KIND_COUNTER, KIND_COUNTER, KIND_COUNTER, KIND_COUNTER)
    samples: list[Sample] = [
        ((f"big{i // 100}", (("id", str(i % 100)),)), kinds[i % 5], 1.0 + i % 7, 1.0, None) for i in range(series)
    ]
    assert pipeline.journal is not None
    pipeline.aggregator.apply(Batch("acme", samples, clock.now(), PAYLOAD_SAMPLES))
    clock.advance(10)
    pipeline.advance()
    gaps: list[float] = []

    async def probe(stop: asyncio.Event) -> None:
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.001)
            gaps.append(time.perf_counter() - began)

    async def go() -> float:
        await sink._open()
        stop = asyncio.Event()
        task = asyncio.create_task(probe(stop))
        await asyncio.sleep(0.01)
        gaps.clear()
        began = time.perf_counter()
        await sink.write_pending()
        took = time.perf_counter() - began
        stop.set()
        await task
        await sink.close()
        return took

    took = asyncio.run(go())
    assert sink.last_flush_rows >= series * 3  # 1m, 5m and 1h windows of every series
    assert len(gaps) >= 20
    assert max(gaps) < took / 4, (max(gaps), took)
    rows = query(pg_dsn, "SELECT granularity, count(*) AS n FROM metrics_aggregated WHERE scope = 0 GROUP BY 1")
    assert {r["granularity"]: r["n"] for r in rows} == {"1m": series, "5m": series, "1h": series}


def test_checkpointed_state_keeps_keys_in_flight_and_flushes_not_yet_absorbed(tmp_path: Path, pg_dsn: str) -> None:
    """A checkpoint taken while a pass is being written (its keys taken from the dirty set),
    or before the writer turned an offered flush into keys, must still owe those windows: a
    kill -9 then restarts from that checkpoint and the log after it only."""
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    record(pipeline, [(("m", (("k", "v"),)), KIND_COUNTER, 1.0, 1.0, None)])
    clock.advance(10)
    pipeline.advance()  # offered, not absorbed (no writer ran)
    assert sink.offers and not sink.fine
    sink.inflight = {("acme", "other", None): DAY_START - 60}
    state = sink.state()
    _, restored = new_pipeline(tmp_path / "other", pg_dsn, clock)
    restored.restore(state)
    assert restored.fine == {
        ("acme", "m", (("k", "v"),)): DAY_START,
        ("acme", "m", None): DAY_START,
        ("acme", "other", None): DAY_START - 60,
    }
    assert restored.coarse[2] == {}


def test_distribution_rows_encoded_in_groups_hold_each_window_exactly(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Histogram rows are encoded in groups (percentiles and sketches computed together): every
    stored row holds exactly the sketch bytes and p50..p99 its window gives one by one, across
    group boundaries, for common sketches and the others (negative values, sample rates, wide
    counts), and windows read again after more samples are rewritten with the new values."""
    monkeypatch.setattr(sink_module, "SKETCH_ROWS_PER_GROUP", 7)
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    rng = random.Random(5)

    def feed() -> None:
        samples: list[Sample] = []
        for i in range(60):
            key = (f"lat{i % 3}", (("id", str(i)),))
            if i % 10 == 0:
                samples += [(key, KIND_HISTOGRAM, -rng.uniform(1, 50), 1.0, None) for _ in range(3)]
            rate = 0.25 if i % 10 == 1 else 1.0
            repeat = 300 if i % 10 == 2 else rng.randint(1, 8)  # counts past one byte
            samples += [(key, KIND_HISTOGRAM, rng.uniform(0.5, 500), 1 / rate, None) for _ in range(repeat)]
            samples.append(((f"hits{i % 2}", (("id", str(i)),)), KIND_COUNTER, 1.0, 1.0, None))
        record(pipeline, samples)

    def expected() -> dict[tuple[str, str], tuple[bytes, list[float | None]]]:
        aggregator = pipeline.aggregator
        out = {}
        for (name, tags), series in aggregator.table.by_tenant["acme"].items():
            if not name.startswith("lat"):
                continue
            merged = merge_cells(aggregator.read(series, 1, int(DAY_START)))
            assert merged is not None and merged.sketch is not None
            fresh = Cell()  # no cached percentiles: computed one by one
            fresh.sketch, fresh.count, fresh.min, fresh.max = merged.sketch.copy(), merged.count, merged.min, merged.max
            out[(name, tags[0][1])] = (fresh.sketch.to_bytes(), fresh.percentiles())
        return out

    async def flush_and_close() -> None:
        await flush(sink)
        await sink.close()

    sql = (
        "SELECT metric_name, tags, sketch, p50, p90, p95, p99 FROM metrics_aggregated "
        "WHERE scope = 0 AND granularity = '1m' AND metric_name LIKE 'lat%'"
    )
    for _ in range(2):  # the second flush rewrites the same open minute with more samples
        feed()
        clock.advance(10)
        pipeline.advance()
        asyncio.run(flush_and_close())
        want = expected()
        rows = query(pg_dsn, sql)
        assert len(rows) == len(want) == 60
        for row in rows:
            sketch_bytes, percentiles = want[(row["metric_name"], row["tags"]["id"])]
            assert bytes(row["sketch"]) == sketch_bytes
            assert [row["p50"], row["p90"], row["p95"], row["p99"]] == percentiles


def test_a_minute_row_holds_the_samples_that_came_after_the_advance(tmp_path: Path, pg_dsn: str) -> None:
    """Rows are read as the windows stand when written: a series that took a sample between the
    advance and the write has it in its open minute's row (its new slice), the others are read
    straight from their minute."""
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    busy, quiet = ("hits", (("id", "busy"),)), ("hits", (("id", "quiet"),))
    record(pipeline, [(busy, KIND_COUNTER, 1.0, 1.0, None), (quiet, KIND_COUNTER, 2.0, 1.0, None)])
    record(pipeline, [(("lat", (("id", "busy"),)), KIND_HISTOGRAM, 3.0, 1.0, None)])
    clock.advance(10)
    pipeline.advance()
    record(
        pipeline, [(busy, KIND_COUNTER, 5.0, 1.0, None), (("lat", (("id", "busy"),)), KIND_HISTOGRAM, 9.0, 1.0, None)]
    )

    async def flush_and_close() -> None:
        await flush(sink)
        await sink.close()

    asyncio.run(flush_and_close())
    rows = query(pg_dsn, "SELECT metric_name, tags, count, sum, max FROM metrics_aggregated WHERE scope = 0")
    assert sorted((r["metric_name"], r["tags"]["id"], r["count"], r["sum"], r["max"]) for r in rows) == [
        ("hits", "busy", 2.0, 6.0, 5.0),
        ("hits", "quiet", 1.0, 2.0, 2.0),
        ("lat", "busy", 2.0, 12.0, 9.0),
    ]


def test_closed_coarse_windows_per_pass_grow_with_what_is_owed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At least COARSE_PER_PASS a pass; when more are owed, enough that all are written within
    half of the time the fleet query stands in for them with finer rows (OPEN_MARGIN)."""
    monkeypatch.setattr(sink_module, "COARSE_PER_PASS", 100)
    pipeline, sink = new_pipeline(tmp_path, "postgresql://127.0.0.1:1/unused", ManualClock(DAY_START))
    plan = sink_module.AggregatePlan(sink, {}, int(DAY_START))
    assert plan._coarse_budget() == 100
    for level in sink_module.COARSE_LEVELS:
        sink.coarse[level] = {("acme", f"m{i}", None): DAY_START for i in range(6_000)}
    passes = sink_module.OPEN_MARGIN / 2 / pipeline.config.aggregate.flush_interval
    assert plan._coarse_budget() == math.ceil(18_000 / passes) > 100


def test_a_minute_no_pass_has_written_is_copied_straight_in_and_a_row_there_after_all_is_upserted(
    tmp_path: Path, pg_dsn: str
) -> None:
    """After a start nothing is assumed new (the first pass upserts); then a minute no pass has
    written goes straight into the table, and a batch meeting a row that exists after all (as
    after a pass retried on failure) is upserted instead: every row holds its window's values."""
    clock = ManualClock(DAY_START + 5)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    keys = [("hits", (("id", str(i)),)) for i in range(30)] + [("lat", (("id", str(i)),)) for i in range(30)]
    sql = "SELECT metric_name, tags, period_start, count, sum, p50 FROM metrics_aggregated WHERE scope = 0"

    def feed(value: float) -> None:
        record(pipeline, [(key, KIND_HISTOGRAM if key[0] == "lat" else KIND_COUNTER, value, 1.0, None) for key in keys])

    async def flush_minute(value: float) -> None:
        feed(value)
        clock.advance(60)  # the next minute's first slice has closed
        pipeline.advance()
        await flush(sink)

    async def go() -> None:
        await flush_minute(1.0)  # 00:00, first pass: upserted
        assert sink.minute_written == DAY_START and sink.fresh_batches == sink.fresh_conflicts == 0
        await flush_minute(2.0)  # 00:01: new rows, copied straight in
        assert sink.fresh_batches == 1 and sink.fresh_conflicts == 0
        # A row of 00:02 exists already, as if an earlier try of this pass had committed it.
        await execute_sql(
            "INSERT INTO metrics_aggregated (tenant_id, source, metric_name, metric_type, scope, tags, "
            "series_hash, granularity, period_start, period_end, count, sum) SELECT tenant_id, source, "
            "metric_name, metric_type, scope, tags, series_hash, granularity, period_start + interval '1 minute', "
            "period_end + interval '1 minute', 99, 99 FROM metrics_aggregated "
            "WHERE scope = 0 AND metric_name = 'hits' AND tags = '{\"id\": \"3\"}' AND period_start = $1",
            DAY_START + 60,
        )
        await flush_minute(3.0)
        assert sink.fresh_batches == 1 and sink.fresh_conflicts == 1
        await sink.close()

    async def execute_sql(statement: str, *args: Any) -> None:
        assert sink.pool is not None
        async with sink.pool.acquire() as conn:
            await conn.execute(statement, *args)

    asyncio.run(go())
    rows = query(pg_dsn, sql)
    assert len(rows) == 3 * len(keys)
    for row in rows:
        minute = int((row["period_start"] - DAY_START) // 60)
        value = float(minute + 1)  # each minute took one sample of its own value per series
        assert (row["count"], row["sum"]) == (1.0, value), row
        assert row["p50"] == (pytest.approx(value, rel=0.01) if row["metric_name"] == "lat" else None)
