"""Sketch costs and accuracy: time per operation, memory, wire size, worst relative error.

    .venv/bin/python benchmarks/sketch.py [--repeat 7]
    .venv/bin/python benchmarks/sketch.py compact [--repeat 7]   # a flush's compact sketches, grouped

Latency samples are lognormal with mean 50 ms and sigma 1, the shape of a typical request
timer. Times are the best of --repeat runs (the least disturbed by other processes); the error
column compares p50/p90/p95/p99 of 1,000,000 samples with np.percentile.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

# Run from a checkout without installing: the package lives one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectord.aggregation import sketch as sketch_module
from collectord.aggregation.sketch import Sketch, encode_many, quantiles_many

MEAN_SECONDS = 0.05
SIGMA = 1.0
PERCENTILES = [0.5, 0.9, 0.95, 0.99]

Samples = npt.NDArray[np.float64]


def latencies(rng: np.random.Generator, n: int) -> Samples:
    # mu chosen so the distribution's mean (exp(mu + sigma^2/2)) is MEAN_SECONDS.
    return rng.lognormal(math.log(MEAN_SECONDS) - SIGMA**2 / 2, SIGMA, n)


def best_ns(run: Callable[[], object], repeat: int) -> float:
    """Best wall time of `run` over `repeat` calls, in nanoseconds."""
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        best = min(best, time.perf_counter_ns() - start)
    return best


def sketch_of(values: Samples) -> Sketch:
    sketch = Sketch()
    sketch.add_many(values)
    return sketch


def timings(rng: np.random.Generator, repeat: int) -> list[tuple[str, float, str]]:
    values = latencies(rng, 200_000)
    as_list = values.tolist()
    warm = sketch_of(values)
    rows: list[tuple[str, float, str]] = []

    def per_value(label: str, run: Callable[[], object], n: int) -> None:
        rows.append((label, best_ns(run, repeat) / n, "ns/value"))

    def micros(label: str, run: Callable[[], object], unit: str = "us") -> None:
        rows.append((label, best_ns(run, repeat) / 1000, unit))

    for weight in (1.0, 10.0):
        target = Sketch()
        target.add_many(values, weight)
        add = target.add

        def add_all(add: Callable[[float, float], None] = add, weight: float = weight) -> None:
            for v in as_list:
                add(v, weight)

        per_value(f"add() one value, weight {weight:g}", add_all, len(as_list))

    def fresh_sketches() -> None:
        # A quiet series: a new sketch each minute that sees ten samples.
        for i in range(0, 20_000, 10):
            sketch = Sketch()
            for v in as_list[i : i + 10]:
                sketch.add(v)

    per_value("add() into fresh sketches, 10 each", fresh_sketches, 20_000)

    for size in (64, 10_000):
        batches = [values[i : i + size] for i in range(0, min(len(values), 200 * size), size)]

        def add_batches(batches: list[Samples] = batches) -> None:
            for batch in batches:
                warm.add_many(batch)

        per_value(f"add_many() of {size:,}", add_batches, sum(len(b) for b in batches))

    for size in (1_000, 100_000):
        a, b = sketch_of(latencies(rng, size)), sketch_of(latencies(rng, size))

        def merge(a: Sketch = a, b: Sketch = b) -> None:
            a.copy().merge(b)

        micros(f"copy()+merge() of {size:,}-sample sketches", merge)
    micros("  of which copy()", warm.copy)
    micros("quantile(0.99)", lambda: warm.quantile(0.99))
    micros("quantiles(p50, p90, p95, p99)", lambda: warm.quantiles(PERCENTILES))
    encoded = warm.to_bytes()
    micros("to_bytes()", warm.to_bytes)
    micros("from_bytes()", lambda: Sketch.from_bytes(encoded))
    return rows


def sizes(rng: np.random.Generator) -> list[tuple[str, int, int]]:
    rows = []
    for size in (1_000, 100_000):
        values = latencies(rng, size)
        for weight, label in [(1.0, ""), (1 / 0.3, ", sample rate 0.3")]:
            sketch = Sketch()
            sketch.add_many(values, weight)
            rows.append((f"lognormal {size:,}{label}", sketch.nbytes(), len(sketch.to_bytes())))
        mixed = Sketch()
        mixed.add_many(values[: size // 2], 1.0)
        mixed.add_many(values[size // 2 :], 0.37)
        label = f"lognormal {size:,}, weights 1 and 0.37"
        rows.append((label, mixed.nbytes(), len(mixed.to_bytes())))
    return rows


def errors(rng: np.random.Generator) -> list[tuple[str, float]]:
    n = 1_000_000
    shapes = {
        "lognormal": latencies(rng, n),
        "pareto": (rng.pareto(1.5, n) + 1.0) * 0.01,
        "bimodal": np.where(rng.random(n) < 0.7, rng.normal(0.02, 0.004, n), rng.normal(0.4, 0.08, n)),
    }
    rows = []
    for name, values in shapes.items():
        sketch = sketch_of(values)
        expected = np.percentile(values, [p * 100 for p in PERCENTILES])
        worst = 0.0
        for want, got in zip(expected, sketch.quantiles(PERCENTILES), strict=True):
            assert got is not None
            worst = max(worst, abs(got - want) / abs(want))
        rows.append((name, worst))
    return rows


def best_cpu_us(run: Callable[[], object], repeat: int) -> float:
    """Best CPU time (this process) of `run` over `repeat` calls, in microseconds: the machine
    is shared, so wall time would count other processes' work."""
    best = math.inf
    for _ in range(repeat):
        start = time.process_time_ns()
        run()
        best = min(best, time.process_time_ns() - start)
    return best / 1000


def compact_windows(rng: np.random.Generator, count: int) -> list[Sketch]:
    """Histogram windows of a flush: 1 to 6 values each (one sample per 10 s interval of a
    minute), uniform in [1, 100), each a rolled-up copy (values packed as bytes, no stores)."""
    windows = []
    for size in rng.integers(1, 7, count).tolist():
        part = Sketch()
        for value in rng.uniform(1, 100, size).tolist():
            part.add(value)
        window = Sketch()
        window.merge(part)
        windows.append(window)
    return windows


def compact(repeat: int) -> None:
    """us per sketch for 20,000 compact sketches, one by one and grouped: in 200s (the sink's
    groups until SKETCH_ROWS_PER_GROUP became 500), in the sink's groups and in one group."""
    from collectord.sinks.postgres.sink import SKETCH_ROWS_PER_GROUP

    windows = compact_windows(np.random.default_rng(5), 20_000)
    summaries_many = getattr(sketch_module, "summaries_many", None)
    print(f"{'20,000 compact sketches, 1-6 values':<48} {'us/sketch (CPU)':>16}")
    for size in sorted({200, SKETCH_ROWS_PER_GROUP, len(windows)}):
        groups = [windows[i : i + size] for i in range(0, len(windows), size)]
        runs: dict[str, Callable[[], object]] = {
            "quantiles() one by one": lambda: [w.quantiles(PERCENTILES) for w in windows],
            "to_bytes() one by one": lambda: [w.to_bytes() for w in windows],
            "quantiles_many": lambda groups=groups: [quantiles_many(g, PERCENTILES) for g in groups],
            "encode_many": lambda groups=groups: [encode_many(g) for g in groups],
        }
        if summaries_many is not None:
            runs["summaries_many (both)"] = lambda groups=groups: [summaries_many(g, PERCENTILES) for g in groups]
        for label, run in runs.items():
            if "one by one" in label and size != len(windows):  # once
                continue
            where = "" if "one by one" in label else f", groups of {size:,}"
            print(f"{label + where:<48} {best_cpu_us(run, repeat) / len(windows):>16.2f}")
    assert all(w._compact() is not None for w in windows)  # reading left them compact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["all", "compact"], default="all")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if args.what == "compact":
        compact(args.repeat)
        return
    rng = np.random.default_rng(2024)

    print(f"{'operation':<40} {'cost':>10}  unit")
    for label, cost, unit in timings(rng, args.repeat):
        print(f"{label:<40} {cost:>10.1f}  {unit}")
    print()
    print(f"{'distribution':<40} {'nbytes':>10} {'to_bytes':>9}")
    for label, held, wire in sizes(rng):
        print(f"{label:<40} {held:>10,} {wire:>9,}")
    print()
    print(f"{'1M samples, p50/p90/p95/p99':<40} {'max rel. error':>14}")
    for name, worst in errors(rng):
        print(f"{name:<40} {worst:>14.4%}")


if __name__ == "__main__":
    main()
