"""Parser throughput, in lines per second on one core, per traffic shape.

    .venv/bin/python benchmarks/parsers.py [--seconds 2.0] [--shape NAME ...]

Every shape sends packets of 25 lines over 1,000 distinct series, the way a busy host's clients
do; "unique" shapes send lines never seen before (every line takes the slow path), the worst case
for the caches. Packets are built up front so only parse() is timed; the output list is cleared
after every packet, as the ingest loop does after handing samples on. Time is this process's CPU
time (time.process_time), so other load on a shared machine does not skew the numbers; the best
pass within the time budget is reported.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# Run from a checkout without installing: the package lives one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectord.limits import Limits
from collectord.model import Sample
from collectord.protocols.line import LineParser
from collectord.protocols.statsd import StatsdParser

LINES_PER_PACKET = 25
SERIES = 1_000
# Lines pre-built per shape; enough that varying values rarely repeat within a run.
LINES_PER_SHAPE = 200_000

Parser = StatsdParser | LineParser


def _dog_tags(i: int) -> str:
    return f"env:prod,host:web-{i % 50:02d},endpoint:/api/v{i % 20}"


def _influx_tags(i: int) -> str:
    return f"host=web-{i % 50:02d},region=eu-{i % 4},dc=dc{i % 5}"


def _lines(shape: str, rng: random.Random) -> Iterator[str]:
    """Endless lines of one shape, cycling over SERIES series."""
    n = 0
    while True:
        i = n % SERIES
        if shape == "counter_1":
            yield f"app.requests.{i}:1|c"
        elif shape == "counter_varying":
            yield f"app.bytes.{i}:{rng.randint(1, 100_000)}|c"
        elif shape == "timer_varying":
            yield f"app.latency.{i}:{rng.uniform(0, 2000):.3f}|ms"
        elif shape == "dogstatsd_counter_3_tags":
            yield f"app.requests.{i % 10}:1|c|#{_dog_tags(i)}"
        elif shape == "dogstatsd_timer_3_tags_varying":
            yield f"app.latency.{i % 10}:{rng.uniform(0, 2000):.3f}|ms|#{_dog_tags(i)}"
        elif shape == "line_3_tags_3_fields":
            yield (
                f"cpu{i % 10},{_influx_tags(i)} usage={rng.uniform(0, 100):.2f},"
                f"idle={rng.uniform(0, 100):.2f},procs={rng.randint(1, 500)}i "
                f"{1_700_000_000_000_000_000 + n * 1_000_000}"
            )
        elif shape == "unique_statsd":
            yield f"app.unique.{n}:{rng.uniform(0, 2000):.3f}|ms|#{_dog_tags(n)}"
        elif shape == "unique_line":
            yield f"cpu.unique{n},{_influx_tags(n)} usage={rng.uniform(0, 100):.2f}"
        else:
            raise ValueError(f"unknown shape {shape}")
        n += 1


SHAPES: dict[str, Callable[[Limits], Parser]] = {
    "counter_1": StatsdParser,
    "counter_varying": StatsdParser,
    "timer_varying": StatsdParser,
    "dogstatsd_counter_3_tags": StatsdParser,
    "dogstatsd_timer_3_tags_varying": StatsdParser,
    "line_3_tags_3_fields": LineParser,
    "unique_statsd": StatsdParser,
    "unique_line": LineParser,
}


def _packets(shape: str) -> list[bytes]:
    rng = random.Random(42)
    lines = _lines(shape, rng)
    packets = []
    for _ in range(LINES_PER_SHAPE // LINES_PER_PACKET):
        packets.append("\n".join(next(lines) for _ in range(LINES_PER_PACKET)).encode() + b"\n")
    return packets


def _run(parser: Parser, packets: list[bytes]) -> float:
    """Seconds to parse every packet once."""
    out: list[Sample] = []
    parse = parser.parse
    started = time.process_time()
    for packet in packets:
        parse(packet, out)
        out.clear()
    return time.process_time() - started


def measure(shape: str, seconds: float) -> float:
    """Best lines/s over repeated passes. Cached shapes are warmed by one untimed pass; unique
    shapes get a fresh parser each pass so no line is ever seen twice."""
    packets = _packets(shape)
    make = SHAPES[shape]
    unique = shape.startswith("unique")
    parser = make(Limits())
    if not unique:
        _run(parser, packets)
    best = 0.0
    deadline = time.process_time() + seconds
    while True:
        if unique:
            parser = make(Limits())
        elapsed = _run(parser, packets)
        assert not parser.stats.rejected, parser.stats.rejected
        best = max(best, LINES_PER_SHAPE / elapsed)
        if time.process_time() > deadline:
            return best


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--seconds", type=float, default=2.0, help="time budget per shape")
    args.add_argument("--shape", action="append", choices=list(SHAPES), help="repeatable")
    options = args.parse_args()
    for shape in options.shape or list(SHAPES):
        rate = measure(shape, options.seconds)
        print(f"{shape:32s} {rate:>12,.0f} lines/s  ({1e6 / rate:.2f} us/line)")


if __name__ == "__main__":
    main()
