"""GET /api/v1/query?format=csv through the real daemon: Polish and English numbers and units."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_report_in_polish_and_english(daemon: RunningDaemon) -> None:
    batch = {
        "metrics": [
            {"name": "csv.lat", "value": 1000.5, "type": "GAUGE", "unit": "ms"},
            {"name": "csv.lat", "value": 234.06, "type": "GAUGE", "unit": "ms"},
            {"name": "csv.size", "value": 2048, "type": "GAUGE", "unit": "bytes"},
            {"name": "csv.plain", "value": 1, "type": "GAUGE"},
        ]
    }
    assert daemon.post("/api/v1/metrics/batch", json.dumps(batch).encode(), JSON)[0] == 200
    query = "/api/v1/query?metric=csv.lat&metric=csv.size&metric=csv.plain&aggregation=SUM&granularity=1h&format=csv"
    status, text = daemon.get(query + "&locale=pl")
    assert status == 200
    polish = {row["metricName"]: row for row in rows(text)}
    assert polish["csv.lat"]["sum"] == "1\u00a0234,56" and polish["csv.lat"]["value"] == "1\u00a0234,56"
    assert polish["csv.lat"]["unit"] == "milisekundy"
    assert polish["csv.size"]["unit"] == "bajty" and polish["csv.size"]["max"] == "2\u00a0048"
    assert polish["csv.plain"]["unit"] == ""
    status, text = daemon.get(query + "&locale=en")
    english = {row["metricName"]: row for row in rows(text)}
    assert english["csv.lat"]["sum"] == "1,234.56" and english["csv.lat"]["unit"] == "milliseconds"
    # Without locale the request's language decides.
    _, text = daemon.get(query, {"Accept-Language": "pl"})
    assert rows(text)[0]["unit"] in ("milisekundy", "bajty", "")
    status, reply = daemon.get(query + "&locale=de")
    assert status == 400 and reply["error"]["code"] == "invalid_locale"


def test_units_survive_a_restart(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    body = json.dumps({"name": "csv.kept", "value": 1.5, "type": "GAUGE", "unit": "s"}).encode()
    assert daemon.post("/api/v1/metrics", body, JSON)[0] == 201
    assert daemon.stop() == 0
    daemon = start_daemon(tmp_path, ports=daemon.ports)
    try:
        _, text = daemon.get("/api/v1/query?metric=csv.kept&format=csv&locale=pl&start=-1h")
        assert rows(text)[0]["unit"] == "sekundy" and rows(text)[0]["value"] == "1,5"
    finally:
        assert daemon.stop() == 0
