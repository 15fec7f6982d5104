"""CPU time per line, by process, at a fixed offered rate: the owner and each worker (or the
in-process daemon), trees side by side. Robust on a shared machine where a zero-loss search is
not: the rate is fixed well below what any tree loses at, and what is compared is the CPU each
process spent (/proc/<pid>/stat utime + stime) over the lines it accepted.

    .venv/bin/python benchmarks/cpu_per_line.py [--shape timer] [--rate 150000] [--seconds 6]
        [--workers 2] [--rounds 2] [--ingest 'worker_ship_interval = 0.05'] [--tree NAME=PATH ...]

Each tree (a checkout; default: this one) runs as `python -m collectord` with PYTHONPATH set to
it, rounds alternating between trees, 25 lines per datagram, 1,000 series.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ingest import build_loadgen  # noqa: E402
from tests.integration.daemon import start_daemon  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listed:
            out.extend(int(child) for child in listed.read().split())
    return sorted(out)


def one(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    extra = f"[ingest]\nworkers = {args.workers}\n{args.ingest}\n" if args.workers else ""
    with tempfile.TemporaryDirectory(prefix="cpu-per-line-") as tmp:
        env = {"PYTHONPATH": str(tree)}
        daemon = start_daemon(Path(tmp), extra, env=env)
        try:
            time.sleep(1.0)
            pids = [daemon.process.pid, *children(daemon.process.pid)]
            before = {pid: cpu_seconds(pid) for pid in pids}
            accepted = daemon.stats()["accepted"]
            subprocess.run(
                [
                    str(build_loadgen()),
                    *("--proto", "udp", "--port", str(daemon.statsd), "--shape", args.shape),
                    *("--rate", str(args.rate), "--seconds", str(args.seconds)),
                    *("--lines-per-packet", "25", "--series", "1000"),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # the last frames shipped and applied
            lines = daemon.stats()["accepted"] - accepted
            used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        finally:
            daemon.stop(timeout=120)
    sent = args.rate * args.seconds
    out = {"lines": float(lines), "loss_pct": 100.0 * (1 - lines / sent)}
    for i, pid in enumerate(pids):
        out["owner" if i == 0 else f"worker{i}"] = used[pid] / max(lines, 1) * 1e9
    out["total"] = sum(used.values()) / max(lines, 1) * 1e9
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="timer", choices=["counter", "timer", "gauge", "dogstatsd", "tagged"])
    parser.add_argument("--rate", type=float, default=150_000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ingest", default="", help="more [ingest] settings, e.g. 'worker_ship_interval = 0.05'")
    parser.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout")
    args = parser.parse_args()
    trees = [tuple(spec.split("=", 1)) for spec in args.tree] or [("this", str(ROOT))]
    for round_ in range(args.rounds):
        for name, path in trees:
            result = one(Path(path), args)
            load = os.getloadavg()[0]
            costs = "  ".join(f"{k} {v:,.0f}" for k, v in result.items() if k not in ("lines", "loss_pct"))
            print(
                f"round {round_ + 1} {name:<8} {args.shape} workers={args.workers} rate {args.rate:,.0f}: "
                f"ns CPU/line {costs}  (loss {result['loss_pct']:.2f}%, load {load:.1f})",
                flush=True,
            )


if __name__ == "__main__":
    main()
