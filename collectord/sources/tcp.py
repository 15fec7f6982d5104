"""TCP listeners: newline-delimited lines from many concurrent clients.

Each read is cut at its last newline; the tail waits for the next read, so a line split across
reads is reassembled, and a final line without a newline still counts when the client closes.
A line longer than the configured maximum is dropped and counted while the connection's later
lines still count. When the ring is full every connection stops reading until the consumer has
made room: TCP gets backpressure, never loss.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from collectord.config import split_host_port
from collectord.counters import SourceCounters
from collectord.model import Sample
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.ring import PAYLOAD_STATSD, Batch, Ring
from collectord.sources.udp import PacketParser

log = logging.getLogger("collectord.sources.tcp")


@dataclass
class TcpSettings:
    max_line: int = 65536
    idle_timeout: float = 300.0
    max_connections: int = 1024


def has_long_line(chunk: bytes, limit: int) -> bool:
    """Whether a line of `chunk` is longer than `limit` bytes (its newline not counted): a
    window of limit + 1 bytes without a newline. One rfind per window, each stopping at the
    window's last newline, so a read of short lines costs a few C calls, not a split."""
    size = len(chunk)
    start = 0
    while size - start > limit:
        newline = chunk.rfind(b"\n", start, start + limit + 1)
        if newline < 0:
            return True
        start = newline + 1
    return False


class PausableReader(asyncio.Protocol):
    """A stream protocol whose reading stops while the consumer behind it is full
    (backpressure): TCP connections here, workers' links in collectord/ingest/pool.py."""

    transport: asyncio.Transport | None
    paused: bool

    def pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()


class _LineConnection(PausableReader):
    def __init__(self, source: TcpSource) -> None:
        self.source = source
        self.transport: asyncio.Transport | None = None
        self.pending = b""
        self.discarding = False  # inside an over-long line: skip to its newline
        self.last_activity = time.monotonic()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        source = self.source
        counters = source.counters
        if len(source.connections) >= source.settings.max_connections:
            counters.connections_refused += 1
            transport.abort()
            return
        self.transport = transport
        source.connections.add(self)
        counters.connections_open = len(source.connections)
        counters.connections_total += 1
        if source.ring.full:
            self.pause()

    def data_received(self, data: bytes) -> None:
        source = self.source
        counters = source.counters
        counters.bytes += len(data)
        counters.packets += 1
        self.last_activity = time.monotonic()
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(data)
            return
        head = data[: cut + 1]
        tail = data[cut + 1 :]
        if self.discarding:
            first = head.find(b"\n")
            head = head[first + 1 :]
            self.discarding = False
        elif self.pending:
            head = self.pending + head
        self.pending = b""
        self._emit(head)
        self._hold(tail)

    def _hold(self, data: bytes) -> None:
        if self.discarding or not data:
            return
        self.pending += data
        if len(self.pending) > self.source.settings.max_line:
            self.source.line_too_long()
            self.pending = b""
            self.discarding = True

    def _emit(self, chunk: bytes) -> None:
        source = self.source
        limit = source.settings.max_line
        if len(chunk) > limit and has_long_line(chunk, limit):
            chunk = source.without_long_lines(chunk)
        samples: list[Sample] = []
        repeated = source.parse_repeated
        if repeated is None or not repeated(chunk, samples):
            source.parser.parse(chunk, samples)
        if samples:
            source.ring.force(Batch(source.tenant, samples, time.time(), source.payload_kind, chunk))
            if source.ring.full:
                source.pause_all()

    def eof_received(self) -> bool | None:
        self._flush_tail()
        return None

    def _flush_tail(self) -> None:
        if self.pending and not self.discarding:
            tail, self.pending = self.pending, b""
            self._emit(tail)

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_tail()
        source = self.source
        source.connections.discard(self)
        source.counters.connections_open = len(source.connections)


@dataclass
class TcpSource:
    """One TCP listener and its connections."""

    name: str
    parser: PacketParser
    parse_stats: ParseStats
    ring: Ring
    tenant: str
    settings: TcpSettings
    counters: SourceCounters
    payload_kind: int = PAYLOAD_STATSD
    connections: set[_LineConnection] = field(default_factory=set)
    # StatsdParser.parse_repeated when the parser has one: a read of cached lines in C.
    parse_repeated: Callable[[bytes, list[Sample]], bool] | None = field(init=False, default=None)
    server: asyncio.Server | None = None
    _resumer: asyncio.Task[None] | None = None
    _sweeper: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.parser, StatsdParser):
            self.parse_repeated = self.parser.parse_repeated

    def factory(self) -> Callable[[], asyncio.Protocol]:
        return lambda: _LineConnection(self)

    def line_too_long(self) -> None:
        self.counters.lines_too_long += 1
        stats = self.parse_stats
        stats.lines += 1
        stats.rejected["line_too_long"] = stats.rejected.get("line_too_long", 0) + 1

    def without_long_lines(self, chunk: bytes) -> bytes:
        limit = self.settings.max_line
        kept = []
        for line in chunk.split(b"\n"):
            if len(line) > limit:
                self.line_too_long()
            else:
                kept.append(line)
        return b"\n".join(kept)

    def pause_all(self) -> None:
        self.counters.paused += 1
        for connection in self.connections:
            connection.pause()
        if self._resumer is None or self._resumer.done():
            self._resumer = asyncio.get_running_loop().create_task(self._resume_when_room())

    async def _resume_when_room(self) -> None:
        await self.ring.wait_for_room()
        for connection in list(self.connections):
            connection.resume()

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, max(self.settings.idle_timeout / 4, 0.05)))
            cutoff = time.monotonic() - self.settings.idle_timeout
            for connection in list(self.connections):
                if connection.last_activity < cutoff and connection.transport is not None:
                    self.counters.idle_closed += 1
                    connection.transport.close()

    async def start(self, address: str) -> None:
        host, port = split_host_port(address)
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.factory(), host, port, reuse_address=True, backlog=1024)
        self._sweeper = loop.create_task(self._sweep_idle())
        log.info("listening", extra={"source": self.name, "address": address})

    async def rebind(self, address: str) -> None:
        """Accept on `address` instead: the new socket is bound before the old one closes, and the
        open connections carry on (raises OSError, keeping the old socket, if it cannot bind)."""
        host, port = split_host_port(address)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.factory(), host, port, reuse_address=True, backlog=1024)
        old, self.server = self.server, server
        if old is not None:
            # Not wait_closed(): it would wait for the open connections, which stay.
            old.close()
        log.info("listening", extra={"source": self.name, "address": address})

    async def close(self) -> None:
        """Stop accepting, then let every connection hand over what it has read."""
        if self.server is not None:
            self.server.close()
        for task in (self._sweeper, self._resumer):
            if task is not None:
                task.cancel()
        for connection in list(self.connections):
            connection._flush_tail()
            if connection.transport is not None:
                connection.transport.close()
        if self.server is not None:
            await self.server.wait_closed()
