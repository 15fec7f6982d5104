"""Sources over real loopback sockets, in process: backpressure, limits, drops, Unix sockets."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from collectord.counters import SourceCounters
from collectord.limits import Limits
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.ring import Ring
from collectord.sources.tcp import TcpSettings, TcpSource
from collectord.sources.udp import kernel_udp_drops, open_udp, open_unix_datagram


def _tcp_source(ring: Ring, settings: TcpSettings) -> TcpSource:
    stats = ParseStats()
    return TcpSource(
        "statsd_tcp", StatsdParser(Limits(), stats=stats), stats, ring, "default", settings, SourceCounters()
    )


async def _start(source: TcpSource) -> int:
    await source.start("127.0.0.1:0")
    assert source.server is not None
    return int(source.server.sockets[0].getsockname()[1])


def _count(ring: Ring) -> int:
    return sum(len(batch.samples) for batch in ring.drain())


async def test_full_ring_pauses_tcp_instead_of_dropping() -> None:
    ring = Ring(capacity=50)
    source = _tcp_source(ring, TcpSettings())
    port = await _start(source)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    total = 20_000
    writer.write(b"bp:1|c\n" * total)
    received = 0
    # Nobody drains for a while: the source must pause, not drop.
    await asyncio.sleep(0.2)
    assert source.counters.paused >= 1
    assert ring.dropped_samples == 0
    for _ in range(400):
        received += _count(ring)
        if received >= total:
            break
        await asyncio.sleep(0.01)
    await writer.drain()
    writer.close()
    await source.close()
    received += _count(ring)
    assert received == total
    assert ring.dropped_samples == 0


async def test_connection_limit_refuses_and_counts() -> None:
    ring = Ring(capacity=1000)
    source = _tcp_source(ring, TcpSettings(max_connections=2))
    port = await _start(source)
    kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
    assert source.counters.connections_refused == 1
    assert source.counters.connections_open == 2
    for _, w in kept:
        w.close()
    writer.close()
    await source.close()


async def test_idle_connections_are_closed() -> None:
    ring = Ring(capacity=1000)
    source = _tcp_source(ring, TcpSettings(idle_timeout=0.2))
    port = await _start(source)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"idle:1|c\n")
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert source.counters.idle_closed == 1
    assert _count(ring) == 1
    writer.close()
    await source.close()


async def test_udp_drops_are_counted_when_the_ring_is_full() -> None:
    ring = Ring(capacity=5)
    stats = ParseStats()
    counters = SourceCounters()
    source = await open_udp(
        "statsd_udp", "127.0.0.1:0", StatsdParser(Limits(), stats=stats), ring, "default", 1 << 20, counters
    )
    port = source.sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(10):
            sender.sendto(b"d:1|c\nd:1|c\nd:1|c", ("127.0.0.1", port))
    for _ in range(100):
        if counters.packets == 10:
            break
        await asyncio.sleep(0.01)
    assert counters.packets == 10
    assert _count(ring) + counters.dropped_samples == 30
    assert counters.dropped_samples > 0 and ring.dropped_samples == counters.dropped_samples
    assert kernel_udp_drops(source.sock) == 0
    assert source.receive_buffer >= 1 << 20
    source.close()


async def test_unix_datagram_socket(tmp_path: Path) -> None:
    ring = Ring(capacity=1000)
    path = str(tmp_path / "statsd.sock")
    source = await open_unix_datagram(
        "statsd_unix", path, StatsdParser(Limits()), ring, "default", 1 << 20, SourceCounters()
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"unix.hits:3|c", path)
    for _ in range(100):
        if ring.fill:
            break
        await asyncio.sleep(0.01)
    (batch,) = ring.drain()
    assert batch.samples[0][0] == ("unix.hits", ())
    source.close()


@pytest.mark.parametrize("capacity", [0, -1])
def test_ring_refuses_a_useless_capacity(capacity: int) -> None:
    with pytest.raises(ValueError):
        Ring(capacity)


async def test_datagrams_over_the_configured_maximum_are_dropped_whole() -> None:
    ring = Ring(capacity=1000)
    counters = SourceCounters()
    source = await open_udp(
        "statsd_udp", "127.0.0.1:0", StatsdParser(Limits()), ring, "default", 1 << 20, counters, max_datagram=600
    )
    port = source.sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"\n".join([b"big:1|c"] * 100), ("127.0.0.1", port))
        sender.sendto(b"small:1|c", ("127.0.0.1", port))
    for _ in range(100):
        if counters.packets == 2:
            break
        await asyncio.sleep(0.01)
    assert counters.oversized == 1
    assert [batch.samples[0][0][0] for batch in ring.drain()] == ["small"]
    source.close()
