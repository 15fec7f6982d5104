"""PostgresSink in process (real PostgreSQL, a manual clock): what a flush writes, checked
with SQL; raw points; hostile tags stored verbatim; resuming after a crash."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

from collectord.aggregation.sketch import Sketch
from collectord.clock import ManualClock
from collectord.config import load_config
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM, Sample
from collectord.pipeline import Pipeline
from collectord.ring import PAYLOAD_SAMPLES, PAYLOAD_STATSD, Batch
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


def test_flush_writes_every_granularity_and_open_windows(tmp_path: Path, pg_dsn: str) -> None:
    clock = ManualClock(DAY_START)
    pipeline, sink = new_pipeline(tmp_path, pg_dsn, clock)
    values = [float(v) for v in range(1, 101)]

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
    rows = query(
        pg_dsn,
        "SELECT metric_name, scope, tags, granularity, period_start, count, sum, min, max, p99, sketch, source "
        "FROM metrics_aggregated WHERE tenant_id = 'acme' ORDER BY metric_name, scope, granularity",
    )
    by = {(r["metric_name"], r["scope"], r["granularity"]): r for r in rows}
    assert len(rows) == 16  # 2 metrics x (series + name-level) x 4 granularities
    for granularity in ("1m", "5m", "1h", "1d"):
        lat = by[("lat", 0, granularity)]
        assert lat["count"] == 100 and lat["sum"] == sum(values)
        assert lat["min"] == 1 and lat["max"] == 100 and lat["tags"] == {"host": "a"}
        assert lat["period_start"] == DAY_START and lat["source"] == "host-a"
        assert math.isclose(Sketch.from_bytes(lat["sketch"]).quantile(0.99) or 0, 99, rel_tol=0.01)
        assert by[("hits", 1, granularity)]["sum"] == 200
    assert sink.status().lag_seconds == 0


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
