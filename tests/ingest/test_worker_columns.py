"""A worker (in this process, on real sockets) that parses distribution datagrams as columns:
the frames and counters it ships leave the state, and the counts, that parsing each datagram
with the plain parser and applying its samples one by one leaves; anything else in the
interval (a counter, a bad line, a followed metric) sends it back to the plain path, exactly."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.ingest.frame import HEADER, MSG_FRAME, MSG_STATS, KeyTable, WireStats
from collectord.ingest.worker import COLUMN_BACKOFF, Worker, WorkerSettings
from collectord.limits import Limits
from collectord.model import Sample
from collectord.protocols.statsd import StatsdParser
from collectord.ring import Batch
from tests.ingest.test_frame import snapshot


@contextmanager
def worker() -> Iterator[tuple[Worker, socket.socket, socket.socket]]:
    owner, theirs = socket.socketpair()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    settings_ = WorkerSettings(
        index=0,
        tenant="default",
        limits=Limits(),
        container_id="tag",
        flush_interval=10,
        ship_interval=3600.0,
        max_datagram=8192,
        tcp_max_line=65536,
        tcp_idle_timeout=0.0,
        tcp_max_connections=1,
        owner_fd=theirs.fileno(),
        udp=[("statsd_udp", udp.fileno())],
    )
    w = Worker(settings_)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(udp.getsockname())
    owner.settimeout(5)
    try:
        yield w, sender, owner
    finally:
        for sock in (owner, theirs, udp, sender):
            sock.close()
        w.epoll.close()


def messages(owner: socket.socket) -> list[tuple[int, bytes]]:
    owner.setblocking(False)
    data = b""
    while True:
        try:
            chunk = owner.recv(1 << 20)
        except BlockingIOError:
            break
        data += chunk
    out = []
    while data:
        length, kind = HEADER.unpack_from(data)
        out.append((kind, data[HEADER.size : HEADER.size + length]))
        data = data[HEADER.size + length :]
    return out


def run(
    w: Worker, sender: socket.socket, owner: socket.socket, datagrams: list[bytes]
) -> tuple[Aggregator, dict[str, Any]]:
    """Send, read every datagram, ship; the owner's state and the stats the worker sent."""
    for datagram in datagrams:
        sender.send(datagram)
    sock = w.handlers[next(fd for fd, h in w.handlers.items() if h[0] == "udp")][2]
    while w.counters["statsd_udp"].packets < len(datagrams):
        w._read_datagrams(sock, "statsd_udp")
    w.ship()
    agg = Aggregator(Limits(), AggregationSettings(), int(w.frame_at) // 60 * 60)
    table = KeyTable()
    stats = WireStats()
    for kind, body in messages(owner):
        if kind == MSG_FRAME:
            agg.apply_frame(table.decode(body))
        elif kind == MSG_STATS:
            stats = msgspec.msgpack.decode(body, type=WireStats)
    return agg, msgspec.structs.asdict(stats)


def plain(datagrams: list[bytes], at: float) -> tuple[Aggregator, dict[str, Any]]:
    parser = StatsdParser(Limits())
    samples: list[Sample] = []
    for datagram in datagrams:
        parser.parse(datagram, samples)
    agg = Aggregator(Limits(), AggregationSettings(), int(at) // 60 * 60)
    agg.apply(Batch("default", samples, at))
    stats = parser.stats
    return agg, {"lines": stats.lines, "accepted": stats.accepted, "rejected": dict(stats.rejected)}


TIMER = st.builds(
    "lat.{}:{}|ms{}".format,
    st.integers(0, 40),
    st.integers(0, 5000),
    st.sampled_from(["", "|@0.5", "|#env:prod,region:eu", "|@0.25|#a:b"]),
)
ODD = st.sampled_from(["hits:1|c", "not a line", "lat.1:x|ms", "lat.2:5|zz", "q:3|g", "lat.3:1e3|ms"])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    st.lists(st.lists(TIMER, min_size=10, max_size=25), min_size=3, max_size=40),
    st.lists(st.tuples(st.integers(0, 1000), ODD), max_size=3),
)
def test_worker_frames_and_counts_equal_plain_parsing(lines: list[list[str]], odd: list[tuple[int, str]]) -> None:
    for at, line in odd:  # a few odd lines somewhere: the interval takes the plain path
        lines[at % len(lines)].append(line)
    datagrams = ["\n".join(datagram).encode() for datagram in lines]
    with worker() as (w, sender, owner):
        framed, stats = run(w, sender, owner, datagrams)
    expected, counts = plain(datagrams, w.frame_at)
    assert stats["lines"] == counts["lines"]
    assert stats["accepted"] == counts["accepted"]
    assert stats["rejected"] == counts["rejected"]
    assert snapshot(framed) == snapshot(expected)


def test_a_timer_only_interval_takes_the_column_path_and_a_followed_metric_does_not() -> None:
    with worker() as (w, sender, owner):
        followed_raw(w, sender, owner)


def followed_raw(w: Worker, sender: socket.socket, owner: socket.socket) -> None:
    datagrams = [b"\n".join(b"lat.%d:%d|ms|#env:prod" % (i % 7, i * 13 % 900) for i in range(25))] * 8
    for datagram in datagrams:
        sender.send(datagram)
    sock = next(h[2] for h in w.handlers.values() if h[0] == "udp")
    while w.counters["statsd_udp"].packets < len(datagrams):
        w._read_datagrams(sock, "statsd_udp")
    w._parse_held()
    assert len(w.columns) == 1 and not w.pending
    w.followed = frozenset({"lat.3"})
    w.ship()
    frame = KeyTable().decode(next(body for kind, body in messages(owner) if kind == MSG_FRAME))
    # lat.3 went raw, one sample each, in order (streams get every sample).
    assert [s[2] for s in frame.raw] == [float(i * 13 % 900) for i in range(25) if i % 7 == 3] * 8
    assert frame.samples == 200


def test_after_a_declined_interval_the_worker_parses_plainly_for_a_while() -> None:
    timers = [b"\n".join(b"lat.%d:%d|ms" % (i % 7, i) for i in range(25))] * 4
    with worker() as (w, sender, owner):
        sock = next(h[2] for h in w.handlers.values() if h[0] == "udp")

        def interval(datagrams: list[bytes]) -> bool:
            """One interval; whether it went through the column parser."""
            before = w.counters["statsd_udp"].packets
            for datagram in datagrams:
                sender.send(datagram)
            while w.counters["statsd_udp"].packets < before + len(datagrams):
                w._read_datagrams(sock, "statsd_udp")
            w._parse_held()
            used = bool(w.columns)
            w.ship()
            messages(owner)
            return used

        assert interval(timers)
        assert not interval([*timers, timers[0] + b"\nhits:1|c"])
        assert [interval(timers) for _ in range(COLUMN_BACKOFF + 1)] == [False] * COLUMN_BACKOFF + [True]
