"""Multi-core ingest (ingest.workers): the real daemon with worker processes, over real sockets.

The same packets give the same answers with and without workers; a worker killed under load is
restarted and loses at most what it held (one ship interval); the daemon killed with SIGKILL
replays its log (frames and key records) to the same numbers; a worker that sends garbage is
cut off, counted and restarted while the daemon serves on.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration

WORKERS = "[ingest]\nworkers = 2\nworker_tcp = true\n"
METRICS = ["w.hits", "w.latency", "w.queue", "w.users", "w.dog", "w.rated"]


def packets() -> list[bytes]:
    """A mix of every type, tags, sample rates, gauge deltas and bad lines (integer values, so
    sums are exact whatever the grouping). Gauge deltas of one series resolve in the order they
    are applied, which with several workers is not the order of arrival across datagrams: only
    their count and the final value are compared."""
    out = []
    for i in range(400):
        lines = [
            b"w.hits:1|c",
            b"w.hits,host=h%d:%d|c" % (i % 3, i % 5),
            b"w.latency:%d|ms" % (i * 7 % 300),
            b"w.latency:%d|ms|#endpoint:/e%d" % (i % 50, i % 4),
            b"w.queue:%d|g" % (i % 9),
            b"w.level:+1|g",
            b"w.users:u%d|s" % (i % 37),
            b"w.dog:%d|h|#env:prod,region:eu" % (i % 20),
            b"w.rated:2|c|@0.5",
            b"not a line",
            b"w.bad:x|c",
            b"w.badtype:1|zz",
        ]
        out.append(b"\n".join(lines))
    return out


def avoid_minute_edge() -> None:
    """Both daemons must see the packets in the same minute."""
    while time.time() % 60 > 50:
        time.sleep(0.5)


def send_all(daemon: RunningDaemon, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i, payload in enumerate(payloads):
            sock.sendto(payload, ("127.0.0.1", daemon.statsd))
            if i % 50 == 49:
                time.sleep(0.01)  # no kernel drops: this compares answers, not speed
    with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
        conn.sendall(b"\n".join(payloads[:100]) + b"\n")


def settled(daemon: RunningDaemon, lines: int) -> dict[str, Any]:
    return daemon.wait_for(lambda: (s := daemon.stats())["lines"] >= lines and s, timeout=30)  # type: ignore[no-any-return]


def answers(daemon: RunningDaemon) -> dict[str, Any]:
    out = {}
    for metric in METRICS:
        for granularity in ("1m", "1h"):
            for group in ("", "&group_by=host", "&group_by=endpoint"):
                status, body = daemon.get(
                    f"/api/v1/query?metric={metric}&start=-2h&granularity={granularity}&aggregation=P99{group}"
                )
                assert status == 200, body
                rows = [
                    {k: row.get(k) for k in ("periodStart", "tags", "count", "sum", "min", "max", "p50", "p99")}
                    for row in body["data"]
                ]
                out[f"{metric} {granularity}{group}"] = rows
    return out


def test_same_packets_same_answers_with_and_without_workers(tmp_path: Path) -> None:
    payloads = packets()
    (tmp_path / "w0").mkdir()
    (tmp_path / "w2").mkdir()
    single = start_daemon(tmp_path / "w0")
    multi = start_daemon(tmp_path / "w2", WORKERS)
    try:
        avoid_minute_edge()
        for daemon in (single, multi):
            send_all(daemon, payloads)
        expected_lines = 12 * (len(payloads) + 100)
        one, two = settled(single, expected_lines), settled(multi, expected_lines)
        assert two["workers"]["alive"] == 2 and two["workers"]["frames"] > 0
        assert one["lines"] == two["lines"] == expected_lines
        assert one["accepted"] == two["accepted"] == 9 * (len(payloads) + 100)
        # Bad lines, counted exactly, by reason.
        assert one["badLines"] == two["badLines"]
        assert sum(two["badLines"].values()) == 3 * (len(payloads) + 100)
        assert two["sources"]["statsd_udp"]["packets"] == len(payloads)
        assert two["sources"]["statsd_tcp"]["connectionsTotal"] == 1
        first, second = answers(single), answers(multi)
        assert first == second
        for daemon in (single, multi):
            _, body = daemon.get("/api/v1/query?metric=w.level&start=-2h&granularity=1h&aggregation=COUNT")
            assert body["data"][0]["count"] == len(payloads) + 100
            assert daemon.get("/api/v1/realtime?metric=w.level")[1]["value"] == len(payloads) + 100
        assert first["w.hits 1h"][0]["count"] > 0 and first["w.latency 1h"][0]["p99"] is not None
        assert one["aggregation"]["samples"] == two["aggregation"]["samples"]
    finally:
        single.stop()
        multi.stop()


class UdpLoad(threading.Thread):
    """Counter lines at a steady rate until stopped; counts what it sent."""

    def __init__(self, port: int, per_second: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.per_second = per_second
        self.sent = 0
        self.running = True

    def run(self) -> None:
        packet = b"\n".join(b"load.c%d:1|c" % i for i in range(20))
        began = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while self.running:
                due = (time.monotonic() - began) * self.per_second
                while self.sent < due:
                    sock.sendto(packet, ("127.0.0.1", self.port))
                    self.sent += 20
                time.sleep(0.002)


def total_of(daemon: RunningDaemon, prefix: str, count: int) -> float:
    return sum(daemon.total(f"{prefix}{i}") for i in range(count))


def test_a_killed_worker_is_restarted_and_loses_at_most_its_interval(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, WORKERS)
    try:
        load = UdpLoad(daemon.statsd)
        load.start()
        time.sleep(1.0)
        victim = daemon.stats()["workers"]["pids"][0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.5)
        load.running = False
        load.join()
        stats = daemon.wait_for(lambda: (s := daemon.stats())["workers"]["alive"] == 2 and s, timeout=15)
        assert stats["workers"]["restarts"] == 1
        assert victim not in stats["workers"]["pids"]
        assert stats["kernelDrops"] == 0
        time.sleep(0.3)
        counted = total_of(daemon, "load.c", 20)
        lost = load.sent - counted
        # What the killed worker had parsed and not shipped: at most one ship interval (25 ms)
        # of its share; allow 100 ms at the whole rate for a loaded machine.
        assert 0 <= lost <= 0.1 * load.per_second, (load.sent, counted)
        assert daemon.get("/healthz")[0] == 200
    finally:
        daemon.stop()


def test_sigkill_of_the_daemon_replays_frames_to_the_same_numbers(tmp_path: Path) -> None:
    """Frames and their key records in the log: a checkpoint in the middle (key ids defined before
    it must be logged again after it), more frames after it, then SIGKILL."""
    config = 'checkpoint_interval = "1s"\n' + WORKERS  # extra config lands in [storage]
    daemon = start_daemon(tmp_path, config)
    payloads = packets()
    try:
        with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
            conn.sendall(b"\n".join(payloads[:200]) + b"\n")
        settled(daemon, 12 * 200)
        daemon.wait_for(lambda: daemon.stats()["wal"]["checkpoints"] >= 1, timeout=15)
        time.sleep(1.2)  # another checkpoint
        with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
            conn.sendall(b"\n".join(payloads[200:]) + b"\n")
        settled(daemon, 12 * 400)
        before = answers(daemon)
        daemon.kill()
        restarted = start_daemon(tmp_path, config, ports=daemon.ports)
        try:
            assert answers(restarted) == before
            assert restarted.stats()["wal"]["recovery"]["replayedRecords"] > 0
        finally:
            restarted.stop()
    finally:
        if daemon.process.poll() is None:
            daemon.stop()


_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438


def worker_socket(pid: int) -> socket.socket:
    """A duplicate of the worker's end of its socket to the owner (pidfd_getfd; needs root)."""
    settings = json.loads(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3])
    pidfd = os.pidfd_open(pid)
    try:
        fd = _libc.syscall(SYS_PIDFD_GETFD, pidfd, settings["owner_fd"], 0)
        if fd < 0:
            pytest.skip("pidfd_getfd refused (not root?)")
        return socket.socket(fileno=fd)
    finally:
        os.close(pidfd)


def test_a_garbage_frame_is_counted_and_its_worker_restarted(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, WORKERS)
    try:
        daemon.send_udp(b"g.before:1|c")
        daemon.wait_for(lambda: daemon.total("g.before") == 1.0)
        victim = daemon.stats()["workers"]["pids"][0]
        with worker_socket(victim) as sock:
            # A frame message whose body is not a frame.
            sock.sendall(b"\x10\x00\x00\x00\x01" + b"\xff" * 16)
        stats = daemon.wait_for(
            lambda: (s := daemon.stats())["workers"]["badFrames"] == 1 and s["workers"]["alive"] == 2 and s,
            timeout=15,
        )
        assert victim not in stats["workers"]["pids"] and stats["workers"]["restarts"] == 1
        daemon.send_udp(b"g.after:1|c")
        daemon.wait_for(lambda: daemon.total("g.after") == 1.0)
        assert daemon.total("g.before") == 1.0
    finally:
        daemon.stop()


def test_stream_followers_get_one_event_per_sample_through_workers(tmp_path: Path) -> None:
    """A followed metric passes the workers un-aggregated: every sample is an event. Workers learn
    of the interest shortly after the subscription, so probes go first until one comes back."""
    import urllib.request

    daemon = start_daemon(tmp_path, WORKERS)
    values: list[float] = []

    def read(stream: Any) -> None:
        with contextlib.suppress(Exception):  # the stream ends when the daemon stops
            for raw in stream:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if isinstance(event, dict) and event.get("name") == "s.follow":
                        values.append(event["value"])

    try:
        stream = urllib.request.urlopen(daemon.url("/api/v1/stream?metric=s.follow"), timeout=30)
        threading.Thread(target=read, args=(stream,), daemon=True).start()
        deadline = time.monotonic() + 15
        while not values and time.monotonic() < deadline:
            daemon.send_udp(b"s.follow:100|c")
            time.sleep(0.05)
        assert values, "no event for a followed metric"
        for value in range(5):
            daemon.send_udp(b"s.follow:%d|c\ns.other:1|c" % value)
        daemon.wait_for(lambda: len([v for v in values if v < 100]) == 5)
        time.sleep(0.2)
        # One event per sample (across workers their order is the order frames arrive in).
        assert sorted(v for v in values if v < 100) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert daemon.total("s.follow") == 10.0 + 100.0 * len([v for v in values if v >= 100])
    finally:
        daemon.stop()


def test_reload_restarts_workers_with_new_settings_and_moved_listener(tmp_path: Path) -> None:
    from tests.integration.daemon import free_port

    daemon = start_daemon(tmp_path, WORKERS)
    try:
        daemon.send_udp(b"r.before:1|c")
        daemon.wait_for(lambda: daemon.total("r.before") == 1.0)
        old_pids = daemon.stats()["workers"]["pids"]
        port = free_port()
        text = daemon.config_path.read_text()
        text = text.replace(f'statsd_udp = "127.0.0.1:{daemon.statsd}"', f'statsd_udp = "127.0.0.1:{port}"')
        text = text.replace("workers = 2\n", 'workers = 2\nworker_ship_interval = "20ms"\n')
        daemon.config_path.write_text(text)
        daemon.process.send_signal(signal.SIGHUP)
        stats = daemon.wait_for(
            lambda: (s := daemon.stats())["workers"]["shipIntervalMs"] == 20.0 and s["workers"]["alive"] == 2 and s
        )
        assert set(stats["workers"]["pids"]).isdisjoint(old_pids)
        assert stats["workers"]["restarts"] == 0  # stopped on purpose, not counted as deaths
        daemon.send_udp(b"r.after:1|c", port=port)
        daemon.wait_for(lambda: daemon.total("r.after") == 1.0)
        # TCP stayed where it was.
        with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
            conn.sendall(b"r.tcp:2|c\n")
        daemon.wait_for(lambda: daemon.total("r.tcp") == 2.0)
    finally:
        daemon.stop()


def test_tcp_stays_in_the_owner_by_default(tmp_path: Path) -> None:
    """worker_tcp = false (the default): UDP goes through the workers, TCP is the owner's."""
    daemon = start_daemon(tmp_path, "[ingest]\nworkers = 2\n")
    try:
        with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
            conn.sendall(b"t.tcp:3|c\nt.tcp:4|c\nbroken\n")
        daemon.send_udp(b"t.udp:5|c")
        daemon.wait_for(lambda: daemon.total("t.tcp") == 7.0 and daemon.total("t.udp") == 5.0)
        stats = daemon.stats()
        assert stats["sources"]["statsd_tcp"]["connectionsTotal"] == 1
        assert stats["workers"]["samples"] == 1 and stats["badLines"] == {"missing_value": 1}
    finally:
        daemon.stop()
