"""TCP ingest side by side: issue 9's "50 connections, at least 2,000,000 lines/s accepted with
none lost", for this checkout and others, taking turns so that each pair shares the machine's load.

.venv/bin/python benchmarks/tcp.py [--tree main=/work/main] [--rounds 3] [--total 20000000]
    [--shape counter] [--connections 50] [--extra 'workers = 2'] [--port-base 22100]

Each trial starts a fresh daemon (default config, WAL on) from the tree, runs the C load
generator (benchmarks/loadgen.c: 25 lines per write, 1,000 series) over `--connections`
connections until `--total` lines are sent, and waits until the daemon's accepted count stops
moving: the rate is accepted lines over the time from the first send to the last change, as
benchmarks/peers.py measures it. Lost = sent - accepted (must be 0: TCP has backpressure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from ingest import loadgen  # noqa: E402
from memory import start  # noqa: E402


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(session: int) -> float:
    """User + system CPU of every live process of the daemon's session (the daemon, its
    ingest workers, a checkpoint's child), from /proc/<pid>/stat."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[3]) == session:
            total += sum(int(x) for x in fields[11:13])
    return total / os.sysconf("SC_CLK_TCK")


def counted(stats: dict[str, Any]) -> int:
    return int(stats["accepted"] - stats["dropped"])


def run(tree: Path, label: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start(tree, Path(tmp), args.port_base, args.extra.replace("\\n", "\n"))
        try:
            before = counted(daemon.stats())
            cpu_before = cpu_seconds(daemon.process.pid)
            began = time.monotonic()
            sent = loadgen(
                "--proto", "tcp", "--port", str(daemon.statsd), "--connections", str(args.connections),
                "--total", str(args.total), "--seconds", "600", "--shape", args.shape,
                "--lines-per-packet", "25",
            )  # fmt: skip
            sender_done = time.monotonic()
            last, last_change = counted(daemon.stats()), time.monotonic()
            while time.monotonic() - last_change < 1.0:
                time.sleep(0.05)
                now = counted(daemon.stats())
                if now != last:
                    last, last_change = now, time.monotonic()
            took = last_change - began
            cpu = cpu_seconds(daemon.process.pid) - cpu_before
        finally:
            daemon.stop()
    accepted = last - before
    return {
        "tree": label,
        "shape": args.shape,
        "connections": args.connections,
        "sent": sent["lines"],
        "accepted": accepted,
        "lost": sent["lines"] - accepted,
        "seconds": round(took, 2),
        "sender_seconds": round(sender_done - began, 2),
        "accepted_rate": round(accepted / took),
        # Lines per CPU second of the daemon and its workers: less at the mercy of other load.
        "lines_per_cpu_s": round(accepted / max(cpu, 1e-9)),
        "load": load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of another checkout to compare")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--total", type=int, default=20_000_000)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--shape", default="counter")
    parser.add_argument("--extra", default="", help="more lines of the daemon's [ingest] section (\\n for newlines)")
    parser.add_argument("--port-base", type=int, default=22100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = [("this", ROOT)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
    results = []
    print(f"load average {load()}", flush=True)
    for _ in range(args.rounds):
        for label, tree in trees:
            result = run(tree, label, args)
            results.append(result)
            print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
