"""quantiles_many and encode_many (a flush's thousands of sketches at once) give exactly what
Sketch.quantiles and Sketch.to_bytes give one by one: the same floats, the same bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.cells import PERCENTILES, Cell, prepare_percentiles
from collectord.aggregation.sketch import Sketch, encode_many, quantiles_many

QS = (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0)

values = st.one_of(
    st.floats(min_value=1e-6, max_value=1e9),
    st.floats(min_value=-1e9, max_value=-1e-6),  # a negative store: the one-by-one path
    st.just(0.0),
    st.floats(min_value=-1e-10, max_value=1e-10),  # the zero bucket
    st.integers(min_value=1, max_value=50).map(float),
)
# Unit weight (the common case), a fixed sample rate (unit != 1) or a mix (float counts).
weights = st.sampled_from([1.0, 1.0, 1.0, 2.0, 1 / 0.3, 0.5])
positive = st.one_of(st.floats(min_value=1e-6, max_value=1e9), st.just(0.0))
sketches = st.one_of(
    st.builds(
        lambda samples, repeat: build(samples, repeat),
        st.lists(st.tuples(values, weights), max_size=40),
        st.sampled_from([1, 2, 300]),  # 300: counts past one byte
    ),
    # The common case, taken together: unit weight, no negative values, one-byte counts.
    st.builds(
        lambda samples, repeat: build([(v, 1.0) for v in samples], repeat),
        st.lists(positive, max_size=40),
        st.sampled_from([1, 2, 7]),
    ),
)


def build(samples: list[tuple[float, float]], repeat: int) -> Sketch:
    sketch = Sketch()
    for _ in range(repeat):
        for value, weight in samples:
            sketch.add(value, weight)
    return sketch


@settings(max_examples=300, deadline=None)
@given(st.lists(sketches, max_size=30))
def test_many_match_one_by_one(group: list[Sketch]) -> None:
    assert quantiles_many(group, QS) == [s.quantiles(QS) for s in group]
    encoded = encode_many(group)
    assert encoded == [s.to_bytes() for s in group]
    assert [Sketch.from_bytes(e) for e in encoded] == group


def test_many_of_a_flush_of_small_sketches() -> None:
    group = [build([(float(v), 1.0) for v in range(1, n + 1)], 1) for n in (1, 3, 6, 60)]
    group.append(Sketch())  # empty: None quantiles, still encoded
    group.append(build([(0.0, 1.0)], 3))  # only the zero bucket
    assert quantiles_many(group, (0.5,)) == [s.quantiles((0.5,)) for s in group]
    assert quantiles_many(group, (0.5,))[3] == [pytest.approx(30.5, rel=0.01)]
    assert quantiles_many(group, (0.5,))[4] == [None]
    assert encode_many(group) == [s.to_bytes() for s in group]


def test_quantiles_many_rejects_a_bad_quantile() -> None:
    with pytest.raises(ValueError):
        quantiles_many([build([(1.0, 1.0)], 1)], (1.5,))


def test_prepare_percentiles_caches_what_percentiles_computes() -> None:
    cells = []
    for n in (1, 5, 40):
        cell = Cell()
        cell.sketch = build([(float(v), 1.0) for v in range(1, n + 1)], 1)
        cell.count, cell.sum, cell.min, cell.max = float(n), n * (n + 1) / 2, 1.0, float(n)
        cells.append(cell)
    expected = []
    for cell in cells:
        fresh = Cell()
        fresh.sketch, fresh.count, fresh.min, fresh.max = cell.sketch, cell.count, cell.min, cell.max
        expected.append(fresh.percentiles())
    prepare_percentiles(cells)
    assert [cell._percentiles for cell in cells] == [(c.count, e) for c, e in zip(cells, expected, strict=True)]
    assert [cell.percentiles() for cell in cells] == expected
    # A sample added after: the cache is keyed by the count, so it is not used.
    assert cells[0].sketch is not None
    cells[0].sketch.add(1000.0)
    cells[0].count += 1
    cells[0].max = 1000.0
    assert cells[0].percentiles() != expected[0]
    assert len(cells[0].percentiles()) == len(PERCENTILES)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(values, weights), max_size=30),
    st.lists(values, max_size=30),
    weights,
    st.booleans(),
    st.integers(min_value=1, max_value=5),
)
def test_merging_held_back_values_is_adding_them(
    before: list[tuple[float, float]], held: list[float], weight: float, settle_first: bool, parts: int
) -> None:
    """A slice's sketch (values add() held back, never read) merged into a window: the same
    buckets and the same encoding as merging it stored; the merged sketch is not changed."""

    def held_back() -> Sketch:
        part = Sketch()
        for value in held:
            part.add(value, weight)
        return part

    slices = [held_back() for _ in range(parts)]
    assert all(part._pending is not None for part in slices) or not held
    fast, slow, many, many_stored = (build(before, 1) for _ in range(4))
    if settle_first:
        fast._settle()  # a window read at the previous flush: stored, nothing held back
        many._settle()
    stored_slices = []
    for _ in slices:
        stored = held_back()
        stored._settle()  # the values in its buckets: the merge's other path
        stored_slices.append(stored)
    for part, stored in zip(slices, stored_slices, strict=True):
        fast.merge(part)
        slow.merge(stored)
    many.merge_many(slices)
    many_stored.merge_many(stored_slices)
    # merge and merge_many agree with each other only up to float rounding in float counts
    # (documented); each must agree exactly with itself on stored input.
    assert fast == slow
    assert fast.to_bytes() == slow.to_bytes()
    assert fast.quantiles(QS) == slow.quantiles(QS)
    assert many == many_stored
    assert many.to_bytes() == many_stored.to_bytes()
    alone = Sketch()
    for value in held:
        alone.add(value, weight)
    assert all(part == alone for part in slices)


def test_held_back_values_at_another_unit_merge_as_stored() -> None:
    """Integer counts at unit 1 meeting a slice at 1/0.3: the merge switches to float counts,
    whose sums depend on order; the held-back values must then merge as a stored sketch would
    (adding them one by one gave 3.33 + 3.33 where a merge adds 2 x 3.33)."""
    window = build([(5.0, 1.0), (-3.0, 1.0)], 1)
    window._settle()  # read at the previous flush
    part = build([(5.0, 1 / 0.3), (5.0, 1 / 0.3)], 1)
    stored = build([(5.0, 1 / 0.3), (5.0, 1 / 0.3)], 1)
    stored._settle()
    assert part._pending is not None
    expected = window.copy()
    expected.merge(stored)
    window.merge(part)
    assert window == expected
    assert window.to_bytes() == expected.to_bytes()


def test_many_leave_compact_sketches_compact() -> None:
    """A flush reads every open window's sketch: the grouped paths must answer a compact
    sketch (a few values, no stores) without giving it numpy stores, or each flush would undo
    the memory the compact form saves."""
    window = Sketch()
    window.merge(build([(3.0, 1.0), (7.0, 1.0)], 1))  # a rolled-up slice: a packed copy
    group = [window, build([(float(v), 1.0) for v in range(1, 61)], 1)]
    expected_q = [s.quantiles(QS) for s in group]
    expected_b = [s.to_bytes() for s in group]
    assert window._compact() is not None
    assert quantiles_many(group, QS) == expected_q
    assert encode_many(group) == expected_b
    assert window._compact() is not None
    assert not len(window._pos)
