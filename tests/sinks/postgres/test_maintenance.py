"""collectord/sinks/postgres/maintenance.py: retention by dropping partitions and by
granularity, partitions ahead, one daemon at a time."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg

from collectord.config import Postgres
from collectord.sinks.postgres import schema
from collectord.sinks.postgres.maintenance import apply_retention
from tests.integration.pg import query

NOW = 1_800_057_600.0 + 3600  # 2027-01-15 01:00 UTC
DAY = 86400


async def _setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await schema.setup_codecs(conn)
    try:
        await schema.migrate(conn)
        await schema.ensure_partitions(conn, schema.day_of(NOW - 40 * DAY), schema.day_of(NOW))
        rows = []
        for granularity, age in (
            ("1m", 13),
            ("1m", 15),
            ("5m", 89),
            ("5m", 91),
            ("1h", 700),
            ("1h", 740),
            ("1d", 5000),
        ):
            start = NOW - age * DAY
            rows.append(
                (
                    "t",
                    "s",
                    "m",
                    "GAUGE",
                    0,
                    "{}",
                    granularity.encode() + str(age).encode(),
                    granularity,
                    start,
                    start + 60,
                    1.0,
                    1.0,
                )
            )
        await conn.copy_records_to_table(
            "metrics_aggregated",
            records=rows,
            columns=(
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
            ),
        )
        await conn.copy_records_to_table(
            "metrics",
            records=[("t", "s", "m", 1.0, "GAUGE", 1.0, "{}", NOW - age * DAY, NOW) for age in (1, 29, 31, 35)],
            columns=(
                "tenant_id",
                "source",
                "metric_name",
                "metric_value",
                "metric_type",
                "weight",
                "tags",
                "timestamp",
                "received_at",
            ),
        )
    finally:
        await conn.close()


def test_retention_drops_old_partitions_and_rows_per_granularity(pg_dsn: str) -> None:
    asyncio.run(_setup(pg_dsn))

    async def run(settings: Postgres) -> object:
        conn = await asyncpg.connect(pg_dsn)
        other = await asyncpg.connect(pg_dsn)
        await schema.setup_codecs(conn)
        try:
            # Another daemon holds the lock: this one skips its turn.
            await other.execute("SELECT pg_advisory_lock($1)", schema.MAINTENANCE_LOCK)
            assert await apply_retention(conn, settings, NOW) is None
            await other.execute("SELECT pg_advisory_unlock($1)", schema.MAINTENANCE_LOCK)
            return await apply_retention(conn, settings, NOW)
        finally:
            await conn.close()
            await other.close()

    done = asyncio.run(run(Postgres(dsn=pg_dsn)))
    assert isinstance(done, dict)
    assert done["deleted"] == {"1m": 1, "5m": 1, "1h": 1}
    left = query(pg_dsn, "SELECT granularity, period_start FROM metrics_aggregated ORDER BY granularity, period_start")
    ages = sorted((r["granularity"], round((NOW - r["period_start"]) / DAY)) for r in left)
    assert ages == [("1d", 5000), ("1h", 700), ("1m", 13), ("5m", 89)]
    raw = sorted(round((NOW - r["timestamp"]) / DAY) for r in query(pg_dsn, 'SELECT "timestamp" FROM metrics'))
    assert raw == [1, 29]
    names = [r["relname"] for r in query(pg_dsn, "SELECT relname FROM pg_class WHERE relname LIKE 'metrics_p%'")]
    days = sorted(d for d in (schema.partition_day(n) for n in names) if d is not None)
    assert days[0] >= date.fromtimestamp(NOW - 31 * DAY) and days[-1] == schema.day_of(NOW + 3 * DAY)
