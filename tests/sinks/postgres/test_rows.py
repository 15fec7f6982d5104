"""Aggregate rows in binary COPY form: the one-pack path for plain cells (counters, gauges) is
byte for byte the field-by-field encoding."""

from __future__ import annotations

import math
import struct

import pytest

from collectord.aggregation.cells import Cell
from collectord.model import MetricType
from collectord.sinks.postgres import copy
from collectord.sinks.postgres.rows import AggregateRows

START = 1_800_000_000


def field_by_field(prefix: bytes, cell: Cell) -> bytes:
    """count and sum are NOT NULL columns (packed as they are); the rest NULL when not finite."""
    f8 = copy.float8
    raw = struct.Struct(">id").pack
    return b"".join(
        (
            prefix,
            copy.text("1m"),
            copy.timestamp(START),
            copy.timestamp(START + 60),
            raw(8, cell.count),
            raw(8, cell.sum),
            f8(cell.min),
            f8(cell.max),
            f8(cell.sum / cell.count) if cell.count else copy.NULL,
            copy.NULL * 4,
            f8(cell.last),
            copy.NULL,
            copy.NULL,
        )
    )


@pytest.mark.parametrize(
    "values",
    [[1.0], [2.5, -3.0, 1e300], [0.0, 0.0], [math.inf], [math.nan, 1.0], [-math.inf, 5.0], [1e308, 1e308]],
)
def test_plain_cells_encode_as_field_by_field(values: list[float]) -> None:
    prefix = AggregateRows("host-a").prefix("acme", "hits", (("k", "v"),), MetricType.COUNTER)
    cell = Cell()
    for value in values:
        cell.observe(value, 1.0)
    assert AggregateRows.row(prefix, 1, START, 60, cell, False) == field_by_field(prefix, cell)
