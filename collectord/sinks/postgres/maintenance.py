"""Retention and partitions ahead, in the background: raw points go a daily partition at a
time (detached concurrently, then dropped: no lock that would stall a COPY), aggregates by
granularity in small deletes. One daemon of a fleet does it at a time (advisory lock)."""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from datetime import timedelta
from typing import Any

import asyncpg

from collectord.config import Postgres
from collectord.sinks.postgres import schema

log = logging.getLogger("collectord.sinks.postgres")

DELETE_CHUNK = 10_000
DELETE_AGGREGATES = (
    "DELETE FROM metrics_aggregated WHERE ctid = ANY(ARRAY("
    "SELECT ctid FROM metrics_aggregated WHERE granularity = $1 AND period_end <= $2 LIMIT $3))"
)


def _deleted(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def apply_retention(conn: asyncpg.Connection, settings: Postgres, now: float) -> dict[str, Any] | None:
    """Create partitions ahead and drop what is past retention; None when another daemon holds
    the maintenance lock."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", schema.MAINTENANCE_LOCK):
        return None
    try:
        today = schema.day_of(now)
        created = await schema.ensure_partitions(
            conn, today - timedelta(days=1), today + timedelta(days=settings.partitions_ahead)
        )
        dropped = []
        raw_cutoff = now - settings.raw_retention
        for name in await schema.existing_partitions(conn):
            day = schema.partition_day(name)
            if day is None:
                continue
            ends = calendar.timegm((day + timedelta(days=1)).timetuple())
            if ends <= raw_cutoff:
                # Names come from pg_inherits and match metrics_pYYYYMMDD: safe as identifiers.
                await conn.execute(f"ALTER TABLE metrics DETACH PARTITION {name} CONCURRENTLY")
                await conn.execute(f"DROP TABLE {name}")
                dropped.append(name)
        deleted: dict[str, int] = {}
        for granularity, keep in (
            ("1m", settings.retention_1m),
            ("5m", settings.retention_5m),
            ("1h", settings.retention_1h),
            ("1d", settings.retention_1d),
        ):
            if keep <= 0:
                continue
            total = 0
            while True:
                count = _deleted(await conn.execute(DELETE_AGGREGATES, granularity, now - keep, DELETE_CHUNK))
                total += count
                if count < DELETE_CHUNK:
                    break
                await asyncio.sleep(0)
            deleted[granularity] = total
        return {"created": created, "dropped": dropped, "deleted": deleted}
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", schema.MAINTENANCE_LOCK)


async def maintain(pool: asyncpg.Pool, settings: Postgres) -> None:
    """Forever: retention now, then every maintenance_interval; failures wait for the next turn."""
    while True:
        try:
            async with pool.acquire() as conn:
                done = await apply_retention(conn, settings, time.time())
            if done and (done["dropped"] or any(done["deleted"].values())):
                log.info("retention applied", extra=done)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
            log.warning("retention skipped this turn", extra={"error": str(error)})
        await asyncio.sleep(settings.maintenance_interval)
