"""apply_deferred (the log's replay path) leaves exactly the state apply() leaves, sample by sample,
and deferred folding (numpy running sums) exactly the state of live ingest."""

from __future__ import annotations

import random

import pytest

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.limits import Limits
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, KIND_SUMMARY, Sample, SeriesKey
from collectord.ring import Batch
from collectord.storage.checkpoint import capture

START = 1_700_000_000.0


def _state(aggregator: Aggregator) -> bytes:
    """Everything a checkpoint keeps, byte for byte (sketch stores with their slack)."""
    return capture(aggregator, (0, 0), {})


def _meaning(aggregator: Aggregator) -> list[str]:
    """What the state means: every series, cell and sketch (canonical encoding), in order;
    deferred sketches are filled by add_many, whose stores may be sized differently."""
    out = [repr((aggregator.counters.samples, sorted(aggregator.counters.rejected.items())))]
    for series in [*aggregator.table.all_series(), *aggregator.name_totals.values()]:
        out.append(repr((series.name, series.tags, series.kind, series.total, series.last_value, series.last_seen)))
        for level, cells in enumerate(series.levels):
            for start, cell in cells.items():
                sketch = cell.sketch.to_bytes() if cell.sketch is not None else None
                fields = (cell.count, cell.sum, cell.sum_squares, cell.min, cell.max, cell.last)
                out.append(repr((level, start, fields, sketch)))
    return out


def _batches(rng: random.Random, weights: list[float]) -> list[Batch]:
    keys: list[SeriesKey] = [(f"lat.{i}", (("host", f"h{i % 3}"),)) for i in range(40)]
    out: list[Batch] = []
    received = START
    for step in range(400):
        received += rng.choice([0.05, 0.5, 3.0])
        if step % 97 == 96:
            received -= 25.0  # a batch for a slice already closed, or older than the open one
        shape = rng.random()
        kind = KIND_SUMMARY if rng.random() < 0.2 else KIND_HISTOGRAM
        weight = rng.choice(weights)
        count = rng.choice([10, 70, 300])
        samples: list[Sample] = []
        for _ in range(count):
            i = rng.randrange(min(len(keys), 8 + step // 10))
            key = keys[i]
            if shape < 0.05:
                key = (key[0], key[1])  # equal key, another object: must not split the series
            value = rng.choice([rng.uniform(-5, 5), float(rng.randrange(1000)), rng.expovariate(0.01)])
            samples.append((key, kind, value, weight, None))
        if shape > 0.97:
            samples.append((keys[0], KIND_COUNTER, 1.0, 1.0, None))  # a mixed batch
        elif shape > 0.94:
            samples[0] = (samples[0][0], kind, samples[0][2], weight, received - 1.0)  # timestamped
        out.append(Batch("default", samples, received))
    # A series that is a gauge, later sent as a timer: refused as a type mismatch, every sample.
    mismatch: SeriesKey = ("temp", ())
    out.insert(5, Batch("default", [(mismatch, KIND_GAUGE, 3.0, 1.0, None)], START + 1))
    out.insert(9, Batch("default", [(mismatch, KIND_HISTOGRAM, float(v), 1.0, None) for v in range(100)], START + 2))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("max_series", [1000, 12])
@pytest.mark.parametrize("weights", [[1.0, 2.0], [1.0, 1.0, 2.0, 1 / 0.3]])
def test_apply_deferred_equals_apply_and_live(seed: int, max_series: int, weights: list[float]) -> None:
    limits = Limits(max_series=max_series)
    batches = _batches(random.Random(seed), weights)
    one_by_one = Aggregator(limits, AggregationSettings(), START)
    grouped = Aggregator(limits, AggregationSettings(), START)
    live = Aggregator(limits, AggregationSettings(), START)
    one_by_one.defer_sketches(True)
    grouped.defer_sketches(True)
    fallbacks: list[Batch] = []
    general = grouped.apply

    def counted(batch: Batch) -> None:
        fallbacks.append(batch)
        general(batch)

    grouped.apply = counted  # type: ignore[method-assign]
    for batch in batches:
        for aggregator in (one_by_one, grouped, live):
            if batch.received_at >= aggregator.rolled_until[0] + aggregator.level_seconds[0]:
                aggregator.advance(batch.received_at)
        one_by_one.apply(batch)
        grouped.apply_deferred(batch)
        live.apply(batch)
    one_by_one.defer_sketches(False)
    grouped.defer_sketches(False)
    assert grouped.counters.samples > 0
    # Many batches took the grouped path; the others (mixed, timestamped, few samples per
    # series, split keys) did not.
    assert len(batches) * 0.3 < len(fallbacks) < len(batches) * 0.75
    assert grouped.counters.rejected == one_by_one.counters.rejected
    assert _state(grouped) == _state(one_by_one)
    if all(weight.is_integer() for weight in weights):
        # Unrelated fractional weights make sketch counts floats, which add_many (deferred)
        # and add (live) round differently; the sums and every other field still agree.
        assert _meaning(grouped) == _meaning(live)


def test_apply_deferred_without_deferral_is_apply() -> None:
    limits = Limits()
    batch = Batch("default", [(("t", ()), KIND_HISTOGRAM, float(v % 7), 1.0, None) for v in range(200)], START)
    plain = Aggregator(limits, AggregationSettings(), START)
    other = Aggregator(limits, AggregationSettings(), START)
    plain.apply(batch)
    other.apply_deferred(batch)
    assert _state(plain) == _state(other)


@pytest.mark.parametrize(
    "values",
    [
        [0.0, -0.0, 3.0] * 10,
        [-0.0, 0.0, 3.0] * 10,
        [-2.0, 0.0, -0.0] * 10,
        [-2.0, -0.0, 0.0] * 10,
        [5.0, 0.0, 1.0, -0.0] * 10,
    ],
)
def test_deferred_folding_keeps_the_first_zero_as_extreme(values: list[float]) -> None:
    """Of equal zeros min() and max() keep the first; folding in numpy must too."""
    limits = Limits()
    batch = Batch("default", [(("t", ()), KIND_HISTOGRAM, value, 1.0, None) for value in values], START)
    live = Aggregator(limits, AggregationSettings(), START)
    deferred = Aggregator(limits, AggregationSettings(), START)
    deferred.defer_sketches(True)
    live.apply(batch)
    deferred.apply_deferred(batch)
    deferred.defer_sketches(False)
    assert _meaning(deferred) == _meaning(live)
