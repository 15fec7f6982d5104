"""The InfluxDB sink's decisions, with a fake write API (the real server: tests/integration)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from influxdb_client.rest import ApiException

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.config import Config, Influx, Instance, Storage
from collectord.limits import Limits
from collectord.model import KIND_COUNTER
from collectord.ring import Batch
from collectord.sinks.base import Flush
from collectord.sinks.influx import InfluxSink, offending_line, retry_after_seconds

T0 = 1_800_000_000


def refusal(status: int, message: str = "", retry_after: str | None = None) -> ApiException:
    error = ApiException(status=status, reason="refused")
    error.message = message
    error.retry_after = retry_after
    return error


class FakeWrites:
    """Answers each write with the next scripted outcome (None = accepted)."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.bodies: list[bytes] = []
        self.gate: asyncio.Event | None = None

    def write_api(self) -> FakeWrites:
        return self

    async def write(self, bucket: str, org: str, record: bytes, write_precision: str) -> bool:
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.bodies.append(record)
        return True

    async def close(self) -> None:
        return None


def make_sink(tmp_path: Path, writes: FakeWrites, **influx: Any) -> InfluxSink:
    config = Config(
        storage=Storage(data_dir=str(tmp_path), fsync="never"),
        instance=Instance(name="h"),
        influx=Influx(url="http://x", org="o", bucket="b", **influx),
    )
    sink = InfluxSink(config, tmp_path / "spool", client_factory=lambda: writes)  # type: ignore[arg-type,return-value]
    sink._sleep = no_sleep  # type: ignore[method-assign]
    return sink


SLEPT: list[float] = []


async def no_sleep(delay: float) -> None:
    SLEPT.append(delay)


def flushes(series: int, count: int) -> list[Flush]:
    agg = Aggregator(Limits(), AggregationSettings(flush_interval=1, emit_idle_gauges=False), T0)
    out = []
    for k in range(count):
        agg.apply(Batch("t", [((f"c{i}", ()), KIND_COUNTER, 1.0, 1.0, None) for i in range(series)], T0 + k + 0.5))
        out.append(Flush(agg.advance(T0 + k + 1), {}, T0 + k + 1, agg))
    return out


def sent_lines(writes: FakeWrites) -> list[bytes]:
    return [line for body in writes.bodies for line in body.split(b"\n")]


def test_replayed_flushes_already_spooled_are_not_spooled_again(tmp_path: Path) -> None:
    writes = FakeWrites([])
    sink = make_sink(tmp_path, writes)
    first, second, third = flushes(2, 3)
    sink.on_flush(first)
    sink.on_flush(second)
    again = make_sink(tmp_path, writes)  # a restart: the state comes from disk
    again.restore({"spooled_until": first.closed_until})
    for flush in (first, second, third):
        flush.replaying = True
        again.on_flush(flush)
    assert [s.closed_until for s in again.spool.segments] == [T0 + 1, T0 + 2, T0 + 3]
    assert again.state() == {"spooled_until": T0 + 3}


def test_a_checkpointed_mark_beyond_the_disk_wins(tmp_path: Path) -> None:
    sink = make_sink(tmp_path, FakeWrites([]))
    sink.restore({"spooled_until": T0 + 5})
    for flush in flushes(1, 5):
        sink.on_flush(flush)
    assert not sink.spool.segments
    sink.restore("hostile")  # ignored, not a crash


def test_drain_sends_everything_in_order_in_batches(tmp_path: Path) -> None:
    writes = FakeWrites([])
    sink = make_sink(tmp_path, writes, batch_size=3)
    for flush in flushes(4, 2):
        sink.on_flush(flush)
    asyncio.run(sink.drain())
    lines = sent_lines(writes)
    assert len(lines) == 8 and [len(body.split(b"\n")) for body in writes.bodies] == [3, 1, 3, 1]
    assert [line.rsplit(b" ", 1)[1] for line in lines] == [str(T0).encode()] * 4 + [str(T0 + 1).encode()] * 4
    status = sink.status()
    assert status.written == 8 and status.queued == 0 and status.connected and not sink.spool.segments


def test_a_bad_request_is_set_aside_counted_and_passed(tmp_path: Path) -> None:
    writes = FakeWrites([refusal(400, "unable to parse line 2: bad")])
    sink = make_sink(tmp_path, writes, batch_size=2, token="s3cret")
    sink.on_flush(flushes(4, 1)[0])
    asyncio.run(sink.drain())
    status = sink.status()
    assert status.errors == 1 and status.dropped == 2 and status.extra["rejectedPoints"] == 2
    assert status.written == 2 and status.retries == 0 and not sink.spool.segments
    assert len(list((tmp_path / "spool" / "rejected").glob("*.lp"))) == 1


def test_offending_line_is_found_by_number_or_quote() -> None:
    batch = [b"a f=1 1", b"b f=x 1", b"c f=2 1"]
    assert offending_line("unable to parse at line 2: invalid", batch) == b"b f=x 1"
    assert offending_line("unable to parse 'c f=2 1': bad", batch) == b"c f=2 1"
    assert offending_line("nothing useful", batch) == b"a f=1 1"
    assert offending_line("line 99", batch) == b"a f=1 1"


def test_token_never_reaches_the_status(tmp_path: Path) -> None:
    writes = FakeWrites([refusal(401, "token s3cret is not valid")])
    sink = make_sink(tmp_path, writes, token="s3cret", auth_retry=7.0)
    sink.on_flush(flushes(1, 1)[0])
    asyncio.run(sink.drain())
    status = sink.status()
    assert status.last_error is not None and "s3cret" not in status.last_error and "<redacted>" in status.last_error
    assert status.queued == 1 and status.dropped == 0 and sink._delay == 7.0


@pytest.mark.parametrize(
    ("failure", "retry_after_at_least"),
    [
        (refusal(429, "slow down", retry_after="12"), 12.0),
        (refusal(503, "busy", retry_after="3"), 3.0),
        (refusal(500, "oops"), 0.0),
        (aiohttp.ClientConnectionError("refused"), 0.0),
        (TimeoutError(), 0.0),
    ],
)
def test_retryable_failures_wait_then_write_once(
    tmp_path: Path, failure: BaseException, retry_after_at_least: float
) -> None:
    writes = FakeWrites([failure, failure])
    sink = make_sink(tmp_path, writes)
    sink.on_flush(flushes(3, 1)[0])
    SLEPT.clear()

    async def go() -> None:
        task = asyncio.create_task(sink.run())
        while sink.spool.segments:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(go())
    assert len(SLEPT) == 2 and all(delay >= retry_after_at_least for delay in SLEPT)
    status = sink.status()
    assert status.retries == 2 and status.written == 3 and len(sent_lines(writes)) == 3


def test_too_large_halves_the_batch(tmp_path: Path) -> None:
    writes = FakeWrites([refusal(413, "too large")])
    sink = make_sink(tmp_path, writes, batch_size=4)
    sink.on_flush(flushes(4, 1)[0])
    asyncio.run(sink.drain())
    assert [len(body.split(b"\n")) for body in writes.bodies] == [2, 2]


def test_drain_learns_how_a_write_cut_off_by_the_stop_ended(tmp_path: Path) -> None:
    writes = FakeWrites([])
    writes.gate = asyncio.Event()
    sink = make_sink(tmp_path, writes, batch_size=2)
    sink.on_flush(flushes(4, 1)[0])

    async def go() -> None:
        task = asyncio.create_task(sink.run())
        await asyncio.sleep(0.05)
        task.cancel()  # the daemon stops while the first batch is on the wire
        with pytest.raises(asyncio.CancelledError):
            await task
        assert writes.gate is not None
        writes.gate.set()
        await sink.drain()

    asyncio.run(go())
    assert len(sent_lines(writes)) == 4  # the first batch once, then the rest
    assert not sink.spool.segments


def test_retry_after_forms() -> None:
    assert retry_after_seconds("5") == 5.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") is None
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("-3") == 0.0
