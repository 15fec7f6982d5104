"""merge_encoded: many stored sketches merged straight from their bytes must give exactly the
buckets decoding and merging them one by one gives, and refuse what from_bytes refuses."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.aggregation.sketch import Sketch, SketchDecodeError, merge_encoded

values = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
weights = st.sampled_from([1.0, 1.0, 1.0, 10.0, 1 / 0.3, 2.5])


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    sketch = Sketch()
    for value, weight in draw(st.lists(st.tuples(values, weights), max_size=30)):
        sketch.add(value, weight)
    if draw(st.booleans()):
        sketch.add(draw(values), draw(st.sampled_from([1.0, 70_000.0, 5e9])))
    return sketch.to_bytes()


@settings(max_examples=200, deadline=None)
@given(st.lists(encoded(), max_size=8))
def test_same_buckets_as_decoding_and_merging(blobs: list[bytes]) -> None:
    expected = Sketch()
    for blob in blobs:
        expected.merge(Sketch.from_bytes(blob))
    merged = merge_encoded(blobs)
    if all(not blob[1] & 1 for blob in blobs):  # integer counts: exactly the same buckets
        assert merged == expected
        assert merged.quantiles((0.5, 0.99)) == expected.quantiles((0.5, 0.99))
    else:  # float counts add in another order: equal up to rounding
        assert math.isclose(merged.count, expected.count, rel_tol=1e-12)
        for got, want in zip(merged.quantiles((0.5, 0.99)), expected.quantiles((0.5, 0.99)), strict=True):
            assert got is not None and want is not None and math.isclose(got, want, rel_tol=1e-9)


def test_memoryviews_and_empty_input() -> None:
    sketch = Sketch()
    sketch.add_many([1.0, 2.0, 3.0])
    assert merge_encoded([memoryview(sketch.to_bytes())]) == sketch
    assert merge_encoded([]).is_empty()


@settings(max_examples=300, deadline=None)
@given(encoded(), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_encodings_raise_decode_errors_only(blob: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(blob)
    for at, byte in edits:
        if at < len(data):
            data[at] = byte
        else:
            data.append(byte)
    try:
        expected: Sketch | None = Sketch.from_bytes(bytes(data))
    except SketchDecodeError:
        expected = None
    if expected is None:
        with pytest.raises(SketchDecodeError):
            merge_encoded([bytes(data)])
    else:
        assert merge_encoded([bytes(data)]) == expected


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01\x00", b"\x02\x00\x00\x00\x00", b"\x01\x00\x00\x01\x02\x01\x05"])
def test_hostile_bytes(blob: bytes) -> None:
    with pytest.raises(SketchDecodeError):
        merge_encoded([blob])
