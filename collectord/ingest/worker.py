"""A worker process: reads the listener sockets the owner passed it, parses, pre-aggregates one
ship interval at a time and ships frames to the owner (docs/design.md, "Multi-core ingest").

    python -m collectord.ingest.worker '<WorkerSettings as JSON>'

A plain blocking loop around epoll: no event loop is needed for a handful of sockets, and every
nanosecond saved per datagram is a datagram more. The UDP socket is shared by every worker (the
kernel hands each datagram to one reader, whatever the sender's port); TCP connections are
accepted from the shared listening socket, and each stays with the worker that accepted it.
Shipping is a blocking write: when the owner is behind, the worker stops reading (TCP senders
wait, UDP datagrams wait in the socket's buffer). The worker exits when the owner asks (after
shipping what it holds) or when the owner's end of its socket closes.
"""

from __future__ import annotations

import gc
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field, fields

import msgspec

from collectord.counters import SourceCounters
from collectord.ingest.frame import (
    HEADER,
    MAX_FRAME_SAMPLES,
    MAX_MESSAGE,
    MSG_BYE,
    MSG_FRAME,
    MSG_INTEREST,
    MSG_STATS,
    MSG_STOP,
    FrameBuilder,
    WireStats,
    message,
)
from collectord.limits import Limits
from collectord.model import Sample
from collectord.protocols.parse_stats import EXAMPLE_BYTES, ParseStats
from collectord.protocols.statsd import StatsdParser
from collectord.protocols.statsd_columns import StatsdColumns, parse_columns
from collectord.sources.tcp import has_long_line

# Datagrams read per readiness event before the ship deadline is looked at again.
READ_BURST = 256
# Bytes of datagrams held unparsed before they are parsed (and the frame perhaps shipped) early.
HOLD_BYTES = 1 << 20
# After parse_columns declined an interval, this many intervals are parsed plainly before the next try.
COLUMN_BACKOFF = 8
TCP_READ = 256 * 1024
SWEEP_EVERY = 1.0


class WorkerSettings(msgspec.Struct, forbid_unknown_fields=True):
    index: int
    tenant: str
    limits: Limits
    container_id: str
    flush_interval: int
    ship_interval: float
    max_datagram: int
    tcp_max_line: int
    tcp_idle_timeout: float
    tcp_max_connections: int
    owner_fd: int
    udp: list[tuple[str, int]] = msgspec.field(default_factory=list)
    tcp: list[tuple[str, int]] = msgspec.field(default_factory=list)


@dataclass
class _Connection:
    sock: socket.socket
    source: str
    pending: bytes = b""
    discarding: bool = False
    last_activity: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.owner = socket.socket(fileno=settings.owner_fd)
        self.owner.setblocking(True)
        self.stats = ParseStats()
        self.parser = StatsdParser(settings.limits, container_id=settings.container_id, stats=self.stats)  # type: ignore[arg-type]
        self.builder = FrameBuilder()
        self.counters: dict[str, SourceCounters] = {}
        # epoll directly: the shared UDP socket is registered EPOLLEXCLUSIVE, so a datagram wakes
        # one worker, not all of them (the others would only find the queue empty).
        self.epoll = select.epoll()
        self.handlers: dict[int, tuple[str, str, socket.socket]] = {}
        self.connections: dict[int, _Connection] = {}
        self.followed: frozenset[str] = frozenset()
        self.pending: list[Sample] = []
        # Batches of distribution lines parsed as columns (parse_columns), waiting for the frame;
        # only while `pending` is empty (a frame's samples keep their arrival order).
        self.columns: list[StatsdColumns] = []
        self.held_lines = 0
        # Datagrams read but not parsed yet: parsed together when the frame ships.
        self.held: list[bytes] = []
        self.held_bytes = 0
        # Intervals left to parse plainly after parse_columns declined one (COLUMN_BACKOFF).
        self.column_skips = 0
        self.frame_at = 0.0
        self.frame_slice = -1
        self.inbox = bytearray()
        self.running = True
        self._shipped_stats: dict[str, object] = {}
        self._last_sweep = time.monotonic()
        self._watch(self.owner, "owner", "")
        for name, fd in settings.udp:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            self.counters[name] = SourceCounters()
            self._watch(sock, "udp", name, exclusive=True)
        for name, fd in settings.tcp:
            sock = socket.socket(fileno=fd)
            sock.setblocking(False)
            self.counters[name] = SourceCounters()
            self._watch(sock, "listen", name)

    # ------------------------------------------------------------------ the loop

    def _watch(self, sock: socket.socket, what: str, name: str, exclusive: bool = False) -> None:
        self.handlers[sock.fileno()] = (what, name, sock)
        self.epoll.register(sock.fileno(), select.EPOLLIN | (select.EPOLLEXCLUSIVE if exclusive else 0))

    def run(self) -> None:
        ship_every = self.settings.ship_interval
        next_ship = time.monotonic() + ship_every
        poll = self.epoll.poll
        handlers = self.handlers
        while self.running:
            timeout = next_ship - time.monotonic()
            for fd, _ in poll(timeout if timeout > 0 else 0):
                handler = handlers.get(fd)
                if handler is None:
                    continue
                what, name, sock = handler
                if what == "udp":
                    self._read_datagrams(sock, name)
                elif what == "conn":
                    self._read_connection(sock)
                elif what == "listen":
                    self._accept(sock, name)
                else:
                    self._read_owner()
            now = time.monotonic()
            if now >= next_ship:
                self.ship()
                next_ship = now + ship_every
                if now - self._last_sweep >= SWEEP_EVERY:
                    self._last_sweep = now
                    self._sweep_idle(now)
        self._finish()

    def _finish(self) -> None:
        """Hand over what every connection holds, ship it, say goodbye."""
        for connection in list(self.connections.values()):
            self._flush_tail(connection)
            self._close(connection)
        self.ship()
        self._send(message(MSG_BYE, b""))

    # ------------------------------------------------------------------ UDP

    def _read_datagrams(self, sock: socket.socket, name: str) -> None:
        """Up to READ_BURST datagrams, held unparsed until the frame ships (_parse_held)."""
        counters = self.counters[name]
        limit = self.settings.max_datagram
        size = limit + 1  # a longer datagram arrives truncated to this: counted as oversized
        recv = sock.recv
        self._start_frame()
        held = self.held
        append = held.append
        received = packets = 0
        for _ in range(READ_BURST):
            try:
                data = recv(size)
            except BlockingIOError:
                break
            except OSError:
                counters.errors += 1
                break
            packets += 1
            received += len(data)
            if len(data) > limit:
                counters.oversized += 1
                continue
            append(data)
        counters.packets += packets
        counters.bytes += received
        self.held_bytes += received
        if self.held_bytes >= HOLD_BYTES:
            self._parse_held()
            if len(self.pending) >= MAX_FRAME_SAMPLES or self.held_lines >= MAX_FRAME_SAMPLES:
                self.ship()

    def _parse_held(self) -> None:
        """Parse the datagrams held since the last call: as columns when they are all
        distribution lines (timers, histograms: numpy passes over the whole interval's bytes,
        work per series rather than ~1 µs of bytecode per line), else one by one."""
        held = self.held
        if not held:
            return
        self.held = []
        self.held_bytes = 0
        columns = None
        if self.column_skips > 0:
            self.column_skips -= 1
        elif not self.pending:
            columns = self._as_columns(held)
            if columns is None:
                # Mixed traffic (a counter deep in a datagram of timers costs a whole numpy
                # pass before the decline): try again only some intervals later.
                self.column_skips = COLUMN_BACKOFF
        if columns is None:
            if self.columns:
                self._columns_to_pending()
            parse = self.parser.parse
            pending = self.pending
            for data in held:
                parse(data, pending)
        else:
            self.columns.append(columns)
            self.held_lines += len(columns.values)

    def _as_columns(self, batch: list[bytes]) -> StatsdColumns | None:
        """parse_columns of the batch, with the parser's counters as parse() would leave them:
        parse_columns may parse a line to learn its template, which must not count here."""
        stats = self.parser.stats
        self.parser.stats = ParseStats()
        try:
            columns = parse_columns(self.parser, batch)
        finally:
            self.parser.stats = stats
        if columns is not None:
            lines = len(columns.values)
            stats.lines += lines
            stats.accepted += lines
        return columns

    def _columns_to_pending(self) -> None:
        """The held column batches as samples, in front of what comes next (order kept)."""
        for columns in self.columns:
            self.pending.extend(_samples_of(columns))
        self.columns = []
        self.held_lines = 0

    def _start_frame(self) -> None:
        """Note the receive time of a frame's first packet; a packet of a new slice ships the
        frame first, so a frame never spans two slices."""
        now = time.time()
        current = int(now // self.settings.flush_interval)
        holding = bool(self.pending or self.columns or self.held)
        if holding and current != self.frame_slice:
            self.ship()
            holding = False
        if not holding:
            self.frame_at = now
            self.frame_slice = current

    # ------------------------------------------------------------------ TCP

    def _accept(self, listener: socket.socket, name: str) -> None:
        counters = self.counters[name]
        per_worker = max(1, self.settings.tcp_max_connections)
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                counters.errors += 1
                return
            if counters.connections_open >= per_worker:
                counters.connections_refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            connection = _Connection(sock, name)
            self.connections[sock.fileno()] = connection
            counters.connections_open += 1
            counters.connections_total += 1
            self._watch(sock, "conn", name)

    def _read_connection(self, sock: socket.socket) -> None:
        connection = self.connections.get(sock.fileno())
        if connection is None:
            return
        try:
            data = sock.recv(TCP_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._flush_tail(connection)
            self._close(connection)
            return
        counters = self.counters[connection.source]
        counters.bytes += len(data)
        counters.packets += 1
        connection.last_activity = time.monotonic()
        cut = data.rfind(b"\n")
        if cut < 0:
            self._hold(connection, data)
            return
        head = data[: cut + 1]
        tail = data[cut + 1 :]
        if connection.discarding:
            head = head[head.find(b"\n") + 1 :]
            connection.discarding = False
        elif connection.pending:
            head = connection.pending + head
        connection.pending = b""
        self._emit(connection, head)
        self._hold(connection, tail)

    def _hold(self, connection: _Connection, data: bytes) -> None:
        if connection.discarding or not data:
            return
        connection.pending += data
        if len(connection.pending) > self.settings.tcp_max_line:
            self._line_too_long(connection.source)
            connection.pending = b""
            connection.discarding = True

    def _emit(self, connection: _Connection, chunk: bytes) -> None:
        limit = self.settings.tcp_max_line
        if len(chunk) > limit and has_long_line(chunk, limit):
            kept = []
            for line in chunk.split(b"\n"):
                if len(line) > limit:
                    self._line_too_long(connection.source)
                else:
                    kept.append(line)
            chunk = b"\n".join(kept)
        self._start_frame()
        self._parse_held()
        if self.columns:
            self._columns_to_pending()
        # A read of cached lines in C (sources/tcp.py does the same in the owner).
        if not self.parser.parse_repeated(chunk, self.pending):
            self.parser.parse(chunk, self.pending)
        if len(self.pending) >= MAX_FRAME_SAMPLES:
            self.ship()

    def _line_too_long(self, source: str) -> None:
        self.counters[source].lines_too_long += 1
        self.stats.lines += 1
        self.stats.rejected["line_too_long"] = self.stats.rejected.get("line_too_long", 0) + 1

    def _flush_tail(self, connection: _Connection) -> None:
        if connection.pending and not connection.discarding:
            tail, connection.pending = connection.pending, b""
            self._emit(connection, tail)

    def _close(self, connection: _Connection) -> None:
        self.connections.pop(connection.sock.fileno(), None)
        self.epoll.unregister(connection.sock.fileno())
        self.handlers.pop(connection.sock.fileno(), None)
        connection.sock.close()
        self.counters[connection.source].connections_open -= 1

    def _sweep_idle(self, now: float) -> None:
        idle = self.settings.tcp_idle_timeout
        if idle <= 0:
            return
        for connection in list(self.connections.values()):
            if now - connection.last_activity > idle:
                self.counters[connection.source].idle_closed += 1
                self._flush_tail(connection)
                self._close(connection)

    # ------------------------------------------------------------------ the owner

    def _read_owner(self) -> None:
        try:
            data = self.owner.recv(65536)
        except OSError:
            data = b""
        if not data:
            # The owner is gone: nobody to ship to.
            raise SystemExit(0)
        inbox = self.inbox
        inbox += data
        while len(inbox) >= HEADER.size:
            length, kind = HEADER.unpack_from(inbox)
            if length > MAX_MESSAGE:
                raise SystemExit(2)
            if len(inbox) < HEADER.size + length:
                break
            body = bytes(inbox[HEADER.size : HEADER.size + length])
            del inbox[: HEADER.size + length]
            if kind == MSG_STOP:
                self.running = False
            elif kind == MSG_INTEREST:
                self.followed = frozenset(msgspec.msgpack.decode(body, type=list[str]))

    def ship(self) -> None:
        """Send the frame of what was parsed since the last one, and the counters' deltas."""
        self._parse_held()
        if self.columns:
            body = self.builder.build_columns(self.settings.tenant, self.frame_at, self.columns, self.followed)
            if body is None:
                self._columns_to_pending()  # build() below makes it
            else:
                self.columns = []
                self.held_lines = 0
                self._send(message(MSG_FRAME, body))
        if self.pending:
            samples, self.pending = self.pending, []
            body = self.builder.build(self.settings.tenant, self.frame_at, samples, self.followed)
            self._send(message(MSG_FRAME, body))
        stats = self._stats_delta()
        if stats is not None:
            self._send(message(MSG_STATS, stats))

    def _send(self, data: bytes) -> None:
        try:
            self.owner.sendall(data)
        except OSError:
            raise SystemExit(0) from None

    def _stats_delta(self) -> bytes | None:
        """Counters changed since the last stats message, as deltas (connections_open as is)."""
        now: dict[str, object] = {
            "lines": self.stats.lines,
            "accepted": self.stats.accepted,
            "events": self.stats.events,
            "service_checks": self.stats.service_checks,
            "rejected": dict(self.stats.rejected),
            "sources": {name: {f.name: getattr(c, f.name) for f in fields(c)} for name, c in self.counters.items()},
        }
        before = self._shipped_stats
        if now == before:
            return None
        self._shipped_stats = now
        delta = WireStats(
            lines=self.stats.lines - int(before.get("lines", 0)),  # type: ignore[call-overload]
            accepted=self.stats.accepted - int(before.get("accepted", 0)),  # type: ignore[call-overload]
            events=self.stats.events - int(before.get("events", 0)),  # type: ignore[call-overload]
            service_checks=self.stats.service_checks - int(before.get("service_checks", 0)),  # type: ignore[call-overload]
        )
        old_rejected: dict[str, int] = before.get("rejected", {})  # type: ignore[assignment]
        for reason, count in self.stats.rejected.items():
            if count != old_rejected.get(reason, 0):
                delta.rejected[reason] = count - old_rejected.get(reason, 0)
                example = self.stats.last_rejected.get(reason)
                if example is not None:
                    delta.last_rejected[reason] = example[:EXAMPLE_BYTES]
        old_sources: dict[str, dict[str, int]] = before.get("sources", {})  # type: ignore[assignment]
        for name, values in now["sources"].items():  # type: ignore[attr-defined]
            old = old_sources.get(name, {})
            changed = {
                k: (v if k == "connections_open" else v - old.get(k, 0))
                for k, v in values.items()
                if v != old.get(k, 0)
            }
            if changed:
                delta.sources[name] = changed
        return msgspec.msgpack.encode(delta)


def _samples_of(columns: StatsdColumns) -> list[Sample]:
    """Every line of `columns` as the Sample parse() gives, in line order."""
    groups = columns.groups.tolist()
    keys, kinds, weights = columns.keys, columns.kinds, columns.weights
    return [
        (keys[g], kinds[g], value, weights[g], None) for g, value in zip(groups, columns.values.tolist(), strict=True)
    ]


def _die_with_the_owner() -> None:
    """SIGKILL when the owner dies (Linux prctl): a worker blocked anywhere must not outlive it,
    holding its listener sockets."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    _die_with_the_owner()
    # The owner stops workers (SIGTERM, SIGINT and SIGHUP are its to handle): a worker killed by
    # a signal meant for the daemon would lose what it holds.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    settings = msgspec.json.decode(argv[1], type=WorkerSettings)
    worker = Worker(settings)
    gc.freeze()
    # Parsed tuples hold no cycles: collect rarely (each gen-0 pass walks young tuples).
    gc.set_threshold(100_000, 50, 100)
    try:
        worker.run()
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
