"""The compact sketch (a few held-back values, no numpy stores) answers exactly as the numpy form.

A sketch of at most COMPACT_MAX values at its unit weight keeps them packed instead of in
bucket arrays; reads go through a settled temporary copy. Everything observable (quantiles,
encodings, equality, count, merges, snapshots) must be identical to the settled sketch's, at
every size across the threshold, and reading must not grow a compact sketch.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.aggregation.sketch import (
    COMPACT_MAX,
    Sketch,
    pack_snapshots,
    unpack_snapshots,
)

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0)

value = st.one_of(
    st.floats(min_value=-1e20, max_value=1e20, allow_nan=False),
    st.floats(min_value=1e-6, max_value=1e6),
    st.integers(min_value=-50, max_value=1000).map(float),
    st.sampled_from([0.0, -0.0, 1e-10, -1e-10, math.nan, math.inf, -math.inf]),
)
# Sizes on both sides of the threshold (and of add_many's small batch, 32).
values_list = st.lists(value, min_size=0, max_size=2 * COMPACT_MAX + 4)
weights = st.sampled_from([1.0, 1.0, 1.0, 0.5, 10.0, 1 / 0.3, 0.7])

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def compact_of(values: list[float], weight: float = 1.0) -> Sketch:
    """Values added one by one, left held back (compact while few)."""
    sketch = Sketch()
    for v in values:
        sketch.add(v, weight)
    return sketch


def settled_of(values: list[float], weight: float = 1.0) -> Sketch:
    """The same values in the numpy stores."""
    sketch = compact_of(values, weight)
    sketch._settle()
    assert sketch._pending is None
    return sketch


def copy_of(sketch: Sketch) -> Sketch:
    """A rolled-up window's copy: merged into a fresh sketch (packed while compact)."""
    target = Sketch()
    target.merge(sketch)
    return target


def assert_same(got: Sketch, want: Sketch) -> None:
    """Every observable answer is identical (bit for bit), not just close."""
    assert got.to_bytes() == want.to_bytes()
    assert got.quantiles(QS) == want.quantiles(QS)
    assert got.count == want.count
    assert got.is_empty() == want.is_empty()
    assert got == want
    assert want == got
    assert Sketch.from_bytes(got.to_bytes()) == want


def is_compact(sketch: Sketch) -> bool:
    return sketch._compact() is not None


@SETTINGS
@given(values=values_list, weight=weights, q=st.floats(min_value=0.0, max_value=1.0))
def test_compact_answers_like_the_numpy_form(values: list[float], weight: float, q: float) -> None:
    want = settled_of(values, weight)
    compact = compact_of(values, weight)
    assert compact.quantile(q) == want.quantile(q)
    packed = copy_of(compact_of(values, weight))
    assert_same(compact, want)
    assert_same(compact.copy(), want)
    # The numpy form merged into a fresh sketch (an empty one leaves it as it was, unit and all).
    assert_same(packed, copy_of(want))
    assert_same(packed.copy(), copy_of(want))
    finite = sum(1 for v in values if math.isfinite(v))
    if 0 < len(values) <= COMPACT_MAX:
        # Reading left them compact, and smaller than the numpy form.
        assert is_compact(compact)
        if finite:
            assert is_compact(packed)
            assert packed.nbytes() < want.nbytes() or not (want._pos.size or want._neg.size)
    elif len(values) > COMPACT_MAX:
        assert not is_compact(compact)


@SETTINGS
@given(parts=st.lists(st.tuples(values_list, weights), min_size=1, max_size=6))
def test_merges_equal_merges_of_the_numpy_form(parts: list[tuple[list[float], float]]) -> None:
    """Merging compact parts one by one, or all at once, gives the settled parts' merge."""
    want = Sketch()
    for values, weight in parts:
        want.merge(settled_of(values, weight))
    one_by_one = Sketch()
    for values, weight in parts:
        one_by_one.merge(compact_of(values, weight))
    packed = Sketch()
    for values, weight in parts:
        packed.merge(copy_of(compact_of(values, weight)))
    at_once = Sketch()
    at_once.merge_many([compact_of(values, weight) for values, weight in parts])
    # merge_many equals one-by-one merges up to float rounding (float counts): compare like with like.
    want_at_once = Sketch()
    want_at_once.merge_many([settled_of(values, weight) for values, weight in parts])
    assert_same(one_by_one, want)
    assert_same(packed, want)
    assert_same(at_once, want_at_once)
    # A merged target of one weight's plain samples is one sketch fed them all.
    if all(weight == 1.0 for _, weight in parts):
        assert_same(one_by_one, settled_of([v for values, _ in parts for v in values]))


@SETTINGS
@given(parts=st.lists(values_list, min_size=1, max_size=4))
def test_parts_are_left_alone_by_merges_and_reads(parts: list[list[float]]) -> None:
    """A query merging compact windows must not give them numpy stores, nor change them."""
    sketches = [copy_of(compact_of(values)) for values in parts]
    # A copy of more than COMPACT_MAX held-back values holds them as a list until it is read
    # (the roll-up hands them on instead of storing them); reading settles those, as it should.
    compact = [is_compact(s) for s in sketches]
    before = [(s._pending if small else None, s.to_bytes()) for s, small in zip(sketches, compact, strict=True)]
    target = Sketch()
    target.merge_many(sketches)
    for sketch in sketches:
        Sketch().merge(sketch)
        sketch.quantiles(QS)
        pack_snapshots([sketch])
    assert [(s._pending, s.to_bytes()) for s in sketches] == before


@SETTINGS
@given(first=values_list, late=values_list, weight=weights, as_list=st.booleans())
def test_late_samples_into_a_compact_copy(first: list[float], late: list[float], weight: float, as_list: bool) -> None:
    """A rolled-up window taking late samples ends as if it had taken them all at once."""
    got = copy_of(compact_of(first))
    if as_list:
        got.add_list(late, weight)
    else:
        for v in late:
            got.add(v, weight)
    want = copy_of(settled_of(first))
    for v in late:
        want.add(v, weight)
    assert_same(got, want)


@SETTINGS
@given(contents=st.lists(values_list, min_size=1, max_size=5))
def test_snapshots_of_compact_sketches(contents: list[list[float]]) -> None:
    sketches = [copy_of(compact_of(values)) for values in contents]
    for got, values in zip(unpack_snapshots(*pack_snapshots(sketches)), contents, strict=True):
        assert_same(got, copy_of(settled_of(values)))


def test_compact_copy_is_small() -> None:
    """Two timer samples in a window: packed values, not ~170 bytes of numpy arrays."""
    window = copy_of(compact_of([12.0, 480.0]))
    assert is_compact(window)
    assert window.nbytes() <= Sketch().nbytes() + 64
    assert settled_of([12.0, 480.0]).nbytes() > window.nbytes() + 100
