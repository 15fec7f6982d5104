"""End-to-end ingest into the running daemon, and parser throughput on one core.

    .venv/bin/python benchmarks/ingest.py parsers          # lines/s per line shape, one core
    .venv/bin/python benchmarks/ingest.py udp [--rate 500000] [--seconds 10] [--shape counter]
    .venv/bin/python benchmarks/ingest.py tcp [--connections 50] [--total 1000000]
    (udp and tcp take --workers N: the daemon's ingest.workers)
    .venv/bin/python benchmarks/ingest.py fuzz [--packets 1000000]  # random and mutated packets
    .venv/bin/python benchmarks/ingest.py all               # everything above, the issue's numbers

The load generator is `benchmarks/loadgen.c`, compiled here with the machine's cc; it sends
with sendmmsg bursts so that it is not the bottleneck. Loss is what the daemon counted through
`/api/v1/stats` against what the generator sent, and the kernel's own drop counter for the socket.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.daemon import RunningDaemon, start_daemon  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def build_loadgen() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    binary = OUT / "loadgen"
    source = ROOT / "benchmarks" / "loadgen.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise SystemExit("a C compiler (cc) is needed for the load generator: apt-get install gcc")
        subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def loadgen(*args: str) -> dict[str, Any]:
    result = subprocess.run([str(build_loadgen()), *args], check=True, capture_output=True, text=True)
    return dict(json.loads(result.stdout))


def settle(daemon: RunningDaemon, key: str = "lines", quiet: float = 1.0, limit: float = 120.0) -> dict[str, Any]:
    """Stats once the daemon's line count has stopped moving for `quiet` seconds."""
    last, since, began = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - began < limit:
        stats = daemon.stats()
        if stats[key] != last:
            last, since = stats[key], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return stats
        time.sleep(0.2)
    return daemon.stats()


def source_drops(stats: dict[str, Any], source: str) -> int:
    return int(stats["sources"][source]["kernelDrops"] or 0)


def run_udp(
    rate: float, seconds: float, shape: str, lines_per_packet: int, series: int, workers: int = 0
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp), f'[ingest]\nudp_receive_buffer = "32MiB"\nworkers = {workers}\n')
        try:
            before = daemon.stats()
            sent = loadgen(
                "--proto",
                "udp",
                "--port",
                str(daemon.statsd),
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--shape",
                shape,
                "--lines-per-packet",
                str(lines_per_packet),
                "--series",
                str(series),
            )
            after = settle(daemon)
        finally:
            daemon.stop()
    accepted = after["accepted"] - before["accepted"]
    return {
        "transport": "udp",
        "workers": workers,
        "shape": shape,
        "lines_per_packet": lines_per_packet,
        "series": series,
        "target_rate": rate,
        "sent": sent["lines"],
        "send_rate": sent["rate"],
        "accepted": accepted,
        "lost": sent["lines"] - accepted,
        "loss_pct": 100.0 * (sent["lines"] - accepted) / max(sent["lines"], 1),
        "kernel_drops_packets": source_drops(after, "statsd_udp") - source_drops(before, "statsd_udp"),
        "ring_dropped": after["dropped"] - before["dropped"],
    }


def run_tcp(connections: int, total: int, shape: str, workers: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp), f"[ingest]\nworkers = {workers}\n")
        try:
            before = daemon.stats()
            began = time.monotonic()
            sent = loadgen(
                "--proto",
                "tcp",
                "--port",
                str(daemon.statsd),
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
            )
            after = settle(daemon, quiet=0.5)
            took = time.monotonic() - began
        finally:
            daemon.stop()
    accepted = after["accepted"] - before["accepted"]
    return {
        "transport": "tcp",
        "workers": workers,
        "shape": shape,
        "connections": connections,
        "sent": sent["lines"],
        "accepted": accepted,
        "lost": sent["lines"] - accepted,
        "accepted_rate": accepted / took,
        "seconds": round(took, 2),
    }


def run_fuzz(packets: int) -> dict[str, Any]:
    """Random and mutated packets at the StatsD and line listeners; the daemon must stay up
    and its books balance (lines == accepted + rejected)."""
    rng = random.Random(99)
    seeds = [
        b"a.b:1|c",
        b"x:1.5|ms|@0.1|#k:v,k2:v2",
        b"g:-3|g",
        b"s:u1|s",
        b"n,k=v:1|c",
        b"m;k=v:1|h",
        b"d:1:2:3|d|T1700000000",
        b"_e{5,4}:title|text",
        b"_sc|svc|0",
        b"cpu,host=a usage=1.5,n=3i 1700000000000000000",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(packets):
                    if i % 3 == 0:
                        packet = rng.randbytes(rng.randint(1, 512))
                    else:
                        mutated = bytearray(b"\n".join(rng.choice(seeds) for _ in range(rng.randint(1, 30))))
                        for _ in range(rng.randint(0, 8)):
                            if not mutated:
                                break
                            position = rng.randrange(len(mutated))
                            action = rng.randrange(3)
                            if action == 0:
                                mutated[position] = rng.getrandbits(8)
                            elif action == 1:
                                del mutated[position]
                            else:
                                mutated.insert(position, rng.choice(b':|#,=@\n\\ "T'))
                        packet = bytes(mutated)
                    sock.sendto(packet, ("127.0.0.1", daemon.statsd if i % 2 else daemon.line))
                    if i % 5000 == 4999:
                        # Flow control through the stats API: this measures robustness, not loss.
                        while daemon.stats()["packets"] < i - 20000:
                            time.sleep(0.01)
            stats = settle(daemon)
            alive = daemon.get("/healthz")[0] == 200
        finally:
            code = daemon.stop()
    return {
        "packets_sent": packets,
        "packets_received": stats["packets"],
        "lines": stats["lines"],
        "accepted": stats["accepted"],
        "rejected": stats["rejected"],
        "balanced": stats["lines"] == stats["accepted"] + stats["rejected"],
        "alive": alive,
        "exit_code": code,
        "reasons": stats["badLines"],
    }


def run_parsers() -> None:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "parsers.py")], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["parsers", "udp", "tcp", "fuzz", "all"])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=500_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--shape", default="counter", choices=["counter", "timer", "gauge", "dogstatsd"])
    parser.add_argument("--lines-per-packet", type=int, default=25)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--total", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=0, help="ingest.workers of the daemon (0: in-process)")
    args = parser.parse_args()
    if args.what in ("parsers", "all"):
        run_parsers()
    if args.what in ("udp", "all"):
        print(
            json.dumps(run_udp(args.rate, args.seconds, args.shape, args.lines_per_packet, args.series, args.workers))
        )
    if args.what in ("tcp", "all"):
        print(json.dumps(run_tcp(args.connections, args.total, args.shape, args.workers)))
    if args.what in ("fuzz", "all"):
        print(json.dumps(run_fuzz(args.packets)))


if __name__ == "__main__":
    main()
