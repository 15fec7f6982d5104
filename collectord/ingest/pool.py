"""The owner's side of multi-core ingest: creates the StatsD listener sockets, runs worker
processes on them, and turns their frames into ring batches (logged, then applied, like any
source's). The owner never blocks on a worker: frames are read by the event loop, a worker
whose frames cannot be queued is paused (it then stops reading its sockets), and a worker that
dies or sends garbage is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, cast

import msgspec

from collectord.config import Config, split_host_port
from collectord.counters import SourceCounters
from collectord.ingest.frame import (
    HEADER,
    MAX_MESSAGE,
    MSG_BYE,
    MSG_FRAME,
    MSG_INTEREST,
    MSG_STATS,
    MSG_STOP,
    BadFrame,
    KeyInterner,
    KeyTable,
    WireStats,
    frame_record,
    keys_record,
    message,
)
from collectord.ingest.worker import WorkerSettings
from collectord.ring import PAYLOAD_FRAME, PAYLOAD_FRAME_KEYS, Batch
from collectord.sources.tcp import PausableReader
from collectord.sources.udp import _raise_receive_buffer, kernel_udp_drops

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline

log = logging.getLogger("collectord.ingest")

# Definitions per key record re-logged after a checkpoint (a record stays well under 16 MiB).
KEYS_PER_RECORD = 50_000
RESTART_MIN = 0.2
RESTART_MAX = 5.0
# A worker that lived this long before dying is restarted at once again.
STABLE_AFTER = 30.0
STOP_WAIT = 10.0
_COUNTER_FIELDS = frozenset(f.name for f in fields(SourceCounters))


@dataclass
class PoolStats:
    started: int = 0
    restarts: int = 0
    frames: int = 0
    frame_bytes: int = 0
    bad_frames: int = 0
    samples: int = 0


class _WorkerLink(PausableReader):
    """One worker process and the owner's end of its socket."""

    def __init__(self, pool: WorkerPool, index: int, process: subprocess.Popen[bytes]) -> None:
        self.pool = pool
        self.index = index
        self.process = process
        self.started_at = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.table = KeyTable(pool.interner)
        # The log's name for this connection's key table (frames after a restart of the daemon
        # or of this worker use new ids).
        self.connection_id = random.getrandbits(63)
        self.logged_generation = -1
        self.logged_epoch: int | None = None
        self.open_connections: dict[str, int] = {}
        self.said_bye = False
        # Stopped on purpose (daemon stop or reload): not restarted when it exits.
        self.retired = False
        self.closed = asyncio.get_running_loop().create_future()
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.send(MSG_INTEREST, msgspec.msgpack.encode(sorted(self.pool.followed)))

    def send(self, kind: int, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(message(kind, body))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        size = len(buffer)
        while size - offset >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, offset)
            if length > MAX_MESSAGE:
                self.refuse(f"message of {length} bytes")
                return
            end = offset + HEADER.size + length
            if end > size:
                break
            body = bytes(buffer[offset + HEADER.size : end])
            offset = end
            try:
                if kind == MSG_FRAME:
                    self.pool.take_frame(self, body)
                elif kind == MSG_STATS:
                    self.pool.take_stats(self, body)
                elif kind == MSG_BYE:
                    self.said_bye = True
                else:
                    raise BadFrame(f"unknown message type {kind}")
            except BadFrame as error:
                self.refuse(str(error))
                return
        del buffer[:offset]

    def refuse(self, reason: str) -> None:
        """A garbage message: count it, drop the connection, kill the worker (it is restarted)."""
        self.pool.stats.bad_frames += 1
        log.error("worker sent a bad frame; restarting it", extra={"worker": self.index, "error": reason})
        self.buffer.clear()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # A partial message in the buffer is what a killed worker was writing: never applied.
        self.buffer.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self.pool.lost(self)


class WorkerPool:
    """Worker processes reading the StatsD UDP and TCP listeners."""

    def __init__(self, pipeline: Pipeline, config: Config) -> None:
        self.pipeline = pipeline
        self.config = config
        self.stats = PoolStats()
        self.interner = KeyInterner()
        self.udp: dict[str, socket.socket] = {}
        # One listening socket per worker (SO_REUSEPORT: the kernel spreads connections over
        # them; a restarted worker gets its predecessor's socket, backlog included).
        self.tcp: dict[str, list[socket.socket]] = {}
        self.receive_buffers: dict[str, int] = {}
        self.links: dict[int, _WorkerLink] = {}
        self.followed: frozenset[str] = frozenset()
        self.stopping = False
        self._restarts: dict[int, asyncio.TimerHandle] = {}
        self._resumer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def size(self) -> int:
        return self.config.ingest.workers

    @property
    def owns_tcp(self) -> bool:
        return self.config.ingest.worker_tcp

    # ------------------------------------------------------------------ sockets

    def bind(self) -> None:
        """Create the listener sockets the workers share (OSError when one cannot bind)."""
        listen, ingest = self.config.listen, self.config.ingest
        if listen.statsd_udp:
            self.udp["statsd_udp"] = self._udp_socket(listen.statsd_udp, ingest.udp_receive_buffer)
        if listen.statsd_tcp and ingest.worker_tcp:
            self.tcp["statsd_tcp"] = [self._tcp_socket(listen.statsd_tcp) for _ in range(max(self.size, 1))]
        for name in (*self.udp, *self.tcp):
            self.pipeline.counters_for(name)

    def _udp_socket(self, address: str, buffer: int) -> socket.socket:
        host, port = split_host_port(address)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.receive_buffers["statsd_udp"] = _raise_receive_buffer(sock, buffer)
        sock.bind((host, port))
        sock.setblocking(False)
        log.info(
            "listening",
            extra={"source": "statsd_udp", "address": address, "receive_buffer": self.receive_buffers["statsd_udp"]},
        )
        return sock

    def _tcp_socket(self, address: str) -> socket.socket:
        host, port = split_host_port(address)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        if not self.tcp.get("statsd_tcp"):
            log.info("listening", extra={"source": "statsd_tcp", "address": address})
        return sock

    def kernel_drops(self) -> dict[str, int | None]:
        return {name: kernel_udp_drops(sock) for name, sock in self.udp.items()}

    # ------------------------------------------------------------------ processes

    async def start(self) -> None:
        for index in range(self.size):
            await self._spawn(index)

    def _settings(self, index: int, owner_fd: int) -> WorkerSettings:
        config = self.config
        ingest = config.ingest
        return WorkerSettings(
            index=index,
            tenant=ingest.tenant,
            limits=config.limits,
            container_id=ingest.container_id,
            flush_interval=int(config.aggregate.flush_interval),
            ship_interval=float(ingest.worker_ship_interval),
            max_datagram=ingest.max_datagram,
            tcp_max_line=ingest.tcp_max_line,
            tcp_idle_timeout=float(ingest.tcp_idle_timeout),
            tcp_max_connections=math.ceil(ingest.tcp_max_connections / max(self.size, 1)),
            owner_fd=owner_fd,
            udp=[(name, sock.fileno()) for name, sock in self.udp.items()],
            tcp=[(name, socks[index].fileno()) for name, socks in self.tcp.items()],
        )

    async def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        settings = self._settings(index, theirs.fileno())
        passed = [
            theirs.fileno(),
            *(s.fileno() for s in self.udp.values()),
            *(s[index].fileno() for s in self.tcp.values()),
        ]
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "collectord.ingest.worker", msgspec.json.encode(settings).decode()],
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        link = _WorkerLink(self, index, process)
        self.links[index] = link
        await loop.create_unix_connection(lambda: link, sock=ours)
        self.stats.started += 1
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    def lost(self, link: _WorkerLink) -> None:
        """A worker's socket closed: reap it, take back its open-connection counts, restart it."""
        for name, count in link.open_connections.items():
            self.pipeline.counters_for(name).connections_open -= count
        link.open_connections.clear()
        if self.links.get(link.index) is link:
            del self.links[link.index]
        task = asyncio.get_running_loop().create_task(self._reap(link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, link: _WorkerLink) -> None:
        process = link.process
        if not link.said_bye:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        code = await asyncio.to_thread(process.wait)
        if self.stopping or link.retired:
            return
        lived = time.monotonic() - link.started_at
        self.stats.restarts += 1
        delay = 0.0 if lived > STABLE_AFTER else min(RESTART_MAX, RESTART_MIN * 2 ** min(self.stats.restarts, 5))
        log.warning("worker exited; restarting it", extra={"worker": link.index, "exit_code": code, "delay": delay})
        await asyncio.sleep(delay)
        if not self.stopping and link.index not in self.links:
            try:
                await self._spawn(link.index)
            except OSError as error:
                log.error("cannot restart worker", extra={"worker": link.index, "error": str(error)})

    async def stop(self) -> None:
        """Ask every worker to ship what it holds and exit, wait for them; close the sockets."""
        await self._stop_workers()
        self._close(self.udp, self.tcp)

    async def _stop_workers(self) -> None:
        self.stopping = True
        links = list(self.links.values())
        for link in links:
            link.retired = True
            link.resume()  # its last frames must be read even if the ring is full
            link.send(MSG_STOP, b"")
        if links:
            await asyncio.wait([link.closed for link in links], timeout=STOP_WAIT)
            for link in links:
                if not link.closed.done():
                    log.warning("worker did not stop in time; killed", extra={"worker": link.index})
                    with contextlib.suppress(ProcessLookupError):
                        link.process.kill()
        for link in links:
            await asyncio.to_thread(link.process.wait)
        if self._resumer is not None:
            self._resumer.cancel()

    @staticmethod
    def _close(udp: dict[str, socket.socket], tcp: dict[str, list[socket.socket]]) -> None:
        for sock in (*udp.values(), *(s for socks in tcp.values() for s in socks)):
            sock.close()

    async def restart(self, config: Config) -> None:
        """New settings (a reload): stop the workers (they ship first), bind moved listeners
        before closing the old sockets (unmoved ones stay open, their queues kept), start the
        workers again. The number of workers needs a restart of the daemon."""
        old = self.config
        await self._stop_workers()
        config = msgspec.structs.replace(
            config,
            ingest=msgspec.structs.replace(config.ingest, workers=old.ingest.workers, worker_tcp=old.ingest.worker_tcp),
        )
        self.config = config
        moved = old.listen.statsd_udp != config.listen.statsd_udp or (
            self.owns_tcp and old.listen.statsd_tcp != config.listen.statsd_tcp
        )
        if moved:
            old_udp, old_tcp = self.udp, self.tcp
            self.udp, self.tcp = {}, {}
            try:
                self.bind()
            except OSError as error:
                log.error("cannot listen on the new address; keeping the old one", extra={"error": str(error)})
                self._close(self.udp, self.tcp)
                self.udp, self.tcp = old_udp, old_tcp
                self.config = msgspec.structs.replace(config, listen=old.listen)
            else:
                self._close(old_udp, old_tcp)
        elif old.ingest.udp_receive_buffer != config.ingest.udp_receive_buffer:
            for name, sock in self.udp.items():
                self.receive_buffers[name] = _raise_receive_buffer(sock, config.ingest.udp_receive_buffer)
        self.stopping = False
        await self.start()

    # ------------------------------------------------------------------ frames

    def take_frame(self, link: _WorkerLink, body: bytes) -> None:
        frame = link.table.decode(body)
        stats = self.stats
        stats.frames += 1
        stats.frame_bytes += len(body)
        stats.samples += frame.samples
        pipeline = self.pipeline
        journal = pipeline.journal
        payload = b""
        if journal is not None:
            epoch = link.table.epoch
            if link.logged_generation != pipeline.frame_generation or link.logged_epoch != epoch:
                # After a checkpoint, the ids this frame uses must be in the log after it too.
                link.logged_generation = pipeline.frame_generation
                link.logged_epoch = epoch
                assert epoch is not None
                self._relog_keys(link, epoch, frame.received_at)
            payload = frame_record(link.connection_id, body)
        ring = pipeline.ring
        ring.force(Batch(frame.tenant, frame.raw, frame.received_at, PAYLOAD_FRAME, payload, frame), frame.samples)
        if ring.full:
            self._pause_all()

    def _relog_keys(self, link: _WorkerLink, epoch: int, received_at: float) -> None:
        journal = self.pipeline.journal
        assert journal is not None
        keys = link.table.keys
        for start in range(0, len(keys), KEYS_PER_RECORD):
            chunk = [(sid, keys[sid][0], keys[sid][1]) for sid in range(start, min(len(keys), start + KEYS_PER_RECORD))]
            payload = keys_record(link.connection_id, epoch, chunk)
            journal.accept(Batch(self.config.ingest.tenant, [], received_at, PAYLOAD_FRAME_KEYS, payload))

    def _pause_all(self) -> None:
        for link in self.links.values():
            link.pause()
        if self._resumer is None or self._resumer.done():
            self._resumer = asyncio.get_running_loop().create_task(self._resume_when_room())

    async def _resume_when_room(self) -> None:
        await self.pipeline.ring.wait_for_room()
        for link in list(self.links.values()):
            link.resume()

    def take_stats(self, link: _WorkerLink, body: bytes) -> None:
        try:
            delta = msgspec.msgpack.decode(body, type=WireStats)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            raise BadFrame(f"undecodable stats: {error}") from error
        parse = self.pipeline.statsd_stats
        parse.lines += delta.lines
        parse.accepted += delta.accepted
        parse.events += delta.events
        parse.service_checks += delta.service_checks
        for reason, count in delta.rejected.items():
            parse.rejected[reason] = parse.rejected.get(reason, 0) + count
        parse.last_rejected.update(delta.last_rejected)
        for name, changed in delta.sources.items():
            if name not in self.udp and name not in self.tcp:
                raise BadFrame(f"stats for unknown source {name!r}")
            counters = self.pipeline.counters_for(name)
            for field_name, value in changed.items():
                if field_name not in _COUNTER_FIELDS:
                    raise BadFrame(f"unknown counter {field_name!r}")
                if field_name == "connections_open":
                    previous = link.open_connections.get(name, 0)
                    link.open_connections[name] = value
                    counters.connections_open += value - previous
                else:
                    setattr(counters, field_name, getattr(counters, field_name) + value)

    # ------------------------------------------------------------------ streams

    def update_interest(self) -> None:
        """Tell workers which metrics stream clients follow (here or on other hosts): those pass
        through un-aggregated, one event per sample."""
        tenant = self.config.ingest.tenant
        hub = self.pipeline.hub
        names = frozenset(name for (t, name) in (*hub.local_interest(), *hub.remote_interest) if t == tenant)
        if names != self.followed:
            self.followed = names
            body = msgspec.msgpack.encode(sorted(names))
            for link in self.links.values():
                link.send(MSG_INTEREST, body)

    def document(self) -> dict[str, object]:
        stats = self.stats
        return {
            "configured": self.size,
            "alive": len(self.links),
            "pids": sorted(link.process.pid for link in self.links.values()),
            "started": stats.started,
            "restarts": stats.restarts,
            "frames": stats.frames,
            "frameBytes": stats.frame_bytes,
            "samples": stats.samples,
            "badFrames": stats.bad_frames,
            "shipIntervalMs": round(float(self.config.ingest.worker_ship_interval) * 1000, 3),
            "followedMetrics": len(self.followed),
        }
