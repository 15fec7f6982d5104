"""Tests for collectord/aggregation/sketch.py: accuracy, merging, weights, encoding, memory."""

from __future__ import annotations

import math
import struct
import sys
import tracemalloc
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.aggregation.sketch import (
    MAX_BUCKETS,
    ZERO_THRESHOLD,
    Sketch,
    SketchDecodeError,
)

PROMISED = 0.01
QUANTILES = [0.0, 0.5, 0.9, 0.95, 0.99, 1.0]

# Magnitudes up to 1e20 keep each sign's range (with 1e-9, the zero threshold, at the bottom)
# under the bucket cap's 1.6e35, so no collapsing: the 1% promise holds for every quantile.
finite = st.floats(min_value=-1e20, max_value=1e20, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-6, max_value=1e12, allow_nan=False)
mixed = st.one_of(
    finite,
    positive,
    positive.map(lambda v: -v),
    st.just(0.0),
    st.integers(min_value=-1000, max_value=1000).map(float),
)
datasets = st.one_of(
    st.lists(mixed, min_size=1, max_size=2000),
    st.lists(positive, min_size=1, max_size=2000),
    st.lists(positive.map(lambda v: -v), min_size=1, max_size=300),
)
qs = st.one_of(st.sampled_from(QUANTILES), st.floats(min_value=0.0, max_value=1.0))

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bracket(ordered: Sequence[float], cum: Sequence[float] | None, q: float) -> tuple[float, float]:
    """The order statistics at floor and ceil of rank q*(W-1), numpy's 'linear' ranks.

    With `cum` (cumulative weights), a rank falls in the first sample whose running weight
    passes it: weight w counts like w repeated samples.
    """
    if cum is None:
        rank = q * (len(ordered) - 1)
        return ordered[math.floor(rank)], ordered[math.ceil(rank)]
    rank = max(q * (cum[-1] - 1.0), 0.0)
    last = len(ordered) - 1
    # Sums of fractional weights round differently in any order; widen by that rounding.
    slack = 1e-9 * cum[-1]
    lo = min(int(np.searchsorted(cum, math.floor(rank) - slack, side="right")), last)
    hi = min(int(np.searchsorted(cum, math.ceil(rank) + slack, side="right")), last)
    return ordered[lo], ordered[hi]


def assert_accurate(sketch: Sketch, values: Sequence[float], q: float, weights: Sequence[float] | None = None) -> None:
    """The estimate is within 1% (or the zero threshold) of the bracketing order statistics."""
    estimate = sketch.quantile(q)
    assert estimate is not None
    if weights is None:
        ordered, cum = sorted(values), None
    else:
        order = np.argsort(values, kind="stable")
        ordered = [values[i] for i in order]
        cum = list(np.cumsum(np.asarray(weights, dtype=np.float64)[order]))
    lo, hi = bracket(ordered, cum, q)
    low, high = min(lo, hi), max(lo, hi)
    # Relative on each side, judged on that side's own magnitude, so signs need no cases;
    # the absolute term covers values below the zero threshold, which are reported as 0.
    floor = low - PROMISED * abs(low) - ZERO_THRESHOLD
    ceiling = high + PROMISED * abs(high) + ZERO_THRESHOLD
    assert floor <= estimate <= ceiling, (q, estimate, lo, hi)


def sketch_of(values: Sequence[float], weight: float = 1.0) -> Sketch:
    sketch = Sketch()
    for v in values:
        sketch.add(v, weight)
    return sketch


# ----------------------------------------------------------------- accuracy


@SETTINGS
@given(values=datasets, q=qs)
def test_quantile_within_one_percent(values: list[float], q: float) -> None:
    one_by_one = sketch_of(values)
    batched = Sketch()
    batched.add_many(values)
    assert batched == one_by_one
    assert_accurate(one_by_one, values, q)
    for fixed in QUANTILES:
        assert_accurate(one_by_one, values, fixed)
    assert one_by_one.count == len(values)


@SETTINGS
@given(values=datasets)
def test_quantiles_match_quantile(values: list[float]) -> None:
    sketch = sketch_of(values)
    assert sketch.quantiles(QUANTILES) == [sketch.quantile(q) for q in QUANTILES]


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, 2000), q=qs)
def test_lognormal_samples_within_one_percent(seed: int, size: int, q: float) -> None:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(math.log(0.05), 1.0, size)
    sketch = Sketch()
    sketch.add_many(values)
    for fixed in [q, *QUANTILES]:
        assert_accurate(sketch, values.tolist(), fixed)
        estimate = sketch.quantile(fixed)
        assert estimate is not None
        # All samples positive, so the bound also holds against numpy's interpolated value.
        expected = float(np.percentile(values, fixed * 100))
        assert abs(estimate - expected) <= PROMISED * expected


@SETTINGS
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 2000),
    zeros=st.floats(0.0, 0.5),
    q=qs,
)
def test_mixed_sign_samples_within_one_percent(seed: int, size: int, zeros: float, q: float) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, size) * rng.lognormal(0.0, 3.0, size)
    values[rng.random(size) < zeros] = 0.0
    batched = Sketch()
    batched.add_many(values)
    assert batched == sketch_of(values.tolist())
    for fixed in [q, *QUANTILES]:
        assert_accurate(batched, values.tolist(), fixed)


@pytest.mark.parametrize(
    ("name", "draw"),
    [
        ("lognormal", lambda rng, n: rng.lognormal(math.log(0.05) - 0.5, 1.0, n)),
        ("pareto", lambda rng, n: (rng.pareto(1.5, n) + 1.0) * 0.01),
        (
            "bimodal",
            lambda rng, n: np.where(rng.random(n) < 0.7, rng.normal(0.02, 0.004, n), rng.normal(0.4, 0.08, n)),
        ),
    ],
)
def test_million_samples_within_one_percent_of_numpy(
    name: str, draw: Callable[[np.random.Generator, int], npt.NDArray[np.float64]]
) -> None:
    rng = np.random.default_rng(42)
    values = draw(rng, 1_000_000)
    sketch = Sketch()
    for chunk in np.array_split(values, 7):
        sketch.add_many(chunk)
    assert sketch.count == len(values)
    targets = [0.5, 0.9, 0.95, 0.99]
    expected = np.percentile(values, [t * 100 for t in targets])
    for q, want, got in zip(targets, expected, sketch.quantiles(targets), strict=True):
        assert got is not None
        assert abs(got - want) <= PROMISED * abs(want), (name, q, got, want)


# ------------------------------------------------------------------ merging


@SETTINGS
@given(data=st.data(), values=datasets, parts=st.integers(1, 6))
def test_merge_of_partitions_equals_one_sketch(data: st.DataObject, values: list[float], parts: int) -> None:
    labels = data.draw(st.lists(st.integers(0, parts - 1), min_size=len(values), max_size=len(values)))
    pieces = [Sketch() for _ in range(parts)]
    for value, label in zip(values, labels, strict=True):
        pieces[label].add(value)
    merged = Sketch()
    for piece in pieces:
        merged.merge(piece)
    reverse = Sketch()
    for piece in reversed(pieces):
        reverse.merge(piece)
    whole = sketch_of(values)
    assert merged == whole
    assert reverse == whole
    assert merged.count == len(values)
    for q in [*QUANTILES, data.draw(qs)]:
        assert_accurate(merged, values, q)


def test_merge_is_exact_bucket_addition_and_leaves_other_alone() -> None:
    rng = np.random.default_rng(3)
    a_values, b_values = rng.lognormal(0, 2, 5000), -rng.lognormal(3, 1, 700)
    a, b = Sketch(), Sketch()
    a.add_many(a_values)
    b.add_many(b_values)
    b_before = b.copy()
    a.merge(b)
    assert b == b_before
    whole = Sketch()
    whole.add_many(np.concatenate([a_values, b_values]))
    assert a == whole
    a.merge(a)  # merging into itself doubles every bucket
    doubled = whole.copy()
    doubled.merge(whole)
    assert a == doubled
    assert a.count == 2 * (len(a_values) + len(b_values))


# Integers and binary fractions: every path (shared unit, rescaled unit, float counts) sums them
# exactly, so merged and one-shot sketches must be equal whatever the order.
exact_weights = st.sampled_from([1.0, 2.0, 10.0, 20.0, 0.5, 0.25, 4.0])


@SETTINGS
@given(
    data=st.data(),
    pairs=st.lists(st.tuples(mixed, exact_weights), min_size=1, max_size=300),
    parts=st.integers(1, 4),
)
def test_merge_of_differently_weighted_sketches_equals_one_sketch(
    data: st.DataObject, pairs: list[tuple[float, float]], parts: int
) -> None:
    labels = data.draw(st.lists(st.integers(0, parts - 1), min_size=len(pairs), max_size=len(pairs)))
    pieces = [Sketch() for _ in range(parts)]
    for (value, weight), label in zip(pairs, labels, strict=True):
        pieces[label].add(value, weight)
    merged = Sketch()
    for piece in pieces:
        merged.merge(piece)
    whole = Sketch()
    for value, weight in pairs:
        whole.add(value, weight)
    assert merged == whole
    for weight in {w for _, w in pairs}:
        batch = [v for v, w in pairs if w == weight]
        whole.add_many(batch * (40 // len(batch) + 1), weight)  # big enough for numpy's path
        merged.add_many(batch * (40 // len(batch) + 1), weight)
    assert merged == whole
    assert Sketch.from_bytes(merged.to_bytes()) == whole


def test_windows_built_from_minute_sketches() -> None:
    rng = np.random.default_rng(11)
    minutes = [rng.lognormal(math.log(0.05), 1.0, int(rng.integers(0, 400))) for _ in range(60)]
    hour = Sketch()
    for values in minutes:
        minute = Sketch()
        for v in values.tolist():
            minute.add(v)
        hour.merge(Sketch.from_bytes(minute.to_bytes()))
    everything = np.concatenate(minutes)
    whole = Sketch()
    whole.add_many(everything)
    assert hour == whole
    for q in QUANTILES:
        assert_accurate(hour, everything.tolist(), q)


# ------------------------------------------------------------------ weights


@SETTINGS
@given(values=datasets, weight=st.integers(1, 50))
def test_integer_weight_equals_repeated_adds(values: list[float], weight: int) -> None:
    weighted = sketch_of(values, float(weight))
    repeated = Sketch()
    for v in values:
        for _ in range(weight):
            repeated.add(v)
    batched = Sketch()
    batched.add_many(values, float(weight))
    assert weighted == repeated
    assert batched == repeated
    assert weighted.count == weight * len(values)
    assert weighted.quantiles(QUANTILES) == repeated.quantiles(QUANTILES)


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(mixed, st.sampled_from([1.0, 2.0, 10.0, 1 / 0.3, 0.5, 0.37, 7.25])),
        min_size=1,
        max_size=500,
    ),
    q=qs,
)
def test_weighted_quantiles_rank_by_cumulative_weight(pairs: list[tuple[float, float]], q: float) -> None:
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    sketch = Sketch()
    for v, w in pairs:
        sketch.add(v, w)
    assert sketch.count == pytest.approx(math.fsum(weights), rel=1e-12)
    for fixed in [q, *QUANTILES]:
        assert_accurate(sketch, values, fixed, weights)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


def test_sample_rate_weights_stay_compact_and_exact() -> None:
    rng = np.random.default_rng(5)
    values = rng.lognormal(math.log(0.05), 1.0, 1000)
    rated = Sketch()
    for v in values.tolist():
        rated.add(v, 1 / 0.3)
    plain = sketch_of(values.tolist())
    # Same buckets, each holding 3.333 times the weight, and no larger for it.
    assert rated.nbytes() == plain.nbytes()
    assert rated.count == pytest.approx(1000 / 0.3)
    for q in QUANTILES:
        assert_accurate(rated, values.tolist(), q, [1 / 0.3] * len(values))
    halves = sketch_of([1.0, 2.0], 0.5)
    halves.add(1.0, 0.5)
    halves.add(2.0, 0.5)
    assert halves == sketch_of([1.0, 2.0], 1.0)


def test_unrelated_weights_fall_back_to_float_counts() -> None:
    sketch = Sketch()
    sketch.add(1.0, 1.0)
    sketch.add(2.0, 0.37)
    sketch.add(2.0, 1 / 0.3)
    assert sketch.count == pytest.approx(1.0 + 0.37 + 1 / 0.3)
    other = Sketch()
    other.add(2.0, 10.0)
    sketch.merge(other)
    other.merge(sketch)
    assert sketch.count == pytest.approx(11.0 + 0.37 + 1 / 0.3)
    assert other.count == pytest.approx(21.0 + 0.37 + 1 / 0.3)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from([1.0, -2.0, 0.0, 3e5]),
            st.floats(min_value=1e-300, max_value=1e15),
        ),
        min_size=1,
        max_size=50,
    ),
    split=st.integers(0, 50),
)
def test_extreme_weights_keep_every_sample(pairs: list[tuple[float, float]], split: int) -> None:
    whole = Sketch()
    for v, w in pairs:
        whole.add(v, w)
    left, right = Sketch(), Sketch()
    for v, w in pairs[:split]:
        left.add(v, w)
    for v, w in pairs[split:]:
        right.add(v, w)
    left.merge(right)
    total = math.fsum(w for _, w in pairs)
    assert whole.count == pytest.approx(total, rel=1e-9)
    assert left.count == pytest.approx(total, rel=1e-9)
    assert Sketch.from_bytes(whole.to_bytes()).count == pytest.approx(total, rel=1e-9)
    assert None not in whole.quantiles(QUANTILES)


@pytest.mark.parametrize("weight", [300.0, 70_000.0, 5e9, 2.0**40])
def test_counts_widen_without_wrapping(weight: float) -> None:
    sketch = Sketch()
    sketch.add(1.0)
    for _ in range(3):
        sketch.add(1.0, weight)
        sketch.add(-1.0, weight)
    assert sketch.count == 1 + 6 * weight
    batched = Sketch()
    batched.add(1.0)
    batched.add_many([1.0] * 40 + [-1.0] * 40, weight)
    assert batched.count == 1 + 80 * weight
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


@pytest.mark.parametrize("value", [5.0, -5.0])
def test_uint8_overflow_in_add_and_add_many(value: float) -> None:
    one_by_one = sketch_of([value] * 1000)
    batched = Sketch()
    for _ in range(10):
        batched.add_many([value] * 100)
    assert one_by_one == batched
    assert one_by_one.count == 1000


def test_huge_integer_counts_merge_into_float_counts() -> None:
    # One bucket of 2**61 (width-8 body); doubling it would near uint64's range, so the sum
    # switches to float counts instead of wrapping.
    data = b"\x01\x00\x00\x00\x01\x00\x08" + struct.pack("<Q", 2**61)
    sketch = Sketch.from_bytes(data)
    sketch.merge(sketch)
    sketch.merge(Sketch.from_bytes(data))
    assert sketch.count == 3 * 2.0**61
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=PROMISED)


def test_absurd_total_weight_still_answers() -> None:
    data = b"\x01\x01" + struct.pack("<d", 0.0) + b"\x00\x02\x00" + struct.pack("<dd", 1e300, 1e300)
    sketch = Sketch.from_bytes(data)
    for _ in range(27):
        sketch.merge(sketch)  # each bucket ends at 1.3e308: finite, but their sum is not
    assert math.isinf(sketch.count)
    # Buckets 0 and 1: values just below and just above 1.
    low, high = sketch.quantiles([0.0, 1.0])
    assert low is not None and high is not None
    assert 0.98 < low < 1.0 < high < 1.02


# --------------------------------------------------------------- edge cases


def test_empty_sketch() -> None:
    sketch = Sketch()
    assert sketch.is_empty()
    assert sketch.count == 0.0
    assert sketch.quantile(0.5) is None
    assert sketch.quantiles([0.0, 1.0]) == [None, None]
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch
    sketch.merge(Sketch())
    assert sketch.is_empty()


@pytest.mark.parametrize(
    ("value", "weight"),
    [
        (math.nan, 1.0),
        (math.inf, 1.0),
        (-math.inf, 1.0),
        (1.0, 0.0),
        (1.0, -1.0),
        (1.0, math.nan),
        (1.0, math.inf),
    ],
)
def test_non_finite_values_and_bad_weights_are_ignored(value: float, weight: float) -> None:
    sketch = sketch_of([1.0, 2.0])
    before = sketch.copy()
    sketch.add(value, weight)
    sketch.add_many([value] * 3, weight)
    sketch.add_many([value] * 100, weight)
    assert sketch == before
    assert sketch.quantile(1.0) == pytest.approx(2.0, rel=PROMISED)


def test_add_many_skips_non_finite_among_valid_values() -> None:
    values = [1.0, math.nan, -2.0, math.inf, 0.0, -math.inf, 3.0] * 10
    sketch = Sketch()
    sketch.add_many(values)
    assert sketch == sketch_of([1.0, -2.0, 0.0, 3.0] * 10)


def test_zero_bucket_and_threshold() -> None:
    sketch = sketch_of([0.0, -0.0, 1e-12, -1e-10, 5e-324])
    assert sketch.quantiles([0.0, 1.0]) == [0.0, 0.0]
    assert sketch.count == 5
    just_above = sketch_of([ZERO_THRESHOLD])
    estimate = just_above.quantile(0.5)
    assert estimate == pytest.approx(ZERO_THRESHOLD, rel=PROMISED)


def test_extreme_magnitudes_stay_finite() -> None:
    big = sys.float_info.max
    sketch = sketch_of([big, -big, 1e300])
    low, high = sketch.quantiles([0.0, 1.0])
    assert low is not None and high is not None
    assert math.isfinite(low) and math.isfinite(high)
    assert high == pytest.approx(big, rel=PROMISED)
    assert low == pytest.approx(-big, rel=PROMISED)
    mid = sketch.quantile(0.25)  # interpolates between -max and 1e300 without overflowing
    assert mid is not None and math.isfinite(mid)


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_outside_unit_interval_is_rejected(q: float) -> None:
    with pytest.raises(ValueError):
        sketch_of([1.0]).quantile(q)


def test_copy_is_independent() -> None:
    original = sketch_of([1.0, 2.0, -3.0])
    clone = original.copy()
    clone.add(100.0)
    clone.add(-100.0)
    assert original == sketch_of([1.0, 2.0, -3.0])
    assert clone != original
    assert original != "not a sketch"
    assert sketch_of([0.0]) != sketch_of([0.0, 0.0])
    assert sketch_of([1.0]) != sketch_of([1.1])
    assert sketch_of([1.0], 0.5) != sketch_of([1.0], 1.0)
    assert repr(original) == "Sketch(count=3.0, buckets=3)"


def test_single_value_every_quantile() -> None:
    sketch = sketch_of([-42.0])
    for q in QUANTILES:
        assert sketch.quantile(q) == pytest.approx(-42.0, rel=PROMISED)


# ------------------------------------------------------------ serialisation


@SETTINGS
@given(values=datasets, weight=st.sampled_from([1.0, 10.0, 1 / 0.3]))
def test_roundtrip_is_equal_and_accurate(values: list[float], weight: float) -> None:
    sketch = sketch_of(values, weight)
    data = sketch.to_bytes()
    assert data[0] == 1
    decoded = Sketch.from_bytes(data)
    assert decoded == sketch
    assert decoded.to_bytes() == data
    assert Sketch.from_bytes(memoryview(data)) == sketch
    assert decoded.quantiles(QUANTILES) == sketch.quantiles(QUANTILES)
    for q in QUANTILES:
        assert_accurate(decoded, values, q)


def test_float_counts_roundtrip() -> None:
    sketch = Sketch()
    sketch.add_many([0.5, -0.25, 0.0, 10.0] * 50, 0.37)
    sketch.add(3.0, 1.1)
    decoded = Sketch.from_bytes(sketch.to_bytes())
    assert decoded == sketch
    assert decoded.count == pytest.approx(sketch.count)


def valid_encodings() -> list[bytes]:
    rng = np.random.default_rng(9)
    samples = [
        Sketch(),
        sketch_of([0.0]),
        sketch_of([1.0, -1.0, 0.0, 1e6, -1e-6]),
        sketch_of(rng.lognormal(0.0, 1.0, 300).tolist(), 1 / 0.3),
    ]
    floats = Sketch()
    floats.add_many(rng.normal(0.0, 5.0, 200), 0.37)
    floats.add(2.0, 1.0)
    samples.append(floats)
    wide = Sketch()
    wide.add_many(rng.lognormal(0.0, 1.0, 200), 2.0**40)
    samples.append(wide)
    return [s.to_bytes() for s in samples]


VALID = valid_encodings()
# Causes a decoding error may wrap; anything else would be a bug in the decoder.
EXPECTED_CAUSES = (ValueError, IndexError, OverflowError, struct.error)


def decode_or_reject(data: bytes) -> Sketch | None:
    try:
        sketch = Sketch.from_bytes(data)
    except SketchDecodeError as exc:
        assert exc.__cause__ is None or isinstance(exc.__cause__, EXPECTED_CAUSES), exc
        return None
    # Whatever decodes must be a working, bounded sketch.
    assert sketch.nbytes() <= 2 * (MAX_BUCKETS * 8 + 200) + 200
    quantiles = sketch.quantiles(QUANTILES)
    assert all(q is None or not math.isnan(q) for q in quantiles)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch
    return sketch


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    decode_or_reject(data)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_encodings_only_raise_decode_error(base: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(base)
    for position, byte in edits:
        data[position % len(data)] = byte
    decode_or_reject(bytes(data))


@pytest.mark.parametrize("data", VALID)
def test_every_truncation_is_rejected(data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises(SketchDecodeError):
            Sketch.from_bytes(data[:end])
    with pytest.raises(SketchDecodeError):
        Sketch.from_bytes(data + b"\x00")


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x00\x00\x00\x00",  # unknown version
        b"\x01\x04\x00\x00\x00",  # unknown flag
        b"\x01\x03" + struct.pack("<d", 1.0) + b"\x00\x00\x00",  # float counts with a unit
        b"\x01\x02" + struct.pack("<d", math.nan) + b"\x00\x00\x00",
        b"\x01\x02" + struct.pack("<d", -2.0) + b"\x00\x00\x00",
        b"\x01\x01" + struct.pack("<d", math.inf) + b"\x00\x00",
        b"\x01\x00" + b"\xff" * 11 + b"\x00\x00",  # overlong varint
        b"\x01\x00" + b"\xff" * 9 + b"\x7f\x00\x00",  # varint beyond 64 bits
        b"\x01\x00\x00\x00" + varint(2**60) + b"\x00\x01",  # absurd bucket count
        b"\x01\x00\x00\x00" + varint(MAX_BUCKETS + 1) + b"\x00" + b"\x01" * (MAX_BUCKETS + 1),
        b"\x01\x00\x00\x00\x01" + varint(2**62) + b"\x01\x01",  # key far out of range
        b"\x01\x00\x00\x00\x02\x00\x03" + b"\x01" * 6,  # count width 3
        b"\x01\x00\x00\x00\x02\x00\x08" + b"\x01" * 15,  # truncated body
        b"\x01\x01" + struct.pack("<d", 0.0) + b"\x00\x01\x00" + struct.pack("<d", -1.0),
        b"\x01\x01" + struct.pack("<d", 0.0) + b"\x00\x02\x00" + struct.pack("<dd", 1e308, 1e308),
        b"\x01\x00\x00\x00\x01\x00\x01\x05\x00",  # trailing byte
        "not bytes",
        None,
    ],
)
def test_hostile_encodings_are_rejected_cheaply(data: object) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(SketchDecodeError):
            Sketch.from_bytes(data)  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_largest_encodable_counts_decode_to_float_counts() -> None:
    data = b"\x01\x00\x00\x00\x02\x00\x08" + b"\xff" * 16
    sketch = Sketch.from_bytes(data)
    assert sketch.count == pytest.approx(2.0**65)
    assert sketch.quantile(0.5) == pytest.approx(1.0, rel=PROMISED)
    sketch.merge(sketch_of([2.0]))
    sketch.add(3.0)
    assert Sketch.from_bytes(sketch.to_bytes()) == sketch


def test_wire_format_is_compact() -> None:
    rng = np.random.default_rng(1)
    sketch = Sketch()
    sketch.add_many(rng.lognormal(math.log(0.05) - 0.5, 1.0, 1000))
    # Roughly one byte per bucket in the populated range.
    assert len(sketch.to_bytes()) < 450
    assert Sketch().to_bytes() == b"\x01\x00\x00\x00\x00"


# ------------------------------------------------------------------- memory


@pytest.mark.parametrize(("size", "budget"), [(1000, 700), (100_000, 1400)])
def test_memory_for_a_latency_series(size: int, budget: int) -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(math.log(0.05) - 0.5, 1.0, size)
    batched = Sketch()
    batched.add_many(values)
    one_by_one = sketch_of(values.tolist())
    assert batched.nbytes() <= budget
    assert one_by_one.nbytes() <= budget


def test_bucket_cap_bounds_memory_for_hostile_ranges() -> None:
    values = np.geomspace(1e-300, 1e300, 20_000)
    hostile = np.concatenate([values, -values])
    sketch = Sketch()
    sketch.add_many(hostile)
    one_by_one = sketch_of(np.random.default_rng(4).permutation(hostile).tolist())
    assert one_by_one == sketch  # collapsing does not depend on arrival order
    bound = 2 * (MAX_BUCKETS * 2 + 200) + 300  # two uint16 stores at the cap plus headers
    assert sketch.nbytes() <= bound
    assert one_by_one.nbytes() <= bound
    assert len(sketch.to_bytes()) <= 2 * MAX_BUCKETS * 3
    # Collapsing only touches the bottom of each sign: the top quantiles keep the promise
    # (here positives below ~6e264 are collapsed, which is most of them).
    for q in [0.99, 0.995, 1.0]:
        assert_accurate(sketch, hostile.tolist(), q)
    assert sketch.count == len(hostile)


@settings(max_examples=60, deadline=None)
@given(
    exponents=st.lists(st.floats(min_value=-9, max_value=307), min_size=1, max_size=300),
    signs=st.lists(st.booleans(), min_size=300, max_size=300),
    split=st.integers(0, 300),
)
def test_collapsing_is_order_independent_and_mergeable(exponents: list[float], signs: list[bool], split: int) -> None:
    values = [(10.0**e) * (-1.0 if s else 1.0) for e, s in zip(exponents, signs, strict=False)]
    forward = sketch_of(values)
    backward = sketch_of(values[::-1])
    assert forward == backward
    left, right = sketch_of(values[:split]), Sketch()
    right.add_many(values[split:])
    left.merge(right)
    assert left == forward
    assert Sketch.from_bytes(forward.to_bytes()) == forward
    # The largest values are never collapsed.
    top = forward.quantile(1.0)
    assert top is not None
    assert abs(top - max(values)) <= PROMISED * abs(max(values)) + ZERO_THRESHOLD


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.floats(-1e9, 1e9, allow_nan=False), st.sampled_from([1.0, 1.0, 0.3, 10.0, 1e-3])),
            max_size=40,
        ),
        max_size=12,
    )
)
def test_packed_snapshots_give_back_equal_sketches(contents: list[list[tuple[float, float]]]) -> None:
    from collectord.aggregation.sketch import pack_snapshots, unpack_snapshots

    sketches = []
    for values in contents:
        sketch = Sketch()
        for value, weight in values:
            sketch.add(value, weight)
        sketches.append(sketch)
    restored = unpack_snapshots(*pack_snapshots(sketches))
    assert restored == sketches
    assert [s.quantile(0.99) for s in restored] == [s.quantile(0.99) for s in sketches]


def test_damaged_snapshot_columns_raise_the_decode_error() -> None:
    from collectord.aggregation.sketch import SketchDecodeError, pack_snapshots, unpack_snapshots

    sketch = Sketch()
    sketch.add(5.0, 1.0)
    ints, floats, blob = pack_snapshots([sketch, sketch])
    damages = [(ints[:-8], floats, blob), (ints, floats, blob[:-1]), (ints, floats[:-8], blob), (b"x", floats, blob)]
    for damaged in damages:
        with pytest.raises(SketchDecodeError):
            unpack_snapshots(*damaged)


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
            st.sampled_from([1.0, 1.0, 1.0, 2.0, 1 / 0.3]),
            st.sampled_from(["add", "add", "add", "read", "count", "merge", "encode"]),
        ),
        max_size=1200,
    )
)
@settings(max_examples=60, deadline=None)
def test_held_back_values_read_as_if_added_at_once(steps: list[tuple[float, float, str]]) -> None:
    """add() holds unit-weight values back; every reader must see them, in order, as if each
    had gone into the buckets at once (a reference built one add_many call per value)."""
    from collectord.aggregation.sketch import PENDING_MAX

    held, reference, other = Sketch(), Sketch(), Sketch()
    other.add(3.0)
    for value, weight, action in steps:
        held.add(value, weight)
        reference.add_many([value], weight)
        if action == "read":
            assert held.quantiles([0.5, 0.99]) == reference.quantiles([0.5, 0.99])
        elif action == "count":
            assert held.count == pytest.approx(reference.count)
        elif action == "merge":
            merged = Sketch()
            merged.merge(held)
            assert merged == reference
            other.merge(held)
            expected = Sketch()
            expected.add(3.0)
            expected.merge(reference)
            assert other.count == pytest.approx(expected.count)
            other = Sketch()
            other.add(3.0)
        elif action == "encode":
            assert Sketch.from_bytes(held.to_bytes()) == reference
        assert held._pending is None or len(held._pending) < PENDING_MAX
    assert held == reference
    assert held.to_bytes() == reference.to_bytes()
    assert held.copy() == reference
