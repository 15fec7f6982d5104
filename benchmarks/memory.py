"""The real daemon's memory: bytes per active series by type, and the series cap holding RSS flat.

.venv/bin/python benchmarks/memory.py series [--types counter gauge timer set] [--series 100000 1000000]
.venv/bin/python benchmarks/memory.py cap [--cap 500000] [--offer 1000000] [--step 100000]
.venv/bin/python benchmarks/memory.py all

Each measurement starts a fresh daemon (default config, WAL on, ports from --port-base), reads
its RSS idle, then sends distinct series over UDP (25 lines per datagram, 100 hosts under each
metric name, paced at --rate lines/s so nothing is lost; the daemon's own series count is
checked), every series once per pass. RSS is read after each pass (the minute open) and once the
minute has closed and rolled up; the passes start at a minute with three minutes left in its
5-minute window, so no 5-minute window closes before that reading (--five-minute reads RSS
again once it has: every series then also holds a 5m cell). Bytes per series = (RSS - idle RSS) /
series. --tree NAME=PATH (repeatable) runs the daemon from other checkouts too, taking turns per
measurement, so a before/after comparison shares one run (and its load).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINES_PER_PACKET = 25
# StatsD type suffix and a value per series id and pass.
SHAPES: dict[str, tuple[str, Callable[[int, int], str]]] = {
    "counter": ("c", lambda i, p: "1"),
    "gauge": ("g", lambda i, p: str(i % 997 + p)),
    "timer": ("ms", lambda i, p: str(i % 997 + p)),
    "set": ("s", lambda i, p: f"m{(i + p) % 50}"),
}


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    statsd: int
    http: int
    log: Path

    def rss(self) -> int:
        return self._status("VmRSS")

    def peak(self) -> int:
        return self._status("VmHWM")

    def _status(self, field: str) -> int:
        if self.process.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(field)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/api/v1/stats", timeout=60) as response:
            return dict(json.loads(response.read()))

    def stop(self) -> None:
        # The data is thrown away: no need to wait for a million series' final checkpoint. The
        # group: a checkpoint's forked child must not outlive its daemon.
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)


def start(tree: Path, tmp: Path, port_base: int, extra: str = "", storage: str = "") -> Daemon:
    statsd, line, http = port_base, port_base + 1, port_base + 2
    config = tmp / "collectord.toml"
    config.write_text(
        f"""
[listen]
statsd_udp = "127.0.0.1:{statsd}"
statsd_tcp = "127.0.0.1:{statsd}"
line_udp = "127.0.0.1:{line}"
line_tcp = "127.0.0.1:{line}"
http = "127.0.0.1:{http}"

[storage]
data_dir = "{tmp / "data"}"
{storage}

[ingest]
udp_receive_buffer = "32MiB"
{extra}
"""
    )
    log = (tmp / "daemon.log").open("wb")
    # The tree's own package: `-m` puts the working directory first on sys.path.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    process = subprocess.Popen(
        [sys.executable, "-m", "collectord", "run", "--config", str(config)],
        cwd=tree,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    daemon = Daemon(process, statsd, http, tmp / "daemon.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited: {(tmp / 'daemon.log').read_text()}")
        try:
            daemon.stats()
            time.sleep(1.0)  # let start-up garbage settle before the idle reading
            return daemon
        except OSError:
            time.sleep(0.1)
    daemon.stop()
    raise RuntimeError("daemon not ready in 60 s")


def send(port: int, kind: str, first: int, count: int, pass_: int, rate: float) -> None:
    """Series first..first+count-1 of `kind`, one line each, paced at `rate` lines/s."""
    suffix, value = SHAPES[kind]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    began = time.monotonic()
    sent = 0
    for start in range(first, first + count, LINES_PER_PACKET):
        ids = range(start, min(start + LINES_PER_PACKET, first + count))
        packet = "\n".join(f"mem.{kind}.{i // 100}:{value(i, pass_)}|{suffix}|#host:h{i % 100}" for i in ids)
        sock.sendto(packet.encode(), ("127.0.0.1", port))
        sent += len(ids)
        ahead = sent / rate - (time.monotonic() - began)
        if ahead > 0:
            time.sleep(ahead)
    sock.close()


def settle(daemon: Daemon, samples: int, limit: float = 600.0) -> dict[str, Any]:
    """Stats once every sent sample is applied (or the count stopped moving for 5 s: lost)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            stats = daemon.stats()
        except OSError:  # a million new series hold the loop for seconds
            time.sleep(1)
            continue
        seen = stats["lines"]
        if seen >= samples and stats["ring"]["fill"] == 0:
            return stats
        if seen != last:
            last, since = seen, time.monotonic()
        elif time.monotonic() - since > 5:
            return stats
        time.sleep(0.5)
    return daemon.stats()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def sleep_until(when: float) -> None:
    time.sleep(max(when - time.time(), 0.0))


def next_quiet_minute(span: float) -> float:
    """The start of the next minute with at least `span` seconds left in its 5-minute window:
    passes started then are read once their minute has rolled, before any 5-minute window
    closes (a close gives every series a 5m cell as well: another state, read apart)."""
    start = time.time() // 60 * 60 + 60
    while 300 - start % 300 < span:
        start += 60
    return start


def series_run(tree: Path, label: str, kind: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start(tree, Path(tmp), args.port_base, f"[limits]\nmax_series = {max(count, 1_000_000)}\n")
        try:
            idle = daemon.rss()
            sleep_until(next_quiet_minute(180.0))
            out: dict[str, Any] = {"tree": label, "type": kind, "series": count, "idle": idle}
            for pass_ in range(1, args.passes + 1):
                send(daemon.statsd, kind, 0, count, pass_, args.rate)
                stats = settle(daemon, pass_ * count)
                out[f"pass{pass_}"] = daemon.rss()
                out["active"] = stats["aggregation"]["series"]
                out["lost"] = pass_ * count - stats["lines"]
            # The minute closes on the wall clock; the next flush tick rolls it up.
            time.sleep(61.5 - time.time() % 60)
            time.sleep(args.roll_wait)
            out["rolled"] = daemon.rss()
            out["peak"] = daemon.peak()
            active = out["active"] or 1
            five = ""
            if args.five_minute:
                sleep_until(time.time() // 300 * 300 + 301.5 + args.roll_wait)
                out["closed5"] = daemon.rss()
                out["peak5"] = daemon.peak()
                five = (
                    f"; 5m closed {mib(out['closed5'])} (peak {mib(out['peak5'])}), "
                    f"{(out['closed5'] - idle) / active:,.0f} B/series"
                )
            print(
                f"{label:<8} {kind:<8} {count:>9,} series: idle {mib(idle)}, "
                + ", ".join(f"pass {p} {mib(out[f'pass{p}'])}" for p in range(1, args.passes + 1))
                + f", rolled {mib(out['rolled'])} (peak {mib(out['peak'])}); "
                f"{(out[f'pass{args.passes}'] - idle) / active:,.0f} B/series open, "
                f"{(out['rolled'] - idle) / active:,.0f} B/series rolled; "
                f"active {out['active']:,}, lost {out['lost']:,}{five}",
                flush=True,
            )
            return out
        finally:
            daemon.stop()


def cap_run(tree: Path, label: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start(tree, Path(tmp), args.port_base, f"[limits]\nmax_series = {args.cap}\n")
        try:
            idle = daemon.rss()
            print(f"{label:<8} cap {args.cap:,}: idle {mib(idle)}", flush=True)
            for first in range(0, args.offer, args.step):
                send(daemon.statsd, "counter", first, args.step, 1, args.rate)
                stats = settle(daemon, first + args.step)
                rejected = stats["aggregation"]["rejectedSamples"].get("series_limit", 0)
                print(
                    f"{label:<8} cap {args.cap:,}: offered {first + args.step:>10,}, active"
                    f" {stats['aggregation']['series']:>9,}, rejected {rejected:>9,}, RSS {mib(daemon.rss())}",
                    flush=True,
                )
        finally:
            daemon.stop()


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["series", "cap", "all"])
    parser.add_argument("--types", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--series", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--rate", type=float, default=40_000.0, help="lines/s sent (new series cost ~10 µs each)")
    parser.add_argument("--roll-wait", type=float, default=12.0, help="seconds after the minute before reading")
    parser.add_argument("--five-minute", action="store_true", help="also read RSS once the 5-minute window has closed")
    parser.add_argument("--cap", type=int, default=500_000)
    parser.add_argument("--offer", type=int, default=1_000_000)
    parser.add_argument("--step", type=int, default=100_000)
    parser.add_argument("--port-base", type=int, default=19400)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = [("this", ROOT)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    results = []
    print(f"load average {load()}", flush=True)
    if args.what in ("series", "all"):
        for count in args.series:
            for kind in args.types:
                for label, tree in trees:
                    results.append(series_run(tree, label, kind, count, args))
                    print(f"  load average {load()}", flush=True)
    if args.what in ("cap", "all"):
        for label, tree in trees:
            cap_run(tree, label, args)
            print(f"  load average {load()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
