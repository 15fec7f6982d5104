"""Cost per line of each stage of the UDP hot path, one core, CPU time (no sockets, no loop).

    .venv/bin/python benchmarks/hotpath.py [--shape counter|timer|gauge|dogstatsd] [--series 1000]
                                          [--lines-per-packet 25] [--drain 64]

Stages, timed separately over the same packets in the daemon's order: split (bytes.split into
lines), parse (StatsdParser.parse, which includes the split), hand-over (Batch + Ring.offer,
without the log), WAL append (Journal.accept's record encoding), WAL commit (one write per drain,
fsync off), apply (Pipeline.catch_up: series lookup + aggregation, `--drain` packets at a time,
as one event-loop iteration would hand them over). The receive stage (kernel + uvloop + the
datagram callback) cannot be timed without sockets; docs/design.md gives its share from a py-spy
profile of the running daemon.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectord.clock import SystemClock  # noqa: E402
from collectord.config import load_config  # noqa: E402
from collectord.model import Sample  # noqa: E402
from collectord.pipeline import Pipeline  # noqa: E402
from collectord.ring import PAYLOAD_STATSD, Batch  # noqa: E402


def line(shape: str, rng: random.Random, series: int) -> bytes:
    i, value = rng.randrange(series), rng.randrange(1000)
    if shape == "timer":
        return b"bench.timer.%d:%d|ms" % (i, value)
    if shape == "gauge":
        return b"bench.gauge.%d:%d|g" % (i, value)
    if shape == "dogstatsd":
        return b"bench.dog.%d:%d|ms|#env:prod,region:eu-west-1,service:api" % (i, value)
    return b"bench.counter.%d:1|c" % i


def timed(run: Callable[[], None]) -> float:
    gc.collect()
    began = time.process_time()
    run()
    return time.process_time() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="counter", choices=["counter", "timer", "gauge", "dogstatsd"])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--lines-per-packet", type=int, default=25)
    parser.add_argument("--packets", type=int, default=40_000)
    parser.add_argument("--drain", type=int, default=64, help="packets applied per catch_up")
    args = parser.parse_args()
    rng = random.Random(7)
    lpp = args.lines_per_packet
    packets = [b"\n".join(line(args.shape, rng, args.series) for _ in range(lpp)) for _ in range(args.packets)]
    lines = lpp * len(packets)

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "c.toml"
        config_path.write_text(f'[storage]\ndata_dir = "{tmp}/data"\nfsync = "never"\n')
        pipeline = Pipeline(load_config(config_path), SystemClock())
        pipeline.recover()
        statsd = pipeline.statsd_parser
        journal = pipeline.journal
        assert journal is not None
        # Warm the parser's caches and create every series, as a running daemon has.
        warm: list[Sample] = []
        for packet in packets[: max(1, 4 * args.series // lpp)]:
            statsd.parse(packet, warm)
        now = time.time()
        pipeline.aggregator.apply(Batch("default", warm, now))
        warm.clear()

        parsed: list[list[Sample]] = []

        def split() -> None:
            for packet in packets:
                packet.split(b"\n")

        def parse() -> None:
            for packet in packets:
                out: list[Sample] = []
                statsd.parse(packet, out)
                parsed.append(out)

        batches: list[Batch] = []

        def hand_over() -> None:
            ring = pipeline.ring
            on_accept, ring.on_accept = ring.on_accept, None
            for packet, samples in zip(packets, parsed, strict=True):
                batch = Batch("default", samples, now, PAYLOAD_STATSD, packet)
                ring.offer(batch)
                batches.append(batch)
                if len(batches) % args.drain == 0:
                    ring.drain()
            ring.drain()
            ring.on_accept = on_accept

        def wal_append() -> None:
            append = pipeline.journal.wal.append  # type: ignore[union-attr]
            for batch in batches:
                append(batch.kind, batch.tenant, batch.received_at, batch.payload)
                if len(batches) % args.drain == 0:
                    pass

        def wal_commit() -> None:
            wal = pipeline.journal.wal  # type: ignore[union-attr]
            for start in range(0, len(batches), args.drain):
                for batch in batches[start : start + args.drain]:
                    wal.append(batch.kind, batch.tenant, batch.received_at, batch.payload)
                wal.commit()

        def apply() -> None:
            apply_many = pipeline.aggregator.apply_many
            for start in range(0, len(batches), args.drain):
                apply_many(batches[start : start + args.drain])

        costs = {}
        costs["split"] = timed(split)
        costs["parse (split included)"] = timed(parse)
        costs["hand-over (Batch + ring)"] = timed(hand_over)
        costs["WAL append"] = timed(wal_append)
        wal = journal.wal
        wal.commit()
        both = timed(wal_commit)
        costs["WAL commit (write, one per drain)"] = max(0.0, both - costs["WAL append"])
        costs["apply (series lookup + aggregate)"] = timed(apply)
        total = sum(v for k, v in costs.items() if k != "split")
        print(f"{args.shape}/{lpp}/{args.series}, {lines:,} lines, drain {args.drain} packets")
        for name, seconds in costs.items():
            print(f"  {name:<36} {seconds / lines * 1e9:7.0f} ns/line")
        print(f"  {'total without receive':<36} {total / lines * 1e9:7.0f} ns/line = {lines / total:,.0f} lines/s")
        pipeline.journal.close() if hasattr(pipeline.journal, "close") else None


if __name__ == "__main__":
    main()
