"""collectord/sinks/postgres/schema.py against a real PostgreSQL 15 (a fresh database each)."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg
import pytest

from collectord.sinks.postgres import schema


async def _migrate_twice_concurrently(dsn: str) -> list[int]:
    conns = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        return list(await asyncio.gather(*(schema.migrate(c) for c in conns)))
    finally:
        for c in conns:
            await c.close()


def test_migrations_from_empty_then_rerun_and_concurrent(pg_dsn: str) -> None:
    latest = schema.latest_version()
    assert asyncio.run(_migrate_twice_concurrently(pg_dsn)) == [latest] * 3

    async def check() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            versions = await conn.fetch("SELECT version FROM schema_version ORDER BY version")
            assert [r["version"] for r in versions] == list(range(1, latest + 1))
            assert await schema.migrate(conn) == latest  # re-run: nothing applied again
            assert await conn.fetchval("SELECT count(*) FROM schema_version") == latest
            tables = {
                r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            }
            assert {"tenants", "metrics_aggregated", "audit_log", "schema_version"} <= tables
            kind = await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'metrics'")
            assert kind == b"p" or kind == "p"  # partitioned
        finally:
            await conn.close()

    asyncio.run(check())


def test_newer_schema_is_a_clear_error(pg_dsn: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await schema.migrate(conn)
            await conn.execute("INSERT INTO schema_version (version, name) VALUES (999, '0999_future.sql')")
            with pytest.raises(schema.SchemaTooNew, match="version 999"):
                await schema.migrate(conn)
        finally:
            await conn.close()

    asyncio.run(go())


def test_daily_partitions_are_created_once(pg_dsn: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await schema.migrate(conn)
            made = await schema.ensure_partitions(conn, date(2026, 1, 30), date(2026, 2, 1))
            assert made == ["metrics_p20260130", "metrics_p20260131", "metrics_p20260201"]
            assert await schema.ensure_partitions(conn, date(2026, 1, 31), date(2026, 2, 1)) == []
            names = await schema.existing_partitions(conn)
            assert names == made
            assert schema.partition_day(names[0]) == date(2026, 1, 30)
        finally:
            await conn.close()

    asyncio.run(go())
