"""CPU cost of replaying a write-ahead log, in-process (no daemon start-up, no HTTP).

    .venv/bin/python benchmarks/replay.py make DIR --samples 1000000 [--shape timer]
    .venv/bin/python benchmarks/replay.py run DIR [--rounds 3]

`make` runs the real daemon, sends `--samples` lines over TCP (4 connections, 25 lines per
write, 1,000 series, the shape `benchmarks/wal.py recovery` uses), kills it with SIGKILL and
keeps its log in DIR. `run` replays a copy of that log with `Journal.recover` as the daemon's
start-up does, and prints the CPU seconds (time.process_time) per round, per sample, and a
digest of the recovered state (a checkpoint's bytes), so a change can be checked for giving
exactly the same state as before.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not benchmarks/: its http.py would shadow the stdlib

from collectord.clock import SystemClock  # noqa: E402
from collectord.config import load_config  # noqa: E402
from collectord.pipeline import Pipeline  # noqa: E402
from collectord.storage.checkpoint import capture  # noqa: E402


def make(directory: Path, samples: int, shape: str) -> None:
    from benchmarks.ingest import loadgen
    from tests.integration.daemon import start_daemon

    with tempfile.TemporaryDirectory() as tmp:
        env = {"COLLECTORD_STORAGE_CHECKPOINT_INTERVAL": "1h"}
        daemon = start_daemon(Path(tmp), env=env)
        loadgen(
            *("--proto", "tcp", "--port", str(daemon.statsd), "--connections", "4"),
            *("--total", str(samples), "--seconds", "600", "--shape", shape),
            *("--lines-per-packet", "25", "--series", "1000"),
        )
        daemon.wait_for(lambda: daemon.stats()["aggregation"]["samples"] >= samples, timeout=600)
        daemon.kill()
        if directory.exists():
            shutil.rmtree(directory)
        shutil.copytree(Path(tmp) / "data" / "wal", directory / "wal")
    print(f"log of {samples:,} {shape} samples in {directory}")


def replay_once(directory: Path) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        shutil.copytree(directory / "wal", data / "wal")
        config_path = Path(tmp) / "collectord.toml"
        config_path.write_text(f'[storage]\ndata_dir = "{data}"\n')
        config = load_config(config_path)
        pipeline = Pipeline(config, SystemClock())
        assert pipeline.journal is not None
        gc.collect()
        # No sinks, so no batch taps: Pipeline.recover leaves the replay without a tap too.
        pipeline.journal.on_replayed = None
        began = time.process_time()
        aggregator = pipeline.journal.recover(pipeline.new_aggregator)
        took = time.process_time() - began
        samples = pipeline.journal.recovery.replayed_samples
        digest = hashlib.sha256(capture(aggregator, (0, 0), {})).hexdigest()[:16]
        pipeline.journal.close()
    return took, samples, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make")
    made.add_argument("directory", type=Path)
    made.add_argument("--samples", type=int, default=1_000_000)
    made.add_argument("--shape", default="timer", choices=["counter", "timer", "gauge", "dogstatsd"])
    run = commands.add_parser("run")
    run.add_argument("directory", type=Path)
    run.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.command == "make":
        make(args.directory, args.samples, args.shape)
        return
    for _ in range(args.rounds):
        took, samples, digest = replay_once(args.directory)
        per_sample = took / samples * 1e9
        print(f"replayed {samples:,} samples in {took:.2f} s CPU: {per_sample:,.0f} ns/sample; state {digest}")


if __name__ == "__main__":
    main()
