"""The flush view as line protocol: fields per type, tags, escaping, precision."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectord.aggregation.aggregator import FlushRecord
from collectord.aggregation.cells import Cell
from collectord.aggregation.series import Series
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM, KIND_SET, Tags
from collectord.sinks.influx_lines import PointEncoder, encode_points, escape_tag

T = 1_800_000_000


def record(kind: int, tags: Tags = (), name: str = "m", tenant: str = "acme", **cell: float) -> FlushRecord:
    series = Series(tenant, name, tags, kind, T)
    c = Cell()
    for key, value in cell.items():
        setattr(c, key, value)
    return FlushRecord(series, T, c)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain", "plain"),
        ("a b", r"a\ b"),
        ("a,b", r"a\,b"),
        ("a=b", r"a\=b"),
        ("line\nbreak", r"line\nbreak"),
        ("tab\there", r"tab\there"),
        ("C:\\dir\\", "C:\\dir\\\\"),
        ("C:\\dir\\x", "C:\\dir\\x"),
        ("a\\ b", "a\\\\\\ b"),
        ("żółw", "żółw"),
    ],
)
def test_escape_tag(text: str, escaped: str) -> None:
    assert escape_tag(text) == escaped


def test_counter_point_has_count_and_rate_and_sorted_tags() -> None:
    line = encode_points([record(KIND_COUNTER, (("z", "1"), ("a", "x y")), sum=20.0, count=3)], 10.0, "host-1")
    assert line == [b"m,a=x\\ y,source=host-1,tenant=acme,z=1 count=20.0,rate=2.0 1800000000"]


def test_series_tenant_and_source_tags_give_way_to_the_daemons() -> None:
    [line] = encode_points([record(KIND_GAUGE, (("tenant", "evil"), ("source", "x")), last=1.5)], 1.0, "h")
    assert line == b"m,source=h,tenant=acme value=1.5 1800000000"


def test_empty_tag_values_are_left_out_and_precision_scales_the_timestamp() -> None:
    [line] = encode_points([record(KIND_GAUGE, (("k", ""),), last=2.0)], 1.0, "h", precision="ms")
    assert line == b"m,source=h,tenant=acme value=2.0 1800000000000"


def test_gauge_without_a_finite_value_writes_no_point() -> None:
    assert encode_points([record(KIND_GAUGE, last=math.nan)], 1.0, "h") == []


def test_set_counts_members() -> None:
    rec = record(KIND_SET)
    rec.cell.members = {"a", "b", "c"}
    assert encode_points([rec], 1.0, "h") == [b"m,source=h,tenant=acme count=3.0 1800000000"]


def test_histogram_fields_are_the_nine_of_the_flush_view() -> None:
    cell = Cell.for_distribution()
    for value in (1.0, 2.0, 3.0, 4.0):
        cell.observe(value, 1.0)
    rec = FlushRecord(Series("acme", "rt", (), KIND_HISTOGRAM, T), T, cell)
    [line] = encode_points([rec], 1.0, "h")
    fields = dict(item.split(b"=") for item in line.split(b" ")[1].split(b","))
    assert list(fields) == [b"count", b"sum", b"min", b"max", b"mean", b"p50", b"p90", b"p95", b"p99"]
    assert (fields[b"count"], fields[b"sum"], fields[b"min"], fields[b"max"], fields[b"mean"]) == (
        b"4.0",
        b"10.0",
        b"1.0",
        b"4.0",
        b"2.5",
    )


def test_encoder_reuses_a_series_key_only_while_the_series_is_flushed() -> None:
    encoder = PointEncoder(1.0, "h")
    rec = record(KIND_GAUGE, last=1.0)
    assert encoder.encode([rec]) == encoder.encode([rec])
    encoder.encode([])
    assert encoder._keys == {}


@given(st.text(min_size=1, max_size=30))
def test_escaped_tag_value_never_breaks_a_line(value: str) -> None:
    [line] = encode_points([record(KIND_GAUGE, (("k", value),), last=1.0)], 1.0, "h")
    assert b"\n" not in line and b"\r" not in line
    # The key part ends at the first unescaped space: the fields follow it, intact.
    text = line.decode()
    i, spaces = 0, []
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == " ":
            spaces.append(i)
        i += 1
    assert len(spaces) == 2 and text[spaces[0] + 1 : spaces[1]] == "value=1.0"
