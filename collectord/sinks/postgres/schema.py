"""Versioned migrations (SQL files beside this module) and the raw table's daily partitions.

Migrations run at start, in one transaction under an advisory lock, so several daemons starting
at once apply each version exactly once; applied versions are recorded in `schema_version`.
A database at a newer version than this code knows is refused (`SchemaTooNew`).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any

import asyncpg
import msgspec

# Arbitrary but fixed: the advisory lock keys every collectord of a fleet agrees on.
MIGRATION_LOCK = 0x636F6C6C  # "coll"
PARTITION_LOCK = 0x636F6C70
MAINTENANCE_LOCK = 0x636F6D74
# Unix time of PostgreSQL's epoch (2000-01-01): timestamps travel as microseconds since it.
PG_EPOCH = 946_684_800
PARTITION_NAME = re.compile(r"^metrics_p(\d{8})$")
DAY = 86400


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer collectord; this one must not write to it."""


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) in version order."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = re.match(r"^(\d{4})_.*\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest_version() -> int:
    return migrations()[-1][0]


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to the newest version; returns it. SchemaTooNew when it is newer."""
    known = migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
        newest = known[-1][0]
        if current > newest:
            raise SchemaTooNew(
                f"the database schema is at version {current}, newer than this collectord knows ({newest}); "
                "upgrade collectord (the PostgreSQL sink stays off, ingest goes on)"
            )
        for version, name, sql in known:
            if version > current:
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", version, name)
        return int(newest)


def _encode_time(value: float | datetime) -> tuple[int]:
    if isinstance(value, datetime):
        value = value.timestamp()
    return (round((value - PG_EPOCH) * 1_000_000),)


def _decode_time(value: tuple[int]) -> float:
    return value[0] / 1_000_000 + PG_EPOCH


def _encode_json(value: Any) -> bytes:
    # jsonb's binary form: a version byte, then the JSON text.
    return b"\x01" + (value.encode() if isinstance(value, str) else msgspec.json.encode(value))


def _decode_json(data: bytes) -> Any:
    return msgspec.json.decode(data[1:])


async def setup_codecs(conn: asyncpg.Connection) -> None:
    """Timestamps as unix seconds (floats) and jsonb as Python values, on every connection:
    no datetime per row on the hot paths."""
    await conn.set_type_codec(
        "timestamptz", schema="pg_catalog", encoder=_encode_time, decoder=_decode_time, format="tuple"
    )
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_encode_json, decoder=_decode_json, format="binary")


def partition_name(day: date) -> str:
    return f"metrics_p{day:%Y%m%d}"


def day_of(when: float) -> date:
    return datetime.fromtimestamp(when - when % DAY, tz=UTC).date()


async def ensure_partitions(conn: asyncpg.Connection, first: date, last: date) -> list[str]:
    """Create the daily partitions from `first` to `last` (inclusive) that do not exist yet.
    Names and bounds come from dates, never from input: DDL cannot take parameters."""
    created = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        existing = set(await existing_partitions(conn))
        day = first
        while day <= last:
            name = partition_name(day)
            if name not in existing:
                upper = day + timedelta(days=1)
                await conn.execute(
                    f"CREATE TABLE {name} PARTITION OF metrics FOR VALUES FROM ('{day.isoformat()}') "
                    f"TO ('{upper.isoformat()}')"
                )
                created.append(name)
            day += timedelta(days=1)
    return created


async def existing_partitions(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'metrics'"
    )
    return sorted(row["relname"] for row in rows)


def partition_day(name: str) -> date | None:
    match = PARTITION_NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=UTC).date()
