"""PostgresSink: aggregates upserted on the flush timer, raw points by COPY, audit events.

What is owed to PostgreSQL is kept as three things, all in every checkpoint (`state`):
- the dirty sets, per series (and per metric: its name-level aggregate):
  `fine`, the earliest time whose 1m windows must be (re)written: every 1m window from there
  to now, the open one included, is re-read from memory and upserted at the next flush, so
  PostgreSQL's 1m rows lag memory by at most one flush interval;
  `coarse[level]` (5m, 1h, 1d), the earliest time whose windows at that level are owed: they
  are written once closed (and again if late samples touch them), about COARSE_PER_PASS per
  pass, so a flush writes about one row per active series instead of four. A fleet query
  makes up for an open (or not yet written) coarse window from the finer rows inside it
  (fleet.py), so answers stay exact to one flush interval;
- raw batches not yet written (with `raw_hwm`, the receive time of the newest written);
- audit events not yet written (idempotent by their id).
After kill -9 the checkpointed state comes back, the log's replay re-offers what came after it,
and rows this daemon may have written past its checkpoint are rewritten (aggregates overwrite;
raw points from `redo_from` on are deleted first), so nothing is lost or doubled.

Nothing here holds the event loop for long: rows are encoded to binary COPY bytes in slices of
BUILD_SLICE seconds, and the loop runs between slices (ingest, HTTP, flushes go on; a window
read after a yield is read as it then stands, and anything that changed it meanwhile marks it
dirty again).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from collectord.aggregation.cells import Cell, encode_distributions
from collectord.aggregation.query import merge_cells
from collectord.aggregation.series import Series
from collectord.audit import AuditEvent
from collectord.model import MetricType, Tags
from collectord.ring import PAYLOAD_AUDIT, PAYLOAD_LINE, PAYLOAD_SAMPLES, PAYLOAD_STATSD, Batch
from collectord.selfmetrics import DurationHistogram
from collectord.sinks.base import Backoff, Flush, SinkStatus
from collectord.sinks.postgres import copy, schema
from collectord.sinks.postgres.fleet import OPEN_MARGIN
from collectord.sinks.postgres.maintenance import maintain
from collectord.sinks.postgres.rows import AGGREGATE_COLUMNS, RAW_COLUMNS, AggregateRows, RawRows
from collectord.storage.journal import decode_samples, encode_samples

if TYPE_CHECKING:
    from collectord.aggregation.aggregator import Aggregator, FlushRecord
    from collectord.pipeline import Pipeline

log = logging.getLogger("collectord.sinks.postgres")

RAW_KINDS = {"api": PAYLOAD_SAMPLES, "line": PAYLOAD_LINE, "statsd": PAYLOAD_STATSD}
# (tenant, name, tags); tags None = the metric's name-level aggregate (all its series).
DirtyKey = tuple[str, str, Tags | None]
STATE_VERSION = 2
COARSE_LEVELS = (2, 3, 4)
# Closed coarse windows written per pass at most: an hour or a day closing spreads over several
# flushes instead of making one flush four times as large (an hour's close of 100,000 series,
# about 200,000 windows, adds 20,000 rows to ten flushes). More when so many are owed that they
# would not all be written within half of OPEN_MARGIN, the time the fleet query reads finer rows
# in place of a coarse row not written yet (_coarse_budget).
COARSE_PER_PASS = 20_000
# Aggregate rows per COPY + upsert (the next batch is encoded while one is upserted): small
# enough that the last batch's upsert, which nothing overlaps, is short.
ROWS_PER_BATCH = 10_000
# Distribution rows held back and encoded together (their percentiles computed at once, see
# `encode_distributions`): enough to amortise the numpy calls, few enough that one group is
# encoded in a few milliseconds (500 compact sketches: about 1.5 ms; 200 took 18% more CPU
# per sketch).
SKETCH_ROWS_PER_GROUP = 500
# Connections that upsert one pass's batches side by side (PostgreSQL runs a process per
# connection: the upsert, most of a flush's time, spreads over cores). Taken from the pool,
# leaving two for queries and maintenance.
UPSERT_CONNECTIONS = 2
# Raw rows per COPY (whole batches; at least one).
RAW_ROWS_PER_COPY = 200_000
AUDIT_CHUNK = 5000
# Flush records turned into dirty keys between checks of the time slice.
ABSORB_STEP = 5000
# Encoding runs at most this long before the event loop gets control back.
BUILD_SLICE = 0.005
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


def _lower(held: dict[DirtyKey, float], key: DirtyKey, when: float) -> None:
    old = held.get(key)
    if old is None or when < old:
        held[key] = when


async def _all_or_none(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Run the jobs as tasks until all are done; on the first failure cancel the others and
    raise that failure as it is (the writer's retry matches on its type)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _absorb(
    fine: dict[DirtyKey, float], view: list[FlushRecord], touched: dict[Series, float], lo: int, hi: int
) -> int:
    """Mark the series of view[lo:hi] (and their metrics) and every touched series dirty in
    `fine`; returns where it stopped."""
    names: dict[tuple[str, str], float] = {}
    for series, start, cell in itertools.islice(view, lo, hi):
        if cell.count == 0 and not cell.members:
            continue  # an idle gauge re-emitted: its windows did not change
        key = (series.tenant, series.name, series.tags)
        held = fine.get(key)
        if held is None or start < held:
            fine[key] = start
        metric = (series.tenant, series.name)
        held = names.get(metric)
        if held is None or start < held:
            names[metric] = start
    for series, when in touched.items():
        _lower(fine, (series.tenant, series.name, series.tags), when)
        _lower(fine, (series.tenant, series.name, None), when)
    for (tenant, name), when in names.items():
        _lower(fine, (tenant, name, None), when)
    return min(hi, len(view))


class _Slicer:
    """Says when the current slice of encoding work has run BUILD_SLICE seconds."""

    def __init__(self) -> None:
        self.began = time.perf_counter()

    def due(self) -> bool:
        return time.perf_counter() - self.began >= BUILD_SLICE

    async def pause(self) -> None:
        await asyncio.sleep(0)
        self.began = time.perf_counter()


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
        self.fine: dict[DirtyKey, float] = {}
        # Flushes offered and not yet turned into dirty keys: (view, touched).
        self.offers: deque[tuple[list[FlushRecord], dict[Series, float]]] = deque()
        self.coarse: dict[int, dict[DirtyKey, float]] = {level: {} for level in COARSE_LEVELS}
        # The series of keys with coarse windows owed: a series idle past its expiry leaves
        # the aggregator's table, but its windows must still be written once closed.
        self.series_refs: dict[DirtyKey, Series] = {}
        # Fine keys taken by the pass being written: still owed until it commits.
        self.inflight: dict[DirtyKey, float] = {}
        self._writing = False
        self.raw: deque[Batch] = deque()
        self.audit: deque[AuditEvent] = deque()
        self.raw_hwm = 0.0
        # Raw rows received from this time on may be in PostgreSQL already (written after the
        # checkpoint a crash went back to): deleted before they are written again.
        self.redo_from: float | None = None
        self.offered_until = 0
        self.written_until = 0
        # The newest open minute a committed pass wrote; a later minute's rows cannot exist
        # yet (None after a start: unknown, so the first pass upserts everything).
        self.minute_written: int | None = None
        # Batches of new rows copied straight in, and those that met an existing row and went
        # through the upsert instead.
        self.fresh_batches = 0
        self.fresh_conflicts = 0
        self.status_ = SinkStatus(self.name)
        # Exported as collectord_sink_write_duration_seconds{sink="postgres"}: one pass each.
        self.write_durations = DurationHistogram()
        self.wake = asyncio.Event()
        self.raw_rows = RawRows(self.source)
        self.aggregate_rows = AggregateRows(self.source)
        self.known_tenants: set[str] = set()
        # Tenants of coarse windows owed from a checkpoint (registered before the first write).
        self.restored_tenants: set[str] = set()
        self.known_days: set[Any] = set()
        self.last_flush_seconds = 0.0
        self.last_flush_rows = 0
        self.last_flush_phases: dict[str, float] = {}
        self.longest_slice = 0.0
        self.schema_version: int | None = None
        self._maintenance: asyncio.Task[None] | None = None
        pipeline.batch_taps.append(self.on_batch)

    # ------------------------------------------------------------------ offers (event loop, cheap)

    def on_flush(self, flush: Flush) -> None:
        """Keep the flush for the writer, which turns it into dirty keys in slices (a flush of
        100,000 series is 100,000 records); during replay at once (nothing else runs)."""
        if flush.replaying:
            _absorb(self.fine, flush.view, flush.touched, 0, len(flush.view))
        else:
            self.offers.append((flush.view, flush.touched))
        self.offered_until = max(self.offered_until, flush.closed_until)
        if not self.written_until:
            self.written_until = flush.closed_until
        self.wake.set()

    async def _absorb(self) -> None:
        """Turn every kept flush into dirty keys, in slices; returns once none is left (with
        no await after the last one, so the caller sees every offer up to offered_until)."""
        slicer = _Slicer()
        while self.offers:
            view, touched = self.offers[0]
            done = 0
            while done < len(view):
                done = _absorb(self.fine, view, touched if done == 0 else {}, done, done + ABSORB_STEP)
                if slicer.due():
                    self._slice_took(slicer)
                    self.offers[0] = (view[done:], {})
                    await slicer.pause()
                    break
            else:
                if not view:
                    _absorb(self.fine, view, touched, 0, 0)
                self.offers.popleft()

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

    @staticmethod
    def _encode_keys(held: dict[DirtyKey, float]) -> list[list[Any]]:
        return [[t, n, None if g is None else [list(p) for p in g], w] for (t, n, g), w in held.items()]

    @staticmethod
    def _decode_keys(encoded: list[list[Any]], into: dict[DirtyKey, float]) -> None:
        for tenant, name, tags, when in encoded:
            _lower(into, (tenant, name, None if tags is None else tuple((k, v) for k, v in tags)), when)

    def state(self) -> Any:
        fine = dict(self.fine)
        for view, touched in self.offers:
            _absorb(fine, view, touched, 0, len(view))
        for key, when in self.inflight.items():
            _lower(fine, key, when)
        return {
            "v": STATE_VERSION,
            "fine": self._encode_keys(fine),
            "coarse": {str(level): self._encode_keys(held) for level, held in self.coarse.items()},
            "raw_hwm": self.raw_hwm,
            "raw": [[b.tenant, b.received_at, b.kind, encode_samples(b.samples)] for b in self.raw],
            "audit": [msgspec.json.encode(e) for e in self.audit],
            "written_until": self.written_until,
        }

    def restore(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("v") not in (1, STATE_VERSION):
            return
        if state["v"] == 1:  # one dirty set for every granularity
            self._decode_keys(state["dirty"], self.fine)
            for held in self.coarse.values():
                self._decode_keys(state["dirty"], held)
        else:
            self._decode_keys(state["fine"], self.fine)
            for level, encoded in state["coarse"].items():
                self._decode_keys(encoded, self.coarse[int(level)])
        self.restored_tenants = {key[0] for held in self.coarse.values() for key in held}
        self.raw_hwm = float(state["raw_hwm"])
        for tenant, received_at, kind, payload in state["raw"]:
            self.raw.append(Batch(tenant, decode_samples(payload), received_at, kind))
            if self.redo_from is None or received_at < self.redo_from:
                self.redo_from = received_at
        for encoded_event in state["audit"]:
            self.audit.append(msgspec.json.decode(encoded_event, type=AuditEvent))
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
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from error  # a cleanup error hid the cancel
                self._failed(error)
                await self._absorb()  # flushes kept meanwhile become keys (bounded by the series)
                await asyncio.sleep(backoff.next_delay())
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns normally when the
            # wake-up and a cancel (the daemon stopping) land together, and the cancel is lost.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_WAKE):
                    await self.wake.wait()
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
        """One pass: raw points, audit events, then the dirty and due windows."""
        assert self.pool is not None
        began = time.perf_counter()
        await self._absorb()
        async with self.pool.acquire(timeout=self.settings.connect_timeout) as conn:
            if self.redo_from is not None:
                await self._redo(conn, self.redo_from)
                self.redo_from = None
            while self.raw:
                await self._write_raw(conn)
            while self.audit:
                await self._write_audit(conn)
            await self._absorb()
            if self.fine or self._coarse_due(self.offered_until):
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
        """One COPY of up to RAW_ROWS_PER_COPY rows; rows are encoded while PostgreSQL takes
        the previous chunks. The days they fall on are found first (partitions must exist)."""
        batches: list[Batch] = []
        rows = 0
        low, high = math.inf, -math.inf
        slicer = _Slicer()
        # A snapshot: batches are appended while the loop runs between slices.
        for batch in list(self.raw):
            if rows >= RAW_ROWS_PER_COPY:
                break
            batches.append(batch)
            rows += len(batch.samples)
            stamped = [ts for *_, ts in batch.samples if ts is not None]
            low = min(low, batch.received_at, *stamped)
            high = max(high, batch.received_at, *stamped)
            if slicer.due():
                self._slice_took(slicer)
                await slicer.pause()
        written = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal written
            out = bytearray(copy.HEADER)
            encode = self.raw_rows.encode
            slicer = _Slicer()
            for batch in batches:
                written += encode(batch.tenant, batch.received_at, batch.samples, out)[0]
                if len(out) >= copy.COPY_CHUNK_BYTES or slicer.due():
                    yield bytes(out)
                    out.clear()
                    if slicer.due():
                        self._slice_took(slicer)
                        await slicer.pause()
            out += copy.TRAILER
            yield bytes(out)

        if rows:
            await self._tenants(conn, {b.tenant for b in batches})
            await self._partitions(conn, low, high)
            await conn.copy_to_table(
                "metrics", source=chunks(), columns=RAW_COLUMNS, format="binary", timeout=self.settings.write_timeout
            )
        taken_ids = {id(b) for b in batches}
        while self.raw and id(self.raw[0]) in taken_ids:
            self.raw.popleft()
        self.raw_hwm = max(self.raw_hwm, batches[-1].received_at)
        self.status_.written += written
        self.status_.extra["rawRowsWritten"] = self.status_.extra.get("rawRowsWritten", 0) + written

    def _slice_took(self, slicer: _Slicer) -> None:
        took = time.perf_counter() - slicer.began
        if took > self.longest_slice:
            self.longest_slice = took

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

    def _coarse_due(self, until: int) -> bool:
        """Whether some owed coarse window has closed (every slice before `until` has)."""
        seconds = self.pipeline.aggregator.level_seconds
        return any(held and min(held.values()) < until - until % seconds[level] for level, held in self.coarse.items())

    async def _write_aggregates(self, conn: asyncpg.Connection) -> None:
        began = time.perf_counter()
        taken, self.fine = self.fine, {}
        self.inflight = taken
        until = self.offered_until
        plan = AggregatePlan(self, taken, until)
        self._writing = True
        try:
            await self._tenants(conn, {key[0] for key in taken} | self.restored_tenants)
            self.restored_tenants = set()
            await self._copy_and_upsert(conn, plan)
        except BaseException:
            for key, when in taken.items():
                _lower(self.fine, key, when)
            raise
        finally:
            self.inflight = {}
            self._writing = False
        plan.committed()
        self.minute_written = max(self.minute_written or 0, plan.open_minute)
        self.written_until = max(self.written_until, until)
        self.last_flush_seconds = time.perf_counter() - began
        self.last_flush_rows = plan.rows
        self.last_flush_phases = plan.phases
        self.status_.written += plan.rows

    @property
    def writing(self) -> bool:
        """A pass of aggregate windows is being read and written (Pipeline.sinks_writing)."""
        return self._writing

    def _upsert_connections(self) -> int:
        return max(1, min(UPSERT_CONNECTIONS, self.settings.pool_size - 2))

    async def _copy_and_upsert(self, conn: asyncpg.Connection, plan: AggregatePlan) -> None:
        """Each batch the plan encodes is copied into a staging table and upserted, on one of
        `_upsert_connections()` connections, each in its own transaction; the next batches are
        encoded while PostgreSQL works on the previous ones. Every key of a pass is in one
        batch, so the connections write disjoint rows (no lock waits between them); if one
        fails, the pass is retried whole (rows are keyed: rewriting them is harmless)."""
        assert self.pool is not None
        phases = plan.phases
        async with contextlib.AsyncExitStack() as stack:
            conns = [conn]
            for _ in range(self._upsert_connections() - 1):
                conns.append(await stack.enter_async_context(self.pool.acquire(timeout=self.settings.connect_timeout)))
            ready: asyncio.Queue[tuple[bytes, bool] | None] = asyncio.Queue()

            async def produce() -> None:
                try:
                    async for batch in plan.batches():
                        ready.put_nowait(batch)
                        while ready.qsize() >= 2 * len(conns):  # bounded ahead of PostgreSQL
                            await asyncio.sleep(0.005)
                finally:
                    for _ in conns:  # the end, or the producer's failure: every consumer stops
                        ready.put_nowait(None)

            async def consume(writer: asyncpg.Connection) -> None:
                async with writer.transaction():
                    await writer.execute(
                        "CREATE TEMP TABLE IF NOT EXISTS agg_stage "
                        "(LIKE metrics_aggregated INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    )
                    while (item := await ready.get()) is not None:
                        batch, fresh = item
                        began = time.perf_counter()
                        if fresh and await self._copy_new_rows(writer, batch):
                            phases["copy"] += time.perf_counter() - began
                            continue
                        await writer.copy_to_table(
                            "agg_stage",
                            source=memoryview(batch),  # bytes would be taken for a path
                            columns=AGGREGATE_COLUMNS,
                            format="binary",
                            timeout=self.settings.write_timeout,
                        )
                        copied = time.perf_counter()
                        await writer.execute(UPSERT)
                        await writer.execute("TRUNCATE agg_stage")
                        phases["copy"] += copied - began
                        phases["upsert"] += time.perf_counter() - copied
                    began = time.perf_counter()
                phases["commit"] = max(phases["commit"], time.perf_counter() - began)

            await _all_or_none([produce(), *(consume(writer) for writer in conns)])

    async def _copy_new_rows(self, writer: asyncpg.Connection, batch: bytes) -> bool:
        """COPY rows that should not exist yet straight into the table, under a savepoint;
        False (and nothing written) when one does exist: the caller upserts the batch."""
        try:
            async with writer.transaction():
                await writer.copy_to_table(
                    "metrics_aggregated",
                    source=memoryview(batch),
                    columns=AGGREGATE_COLUMNS,
                    format="binary",
                    timeout=self.settings.write_timeout,
                )
        except asyncpg.UniqueViolationError:
            self.fresh_conflicts += 1
            return False
        self.fresh_batches += 1
        return True

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
        status.queued = len(self.fine) + len(self.inflight) + len(self.offers) + len(self.raw) + len(self.audit)
        behind = self.offered_until - self.written_until if status.queued else 0
        status.lag_seconds = float(max(behind, 0))
        status.extra.update(
            {
                "source": self.source,
                "schemaVersion": self.schema_version,
                "dirtySeries": len(self.fine) + len(self.inflight),
                "coarseOwed": {GRANULARITY[level]: len(held) for level, held in self.coarse.items()},
                "rawBatchesQueued": len(self.raw),
                "auditQueued": len(self.audit),
                "lastFlushSeconds": round(self.last_flush_seconds, 3),
                "lastFlushRows": self.last_flush_rows,
                "lastFlushPhasesSeconds": {k: round(v, 3) for k, v in self.last_flush_phases.items()},
                "longestLoopSliceMs": round(self.longest_slice * 1000, 1),
            }
        )
        return status


GRANULARITY = {2: "5m", 3: "1h", 4: "1d"}


class AggregatePlan:
    """One pass's aggregate rows: every 1m window of the fine keys from their earliest dirty
    time to the last closed slice (open window included), then closed coarse windows owed, up
    to COARSE_PER_PASS. Encoded in slices; `committed` settles the coarse sets afterwards."""

    def __init__(self, sink: PostgresSink, taken: dict[DirtyKey, float], until: int) -> None:
        self.sink = sink
        self.aggregator: Aggregator = sink.pipeline.aggregator
        self.taken = taken
        self.until = until
        self.rows = 0
        last = max(until - 1, 0)
        self.open_minute = last - last % self.aggregator.level_seconds[1]
        # The open minute's rows when no pass of this process has written that minute yet
        # (`_buffer`): new rows, copied straight into the table (no staging table, no conflict
        # check: a third less PostgreSQL CPU for a minute's first flush). A row there after all
        # (a pass retried after a failure, two daemons with one source name) sends its batch
        # through the upsert instead.
        written = sink.minute_written
        self.fresh_minute = self.open_minute if written is not None and self.open_minute > written else None
        self.fresh = bytearray(copy.HEADER)
        # (level, key) -> the start of the window it is owed from after this pass.
        self.settled: list[tuple[int, DirtyKey, int]] = []
        # Seconds spent per phase: encoding rows (event loop), COPY and upsert (summed over the
        # connections), the slowest commit.
        self.phases = {"encode": 0.0, "copy": 0.0, "upsert": 0.0, "commit": 0.0}
        # Rows with a sketch, counted in `rows` but not yet in the batch: (prefix, level, start,
        # seconds, cell). A batch's rows may be in any order (every key once per pass).
        self.held: list[tuple[bytes, int, int, int, Cell]] = []

    def _source(self, key: DirtyKey) -> tuple[Series | None, MetricType | None]:
        """The series (None for a name-level key) and its type; type None when gone."""
        aggregator = self.aggregator
        tenant, name, tags = key
        if tags is None:
            totals = aggregator.name_totals.get((tenant, name))
            if totals is not None:
                return None, totals.type
            named = aggregator.table.by_name.get((tenant, name))
            return None, next(iter(named.values())).type if named else None
        series = aggregator.table.by_tenant.get(tenant, {}).get((name, tags))
        if series is None:
            series = self.sink.series_refs.get(key)
        else:
            self.sink.series_refs[key] = series
        return series, series.type if series is not None else None

    def _windows(self, key: DirtyKey, level: int, first: int, stop: int, out: bytearray) -> None:
        """Encode the key's windows at `level` starting in [first, stop)."""
        series, metric_type = self._source(key)
        if metric_type is None:
            return
        aggregator = self.aggregator
        tenant, name, tags = key
        seconds = aggregator.level_seconds[level]
        prefix = self.sink.aggregate_rows.prefix(tenant, name, tags, metric_type)
        row = AggregateRows.row
        for start in range(first, stop, seconds):
            if series is None:
                parts = aggregator.read_name_totals(tenant, name, level, start)
            else:
                parts = aggregator.read(series, level, start)
            cell = merge_cells(parts)
            if cell is not None and not cell.is_empty:
                # Percentiles always: a window written open and never touched again before
                # its close gets no final write, so it must not wait for one.
                if cell.sketch is not None and cell.members is None:
                    self.held.append((prefix, level, start, seconds, cell))
                else:
                    self._buffer(level, start, out).extend(row(prefix, level, start, seconds, cell))
                self.rows += 1

    def _buffer(self, level: int, start: int, out: bytearray) -> bytearray:
        """Where a window's row goes: `fresh` for the open minute when no pass of this process
        has written it (its rows are new), else `out` (upserted)."""
        return self.fresh if level == 1 and start == self.fresh_minute else out

    def _coarse_budget(self) -> int:
        """How many closed coarse windows this pass writes (see COARSE_PER_PASS): every key
        owes at most about one window per level at a close."""
        owed = sum(len(held) for held in self.sink.coarse.values())
        passes = OPEN_MARGIN / 2 / self.aggregator.level_seconds[0]
        return max(COARSE_PER_PASS, math.ceil(owed / passes))

    def _minute(self, key: DirtyKey, start: int, out: bytearray) -> bool:
        """`_windows(key, 1, start, start + 60, out)` for the common key: a series whose open
        minute is its one dirty window and whose slices have all rolled into it (none came since
        the advance), so the window is its 1m cell as it stands. False: not such a key."""
        tenant, name, tags = key
        if tags is None:
            return False
        table = self.aggregator.table.by_tenant.get(tenant)
        series = table.get((name, tags)) if table is not None else None
        if series is None or series.levels[0]:
            return False
        self.sink.series_refs[key] = series
        cell = series.levels[1].get(start)
        if cell is not None and not cell.is_empty:
            prefix = self.sink.aggregate_rows.prefix(tenant, name, tags, series.type)
            seconds = self.aggregator.level_seconds[1]
            if cell.sketch is not None and cell.members is None:
                self.held.append((prefix, 1, start, seconds, cell))
            else:
                self._buffer(1, start, out).extend(AggregateRows.row(prefix, 1, start, seconds, cell))
            self.rows += 1
        return True

    def _encode_held(self, out: bytearray) -> None:
        """Encode the held distribution rows into `out`, their percentiles and sketches
        computed together.
        A held cell is read as it stands now (the loop may have run since it was taken): the
        same as a cell read after a yield, and a change meanwhile has marked it dirty again."""
        held = self.held
        if not held:
            return
        encoded = encode_distributions([entry[4] for entry in held])
        row = AggregateRows.row
        for (prefix, level, start, seconds, cell), sketch_bytes in zip(held, encoded, strict=True):
            self._buffer(level, start, out).extend(row(prefix, level, start, seconds, cell, sketch_bytes=sketch_bytes))
        held.clear()

    def _payloads(self, out: bytearray) -> list[tuple[bytes, bool]]:
        """The encoded rows as complete COPY payloads, (rows, fresh), and both buffers empty."""
        payloads = []
        for buffer, fresh in ((out, False), (self.fresh, True)):
            if len(buffer) > len(copy.HEADER):
                payloads.append((bytes(buffer + copy.TRAILER), fresh))
                buffer[:] = copy.HEADER
        return payloads

    async def batches(self) -> AsyncIterator[tuple[bytes, bool]]:
        """Complete binary COPY payloads of about ROWS_PER_BATCH rows each, and whether they
        are new rows (`fresh_minute`)."""
        sink = self.sink
        slicer = _Slicer()
        out = bytearray(copy.HEADER)
        batch_start = 0
        until = self.until
        last = max(until - 1, 0)
        coarse = sink.coarse
        minute = self.aggregator.level_seconds[1]

        def work() -> Iterator[None]:
            """Encodes a few keys' windows per step (a step per key cost a tenth of the time)."""
            owed_levels = list(coarse.values())
            windows, open_minute = self._windows, last - last % minute
            for n, (key, earliest) in enumerate(self.taken.items()):
                first = int(earliest // minute) * minute
                if first != open_minute or not self._minute(key, first, out):
                    windows(key, 1, first, last + 1, out)
                for held in owed_levels:  # _lower, inlined
                    owed = held.get(key)
                    if owed is None or earliest < owed:
                        held[key] = earliest
                if not n & 15:
                    yield
            budget = self._coarse_budget()
            for level, held in coarse.items():
                seconds = self.aggregator.level_seconds[level]
                boundary = until - until % seconds  # the open window's start
                if not held or min(held.values()) >= boundary:
                    continue
                for key, earliest in list(held.items()):
                    if budget <= 0:
                        return
                    first = int(earliest // seconds) * seconds
                    if first >= boundary:
                        continue
                    budget -= (boundary - first) // seconds
                    self._windows(key, level, first, boundary, out)
                    self.settled.append((level, key, boundary))
                    yield

        phases = self.phases
        for _ in work():
            if len(self.held) >= SKETCH_ROWS_PER_GROUP:
                self._encode_held(out)
            if self.rows - batch_start >= ROWS_PER_BATCH:
                self._encode_held(out)
                payloads = self._payloads(out)
                phases["encode"] += time.perf_counter() - slicer.began
                for payload in payloads:
                    yield payload
                slicer.began = time.perf_counter()
                batch_start = self.rows
            if slicer.due():
                sink._slice_took(slicer)
                phases["encode"] += time.perf_counter() - slicer.began
                await slicer.pause()
        self._encode_held(out)
        phases["encode"] += time.perf_counter() - slicer.began
        for payload in self._payloads(out):
            yield payload

    def committed(self) -> None:
        """The written coarse windows are final: each key stays owed from its open window if
        that window has closed slices (it may hold samples), else not at all. Late samples
        that touched a written window meanwhile are in `fine` and come back next pass."""
        coarse = self.sink.coarse
        last = self.until - 1
        for level, key, boundary in self.settled:
            held = coarse[level]
            if key not in held:
                continue
            if boundary <= last:
                held[key] = boundary
            else:
                del held[key]
                if all(key not in owed for owed in coarse.values()):
                    self.sink.series_refs.pop(key, None)
