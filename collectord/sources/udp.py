"""UDP (and Unix datagram) listeners: one datagram in, one batch into the ring.

The receive buffer is raised as far as the kernel allows (SO_RCVBUFFORCE when privileged,
else SO_RCVBUF up to net.core.rmem_max) and the effective size is reported, because a small
buffer is where bursts are lost before any user-space code runs. The kernel's own drop count
for the socket is read from /proc/net/udp so `/api/v1/stats` shows it beside ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from collectord.config import split_host_port
from collectord.counters import SourceCounters
from collectord.model import Sample
from collectord.ring import PAYLOAD_STATSD, Batch, Ring

log = logging.getLogger("collectord.sources.udp")

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class PacketParser(Protocol):
    def parse(self, packet: bytes, out: list[Sample]) -> object: ...


@dataclass
class DatagramSource:
    """A bound datagram socket feeding one parser and the ring."""

    name: str
    sock: socket.socket
    transport: asyncio.DatagramTransport
    counters: SourceCounters
    receive_buffer: int

    def kernel_drops(self) -> int | None:
        return kernel_udp_drops(self.sock)

    def update(self, parser: PacketParser, tenant: str, max_datagram: int) -> None:
        """Reloaded settings: the next datagram is parsed with them."""
        protocol = self.transport.get_protocol()
        assert isinstance(protocol, _DatagramProtocol)
        protocol.parser, protocol.tenant, protocol.max_datagram = parser, tenant, max_datagram

    def resize_receive_buffer(self, wanted: int) -> None:
        self.receive_buffer = _raise_receive_buffer(self.sock, wanted)

    def close(self) -> None:
        self.transport.close()


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(
        self,
        parser: PacketParser,
        ring: Ring,
        tenant: str,
        counters: SourceCounters,
        max_datagram: int,
        payload_kind: int,
    ) -> None:
        self.max_datagram = max_datagram
        self.payload_kind = payload_kind
        self.parser = parser
        self.ring = ring
        self.tenant = tenant
        self.counters = counters

    def datagram_received(self, data: bytes, addr: object) -> None:
        counters = self.counters
        counters.packets += 1
        counters.bytes += len(data)
        if len(data) > self.max_datagram:
            counters.oversized += 1
            return
        samples: list[Sample] = []
        self.parser.parse(data, samples)
        if samples and not self.ring.offer(Batch(self.tenant, samples, time.time(), self.payload_kind, data)):
            counters.dropped_samples += len(samples)

    def error_received(self, exc: Exception) -> None:
        self.counters.errors += 1


def _raise_receive_buffer(sock: socket.socket, wanted: int) -> int:
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, wanted)
            break
        except OSError:
            continue
    # Linux reports twice the requested size (it counts its bookkeeping).
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


async def open_udp(
    name: str,
    address: str,
    parser: PacketParser,
    ring: Ring,
    tenant: str,
    receive_buffer: int,
    counters: SourceCounters,
    max_datagram: int = 65535,
    payload_kind: int = PAYLOAD_STATSD,
) -> DatagramSource:
    host, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    effective = _raise_receive_buffer(sock, receive_buffer)
    sock.bind((host, port))
    sock.setblocking(False)
    return await _attach(name, sock, parser, ring, tenant, counters, effective, max_datagram, payload_kind)


async def open_unix_datagram(
    name: str,
    path: str,
    parser: PacketParser,
    ring: Ring,
    tenant: str,
    receive_buffer: int,
    counters: SourceCounters,
    max_datagram: int = 65535,
    payload_kind: int = PAYLOAD_STATSD,
) -> DatagramSource:
    socket_path = Path(path)
    if socket_path.is_socket():
        socket_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    effective = _raise_receive_buffer(sock, receive_buffer)
    sock.bind(path)
    os.chmod(path, 0o666)  # any container process on the host may send
    sock.setblocking(False)
    return await _attach(name, sock, parser, ring, tenant, counters, effective, max_datagram, payload_kind)


async def _attach(
    name: str,
    sock: socket.socket,
    parser: PacketParser,
    ring: Ring,
    tenant: str,
    counters: SourceCounters,
    effective: int,
    max_datagram: int,
    payload_kind: int,
) -> DatagramSource:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _DatagramProtocol(parser, ring, tenant, counters, max_datagram, payload_kind), sock=sock
    )
    log.info("listening", extra={"source": name, "address": str(sock.getsockname()), "receive_buffer": effective})
    return DatagramSource(name, sock, transport, counters, effective)


def kernel_udp_drops(sock: socket.socket) -> int | None:
    """The `drops` column of /proc/net/udp{,6} for this socket (None where unavailable)."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except OSError:
        return None
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    columns = line.split()
                    if len(columns) >= 13 and columns[9] == str(inode):
                        return int(columns[12])
        except OSError:
            continue
    return None
