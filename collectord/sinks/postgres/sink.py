"""PostgresSink: aggregates upserted on the flush timer, raw points by COPY, audit events.

What is owed to PostgreSQL is kept as three things, all in every checkpoint (`state`):
- the dirty set: series (and metrics' name-level aggregates) with the earliest time not yet
  written; every window from there to now, at every granularity, is re-read from memory and
  upserted. Open windows are rewritten at every flush, so PostgreSQL lags memory by at most
  one flush interval; a closed window's last upsert is final.
- raw batches not yet written (with `raw_hwm`, the receive time of the newest written);
- audit events not yet written (idempotent by their id).
After kill -9 the checkpointed state comes back, the log's replay re-offers what came after it,
and rows this daemon may have written past its checkpoint are rewritten (aggregates overwrite;
raw points from `redo_from` on are deleted first), so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from collectord.aggregation.query import merge_cells
from collectord.aggregation.series import Series
from collectord.audit import AuditEvent
from collectord.model import Tags
from collectord.ring import PAYLOAD_AUDIT, PAYLOAD_LINE, PAYLOAD_SAMPLES, PAYLOAD_STATSD, Batch
from collectord.selfmetrics import DurationHistogram
from collectord.sinks.base import Backoff, Flush, SinkStatus
from collectord.sinks.postgres import schema
from collectord.sinks.postgres.maintenance import maintain
from collectord.sinks.postgres.rows import (
    AGGREGATE_COLUMNS,
    RAW_COLUMNS,
    RawRows,
    aggregate_row,
    series_hash,
    tags_json,
)
from collectord.storage.journal import decode_samples, encode_samples

if TYPE_CHECKING:
    from collectord.aggregation.aggregator import Aggregator
    from collectord.pipeline import Pipeline

log = logging.getLogger("collectord.sinks.postgres")

# (tenant, name, tags); tags None = the metric's name-level aggregate (all its series).
DirtyKey = tuple[str, str, Tags | None]
STATE_VERSION = 1
RAW_KINDS = {"api": PAYLOAD_SAMPLES, "line": PAYLOAD_LINE, "statsd": PAYLOAD_STATSD}
# Raw batches per COPY; series per yield to the event loop while building aggregate rows.
RAW_CHUNK = 2000
YIELD_EVERY = 2000
AUDIT_CHUNK = 5000
# Without a flush, the writer still wakes this often (raw points, audit events, retries).
IDLE_WAKE = 1.0
# How far a raw point's time may be from its receive time (late allowance + clock skew).
RAW_SKEW = 400.0

UPSERT = (
    f"INSERT INTO metrics_aggregated ({', '.join(AGGREGATE_COLUMNS)}) "
    f"SELECT {', '.join(AGGREGATE_COLUMNS)} FROM agg_stage "
    "ON CONFLICT (tenant_id, metric_name, granularity, scope, period_start, series_hash, source) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in AGGREGATE_COLUMNS[10:])
    + ", metric_type = EXCLUDED.metric_type, updated_at = now()"
)
AUDIT_INSERT = (
    "INSERT INTO audit_log (id, tenant_id, user_id, action, entity_type, entity_id, metadata, source, created_at) "
    "SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::jsonb[], "
    "$8::text[], $9::timestamptz[]) ON CONFLICT (id) DO NOTHING"
)


class PostgresSink:
    name = "postgres"

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        config = pipeline.config
        self.settings = config.postgres
        self.source = config.instance.source_id()
        self.raw_kinds = {RAW_KINDS[p] for p in self.settings.raw_protocols.split(",") if p}
        self.pool: asyncpg.Pool | None = None
        self.disabled_reason: str | None = None
        self.dirty: dict[DirtyKey, float] = {}
        self.raw: deque[Batch] = deque()
        self.audit: deque[AuditEvent] = deque()
        self.raw_hwm = 0.0
        # Raw rows received from this time on may be in PostgreSQL already (written after the
        # checkpoint a crash went back to): deleted before they are written again.
        self.redo_from: float | None = None
        self.offered_until = 0
        self.written_until = 0
        self.status_ = SinkStatus(self.name)
        # Exported as collectord_sink_write_duration_seconds{sink="postgres"}: one pass each.
        self.write_durations = DurationHistogram()
        self.wake = asyncio.Event()
        self.raw_rows = RawRows(self.source)
        self.known_tenants: set[str] = set()
        self.known_days: set[Any] = set()
        self.last_flush_seconds = 0.0
        self.last_flush_rows = 0
        self.schema_version: int | None = None
        self._maintenance: asyncio.Task[None] | None = None
        pipeline.batch_taps.append(self.on_batch)

    # ------------------------------------------------------------------ offers (event loop, cheap)

    def on_flush(self, flush: Flush) -> None:
        dirty = self.dirty
        for record in flush.view:
            cell = record.cell
            if cell.count == 0 and not cell.members:
                continue  # an idle gauge re-emitted: its windows did not change
            self._mark(record.series, record.period_start)
        for series, when in flush.touched.items():
            self._mark(series, when)
        self.offered_until = max(self.offered_until, flush.closed_until)
        if not self.written_until:
            self.written_until = flush.closed_until
        if dirty:
            self.wake.set()

    def _mark(self, series: Series, when: float) -> None:
        dirty = self.dirty
        for key in ((series.tenant, series.name, series.tags), (series.tenant, series.name, None)):
            held = dirty.get(key)
            if held is None or when < held:
                dirty[key] = when

    def on_batch(self, batch: Batch, replaying: bool) -> None:
        if batch.kind == PAYLOAD_AUDIT:
            try:
                self._push(self.audit, msgspec.json.decode(batch.payload, type=AuditEvent))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("undecodable audit event; skipped")
            return
        if batch.kind not in self.raw_kinds or not batch.samples:
            return
        if replaying:
            if batch.received_at <= self.raw_hwm:
                return
            if self.redo_from is None or batch.received_at < self.redo_from:
                self.redo_from = batch.received_at
        self._push(self.raw, batch)

    def _push(self, queue: deque[Any], item: Any) -> None:
        if len(queue) >= self.settings.spool_max_batches:
            queue.popleft()
            self.status_.dropped += 1
        queue.append(item)

    # ------------------------------------------------------------------ checkpointed state

    def state(self) -> Any:
        return {
            "v": STATE_VERSION,
            "dirty": [[t, n, None if g is None else [list(p) for p in g], w] for (t, n, g), w in self.dirty.items()],
            "raw_hwm": self.raw_hwm,
            "raw": [[b.tenant, b.received_at, b.kind, encode_samples(b.samples)] for b in self.raw],
            "audit": [msgspec.json.encode(e) for e in self.audit],
            "written_until": self.written_until,
        }

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("v") != STATE_VERSION:
            return
        for tenant, name, tags, when in state["dirty"]:
            key = (tenant, name, None if tags is None else tuple((k, v) for k, v in tags))
            self.dirty[key] = min(when, self.dirty.get(key, when))
        self.raw_hwm = float(state["raw_hwm"])
        for tenant, received_at, kind, payload in state["raw"]:
            self.raw.append(Batch(tenant, decode_samples(payload), received_at, kind))
            if self.redo_from is None or received_at < self.redo_from:
                self.redo_from = received_at
        for encoded in state["audit"]:
            self.audit.append(msgspec.json.decode(encoded, type=AuditEvent))
        self.written_until = int(state["written_until"])

    # ------------------------------------------------------------------ writer

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            maintenance, self._maintenance = self._maintenance, None
            if maintenance is not None:
                maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await maintenance

    async def _run(self) -> None:
        backoff = Backoff(base=0.5, cap=30.0)
        while True:
            try:
                if self.pool is None:
                    await self._open()
                if self._maintenance is None and self.pool is not None:
                    self._maintenance = asyncio.create_task(maintain(self.pool, self.settings))
                await self.write_pending()
                backoff.reset()
            except schema.SchemaTooNew as error:
                self._disable(str(error))
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                self._failed(error)
                await asyncio.sleep(backoff.next_delay())
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), IDLE_WAKE)
            self.wake.clear()

    def _disable(self, reason: str) -> None:
        log.error("PostgreSQL sink disabled", extra={"reason": reason})
        self.disabled_reason = reason
        self.status_.enabled = False
        self.status_.connected = False
        self.status_.last_error = reason

    def _failed(self, error: BaseException) -> None:
        status = self.status_
        if status.connected or status.errors == 0:
            log.warning("PostgreSQL unavailable; retrying with backoff", extra={"error": str(error)})
        status.connected = False
        status.errors += 1
        status.retries += 1
        status.last_error = f"{type(error).__name__}: {error}"

    async def _open(self) -> None:
        conn = await asyncpg.connect(self.settings.dsn, timeout=self.settings.connect_timeout)
        try:
            self.schema_version = await asyncio.wait_for(schema.migrate(conn), self.settings.write_timeout)
        finally:
            await conn.close(timeout=self.settings.connect_timeout)
        self.pool = await asyncpg.create_pool(
            self.settings.dsn,
            min_size=1,
            max_size=self.settings.pool_size,
            timeout=self.settings.connect_timeout,
            command_timeout=self.settings.write_timeout,
            init=schema.setup_codecs,
        )
        log.info("PostgreSQL connected", extra={"schema_version": self.schema_version})

    async def write_pending(self) -> None:
        """One pass: raw points, audit events, then every dirty window."""
        assert self.pool is not None
        began = time.perf_counter()
        async with self.pool.acquire(timeout=self.settings.connect_timeout) as conn:
            if self.redo_from is not None:
                await self._redo(conn, self.redo_from)
                self.redo_from = None
            while self.raw:
                await self._write_raw(conn)
            while self.audit:
                await self._write_audit(conn)
            if self.dirty:
                await self._write_aggregates(conn)
            else:
                self.written_until = self.offered_until
        self.write_durations.observe(time.perf_counter() - began)
        self.status_.connected = True

    async def _redo(self, conn: asyncpg.Connection, since: float) -> None:
        deleted = await conn.execute(
            'DELETE FROM metrics WHERE source = $1 AND received_at >= $2 AND "timestamp" >= $3',
            self.source,
            since,
            since - RAW_SKEW,
        )
        log.info("raw points past the checkpoint rewritten", extra={"since": since, "deleted": deleted})

    async def _tenants(self, conn: asyncpg.Connection, tenants: set[str]) -> None:
        new = tenants - self.known_tenants
        if new:
            await conn.execute("INSERT INTO tenants (id) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", sorted(new))
            self.known_tenants |= new

    async def _partitions(self, conn: asyncpg.Connection, low: float, high: float) -> None:
        first, last = schema.day_of(low), schema.day_of(high)
        day = first
        missing = False
        while day <= last:
            if day not in self.known_days:
                missing = True
            day += timedelta(days=1)
        if missing:
            await schema.ensure_partitions(
                conn, first, max(last, first + timedelta(days=self.settings.partitions_ahead))
            )
            day = first
            while day <= last:
                self.known_days.add(day)
                day += timedelta(days=1)

    async def _write_raw(self, conn: asyncpg.Connection) -> None:
        batches = [self.raw[i] for i in range(min(RAW_CHUNK, len(self.raw)))]
        records: list[tuple[Any, ...]] = []
        for batch in batches:
            records.extend(self.raw_rows.records(batch.tenant, batch.received_at, batch.samples))
        if records:
            await self._tenants(conn, {b.tenant for b in batches})
            times = [r[7] for r in records]
            await self._partitions(conn, min(times), max(times))
            await conn.copy_records_to_table(
                "metrics", records=records, columns=RAW_COLUMNS, timeout=self.settings.write_timeout
            )
        for _ in batches:
            self.raw.popleft()
        self.raw_hwm = max(self.raw_hwm, batches[-1].received_at)
        self.status_.written += len(records)
        self.status_.extra["rawRowsWritten"] = self.status_.extra.get("rawRowsWritten", 0) + len(records)

    async def _write_audit(self, conn: asyncpg.Connection) -> None:
        events = [self.audit[i] for i in range(min(AUDIT_CHUNK, len(self.audit)))]
        await self._tenants(conn, {e.tenant for e in events})
        await conn.execute(
            AUDIT_INSERT,
            [e.id for e in events],
            [e.tenant for e in events],
            [e.user for e in events],
            [e.action for e in events],
            [e.entity_type for e in events],
            [e.entity_id for e in events],
            [msgspec.json.encode(e.metadata).decode() for e in events],
            [self.source] * len(events),
            [e.at for e in events],
        )
        for _ in events:
            self.audit.popleft()
        self.status_.extra["auditWritten"] = self.status_.extra.get("auditWritten", 0) + len(events)

    async def _write_aggregates(self, conn: asyncpg.Connection) -> None:
        began = time.perf_counter()
        taken, self.dirty = self.dirty, {}
        until = self.offered_until
        try:
            records = await self.aggregate_records(self.pipeline.aggregator, taken, until)
            await self._tenants(conn, {key[0] for key in taken})
            async with conn.transaction():
                await conn.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS agg_stage "
                    "(LIKE metrics_aggregated INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                )
                await conn.copy_records_to_table(
                    "agg_stage", records=records, columns=AGGREGATE_COLUMNS, timeout=self.settings.write_timeout
                )
                await conn.execute(UPSERT)
        except BaseException:
            for key, when in taken.items():
                held = self.dirty.get(key)
                if held is None or when < held:
                    self.dirty[key] = when
            raise
        self.written_until = max(self.written_until, until)
        self.last_flush_seconds = time.perf_counter() - began
        self.last_flush_rows = len(records)
        self.status_.written += len(records)

    async def aggregate_records(
        self, aggregator: Aggregator, taken: dict[DirtyKey, float], until: int
    ) -> list[tuple[Any, ...]]:
        """Every window of every granularity from each key's earliest dirty time to the last
        closed slice, read from memory (open windows as they stand). Yields to the loop now
        and then: ingest goes on while a large flush is built."""
        records: list[tuple[Any, ...]] = []
        last = max(until - 1, 0)
        level_seconds = aggregator.level_seconds
        by_tenant = aggregator.table.by_tenant
        for done, ((tenant, name, tags), earliest) in enumerate(taken.items()):
            if done % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if tags is None:
                totals = aggregator.name_totals.get((tenant, name))
                named = aggregator.table.by_name.get((tenant, name))
                if totals is None and not named:
                    continue
                metric_type = totals.type if totals is not None else next(iter(named.values())).type  # type: ignore[union-attr]
                hashed, text = b"", "{}"
                series = None
            else:
                series = by_tenant.get(tenant, {}).get((name, tags))
                if series is None:
                    continue
                metric_type = series.type
                hashed, text = series_hash(tags), tags_json(tags)
            for level in range(1, 5):
                seconds = level_seconds[level]
                start = int(earliest // seconds) * seconds
                while start <= last:
                    if series is None:
                        parts = aggregator.read_name_totals(tenant, name, level, start)
                    else:
                        parts = aggregator.read(series, level, start)
                    cell = merge_cells(parts)
                    if cell is not None and not cell.is_empty:
                        records.append(
                            aggregate_row(
                                tenant, self.source, name, metric_type, tags, level, start, seconds, cell, hashed, text
                            )
                        )
                    start += seconds
        return records

    async def drain(self) -> None:
        if self.pool is None or self.disabled_reason:
            return
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            await self.write_pending()

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 5.0)

    def status(self) -> SinkStatus:
        status = self.status_
        status.queued = len(self.dirty) + len(self.raw) + len(self.audit)
        behind = self.offered_until - self.written_until if (self.dirty or self.raw or self.audit) else 0
        status.lag_seconds = float(max(behind, 0))
        status.extra.update(
            {
                "source": self.source,
                "schemaVersion": self.schema_version,
                "dirtySeries": len(self.dirty),
                "rawBatchesQueued": len(self.raw),
                "auditQueued": len(self.audit),
                "lastFlushSeconds": round(self.last_flush_seconds, 3),
                "lastFlushRows": self.last_flush_rows,
            }
        )
        return status
