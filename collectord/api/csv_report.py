"""The query answer as a CSV report, numbers and unit names in the reader's locale.

`pl` writes 1 234,56 (U+00A0 between thousands, a decimal comma) and Polish unit names; `en`
writes 1,234.56. Fields holding the separator are quoted, so any CSV reader splits them right.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable

from aiohttp import web

from collectord.api.units import unit_name

CSV_COLUMNS = (
    "metricName",
    "periodStart",
    "periodEnd",
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "p50",
    "p90",
    "p95",
    "p99",
    "value",
)
NBSP = "\u00a0"
# Decimals kept: enough for any measurement, few enough to read.
MAX_DECIMALS = 6


def format_number(value: float, locale: str) -> str:
    if not math.isfinite(value):
        return ""
    magnitude = abs(value)
    decimals = MAX_DECIMALS
    if 0 < magnitude < 1e-3:
        # Small values keep six significant digits rather than rounding to zero.
        decimals = min(20, MAX_DECIMALS - 1 - math.floor(math.log10(magnitude)))
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    if locale == "pl":
        return text.replace(",", NBSP).replace(".", ",")
    return text


def csv_response(rows: list[dict[str, object]], locale: str, unit_of: Callable[[str], str | None]) -> web.Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    tag_keys = sorted({key for row in rows for key in row["tags"]})  # type: ignore[attr-defined]
    writer.writerow([*CSV_COLUMNS, "unit", *tag_keys])
    for row in rows:
        tags: dict[str, str] = row["tags"]  # type: ignore[assignment]
        cells = [_cell(row[column], locale) for column in CSV_COLUMNS]
        unit = unit_name(unit_of(str(row["metricName"])), locale)
        writer.writerow([*cells, unit, *(tags.get(key, "") for key in tag_keys)])
    response = web.Response(text=buffer.getvalue(), content_type="text/csv", charset="utf-8")
    response.headers["Content-Language"] = locale
    return response


def _cell(value: object, locale: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return format_number(float(value), locale)
