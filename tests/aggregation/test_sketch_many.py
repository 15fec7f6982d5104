"""quantiles_many and encode_many (a flush's thousands of sketches at once) give exactly what
Sketch.quantiles and Sketch.to_bytes give one by one: the same floats, the same bytes."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.cells import PERCENTILES, Cell, encode_distributions, prepare_percentiles
from collectord.aggregation.sketch import (
    COMPACT_MAX,
    Sketch,
    _CompactGroup,
    encode_many,
    quantiles_many,
    summaries_many,
)

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


# ------------------------------------------------------------ compact sketches, grouped

# Held-back values as a flush finds them: mixed signs, zeros and near-zeros (the zero bucket),
# NaN and +-inf (held, then ignored), duplicates, and magnitudes wide enough that one sketch's
# keys span more than the compact form allows (its group rejects it: one by one).
held_value = st.one_of(
    st.floats(min_value=1.0, max_value=100.0),
    st.floats(min_value=-100.0, max_value=-1.0),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e-8, max_value=1e-8),
    st.sampled_from([0.0, -0.0, 1e-9, -1e-9, 9.99e-10, 5e-324, 1e300, -1e-300, 1.7976931348623157e308]),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.integers(min_value=-3, max_value=3).map(float),  # duplicates
)
held_unit = st.sampled_from([1.0, 1.0, 1.0, 2.0, 0.5, 1 / 0.3, 0.7, 10.0, 1e15])


def held_back(values: list[float], unit: float, packed: bool) -> Sketch:
    """A compact sketch: values add() held back (a list), or a rolled-up copy of them (bytes)."""
    sketch = build([(v, unit) for v in values], 1)
    if not packed:
        return sketch
    window = Sketch()
    window.merge(sketch)
    return window


compact_sketches = st.builds(held_back, st.lists(held_value, max_size=COMPACT_MAX), held_unit, st.booleans())


def bits(rows: list[list[float | None]]) -> list[list[bytes | None]]:
    """Floats as their IEEE bytes: identity, not equality (0.0 == -0.0)."""
    return [[None if v is None else struct.pack("<d", v) for v in row] for row in rows]


def assert_grouped_match(group: list[Sketch]) -> None:
    was_compact = [s._compact() is not None for s in group]
    want_q = bits([s.quantiles(QS) for s in group])
    want_b = [s.to_bytes() for s in group]
    assert bits(quantiles_many(group, QS)) == want_q
    assert encode_many(group) == want_b
    quantiles, encodings = summaries_many(group, QS)
    assert bits(quantiles) == want_q
    assert encodings == want_b
    assert [s._compact() is not None for s in group] == was_compact  # reading grew nothing


@settings(max_examples=400, deadline=None)
@given(st.lists(compact_sketches, max_size=40))
def test_grouped_compact_sketches_match_one_by_one(group: list[Sketch]) -> None:
    assert_grouped_match(group)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(compact_sketches, sketches), max_size=30))
def test_grouped_compact_among_stored_sketches(group: list[Sketch]) -> None:
    assert_grouped_match(group)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            held_back,
            st.lists(st.floats(min_value=1.0, max_value=100.0), min_size=1, max_size=6),
            st.just(1.0),
            st.booleans(),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_grouped_compact_flush_shape(group: list[Sketch]) -> None:
    """The benchmark's shape: 1 to 6 values in [1, 100) at unit weight, groups of hundreds."""
    assert not _CompactGroup(group).others
    assert_grouped_match(group)


def test_group_rejects_what_compact_buckets_refuses() -> None:
    wide = held_back([1e-8, 1e300, 5.0], 1.0, True)  # keys ~35,800 apart: collapsing territory
    negative_wide = held_back([-1e-8, -1e300], 1.0, False)
    huge_int = Sketch()
    huge_int.add(10**400)  # type: ignore[arg-type]  # an int no float holds: one by one
    plain = held_back([3.0, -2.0, 0.0, 3.0], 2.0, True)
    empty = held_back([math.nan, math.inf], 1.0, False)
    group = [plain, wide, negative_wide, huge_int, empty, plain]
    assert _CompactGroup(group).others == [1, 2, 3]
    assert_grouped_match(group)
    assert quantiles_many([empty], QS) == [[None] * len(QS)]


def test_grouped_compact_of_a_single_value_and_the_empty() -> None:
    for value in (0.0, -0.0, 1e-10, 7.5, -7.5, 1e-9, -1e-9, 1.7976931348623157e308):
        for unit in (1.0, 0.5, 1e15):
            assert_grouped_match([held_back([value], unit, packed) for packed in (False, True)])
    assert_grouped_match([])


def test_encode_distributions_caches_percentiles_and_encodes() -> None:
    """The postgres sink's one pass: the encodings of encode_many, the percentiles (cached)
    of percentiles(), for compact, stored and empty cells alike."""
    cells = []
    for values in ([3.0], [1.0, 2.0, 2.0, -4.0], [float(v) for v in range(1, 61)], []):
        cell = Cell.for_distribution()
        for v in values:
            cell.observe(v, 1.0)
        cells.append(cell)
    want_b = [cell.sketch.to_bytes() for cell in cells if cell.sketch is not None]
    want_p = [Cell.percentiles(cell) for cell in cells]
    for cell in cells:
        cell._percentiles = None
    assert encode_distributions(cells) == want_b
    assert [cell._percentiles for cell in cells[:3]] == [
        (c.count, p) for c, p in zip(cells[:3], want_p[:3], strict=True)
    ]
    assert cells[3]._percentiles is None  # count 0: percentiles() answers without the sketch
    assert [cell.percentiles() for cell in cells] == want_p
    assert cells[0].sketch is not None and cells[0].sketch._compact() is not None
