"""Locale number formatting and unit names of the CSV report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from collectord.api.csv_report import csv_response, format_number
from collectord.api.units import UNIT_NAMES, UnitBook, canonical_unit, unit_name


@pytest.mark.parametrize(
    ("value", "pl", "en"),
    [
        (1234.56, "1\u00a0234,56", "1,234.56"),
        (1234567.5, "1\u00a0234\u00a0567,5", "1,234,567.5"),
        (-9876.125, "-9\u00a0876,125", "-9,876.125"),
        (12.0, "12", "12"),
        (0.0, "0", "0"),
        (-0.0, "0", "0"),
        (999.9999999, "1\u00a0000", "1,000"),
        (0.1, "0,1", "0.1"),
        (0.000012345678, "0,0000123457", "0.0000123457"),
        (1e15, "1\u00a0000\u00a0000\u00a0000\u00a0000\u00a0000", "1,000,000,000,000,000"),
        (float("inf"), "", ""),
    ],
)
def test_format_number(value: float, pl: str, en: str) -> None:
    assert format_number(value, "pl") == pl
    assert format_number(value, "en") == en


@pytest.mark.parametrize(
    ("written", "pl", "en"),
    [
        ("ms", "milisekundy", "milliseconds"),
        ("Milliseconds", "milisekundy", "milliseconds"),
        ("B", "bajty", "bytes"),
        ("bytes", "bajty", "bytes"),
        ("s", "sekundy", "seconds"),
        ("%", "procent", "percent"),
        ("req/s", "żądania na sekundę", "requests per second"),
        ("furlongs", "furlongs", "furlongs"),
        (None, "", ""),
    ],
)
def test_unit_names(written: str | None, pl: str, en: str) -> None:
    assert unit_name(written, "pl") == pl and unit_name(written, "en") == en


def test_every_canonical_unit_is_its_own_key() -> None:
    for key in UNIT_NAMES:
        assert canonical_unit(key) == key


def test_unit_book_survives_a_restart_and_rewrites_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "units.json"
    book = UnitBook(path)
    book.note("acme", "api.latency", "ms")
    written = path.stat().st_mtime_ns
    book.note("acme", "api.latency", "ms")
    assert path.stat().st_mtime_ns == written
    book.note("globex", "api.latency", "s")
    again = UnitBook(path)
    assert again.get("acme", "api.latency") == "ms" and again.get("globex", "api.latency") == "s"
    assert again.get("acme", "other") is None


def test_unit_book_ignores_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "units.json"
    path.write_text("{not json")
    assert UnitBook(path).units == {}
    path.write_text(json.dumps([["a", "b"]]))
    assert UnitBook(path).units == {}


def test_csv_in_polish_quotes_decimal_commas_and_names_units() -> None:
    row: dict[str, object] = {
        "metricName": "api.latency",
        "periodStart": "2026-11-27T18:00:00.000Z",
        "periodEnd": "2026-11-27T18:01:00.000Z",
        "count": 1500.0,
        "sum": 1234.56,
        "min": 0.5,
        "max": 812.0,
        "avg": 0.82304,
        "p50": None,
        "p90": None,
        "p95": None,
        "p99": None,
        "value": 1234.56,
        "tags": {"env": "prod"},
    }
    response = csv_response([row], "pl", lambda name: "ms")
    assert response.text is not None
    header, line = list(csv.reader(io.StringIO(response.text)))
    assert header[-2:] == ["unit", "env"]
    record = dict(zip(header, line, strict=True))
    assert record["count"] == "1\u00a0500" and record["sum"] == "1\u00a0234,56" and record["avg"] == "0,82304"
    assert record["unit"] == "milisekundy" and record["p99"] == "" and record["env"] == "prod"
    english = csv_response([row], "en", lambda name: None).text
    assert english is not None and '"1,234.56"' in english
