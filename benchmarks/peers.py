"""collectord against Etsy statsd and collectd's statsd plugin: the zero-loss ingest rate per
packet shape, measured in the same run, the daemons taking turns.

    .venv/bin/python benchmarks/peers.py [--quick] [--shapes counter/25/1000 ...] [--daemons ...]
                                         [--seconds 6] [--steps 6] [--json out.json] [--chart out.png]

What it does, in order:

1. Compiles `benchmarks/loadgen.c` with the machine's cc (sendmmsg bursts; see ingest.py).
2. Installs the peers when missing: Etsy statsd from the npm registry into
   /var/cache/collectord-bench/statsd (`npm install statsd`, run with `node`), and collectd's
   statsd plugin from Debian (`apt-get install collectd-core`). Neither goes into the repository.
3. For every shape (kind / lines per datagram / series) and every daemon in turn, starts the
   daemon on its own ports (collectord with its own data dir, Etsy statsd with a 10 s flush and
   a graphite backend, collectd with a 10 s interval and write_graphite), both peers flushing to a
   graphite-line receiver this script runs, and searches for the highest rate with < 0.1% loss:
   doubling from a guess until a trial loses, then bisecting, with a fixed number of trials.
4. Loss per trial is the kernel's count of datagrams dropped on the daemon's socket
   (/proc/net/udp `drops`, times the lines per datagram), read once the socket's queue has
   drained; for collectord also what its own `/api/v1/stats` counted. After the search each
   peer is given two flush intervals and what it flushed (Etsy: `statsd.metrics_received`;
   collectd: its counter `count-` and timer `-count` values) is checked against what was sent
   less the kernel's drops, so the daemons' own books are checked too. /proc/net/snmp
   `RcvbufErrors` (machine-wide) is recorded for every trial.
5. "32 MiB" means the daemon's UDP socket has a 32 MiB receive buffer. collectord asks for it
   itself (its default); Etsy statsd and collectd have no setting for it, so this script takes a
   duplicate of their socket (pidfd_getfd, as root) and sets SO_RCVBUFFORCE on it, which is what
   raising net.core.rmem_default for them would do, without changing the machine for others.
6. The load generator's own limit: every trial records the CPU time the sender used (a core
   fraction) and the rate it achieved; a trial whose sender fell more than 3% short of the
   target is marked, and `--sender-check` measures the sender flat out into a socket nobody reads.

Prints a table with collectord / peer ratios per shape, writes JSON (--json) and a chart (--chart,
needs matplotlib: the `bench` extra).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import build_loadgen  # noqa: E402
from tests.integration.daemon import RunningDaemon, free_port, start_daemon  # noqa: E402

CACHE = Path(os.environ.get("COLLECTORD_BENCH_CACHE", "/var/cache/collectord-bench"))
ETSY_DIR = CACHE / "statsd"
ETSY_MAIN = ETSY_DIR / "node_modules" / "statsd" / "stats.js"
BUFFER_32M = 32 << 20
LOSS_LIMIT = 0.001  # < 0.1% of the lines sent
FLUSH_SECONDS = 10
RATE_CAP = 6_000_000.0  # lines/s; no daemon here gets near it on two cores


# ---------------------------------------------------------------------------- installs


def ensure_etsy() -> str:
    """Etsy statsd from the npm registry into the cache dir; returns its version."""
    if not ETSY_MAIN.exists():
        if shutil.which("npm") is None or shutil.which("node") is None:
            raise SystemExit("Etsy statsd needs node and npm: apt-get install nodejs npm")
        ETSY_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(ETSY_DIR), "statsd"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    package = json.loads((ETSY_MAIN.parent / "package.json").read_text())
    return str(package["version"])


def ensure_collectd() -> str:
    """Debian's collectd-core (the statsd plugin); returns its package version."""
    if shutil.which("collectd") is None and not Path("/usr/sbin/collectd").exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "collectd-core"], check=True, env=env
        )
    return package_version("collectd-core")


def package_version(name: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
    return result.stdout.strip() or "?"


# ---------------------------------------------------------------------------- kernel counters


def udp_socket_row(port: int) -> tuple[int, int, int] | None:
    """(inode, rx_queue bytes, drops) of the UDP socket bound to 127.0.0.1:port."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        for line in table:
            columns = line.split()
            if columns[1] == local:
                rx_queue = int(columns[4].split(":")[1], 16)
                return int(columns[9]), rx_queue, int(columns[12])
    return None


def rcvbuf_errors() -> int:
    with open("/proc/net/snmp", encoding="ascii") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")])


def wait_drained(port: int, limit: float = 30.0) -> tuple[int, int]:
    """Wait until the socket's receive queue is empty; returns (drops, rx_queue left)."""
    deadline = time.monotonic() + limit
    while True:
        row = udp_socket_row(port)
        if row is None:
            return 0, 0
        _, queued, drops = row
        if queued == 0 or time.monotonic() > deadline:
            return drops, queued
        time.sleep(0.05)


_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def force_receive_buffer(pid: int, port: int, size: int) -> int:
    """Set SO_RCVBUFFORCE on another process's UDP socket (through a pidfd_getfd duplicate);
    returns the effective SO_RCVBUF."""
    row = udp_socket_row(port)
    if row is None:
        raise RuntimeError(f"no UDP socket on port {port}")
    target = f"socket:[{row[0]}]"
    fd_dir = Path(f"/proc/{pid}/fd")
    number = next(int(p.name) for p in fd_dir.iterdir() if os.readlink(p) == target)
    pidfd = os.pidfd_open(pid)
    try:
        duplicate = _libc.syscall(SYS_PIDFD_GETFD, pidfd, number, 0)
        if duplicate < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd failed (needs root / ptrace rights)")
        sock = socket.socket(fileno=duplicate)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        finally:
            sock.close()
    finally:
        os.close(pidfd)


# ---------------------------------------------------------------------------- graphite receiver


class GraphiteReceiver:
    """A graphite plaintext (`name value ts`) TCP receiver that keeps one running total: the sum
    of the values of the lines `select` picks."""

    def __init__(self, select: Callable[[bytes], bool]) -> None:
        self.select = select
        self.total = 0.0
        self.lines = 0
        self.last_arrival = 0.0  # time.monotonic() of the newest line
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        rest = b""
        with conn:
            while chunk := conn.recv(1 << 20):
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                picked = 0.0
                for line in lines:
                    parts = line.split(b" ")
                    if len(parts) == 3 and self.select(parts[0]):
                        picked += float(parts[1])
                with self.lock:
                    self.total += picked
                    self.lines += len(lines)
                    self.last_arrival = time.monotonic()

    def counted(self) -> float:
        with self.lock:
            return self.total

    def close(self) -> None:
        self.server.close()


# ---------------------------------------------------------------------------- daemons


@dataclass(frozen=True)
class Shape:
    kind: str  # counter | timer | gauge | dogstatsd (loadgen's shapes)
    lines_per_packet: int
    series: int

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.lines_per_packet}/{self.series}"

    @staticmethod
    def parse(text: str) -> Shape:
        kind, lines, series = text.split("/")
        return Shape(kind, int(lines), int(series))


class Daemon:
    """One daemon under test: started per shape, on its own ports."""

    name = ""
    flushes = False  # counts only arrive with a flush (peers)

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def udp_port(self) -> int:
        raise NotImplementedError

    def supports(self, shape: Shape) -> bool:
        return True

    def counts(self, shape: Shape) -> bool:
        """Whether its own count covers this shape (collectd flushes no count for gauges)."""
        return True

    def counted(self) -> float | None:
        """Lines the daemon itself says it received so far (None: it cannot tell for this shape)."""
        raise NotImplementedError

    def settle(self) -> float | None:
        """The daemon's own count once it has caught up. Callers have waited for the socket's
        queue to drain, so for a peer the first flush that starts after now holds every line:
        wait for its lines to arrive, then for one quiet second."""
        receiver = self.receiver()
        if receiver is None:
            last = self.counted()
            while True:
                time.sleep(0.5)
                now = self.counted()
                if now == last:
                    return now
                last = now
        began = time.monotonic()
        deadline = began + 3 * FLUSH_SECONDS
        while time.monotonic() < deadline and (
            receiver.last_arrival <= began + 0.5 or time.monotonic() - receiver.last_arrival < 1.0
        ):
            time.sleep(0.1)
        return self.counted()

    def receiver(self) -> GraphiteReceiver | None:
        return None


class Collectord(Daemon):
    def __init__(self, name: str = "collectord", extra: str = "") -> None:
        self.name = name
        self.extra = extra
        self.daemon: RunningDaemon | None = None

    def start(self, workdir: Path) -> None:
        self.daemon = start_daemon(workdir, self.extra)

    def stop(self) -> None:
        if self.daemon is not None:
            try:
                # A clean stop writes a checkpoint: long with 100,000 series on a busy machine.
                self.daemon.stop(timeout=180)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
            self.daemon = None

    @property
    def udp_port(self) -> int:
        assert self.daemon is not None
        return self.daemon.statsd

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.process.pid

    def counted(self) -> float:
        assert self.daemon is not None
        stats = self.daemon.stats()
        return float(stats["accepted"] - stats["dropped"])


class CollectordAllSinks(Collectord):
    """collectord with every sink on: PostgreSQL (a database of its own, dropped at stop),
    InfluxDB (the VictoriaMetrics scripts/services runs on 127.0.0.1:8428) and Redis (its own
    key prefix), each at its default settings. Issue 9 asks its zero-loss rate to stay within
    25% of collectord with no sinks."""

    def __init__(self) -> None:
        super().__init__("collectord-all")
        self.database = ""

    def start(self, workdir: Path) -> None:
        self.database = f"bench_{os.getpid()}_{time.monotonic_ns()}"
        _psql(f'CREATE DATABASE "{self.database}"')
        self.extra = f"""
[postgres]
dsn = "postgresql://postgres@127.0.0.1:5432/{self.database}"
[influx]
url = "http://127.0.0.1:8428"
org = "bench"
bucket = "bench"
[redis]
url = "redis://127.0.0.1:6379/0"
key_prefix = "{self.database}"
"""
        super().start(workdir)

    def stop(self) -> None:
        super().stop()
        if self.database:
            _psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = ""


def _psql(statement: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", statement],
        check=True,
        capture_output=True,
    )


class Peer(Daemon):
    """A peer daemon run as a process of its own, flushing to the harness's graphite receiver."""

    flushes = True

    def __init__(self, name: str, buffer: int | None) -> None:
        self.name = name
        self.buffer = buffer
        self.process: subprocess.Popen[bytes] | None = None
        self.graphite: GraphiteReceiver | None = None
        self.port = 0

    def _bound(self) -> None:
        """Wait for its UDP port; then give it the receive buffer under test, if any."""
        assert self.process is not None
        wait_bound(self.port, self.process)
        if self.buffer is not None:
            force_receive_buffer(self.process.pid, self.port, self.buffer)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None
        if self.graphite is not None:
            self.graphite.close()

    @property
    def udp_port(self) -> int:
        return self.port

    def receiver(self) -> GraphiteReceiver | None:
        return self.graphite


class EtsyStatsd(Peer):
    def start(self, workdir: Path) -> None:
        # Its own count of metric lines received, flushed every interval as a counter.
        self.graphite = GraphiteReceiver(lambda name: name == b"stats.counters.statsd.metrics_received.count")
        self.port = free_port()
        config = workdir / "etsy.js"
        config.write_text(
            json.dumps(
                {
                    "port": self.port,
                    "address": "127.0.0.1",
                    "mgmt_address": "127.0.0.1",
                    "mgmt_port": free_port(),
                    "flushInterval": FLUSH_SECONDS * 1000,
                    "deleteIdleStats": True,
                    "backends": ["./backends/graphite"],
                    "graphiteHost": "127.0.0.1",
                    "graphitePort": self.graphite.port,
                    "graphite": {"legacyNamespace": False},
                }
            )
        )
        log = (workdir / "etsy.log").open("wb")
        self.process = subprocess.Popen(
            ["node", str(ETSY_MAIN), str(config)], cwd=ETSY_MAIN.parent, stdout=log, stderr=subprocess.STDOUT
        )
        self._bound()

    def counted(self) -> float:
        assert self.graphite is not None
        return self.graphite.counted()


class Collectd(Peer):
    def __init__(self, name: str, buffer: int | None) -> None:
        super().__init__(name, buffer)
        self.kind = ""

    def supports(self, shape: Shape) -> bool:
        return shape.kind != "dogstatsd"  # its parser rejects `|#tags` lines

    def counts(self, shape: Shape) -> bool:
        return shape.kind in ("counter", "timer")

    def start(self, workdir: Path) -> None:
        # CounterSum: a `count-<name>` value per interval; TimerCount: `gauge-<name>-count`.
        self.graphite = GraphiteReceiver(
            lambda name: (
                name.startswith(b"bench.statsd.count-")
                or (name.startswith(b"bench.statsd.gauge-") and name.endswith(b"-count"))
            )
        )
        self.port = free_port()
        config = workdir / "collectd.conf"
        config.write_text(
            f"""Interval {FLUSH_SECONDS}
Hostname "bench"
FQDNLookup false
BaseDir "{workdir}"
PIDFile "{workdir}/collectd.pid"
LoadPlugin statsd
<LoadPlugin write_graphite>
  FlushInterval 1
</LoadPlugin>
<Plugin statsd>
  Host "127.0.0.1"
  Port "{self.port}"
  CounterSum true
  TimerCount true
  DeleteCounters true
  DeleteTimers true
  DeleteGauges true
</Plugin>
<Plugin write_graphite>
  <Node "bench">
    Host "127.0.0.1"
    Port "{self.graphite.port}"
    Protocol "tcp"
    StoreRates false
  </Node>
</Plugin>
"""
        )
        log = (workdir / "collectd.log").open("wb")
        self.process = subprocess.Popen(["collectd", "-f", "-C", str(config)], stdout=log, stderr=subprocess.STDOUT)
        self._bound()

    def counted(self) -> float | None:
        assert self.graphite is not None
        return self.graphite.counted()


def wait_bound(port: int, process: subprocess.Popen[bytes], limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while udp_socket_row(port) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"daemon did not bind UDP port {port} (exit {process.poll()})")
        time.sleep(0.05)


DAEMONS: dict[str, Callable[[], Daemon]] = {
    "collectord": lambda: Collectord(),
    # ingest.workers = 2: worker processes parse and pre-aggregate (the multi-core ingest)
    "collectord-w2": lambda: Collectord("collectord-w2", "[ingest]\nworkers = 2\n"),
    # ... shipping every 100 ms: fewer, fuller entries per series for the owner to apply
    "collectord-w2-100ms": lambda: Collectord(
        "collectord-w2-100ms", "[ingest]\nworkers = 2\nworker_ship_interval = 0.1\n"
    ),
    # ... and the workers take the TCP connections too
    "collectord-w2-tcp": lambda: Collectord("collectord-w2-tcp", "[ingest]\nworkers = 2\nworker_tcp = true\n"),
    "collectord-all": CollectordAllSinks,
    "etsy-default": lambda: EtsyStatsd("etsy-default", None),
    "etsy-32m": lambda: EtsyStatsd("etsy-32m", BUFFER_32M),
    "collectd-32m": lambda: Collectd("collectd-32m", BUFFER_32M),
    "collectd-default": lambda: Collectd("collectd-default", None),
}
DEFAULT_DAEMONS = ["collectord", "etsy-default", "etsy-32m", "collectd-32m"]


# ---------------------------------------------------------------------------- trials and search


def run_loadgen(args: list[str]) -> tuple[dict[str, Any], float]:
    """Run the sender; returns its JSON and the CPU seconds it used."""
    process = subprocess.Popen([str(build_loadgen()), *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed ({process.returncode}): {args}")
    return dict(json.loads(output)), usage.ru_utime + usage.ru_stime


@dataclass
class Trial:
    rate: float
    sent: int
    send_rate: float
    sender_cpu: float  # cores the sender used
    kernel_lost_lines: int
    daemon_lost_lines: int | None
    rcvbuf_errors: int
    queue_left: int

    @property
    def lost(self) -> int:
        return max(self.kernel_lost_lines, self.daemon_lost_lines or 0)

    @property
    def loss(self) -> float:
        return self.lost / max(self.sent, 1)

    @property
    def passed(self) -> bool:
        return self.loss < LOSS_LIMIT

    @property
    def sender_limited(self) -> bool:
        return self.send_rate < 0.97 * self.rate


def trial(daemon: Daemon, shape: Shape, rate: float, seconds: float) -> Trial:
    port = daemon.udp_port
    drops_before, _ = wait_drained(port)
    counted_before = None if daemon.flushes else daemon.counted()
    snmp_before = rcvbuf_errors()
    sent, cpu = run_loadgen(
        [
            "--proto",
            "udp",
            "--port",
            str(port),
            "--rate",
            str(int(rate)),
            "--seconds",
            str(seconds),
            "--shape",
            shape.kind,
            "--lines-per-packet",
            str(shape.lines_per_packet),
            "--series",
            str(shape.series),
        ]
    )
    drops_after, queued = wait_drained(port)
    daemon_lost = None
    if counted_before is not None:
        counted_after = daemon.settle()
        assert counted_after is not None
        daemon_lost = int(sent["lines"] - (counted_after - counted_before))
    return Trial(
        rate=rate,
        sent=int(sent["lines"]),
        send_rate=float(sent["rate"]),
        sender_cpu=cpu / max(float(sent["seconds"]), 1e-9),
        kernel_lost_lines=(drops_after - drops_before) * shape.lines_per_packet,
        daemon_lost_lines=daemon_lost,
        rcvbuf_errors=rcvbuf_errors() - snmp_before,
        queue_left=queued,
    )


@dataclass
class Search:
    daemon: str
    shape: Shape
    best: float = 0.0
    trials: list[Trial] = field(default_factory=list)
    own_count_check: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def search(daemon: Daemon, shape: Shape, guess: float, steps: int, seconds: float) -> Search:
    """Highest passing rate: double (or halve) from the guess until the verdict flips, then bisect."""
    result = Search(daemon.name, shape)
    passing, failing = 0.0, RATE_CAP
    rate = min(guess, RATE_CAP)
    for _ in range(steps):
        t = trial(daemon, shape, rate, seconds)
        result.trials.append(t)
        verdict = "ok" if t.passed else "LOSS"
        print(
            f"  {daemon.name:<16} {shape.label:<20} target {rate:>11,.0f}  sent {t.send_rate:>11,.0f}/s"
            f"  lost {t.lost:>9,} ({t.loss * 100:6.3f}%)  sender {t.sender_cpu * 100:3.0f}% cpu  {verdict}",
            flush=True,
        )
        if t.passed:
            passing = max(passing, t.send_rate)
            if t.sender_limited:
                result.note = "sender-limited"
                break
        else:
            # What the sender managed is the rate that lost (it falls short under load).
            failing = min(failing, t.send_rate)
        if failing >= RATE_CAP:
            rate = rate * 2
        elif passing == 0.0:
            rate = rate / 2
        else:
            if failing / max(passing, 1.0) < 1.08:
                break  # within 8%: close enough for a bounded run
            rate = (passing * failing) ** 0.5
        rate = min(rate, RATE_CAP)
    result.best = passing
    return result


def own_count_check(daemon: Daemon, search_result: Search, counted_before: float | None) -> None:
    """After the search: what the daemon itself counted over all trials against what was sent
    less the kernel's drops."""
    counted = daemon.settle() if daemon.counts(search_result.shape) else None
    expected = sum(t.sent - t.kernel_lost_lines for t in search_result.trials)
    if counted is None or counted_before is None:
        search_result.own_count_check = {"expected": expected, "counted": None}
        return
    got = counted - counted_before
    search_result.own_count_check = {
        "expected": expected,
        "counted": got,
        "difference_pct": round(100.0 * (expected - got) / max(expected, 1), 4),
    }


# ---------------------------------------------------------------------------- TCP


def tcp_collectord(connections: int, total: int, shape: str, name: str = "collectord") -> dict[str, Any]:
    daemon = DAEMONS[name]()
    assert isinstance(daemon, Collectord)
    with tempfile.TemporaryDirectory() as tmp:
        daemon.start(Path(tmp))
        try:
            assert daemon.daemon is not None
            before = daemon.counted()
            began = time.monotonic()
            sent, cpu = run_loadgen(
                [
                    "--proto",
                    "tcp",
                    "--port",
                    str(daemon.daemon.statsd),
                    "--connections",
                    str(connections),
                    "--total",
                    str(total),
                    "--seconds",
                    "600",
                    "--shape",
                    shape,
                    "--lines-per-packet",
                    "25",
                ]
            )
            sender_done = time.monotonic()
            # Accepted when applied: wait until the count stops moving, and time to the last line.
            last, last_change = daemon.counted(), time.monotonic()
            while time.monotonic() - last_change < 1.0:
                time.sleep(0.05)
                now = daemon.counted()
                if now != last:
                    last, last_change = now, time.monotonic()
            took = last_change - began
        finally:
            daemon.stop()
    accepted = int(last - before)
    return {
        "daemon": name,
        "connections": connections,
        "shape": shape,
        "sent": sent["lines"],
        "accepted": accepted,
        "lost": sent["lines"] - accepted,
        "seconds": round(took, 2),
        "sender_seconds": round(sender_done - began, 2),
        "accepted_rate": round(accepted / took),
        "sender_cpu": round(cpu / max(sent["seconds"], 1e-9), 2),
    }


# ---------------------------------------------------------------------------- sender check


def sender_check(shape: Shape, seconds: float) -> dict[str, Any]:
    """The sender flat out into a bound socket nobody reads: its ceiling for this shape."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        sent, cpu = run_loadgen(
            [
                "--proto",
                "udp",
                "--port",
                str(port),
                "--seconds",
                str(seconds),
                "--shape",
                shape.kind,
                "--lines-per-packet",
                str(shape.lines_per_packet),
                "--series",
                str(shape.series),
            ]
        )
    return {"shape": shape.label, "rate": round(sent["rate"]), "sender_cpu": round(cpu / sent["seconds"], 2)}


# ---------------------------------------------------------------------------- reporting


def machine() -> dict[str, Any]:
    def run(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": run("node", "--version"),
        "cc": run("cc", "--version").splitlines()[0] if shutil.which("cc") else "?",
        "uptime": run("uptime"),
    }


def table(results: list[Search], base: str = "collectord") -> str:
    """Rates per shape, with `base`'s ratio to every other daemon."""
    by_shape: dict[Shape, dict[str, Search]] = {}
    for r in results:
        by_shape.setdefault(r.shape, {})[r.daemon] = r
    peers = [d for d in dict.fromkeys(r.daemon for r in results) if d != base]
    header = f"| shape (kind/lines per datagram/series) | {base} |" + "".join(f" {p} | {base}/{p} |" for p in peers)
    lines = [header, "|" + "---|" * (2 + 2 * len(peers))]
    for shape, row in by_shape.items():
        ours = row.get(base)
        cells = [shape.label, fmt_rate(ours)]
        for p in peers:
            peer = row.get(p)
            cells.append(fmt_rate(peer))
            if ours and peer and peer.best > 0 and ours.best > 0:
                cells.append(f"{ours.best / peer.best:.2f}x")
            else:
                cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_rate(r: Search | None) -> str:
    if r is None:
        return "–"
    if r.note == "unsupported":
        return "n/a"
    text = f"{r.best / 1e6:.2f} M" if r.best >= 1e5 else f"{r.best / 1e3:.0f} k"
    return text + (" (sender-limited)" if r.note == "sender-limited" else "")


def chart(results: list[Search], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r.shape for r in results))
    daemons = list(dict.fromkeys(r.daemon for r in results))
    best = {(r.shape, r.daemon): r.best for r in results}
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(shapes)), 5))
    width = 0.8 / len(daemons)
    for i, d in enumerate(daemons):
        xs = [s + i * width for s in range(len(shapes))]
        ax.bar(xs, [best.get((shape, d), 0) / 1e6 for shape in shapes], width, label=d)
    ax.set_xticks([s + 0.4 - width / 2 for s in range(len(shapes))])
    ax.set_xticklabels([s.label for s in shapes], rotation=30, ha="right")
    ax.set_ylabel("zero-loss (<0.1%) UDP rate, million lines/s")
    ax.set_title("UDP ingest without loss, same machine, same run (2 vCPUs, sender included)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def save(path: Path, report: dict[str, Any], results: list[Search]) -> None:
    report["udp"] = [
        {
            "daemon": r.daemon,
            "shape": r.shape.label,
            "zero_loss_rate": round(r.best),
            "note": r.note,
            "own_count_check": r.own_count_check,
            "trials": [{**t.__dict__, "loss_pct": round(t.loss * 100, 4)} for t in r.trials],
        }
        for r in results
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------- main

QUICK_SHAPES = ["counter/25/1000", "timer/25/1000", "dogstatsd/25/1000"]
FULL_SHAPES = [
    f"{kind}/{lines}/{series}"
    for series in (1000, 100_000)
    for lines in (25, 1)
    for kind in ("counter", "timer", "gauge", "dogstatsd")
]
GUESS = {1: 60_000.0, 25: 500_000.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="three shapes, short trials")
    parser.add_argument("--shapes", nargs="*", help="kind/lines-per-datagram/series, e.g. counter/25/1000")
    parser.add_argument("--daemons", nargs="*", default=DEFAULT_DAEMONS, choices=sorted(DAEMONS))
    parser.add_argument("--seconds", type=float, help="length of one trial (default 6, quick 3)")
    parser.add_argument("--steps", type=int, help="trials per search (default 6, quick 4)")
    parser.add_argument("--no-tcp", action="store_true")
    parser.add_argument("--tcp-total", type=int, default=20_000_000)
    parser.add_argument("--sender-check", action="store_true", help="measure the sender flat out first")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "peers.json")
    parser.add_argument("--chart", type=Path, default=ROOT / "benchmarks" / "out" / "peers.png")
    args = parser.parse_args()
    shapes = [Shape.parse(s) for s in (args.shapes or (QUICK_SHAPES if args.quick else FULL_SHAPES))]
    seconds = args.seconds or (3.0 if args.quick else 6.0)
    steps = args.steps or (4 if args.quick else 6)

    build_loadgen()
    versions = {"collectord": "this checkout"}
    if any(d.startswith("etsy") for d in args.daemons):
        versions["etsy statsd"] = ensure_etsy()
    if any(d.startswith("collectd") for d in args.daemons):
        versions["collectd-core"] = ensure_collectd()
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": versions,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seconds_per_trial": seconds,
        "steps": steps,
    }
    print(json.dumps(report, indent=1), flush=True)
    if args.sender_check:
        report["sender"] = [sender_check(s, seconds) for s in shapes]
        print(json.dumps(report["sender"]), flush=True)

    results: list[Search] = []
    for shape in shapes:
        guess = GUESS.get(shape.lines_per_packet, 300_000.0)
        for name in args.daemons:
            daemon = DAEMONS[name]()
            if not daemon.supports(shape):
                results.append(Search(name, shape, note="unsupported"))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                daemon.start(Path(tmp))
                try:
                    counted_before = daemon.counted()
                    found = search(daemon, shape, guess, steps, seconds)
                    own_count_check(daemon, found, counted_before)
                finally:
                    daemon.stop()
            check = found.own_count_check
            print(f"  -> {name} {shape.label}: {found.best:,.0f} lines/s; own count {check}", flush=True)
            results.append(found)
            save(args.json, report, results)  # so far: a crash later loses nothing
    if not args.no_tcp:
        ours = [d for d in args.daemons if d in ("collectord", "collectord-w2", "collectord-w2-tcp")] or ["collectord"]
        report["tcp"] = [tcp_collectord(50, args.tcp_total // (10 if args.quick else 1), "counter", d) for d in ours]
        print("tcp:", json.dumps(report["tcp"]), flush=True)
    report["uptime_after"] = machine()["uptime"]
    save(args.json, report, results)
    print()
    for base in [d for d in args.daemons if d.startswith("collectord")] or ["collectord"]:
        print(table(results, base))
        print()
    try:
        chart(results, args.chart)
        print(f"chart: {args.chart}")
    except ImportError:
        print("no chart: pip install matplotlib (the `bench` extra)")


if __name__ == "__main__":
    main()
