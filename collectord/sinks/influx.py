"""InfluxDB v2 sink: every flush's points go to a durable spool, then to `/api/v2/write`.

`on_flush` encodes the flush view (influx_lines) and spools it on the event loop before
returning, so the high-water mark a checkpoint takes (`state`) never runs ahead of the disk:
a flush is either spooled, or still in the write-ahead log to be replayed and spooled after a
restart. Replayed flushes the spool already holds (or held and sent) are recognised by their
slice boundary and skipped. `run` sends the spool oldest first, in gzip-compressed batches of
`batch_size` lines, and moves a cursor past each batch the server accepted.

Server answers:
- 2xx: the batch is written; the cursor moves on.
- 429, 503: retried after the server's Retry-After (or the backoff, whichever is longer).
- 5xx, timeouts, refused connections: retried with capped exponential backoff and jitter.
- 401, 403, 404 (token, org or bucket wrong): the spool is kept and retried every
  `auth_retry`, since a person fixing the config and restarting loses nothing.
- 413: the batch is halved and retried; a single line too large is refused as below.
- any other 4xx (400 bad line, 422 outside retention): the batch can never succeed. It is
  logged with the offending line, counted (errors, dropped, rejectedPoints), kept under
  spool/influx/rejected/ and the sender moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import aiohttp
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api_async import WriteApiAsync

from collectord.config import Config
from collectord.selfmetrics import DurationHistogram
from collectord.sinks.base import Backoff, Flush, SinkStatus
from collectord.sinks.influx_lines import PointEncoder
from collectord.sinks.spool import Segment, Spool

log = logging.getLogger("collectord.sinks.influx")

# At most one log line per kind of trouble per this many seconds (with a count of the rest).
LOG_EVERY = 10.0
_LINE_NUMBER = re.compile(r"\bline:? (\d+)\b")

Outcome = Literal["written", "refused", "halve", "later"]


class _RateLimitedLog:
    def __init__(self, every: float) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, extra: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        log.warning(message, extra={**extra, "suppressed": suppressed} if suppressed else extra)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (its HTTP-date form is rare from metric stores and ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def offending_line(message: str, batch: list[bytes]) -> bytes:
    """The line a 400 names: by number when the message gives one, by content when it quotes
    one, else the batch's first."""
    match = _LINE_NUMBER.search(message)
    if match is not None and 1 <= int(match[1]) <= len(batch):
        return batch[int(match[1]) - 1]
    for line in batch:
        if line and line[:60].decode("utf-8", "replace") in message:
            return line
    return batch[0] if batch else b""


class InfluxSink:
    name = "influx"

    def __init__(
        self,
        config: Config,
        directory: Path,
        client_factory: Callable[[], InfluxDBClientAsync] | None = None,
    ) -> None:
        influx = config.influx
        self.settings = influx
        self.interval = float(config.aggregate.flush_interval)
        self.source = config.instance.source_id()
        self.spool = Spool(directory, influx.spool_max_bytes, config.storage.fsync)
        self._encoder = PointEncoder(self.interval, self.source, influx.precision)
        self.spool.open()
        self._client_factory = client_factory or self._default_client
        self._client: InfluxDBClientAsync | None = None
        self._write_api: WriteApiAsync | None = None
        self._wake = asyncio.Event()
        self._backoff = Backoff(cap=influx.retry_max)
        self._log = _RateLimitedLog(LOG_EVERY)
        self._batch_limit = influx.batch_size
        # A write cancelled with run(): drain() learns its answer before sending anything else.
        self._pending: tuple[asyncio.Task[bool], Segment, int, int] | None = None
        self._status = SinkStatus(self.name)
        # Exported as collectord_sink_write_duration_seconds{sink="influx"}.
        self.write_durations = DurationHistogram()
        self._delay = 0.0
        self._sleep = asyncio.sleep  # tests make waiting instant
        self._refusal: tuple[int, str] = (0, "")
        self._offered_until = self.spool.spooled_until
        self._dropped_full = 0
        self._rejected = 0
        if self.spool.segments:
            log.info(
                "spooled flushes waiting from before the start",
                extra={"segments": len(self.spool.segments), "bytes": self.spool.bytes},
            )

    def _default_client(self) -> InfluxDBClientAsync:
        influx = self.settings
        return InfluxDBClientAsync(
            url=influx.url,
            token=influx.token,
            org=influx.org,
            timeout=int(influx.timeout * 1000),
            enable_gzip=True,
        )

    # ------------------------------------------------------------------ the Sink protocol

    def on_flush(self, flush: Flush) -> None:
        spool = self.spool
        self._offered_until = max(self._offered_until, flush.closed_until)
        if flush.closed_until <= spool.spooled_until:
            return  # replayed: spooled (and maybe sent) before the restart
        floor = spool.spooled_until
        records = [record for record in flush.view if record.period_start >= floor]
        lines = self._encoder.encode(records)
        if not lines:
            spool.note_spooled(flush.closed_until)
            return
        try:
            dropped = spool.append(flush.closed_until, self.settings.precision, lines)
        except OSError as error:
            # The flush is lost for this sink; the mark still moves so that state and disk agree.
            spool.note_spooled(flush.closed_until)
            self._count_dropped(len(lines))
            self._status.last_error = f"spool write failed: {error}"
            self._log.warning("spool", "cannot spool a flush; its points are dropped", {"error": str(error)})
            return
        if dropped:
            lost = sum(segment.lines for segment in dropped)
            self._count_dropped(lost)
            self._log.warning(
                "full",
                "spool full: oldest unsent flushes dropped",
                {"points": lost, "flushes": len(dropped), "spool_max_bytes": spool.max_bytes},
            )
        self._wake.set()

    def _count_dropped(self, points: int) -> None:
        self._dropped_full += points
        self._status.dropped += points

    async def run(self) -> None:
        while True:
            segment = self.spool.oldest()
            if segment is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if self.spool.unsynced:
                    await asyncio.to_thread(self.spool.sync_pending)
                await self._send(segment, draining=False)
            except OSError as error:
                # The spool's disk refused (cursor or set-aside write): try again later.
                self._status.errors += 1
                self._status.last_error = f"spool: {error}"
                self._log.warning("spool", "spool I/O failed; retrying", {"error": str(error)})
                await asyncio.sleep(self._backoff.next_delay())

    async def drain(self) -> None:
        """Learn how a write cut off by the stop ended, then send the spool once through;
        the first failure ends the drain (what is left is sent after the next start)."""
        if self._pending is not None:
            task, segment, first, count = self._pending
            self._pending = None
            outcome = await self._outcome_of(task, segment, first, count)
            if outcome == "refused":
                self._refuse(segment, first, self.spool.read(segment)[first : first + count])
            if outcome in ("written", "refused") and segment in self.spool.segments:
                self._written(segment, first + count)
        while (oldest := self.spool.oldest()) is not None:
            if not await self._send(oldest, draining=True):
                return

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None
            self._write_api = None

    def state(self) -> Any:
        return {"spooled_until": self.spool.spooled_until}

    def restore(self, state: Any) -> None:
        if isinstance(state, dict) and isinstance(state.get("spooled_until"), int):
            self.spool.note_spooled(state["spooled_until"])

    def status(self) -> SinkStatus:
        status = self._status
        spool = self.spool
        oldest = spool.oldest()
        status.queued = spool.unsent_lines()
        status.lag_seconds = (
            0.0 if oldest is None else max(0.0, self._offered_until - oldest.closed_until + self.interval)
        )
        status.extra = {
            "spoolBytes": spool.bytes,
            "spoolFlushes": len(spool.segments),
            "droppedSpoolFull": self._dropped_full,
            "rejectedPoints": self._rejected,
        }
        return status

    # ------------------------------------------------------------------ sending

    async def _send(self, segment: Segment, draining: bool) -> bool:
        """Send what is left of `segment`; False when a retryable failure stopped a drain."""
        spool = self.spool
        try:
            lines = spool.read(segment)
        except OSError as error:
            self._status.errors += 1
            self._log.warning(
                "read", "spooled flush unreadable; skipped", {"segment": segment.name, "error": str(error)}
            )
            spool.remove(segment)
            return True
        spool.in_flight = segment.name
        try:
            first = spool.sent(segment)
            while first < len(lines):
                if segment not in spool.segments:
                    return True  # dropped while the spool was full
                batch = lines[first : first + self._batch_limit]
                outcome = await self._write(segment, first, batch, draining)
                if outcome == "later":
                    if draining:
                        return False
                    continue
                if outcome == "halve":
                    self._batch_limit = max(1, len(batch) // 2)
                    continue
                if outcome == "refused":
                    self._refuse(segment, first, batch)
                first += len(batch)
                self._written(segment, first)
            spool.remove(segment)
            return True
        finally:
            spool.in_flight = None

    def _written(self, segment: Segment, upto: int) -> None:
        self.spool.mark_sent(segment, upto)

    async def _write(self, segment: Segment, first: int, batch: list[bytes], draining: bool) -> Outcome:
        write_api = self._ensure_client()
        task = asyncio.ensure_future(
            write_api.write(
                bucket=self.settings.bucket,
                org=self.settings.org,
                record=b"\n".join(batch),
                write_precision=self.settings.precision,  # type: ignore[arg-type]
            )
        )
        began = time.perf_counter()
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                self._pending = (task, segment, first, len(batch))
            raise
        except Exception:  # the task holds it; _outcome_of reads it
            pass
        self.write_durations.observe(time.perf_counter() - began)
        outcome = await self._outcome_of(task, segment, first, len(batch))
        if outcome == "later" and not draining:
            await self._sleep(self._delay)
        return outcome

    async def _outcome_of(self, task: asyncio.Task[bool], segment: Segment, first: int, count: int) -> Outcome:
        """Classify a finished write, counting and logging as it says."""
        status = self._status
        try:
            await task
        except InfluxDBError as error:
            return self._classify(error, segment, first)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            status.connected = False
            status.retries += 1
            status.last_error = self._redact(f"{type(error).__name__}: {error}")
            self._delay = self._backoff.next_delay()
            self._log.warning("away", "InfluxDB unreachable; spooling", {"error": status.last_error})
            return "later"
        status.connected = True
        status.written += count
        self._backoff.reset()
        return "written"

    def _classify(self, error: InfluxDBError, segment: Segment, first: int) -> Outcome:
        status = self._status
        code = int(getattr(error, "status", 0) or (error.response.status if error.response is not None else 0))
        raw = error.message
        message = self._redact(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()
        status.last_error = f"HTTP {code}: {message[:300]}"
        if code in (429, 503) or code >= 500 or code == 0:
            status.connected = code in (429, 503)
            status.retries += 1
            self._delay = self._backoff.next_delay(retry_after_seconds(error.retry_after))
            self._log.warning("server", "InfluxDB write failed; retrying", {"status": code, "error": message[:300]})
            return "later"
        status.connected = True
        if code in (401, 403, 404):
            status.errors += 1
            status.retries += 1
            self._delay = self.settings.auth_retry
            self._log.warning(
                "config",
                "InfluxDB refused the write: check influx.token, org and bucket; the spool is kept",
                {"status": code, "error": message[:300], "retry_in": self._delay},
            )
            return "later"
        if code == 413 and self._batch_limit > 1:
            return "halve"
        self._refusal = (code, message)
        return "refused"

    def _refuse(self, segment: Segment, first: int, batch: list[bytes]) -> None:
        code, message = self._refusal
        status = self._status
        status.errors += 1
        status.dropped += len(batch)
        self._rejected += len(batch)
        kept = None
        with contextlib.suppress(OSError):
            kept = str(self.spool.set_aside(segment, first, batch))
        line = offending_line(message, batch)
        self._log.warning(
            "refused",
            "InfluxDB refused a batch for good; set aside",
            {
                "status": code,
                "error": message[:300],
                "line": self._redact(line[:500].decode("utf-8", "backslashreplace")),
                "points": len(batch),
                "kept": kept,
            },
        )

    def _redact(self, text: str) -> str:
        token = self.settings.token
        return text.replace(token, "<redacted>") if token else text

    def _ensure_client(self) -> WriteApiAsync:
        if self._write_api is None:
            self._client = self._client_factory()
            self._write_api = self._client.write_api()
        return self._write_api
