"""Merging many sketches or cells at once equals merging them one by one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.cells import Cell
from collectord.aggregation.sketch import Sketch

values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.lists(values, max_size=40), st.sampled_from([1.0, 10.0, 2.0, 1 / 0.3])), max_size=30),
    st.lists(values, max_size=10),
)
def test_merge_many_equals_sequential_merges(groups: list[tuple[list[float], float]], base: list[float]) -> None:
    sketches = []
    for group, weight in groups:
        sketch = Sketch()
        for value in group:
            sketch.add(value, weight)
        sketches.append(sketch)
    one_by_one, at_once = Sketch(), Sketch()
    for value in base:
        one_by_one.add(value)
        at_once.add(value)
    for sketch in sketches:
        one_by_one.merge(sketch)
    at_once.merge_many(sketches)
    if len({weight for _, weight in groups} | ({1.0} if base else set())) <= 1:
        # Integer counts in one unit: exactly the same buckets, so the same quantiles.
        assert at_once == one_by_one
        qs = [0.0, 0.5, 0.9, 0.99, 1.0]
        assert at_once.quantiles(qs) == one_by_one.quantiles(qs)
    # Mixed fractional rates make counts floats: the same total up to rounding.
    assert abs(at_once.count - one_by_one.count) <= 1e-12 * max(1.0, one_by_one.count)


def test_cell_merge_all_equals_merge() -> None:
    parts = []
    for i in range(50):
        cell = Cell.for_distribution()
        for j in range(20):
            cell.observe(float(i * 20 + j + 1), 1.0)
        parts.append(cell)
    together, apart = Cell.for_distribution(), Cell.for_distribution()
    together.merge_all(parts)
    for part in parts:
        apart.merge(part)
    assert (together.count, together.sum, together.min, together.max, together.last) == (
        apart.count,
        apart.sum,
        apart.min,
        apart.max,
        apart.last,
    )
    assert together.sketch == apart.sketch
    assert together.percentiles() == apart.percentiles()
