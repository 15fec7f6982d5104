"""The bulk TCP path (a read of cached lines mapped in C, runs and single reads of repeated
counters applied by counting) must leave exactly what the line-by-line path leaves: the same
aggregator state, parse counters, rejections and samples in order, whatever the reads' boundaries
and however hostile the bytes. Also over real loopback sockets."""

from __future__ import annotations

import asyncio
import random
from itertools import chain, pairwise
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.counters import SourceCounters
from collectord.limits import Limits
from collectord.model import Sample
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.ring import Batch, Ring
from collectord.sources import tcp
from collectord.sources.tcp import TcpSettings, TcpSource, has_long_line
from tests.aggregation.test_apply_many import snapshot

T0 = 1_800_000_000.0
MAX_LINE = 40

# Lines real and hostile: repeated counters (the bulk path), fractional and sampled ones,
# gauges, timers, sets, tags, bad values and types, non-UTF-8, control bytes, CR endings,
# blank lines, lines over MAX_LINE.
LINES = [
    b"a.b:1|c",
    b"a.c:1|c",
    b"a.c:2|c",
    b"a.d:1|c|@0.5",
    b"a.e:1|c|@0.3",
    b"a.f:0.5|c",
    b"a.g:-3|c",
    b"a.h:1|c|#env:prod",
    b"g.a:5|g",
    b"g.a:+2|g",
    b"t.a:12|ms",
    b"t.a:12.5|ms",
    b"s.a:member|s",
    b"a.b:1|c\r",
    b"",
    b"   ",
    b"bad",
    b"a.b:x|c",
    b"a.b:1|zz",
    b"a.b:nan|c",
    b"\xff\xfe:1|c",
    b"n\x01ame:1|c",
    b"a.b:1:2:3|c",
    b"a.b:1|c|T1800000000",
    b"x" * (MAX_LINE + 5) + b":1|c",
    b"long.name." + b"y" * (MAX_LINE - 14) + b":1|c",  # exactly at the limit or near it
]


class FakeTransport:
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class FakeClock:
    """time.time() for the source: a new instant per read, crossing a 10 s slice now and then."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        self.now += 0.37
        return self.now

    def monotonic(self) -> float:
        return 0.0


def _source(ring: Ring, bulk: bool) -> TcpSource:
    stats = ParseStats()
    source = TcpSource(
        "statsd_tcp",
        StatsdParser(Limits(), stats=stats),
        stats,
        ring,
        "default",
        TcpSettings(max_line=MAX_LINE),
        SourceCounters(),
    )
    if not bulk:
        source.parse_repeated = None  # the line-by-line parser for every read
    return source


def _feed(source: TcpSource, streams: list[list[bytes]], monkeypatch: Any) -> None:
    """Each connection's reads, connections taking turns, then every connection closes."""
    monkeypatch.setattr(tcp, "time", FakeClock())
    connections = []
    for _ in streams:
        connection = cast(Any, source.factory()())
        connection.connection_made(FakeTransport())
        connections.append(connection)
    for turn in range(max(map(len, streams), default=0)):
        for connection, reads in zip(connections, streams, strict=True):
            if turn < len(reads):
                connection.data_received(reads[turn])
    for connection in connections:
        connection.eof_received()
        connection.connection_lost(None)


def _run(streams: list[list[bytes]], bulk: bool, drain_every: int, monkeypatch: Any) -> tuple[object, ...]:
    """Feed the reads; apply the ring's batches one by one (reference) or in drains of
    `drain_every` batches through apply_many (the daemon's consumer)."""
    ring = Ring(10**9)
    source = _source(ring, bulk)
    _feed(source, streams, monkeypatch)
    batches = ring.drain()
    aggregator = Aggregator(Limits(), AggregationSettings(), T0)
    if bulk:
        for start in range(0, len(batches), drain_every):
            aggregator.apply_many(batches[start : start + drain_every])
    else:
        for batch in batches:
            aggregator.apply(batch)
    samples: list[Sample] = list(chain.from_iterable(batch.samples for batch in batches))
    stats = source.parse_stats
    return (
        snapshot(aggregator),
        [(b.received_at, b.payload) for b in batches],
        [(s[0], s[1], s[2], s[3], s[4]) for s in samples],
        (stats.lines, stats.accepted, dict(stats.rejected), stats.events, stats.service_checks),
        source.counters.lines_too_long,
    )


def _reads(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in pairwise(points) if b > a]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, len(LINES) - 1), min_size=0, max_size=400),
            st.lists(st.integers(0, 10**6), max_size=12),  # read boundaries
            st.booleans(),  # a final newline
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(1, 8),
)
def test_bulk_path_equals_line_by_line(
    monkeypatch: Any, connections: list[tuple[list[int], list[int], bool]], drain_every: int
) -> None:
    streams = []
    for indices, cuts, final in connections:
        data = b"\n".join(LINES[i] for i in indices) + (b"\n" if final and indices else b"")
        streams.append(_reads(data, cuts))
    assert _run(streams, True, drain_every, monkeypatch) == _run(streams, False, 1, monkeypatch)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=600), st.lists(st.integers(0, 10**6), max_size=10), st.integers(1, 4))
def test_random_bytes_bulk_equals_line_by_line(
    monkeypatch: Any, data: bytes, cuts: list[int], drain_every: int
) -> None:
    # Seeded with cached lines first, so that reads of them take the bulk path.
    warm = b"a.b:1|c\na.c:1|c\n" * 80
    streams = [_reads(warm + data + warm, cuts)]
    assert _run(streams, True, drain_every, monkeypatch) == _run(streams, False, 1, monkeypatch)


def test_repeated_reads_take_the_bulk_path(monkeypatch: Any) -> None:
    """The case the fast path is for: once the lines are cached every read is mapped in C,
    and a drain of repeated counters is applied by counting."""
    ring = Ring(10**9)
    source = _source(ring, True)
    mapped = source.parse_repeated
    assert mapped is not None
    outcomes: list[bool] = []

    def spy(packet: bytes, out: list[Sample]) -> bool:
        outcomes.append(mapped(packet, out))
        return outcomes[-1]

    source.parse_repeated = spy
    rng = random.Random(3)
    body = b"".join(b"c.%d:1|c\n" % (i if i < 50 else rng.randrange(50)) for i in range(5000))
    _feed(source, [[body[:1000], body[1000:13000], body[13000:]]], monkeypatch)
    # The first read teaches the cache (the parser), the others are mapped.
    assert outcomes == [False, True, True]
    assert source.parse_stats.accepted == 5000
    aggregator = Aggregator(Limits(), AggregationSettings(), T0)
    first, *rest = ring.drain()
    aggregator.apply(first)  # creates the series
    assert aggregator._apply_counted(rest[:1], int(rest[0].received_at // 10) * 10, len(rest[0].samples))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")), st.integers(0, 30))
def test_has_long_line_agrees_with_split(chunk: bytes, limit: int) -> None:
    assert has_long_line(chunk, limit) == any(len(line) > limit for line in chunk.split(b"\n"))


async def test_many_real_connections_bulk_equals_line_by_line() -> None:
    """Real loopback sockets, 20 clients writing repeated counters with bad and over-long lines
    in odd-sized writes: every line counted, the aggregator as if each line were applied alone."""
    ring = Ring(10**9)
    source = _source(ring, True)
    await source.start("127.0.0.1:0")
    assert source.server is not None
    port = int(source.server.sockets[0].getsockname()[1])
    rng = random.Random(7)
    bodies = []
    for number in range(20):
        lines = [b"r.%d:1|c|#client:%d" % (rng.randrange(30), number % 3) for _ in range(3000)]
        lines[100] = b"r.bad:oops|c"
        lines[2000] = b"r." + b"z" * (MAX_LINE * 3) + b":1|c"
        bodies.append(b"\n".join(lines) + b"\n")

    async def client(body: bytes) -> None:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        at = 0
        while at < len(body):
            step = rng.randrange(1, 9000)
            writer.write(body[at : at + step])
            at += step
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    aggregator = Aggregator(Limits(), AggregationSettings(), T0)
    batches: list[Batch] = []
    sending = asyncio.gather(*(client(body) for body in bodies))
    while not sending.done():
        drained = ring.drain()
        batches += drained
        aggregator.apply_many(drained)
        await asyncio.sleep(0.002)
    await sending
    for _ in range(200):
        if not source.connections:
            break
        await asyncio.sleep(0.01)
    await source.close()
    drained = ring.drain()
    batches += drained
    aggregator.apply_many(drained)

    reference = Aggregator(Limits(), AggregationSettings(), T0)
    stats = ParseStats()
    parser = StatsdParser(Limits(), stats=stats)
    for batch in batches:
        out: list[Sample] = []
        for line in batch.payload.split(b"\n"):
            parser.parse(line, out)  # one line at a time
        assert [s[:5] for s in out] == [s[:5] for s in batch.samples]
        reference.apply(Batch(batch.tenant, out, batch.received_at))
    assert snapshot(aggregator) == snapshot(reference)
    assert source.parse_stats.accepted == 20 * 2998 == stats.accepted
    assert source.parse_stats.rejected == {"bad_value": 20, "line_too_long": 20}
    assert source.counters.lines_too_long == 20


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, len(LINES) - 1), max_size=60),
    st.lists(st.integers(0, len(LINES) - 1), max_size=60),
    st.booleans(),
)
def test_parse_repeated_is_parse_or_nothing(warm: list[int], packet_lines: list[int], final: bool) -> None:
    """parse_repeated either gives exactly parse()'s samples and counts, or touches nothing."""
    packet = b"\n".join(LINES[i] for i in packet_lines) + (b"\n" if final else b"")
    warm_packet = b"\n".join(LINES[i] for i in warm)
    fast_stats, slow_stats = ParseStats(), ParseStats()
    fast, slow = StatsdParser(Limits(), stats=fast_stats), StatsdParser(Limits(), stats=slow_stats)
    fast.parse(warm_packet, [])
    slow.parse(warm_packet, [])
    before = (fast_stats.lines, fast_stats.accepted, dict(fast_stats.rejected))
    got: list[Sample] = []
    if fast.parse_repeated(packet, got):
        expected: list[Sample] = []
        slow.parse(packet, expected)
        assert got == expected
        assert (fast_stats.lines, fast_stats.accepted, fast_stats.rejected) == (
            slow_stats.lines,
            slow_stats.accepted,
            slow_stats.rejected,
        )
    else:
        assert got == []
        assert (fast_stats.lines, fast_stats.accepted, dict(fast_stats.rejected)) == before
    assert not fast.parse_repeated(bytearray(packet), got)  # type: ignore[arg-type]
