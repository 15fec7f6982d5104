"""The durable path: the write-ahead log and checkpoints around the aggregation state.

Order of work for every batch: append to the log, commit (one write), then apply to memory.
Start-up is: newest valid checkpoint, then the log after its position, parsed again exactly as
it was the first time (untimestamped samples keep their original receive time, so they land in
the same windows). Replayed lines are not counted again in the ingest counters.

Disk trouble (full, read-only, I/O errors) makes the journal unhealthy: HTTP writes are refused
with 503 rather than acknowledged, UDP/TCP samples go on into memory (they were never
acknowledged) and the log is retried on every tick; once it writes again a checkpoint is taken
at once, so what arrived during the trouble is covered too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from collectord.aggregation.aggregator import Aggregator, FlushRecord
from collectord.config import Config
from collectord.ingest.frame import BadFrame, Frame, ReplayTables
from collectord.model import KIND_COUNTER, MetricType, Sample
from collectord.protocols.line import LineParser
from collectord.protocols.statsd import StatsdParser
from collectord.protocols.statsd_columns import parse_columns
from collectord.ring import (
    PAYLOAD_AUDIT,
    PAYLOAD_FRAME,
    PAYLOAD_FRAME_KEYS,
    PAYLOAD_LINE,
    PAYLOAD_PURGE,
    PAYLOAD_SAMPLES,
    PAYLOAD_STATSD,
    Batch,
)
from collectord.storage.checkpoint import CheckpointError, CheckpointStore, capture, restore
from collectord.storage.wal import WalError, WalPosition, WalRecord, WriteAheadLog

log = logging.getLogger("collectord.storage")

# While the disk is in trouble, how often it is probed, and with how much (about what a
# commit needs).
PROBE_EVERY = 0.5
# Appended source batches are committed within this long (or before they are applied, whichever
# comes first): the bound on what kill -9 can lose.
COMMIT_WITHIN = 0.002
# How long an appended source batch waits for others to share its write: a quarter of the
# bound, so a late timer still commits within it (at most 2,000 writes a second).
COMMIT_DELAY = COMMIT_WITHIN / 4
PROBE_BYTES = 64 * 1024
# Replay parses StatsD payloads of one slice together up to about this many bytes (enough that
# each series has many values per bulk step; numpy's scratch arrays are a few times this).
CHUNK_BYTES = 4 << 20


class JournalUnavailable(RuntimeError):
    """The log cannot take writes now (disk full or unwritable)."""


def encode_samples(samples: list[Sample]) -> bytes:
    return msgspec.msgpack.encode(samples)


def decode_samples(payload: bytes) -> list[Sample]:
    raw = msgspec.msgpack.decode(payload)
    out: list[Sample] = []
    for (name, tags), kind, value, weight, ts in raw:
        key = (name, tuple((k, v) for k, v in tags))
        out.append((key, kind, value, weight, ts))
    return out


@dataclass
class RecoveryStats:
    checkpoint: str | None = None
    checkpoint_position: WalPosition | None = None
    checkpoints_refused: int = 0
    replayed_records: int = 0
    replayed_samples: int = 0
    seconds: float = 0.0
    wal_truncated_bytes: int = 0


class Journal:
    def __init__(self, config: Config) -> None:
        storage = config.storage
        self.directory = storage.resolve_data_dir()
        self.config = config
        self.wal = WriteAheadLog(
            self.directory / "wal",
            segment_bytes=storage.segment_size,
            fsync=storage.fsync,
            fsync_interval=storage.fsync_interval,
        )
        self.checkpoints = CheckpointStore(self.directory / "checkpoints")
        self.healthy = True
        self.last_error: str | None = None
        self.skipped_batches = 0
        # Set when batches were skipped during disk trouble: the next checkpoint covers them.
        self.needs_checkpoint = False
        self._last_probe = 0.0
        self.exposure: deque[float] = deque(maxlen=10_000)
        self._oldest_pending = 0.0
        self._commit_scheduled = False
        # A background checkpoint being written: (pid, log position it covers, start time).
        self._child: tuple[int, WalPosition, float] | None = None
        self.recovery = RecoveryStats()
        self.last_checkpoint_at = 0.0
        self.last_checkpoint_seconds = 0.0
        # Extra state kept in every checkpoint (the sinks' high-water marks), read at capture.
        self.extra_state: Callable[[], dict[str, Any]] = dict
        self._on_advance: Callable[[Aggregator, list[FlushRecord]], None] | None = None
        # The interval fsync running in a worker thread, if any.
        self._fsyncing: asyncio.Future[None] | None = None
        # Told of every replayed batch (the pipeline's batch taps, with replaying=True).
        self.on_replayed: Callable[[Batch], None] | None = None
        # Applies a logged purge (tenant, payload) to the aggregator being rebuilt.
        self.on_purge: Callable[[Aggregator, str, bytes], None] | None = None

    # ------------------------------------------------------------------ start-up

    def recover(
        self,
        make_aggregator: Any,
        on_loaded: Callable[[dict[str, Any]], None] | None = None,
        on_advance: Callable[[Aggregator, list[FlushRecord]], None] | None = None,
    ) -> Aggregator:
        """Open the log, load the newest valid checkpoint, replay the log after it.
        `on_loaded` gets the checkpoint's extra state (sinks' high-water marks) before the
        replay; `on_advance` every flush view the replay closes, as the live daemon would."""
        began = time.perf_counter()
        report = self.wal.open()
        self.recovery.wal_truncated_bytes = report.truncated_bytes
        if report.truncated_bytes or report.message:
            log.warning(
                "write-ahead log had a torn or corrupt tail; truncated",
                extra={"bytes": report.truncated_bytes, "detail": report.message},
            )
        aggregator: Aggregator = make_aggregator()
        position: WalPosition | None = None
        for path in self.checkpoints.candidates():
            candidate: Aggregator = make_aggregator()
            try:
                state = restore(candidate, path.read_bytes())
            except (OSError, CheckpointError) as error:
                self.recovery.checkpoints_refused += 1
                log.warning("checkpoint refused", extra={"path": str(path), "error": str(error)})
                continue
            aggregator = candidate
            position = tuple(state.wal_position) if state.wal_position is not None else None  # type: ignore[assignment]
            self.checkpoints.remember(path, position)
            self.recovery.checkpoint = str(path)
            self.recovery.checkpoint_position = position
            if on_loaded is not None:
                on_loaded(state.extra)
            break
        self._on_advance = on_advance
        try:
            self._replay(aggregator, position)
        finally:
            self._on_advance = None
        self.recovery.seconds = time.perf_counter() - began
        log.info(
            "recovered",
            extra={
                "checkpoint": self.recovery.checkpoint,
                "replayed_records": self.recovery.replayed_records,
                "replayed_samples": self.recovery.replayed_samples,
                "seconds": round(self.recovery.seconds, 3),
            },
        )
        return aggregator

    def _replay(self, aggregator: Aggregator, after: WalPosition | None) -> None:
        ingest, limits = self.config.ingest, self.config.limits
        # Fresh parsers: replayed lines must not count again in the ingest counters.
        statsd = StatsdParser(limits, container_id=ingest.container_id)
        line = LineParser(
            limits,
            precision=ingest.line_precision,
            types={name: MetricType(kind.upper()) for name, kind in ingest.line_types.items()},
        )
        slice_len = aggregator.level_seconds[0]
        fresh = after is None and aggregator.table.count == 0
        aggregator.defer_sketches(True)
        # The replay allocates tuples by the million and frees nothing that holds a cycle: the
        # collector's full passes over a growing state would cost seconds (the daemon freezes
        # the state out of it once recovered).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._replay_records(aggregator, after, statsd, line, slice_len, fresh)
        finally:
            if collecting:
                gc.enable()
            aggregator.defer_sketches(False)

    def _replay_records(
        self,
        aggregator: Aggregator,
        after: WalPosition | None,
        statsd: StatsdParser,
        line: LineParser,
        slice_len: int,
        fresh: bool,
    ) -> None:
        # StatsD payloads wait here to be parsed and applied together (statsd_columns): one
        # tenant, one slice, nothing else in between. Only without taps (they want Samples).
        chunk: list[WalRecord] = []
        chunk_bytes = 0
        chunk_slice = -1
        bulk = self.on_replayed is None
        # Workers' frames name series by ids defined in earlier frames and key records.
        tables = ReplayTables()
        for record in self.wal.replay(after):
            if fresh:
                aggregator.start_at(record.received_at)
                fresh = False
            frame: Frame | None = None
            if record.kind in (PAYLOAD_FRAME, PAYLOAD_FRAME_KEYS):
                try:
                    if record.kind == PAYLOAD_FRAME_KEYS:
                        tables.define(record.payload)  # touches no window
                        continue
                    frame = tables.decode(record.payload)
                except BadFrame as error:
                    log.warning(
                        "undecodable frame in the write-ahead log; skipped",
                        extra={"at": record.end, "error": str(error)},
                    )
                    continue
            if record.kind == PAYLOAD_AUDIT:  # touches no window: closes no period either
                if self.on_replayed is not None:
                    self.on_replayed(Batch(record.tenant, [], record.received_at, record.kind, record.payload))
                continue
            samples: list[Sample] | None = None
            if frame is not None:
                samples = frame.raw
            elif not (bulk and record.kind == PAYLOAD_STATSD):
                samples = self._parse_record(record, statsd, line)
                if samples is None:
                    continue  # undecodable: skipped before it could close a period, as ever
            # Close periods exactly as the live daemon did, so roll-ups happen in order.
            if record.received_at >= aggregator.rolled_until[0] + slice_len:
                if chunk:
                    self._replay_chunk(aggregator, statsd, chunk)
                    chunk, chunk_bytes = [], 0
                view = aggregator.advance(record.received_at)
                if self._on_advance is not None:
                    self._on_advance(aggregator, view)
            if samples is None:  # a StatsD payload for the bulk path
                at_slice = int(record.received_at // slice_len) * slice_len
                if chunk and (
                    record.tenant != chunk[0].tenant or at_slice != chunk_slice or chunk_bytes >= CHUNK_BYTES
                ):
                    self._replay_chunk(aggregator, statsd, chunk)
                    chunk, chunk_bytes = [], 0
                chunk.append(record)
                chunk_bytes += len(record.payload)
                chunk_slice = at_slice
                continue
            if chunk:
                self._replay_chunk(aggregator, statsd, chunk)
                chunk, chunk_bytes = [], 0
            self._apply_record(aggregator, record, samples, frame)
        if chunk:
            self._replay_chunk(aggregator, statsd, chunk)

    def _replay_chunk(self, aggregator: Aggregator, statsd: StatsdParser, chunk: list[WalRecord]) -> None:
        """StatsD records of one tenant and slice: in bulk when statsd_columns can, else each
        parsed the usual way (a large one still in bulk on its own); runs of counters then go
        through apply_many, which applies repeated lines once with their count."""
        columns = parse_columns(statsd, [record.payload for record in chunk])
        if columns is not None:
            aggregator.apply_columns(chunk[0].tenant, [record.received_at for record in chunk], columns)
            self.recovery.replayed_records += len(chunk)
            self.recovery.replayed_samples += len(columns.groups)
            return
        batches: list[Batch] = []
        for record in chunk:
            alone = parse_columns(statsd, [record.payload]) if len(chunk) > 1 else None
            if alone is None:
                samples: list[Sample] = []
                statsd.parse(record.payload, samples)
                batches.append(Batch(record.tenant, samples, record.received_at, record.kind))
                self.recovery.replayed_samples += len(samples)
            else:
                self._apply_batches(aggregator, batches)
                batches = []
                aggregator.apply_columns(record.tenant, [record.received_at], alone)
                self.recovery.replayed_samples += len(alone.groups)
            self.recovery.replayed_records += 1
        self._apply_batches(aggregator, batches)

    @staticmethod
    def _apply_batches(aggregator: Aggregator, batches: list[Batch]) -> None:
        """Batches of one tenant and slice, in order: counters by apply_many (it counts
        repeated lines), anything else by apply_deferred (it groups distributions)."""
        first = next((batch.samples[0] for batch in batches if batch.samples), None)
        if first is not None and first[1] == KIND_COUNTER:
            aggregator.apply_many(batches)
            return
        for batch in batches:
            aggregator.apply_deferred(batch)

    @staticmethod
    def _parse_record(record: WalRecord, statsd: StatsdParser, line: LineParser) -> list[Sample] | None:
        """A record's samples parsed the usual way ([] for a purge); None when undecodable."""
        samples: list[Sample] = []
        if record.kind == PAYLOAD_STATSD:
            statsd.parse(record.payload, samples)
        elif record.kind == PAYLOAD_LINE:
            line.parse(record.payload, samples)
        elif record.kind == PAYLOAD_SAMPLES:
            try:
                samples = decode_samples(record.payload)
            except (msgspec.DecodeError, ValueError, TypeError):
                log.warning("undecodable record in the write-ahead log; skipped", extra={"at": record.end})
                return None
        return samples

    def _apply_record(
        self, aggregator: Aggregator, record: WalRecord, samples: list[Sample], frame: Frame | None = None
    ) -> None:
        """One parsed record: a purge applied, or its batch (or a worker's frame, `samples`
        being its raw part) applied and told to the taps."""
        if record.kind == PAYLOAD_PURGE:
            if self.on_purge is not None:
                self.on_purge(aggregator, record.tenant, record.payload)
            return
        batch = Batch(record.tenant, samples, record.received_at, record.kind, frame=frame)
        if frame is not None:
            aggregator.apply_frame(frame)
        else:
            aggregator.apply_deferred(batch)
        if self.on_replayed is not None:
            self.on_replayed(batch)
        self.recovery.replayed_records += 1
        self.recovery.replayed_samples += len(samples) if frame is None else frame.samples

    # ------------------------------------------------------------------ running

    def accept(self, batch: Batch) -> None:
        """The ring's hook: a source's batch was accepted. It is appended at once and
        committed COMMIT_DELAY later (or before anything is applied, or at once when the
        oldest pending batch is COMMIT_WITHIN old), so one write carries every datagram of
        0.5 ms rather than of one loop iteration (often a single datagram).
        Sources' batches are never refused (nobody acknowledged them); during disk trouble
        they are skipped and the checkpoint taken once the disk is back covers them."""
        if not self.healthy:
            self.skipped_batches += 1
            self.needs_checkpoint = True
            return
        if not self.wal.has_pending:
            self._oldest_pending = batch.received_at
        self.wal.append(batch.kind, batch.tenant, batch.received_at, batch.payload)
        if batch.received_at - self._oldest_pending >= COMMIT_WITHIN:
            # A busy loop iteration (many connections, each read parsed) must not hold
            # appended batches back: commit now.
            self.commit_pending()
            return
        if not self._commit_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.commit_pending()
                return
            self._commit_scheduled = True
            loop.call_later(COMMIT_DELAY, self.commit_pending)

    def commit_pending(self) -> None:
        """Commit what sources appended; called before any batch is applied."""
        self._commit_scheduled = False
        if not self.wal.has_pending:
            return
        try:
            self.wal.commit()
        except WalError as error:
            self._trouble(error)
            return
        # The exposure window: how long the oldest of these batches was read but not logged.
        self.exposure.append(time.time() - self._oldest_pending)

    def log_acknowledged(self, batch: Batch) -> None:
        """For writes that are acknowledged (HTTP): in the log, or JournalUnavailable."""
        if not self.healthy and not self.retry():
            raise JournalUnavailable(self.last_error or "write-ahead log unavailable")
        if not self.wal.has_pending:
            self._oldest_pending = batch.received_at
        self.wal.append(PAYLOAD_SAMPLES, batch.tenant, batch.received_at, encode_samples(batch.samples))
        try:
            self.wal.commit()
        except WalError as error:
            self._trouble(error)
            raise JournalUnavailable(str(error)) from error

    def log_audit(self, tenant: str, received_at: float, payload: bytes, kind: int = PAYLOAD_AUDIT) -> None:
        """An audit event (or a purge: `kind`), in the log before its request is answered, or
        JournalUnavailable."""
        if not self.healthy and not self.retry():
            raise JournalUnavailable(self.last_error or "write-ahead log unavailable")
        if not self.wal.pending:
            self._oldest_pending = received_at
        self.wal.append(kind, tenant, received_at, payload)
        try:
            self.wal.commit()
        except WalError as error:
            self._trouble(error)
            raise JournalUnavailable(str(error)) from error

    def _trouble(self, error: Exception) -> None:
        """The log refused a write. What it holds unwritten is dropped: a refused HTTP write
        must never reach the log later (the client was told it failed and may resend), and
        the sources' batches are in memory, which the next checkpoint covers."""
        if self.healthy:
            log.error(
                "write-ahead log cannot write; HTTP writes refused until it can",
                extra={"directory": str(self.directory), "error": str(error)},
            )
        self.healthy = False
        self.last_error = str(error)
        self.wal.discard()
        self.needs_checkpoint = True
        self._last_probe = time.monotonic()

    def retry(self) -> bool:
        """Probe the disk (at most every PROBE_EVERY seconds); True once it takes writes again."""
        now = time.monotonic()
        if now - self._last_probe < PROBE_EVERY:
            return False
        self._last_probe = now
        probe = self.directory / ".probe"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * PROBE_BYTES)
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
        except OSError as error:
            self.last_error = str(error)
            with contextlib.suppress(OSError):
                probe.unlink()
            return False
        log.warning("write-ahead log writes again", extra={"directory": str(self.directory)})
        self.healthy = True
        return True

    def tick(self) -> None:
        if not self.healthy:
            self.retry()
            return
        if self._fsyncing is not None:
            return
        try:
            fd = self.wal.take_due_fsync()
        except (WalError, OSError) as error:
            self._trouble(error)
            return
        if fd is not None:
            # A slow disk can take hundreds of ms to fsync: never on the event loop, where it
            # would stall ingest, queries and every stream at once.
            loop = asyncio.get_running_loop()
            self._fsyncing = loop.run_in_executor(None, self.wal.fsync_detached, fd)
            self._fsyncing.add_done_callback(self._fsync_done)

    def _fsync_done(self, done: asyncio.Future[None]) -> None:
        self._fsyncing = None
        error = done.exception() if not done.cancelled() else None
        if error is not None and self.healthy:
            self._trouble(error)  # type: ignore[arg-type]

    def checkpoint(self, aggregator: Aggregator) -> bool:
        """Write the state covering everything logged so far, in this process (at stop); the
        caller applied every queued batch first. Deletes log segments every kept checkpoint
        covers."""
        self.poll_background(wait=True)
        began = time.perf_counter()
        position = self.wal.end()
        try:
            self.checkpoints.write(capture(aggregator, position, self.extra_state()), position)
        except OSError as error:
            self._trouble(error)
            return False
        self._after_checkpoint(began)
        return True

    def checkpoint_in_background(self, aggregator: Aggregator) -> bool:
        """Write a checkpoint from a forked child, as Redis's BGSAVE does: the child serialises
        a copy-on-write snapshot while this process goes on ingesting, so a large state never
        stalls the event loop. The caller applied every queued batch first. `poll_background`
        adopts the result. False when one is already running or fork is unavailable."""
        if self._child is not None:
            return False
        position = self.wal.end()
        began = time.perf_counter()
        try:
            pid = os.fork()
        except OSError as error:
            log.warning("cannot fork for a checkpoint; writing it in place", extra={"error": str(error)})
            return self.checkpoint(aggregator)
        if pid == 0:  # the child: serialise, write, leave without running any of the parent's exit code
            code = 1
            try:
                self.checkpoints.write(capture(aggregator, position, self.extra_state()), position)
                code = 0
            finally:
                os._exit(code)
        self._child = (pid, position, began)
        return True

    def poll_background(self, wait: bool = False) -> None:
        """Adopt a finished background checkpoint (or wait for it)."""
        if self._child is None:
            return
        pid, position, began = self._child
        done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
        if done == 0:
            return
        self._child = None
        if os.waitstatus_to_exitcode(status) != 0:
            # Almost always the disk: treat it as disk trouble (probe, then retry).
            self._trouble(OSError("background checkpoint failed; the log still holds everything"))
            return
        self.checkpoints.adopt_newest(position)
        self._after_checkpoint(began)

    def _after_checkpoint(self, began: float) -> None:
        point = self.checkpoints.truncation_point()
        if point is not None:
            self.wal.truncate_before(point)
        self.last_checkpoint_at = time.time()
        self.needs_checkpoint = False
        self.last_checkpoint_seconds = time.perf_counter() - began

    def close(self) -> None:
        self.poll_background(wait=True)
        try:
            self.wal.close()
        except (WalError, OSError) as error:
            log.error("closing the write-ahead log failed", extra={"error": str(error)})

    def _exposure_ms(self) -> dict[str, float]:
        if not self.exposure:
            return {}
        ordered = sorted(self.exposure)
        return {
            "p50": round(ordered[len(ordered) // 2] * 1000, 3),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
            "max": round(ordered[-1] * 1000, 3),
            "commits": len(ordered),
        }

    def stats(self) -> dict[str, Any]:
        wal = self.wal.stats
        return {
            "healthy": self.healthy,
            "lastError": self.last_error,
            "directory": str(self.directory),
            "recordsAppended": wal.records_appended,
            "bytesWritten": wal.bytes_written,
            "commits": wal.commits,
            "fsyncs": wal.fsyncs,
            "segments": wal.segments,
            "writeErrors": wal.write_errors,
            "pendingBytes": self.wal.pending,
            "skippedBatches": self.skipped_batches,
            "truncatedTails": wal.truncated_tails,
            "exposureMs": self._exposure_ms(),
            "checkpoints": self.checkpoints.written,
            "lastCheckpointBytes": self.checkpoints.last_bytes,
            "lastCheckpointSeconds": round(self.last_checkpoint_seconds, 3),
            "recovery": {
                "checkpoint": self.recovery.checkpoint,
                "checkpointsRefused": self.recovery.checkpoints_refused,
                "replayedRecords": self.recovery.replayed_records,
                "replayedSamples": self.recovery.replayed_samples,
                "seconds": round(self.recovery.seconds, 3),
                "walTruncatedBytes": self.recovery.wal_truncated_bytes,
            },
        }
