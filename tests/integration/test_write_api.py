"""The record API and line protocol over HTTP, through the real daemon."""

from __future__ import annotations

import gzip
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


def test_single_record_is_acknowledged_and_visible_at_once(daemon: RunningDaemon) -> None:
    metric_id = str(uuid.uuid4())
    body = {"id": metric_id, "name": "api.rec", "value": 12.5, "type": "GAUGE", "tags": {"env": "prod"}, "unit": "ms"}
    status, reply = daemon.post("/api/v1/metrics", json.dumps(body).encode(), JSON)
    assert status == 201 and reply == {"metricId": metric_id}
    assert daemon.get("/api/v1/realtime?metric=api.rec&tag=env:prod")[1]["value"] == 12.5


def test_batch_keeps_valid_items_and_names_each_failure(daemon: RunningDaemon) -> None:
    items = [
        {"name": "batch.ok", "value": 1, "type": "COUNTER"},
        {"name": "9bad", "value": 1, "type": "COUNTER", "id": "b6c9b9a6-3f57-4a0a-9d3b-1f1f0e5c2a11"},
        {"name": "batch.ok", "value": 2, "type": "COUNTER", "timestamp": "2099-01-01T00:00:00"},
        {"name": "batch.ok", "value": 3, "type": "COUNTER"},
        {"name": "batch.ok", "value": "x", "type": "COUNTER"},
        {"name": "batch.ok", "value": 1, "type": "WRONG"},
        {"name": "batch.ok", "value": 1, "type": "GAUGE", "tags": {f"k{i}": "v" for i in range(21)}},
    ]
    status, reply = daemon.post("/api/v1/metrics/batch", json.dumps({"metrics": items}).encode(), JSON)
    assert status == 200
    assert len(reply["successful"]) == 2
    failed = {f["index"]: f for f in reply["failed"]}
    assert sorted(failed) == [1, 2, 4, 5, 6]
    assert failed[1]["id"] == items[1]["id"] and "name" in failed[1]["error"]
    assert "timestamp" in failed[2]["error"]
    assert "value" in failed[4]["error"] and "type" in failed[5]["error"] and "tags" in failed[6]["error"]
    assert daemon.total("batch.ok") == 4.0
    assert failed[1]["field"] == "name" and failed[6]["field"] == "tags"


def test_batch_failures_in_polish_and_the_time_window(daemon: RunningDaemon) -> None:
    items = [
        {"name": "pl.ok", "value": 1, "type": "GAUGE", "timestamp": int(time.time() * 1000)},
        {"name": "pl ok", "value": 1, "type": "GAUGE", "id": "0b0c4e9e-4a5e-4b8e-9a43-2f1c7e0f3d11"},
        {"name": "pl.ok", "value": 1, "type": "GAUGE", "timestamp": "2001-01-01T00:00:00Z"},
        {"name": "pl.ok", "type": "GAUGE"},
        ["not", "an", "object"],
    ]
    headers = {**JSON, "Accept-Language": "pl-PL,pl;q=0.9,en;q=0.5"}
    status, reply = daemon.post("/api/v1/metrics/batch", json.dumps({"metrics": items}).encode(), headers)
    assert status == 200 and len(reply["successful"]) == 1
    failed = reply["failed"]
    assert [f["index"] for f in failed] == [1, 2, 3, 4]
    assert failed[0]["id"] == "0b0c4e9e-4a5e-4b8e-9a43-2f1c7e0f3d11"
    assert failed[0]["error"].startswith("name: Nieprawidłowa nazwa metryki")
    assert failed[1]["error"].startswith("timestamp: poza dopuszczalnym oknem")
    assert failed[2]["error"] == "value: brak wymaganego pola"
    assert failed[3]["error"] == "metryka musi być obiektem JSON" and failed[3]["id"] is None
    status, reply = daemon.post("/api/v1/metrics", json.dumps(items[1]).encode(), headers)
    assert status == 400 and reply["error"]["code"] == "invalid_metric"
    assert reply["error"]["message"].startswith("Nieprawidłowa metryka: name: Nieprawidłowa nazwa metryki")
    assert reply["error"]["details"]["field"] == "name"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "invalid_batch"),
        (b'{"metrics": []}', "invalid_batch"),
        (json.dumps({"metrics": [{"name": "a", "value": 1, "type": "GAUGE"}] * 501}).encode(), "invalid_batch"),
        (b'[{"name": "a"}]', "invalid_batch"),
        (b'{"metrics": {"name": "a"}}', "invalid_batch"),
        (b'{"metrics": [], "extra": 1}', "invalid_batch"),
        (b"", "invalid_batch"),
        (b'{"metrics": [{"name": "a", "value": 1, "type": "GAUGE"}]', "invalid_batch"),
    ],
)
def test_bad_batches_are_400_and_store_nothing(daemon: RunningDaemon, body: bytes, code: str) -> None:
    status, reply = daemon.post("/api/v1/metrics/batch", body, {**JSON, "Accept-Language": "pl"})
    assert status == 400 and reply["error"]["code"] == code
    assert reply["error"]["message"].startswith("Nieprawidłowa paczka")
    assert daemon.stats()["aggregation"]["samples"] == 0


def test_oversized_body_is_413_in_the_error_shape(daemon: RunningDaemon) -> None:
    status, reply = daemon.post("/api/v1/metrics/batch", b"x" * (5 * 1024 * 1024), JSON)
    assert status == 413 and reply["error"]["code"] == "body_too_large"


def test_line_protocol_over_http_like_influxdb(daemon: RunningDaemon) -> None:
    status, _ = daemon.post("/api/v2/write?org=o&bucket=b&precision=s", b"http.cpu,host=a usage=10 1700000000\n")
    assert status == 204
    status, reply = daemon.post(
        "/api/v2/write?precision=ns", b"http.mem,host=a used=1\nthis is not a line\nhttp.mem,host=b used=2\n"
    )
    assert status == 400 and reply["error"]["details"]["line"] == 2
    assert daemon.total("http.mem.used") == 3.0  # the good lines were kept
    compressed = gzip.compress(b"http.gz value=5\n")
    status, _ = daemon.post("/write?db=x&precision=n", compressed, {"Content-Encoding": "gzip"})
    assert status == 204
    assert daemon.total("http.gz") == 5.0
    status, reply = daemon.post(
        "/write", b"\x1f\x8bnot gzip at all", {"Content-Encoding": "gzip", "Accept-Language": "pl"}
    )
    assert status == 400 and reply["error"]["code"] == "invalid_body"
    assert reply["error"]["message"].startswith("Nie można odczytać treści żądania")
    bomb = gzip.compress(b"http.bomb value=1\n" * 300_000)  # 5 MiB unpacked from 20 KiB
    status, reply = daemon.post("/api/v2/write", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and reply["error"]["code"] == "body_too_large"
    assert daemon.total("http.bomb") == 0.0
    status, reply = daemon.post("/api/v2/write?precision=minutes", b"http.x value=1\n")
    assert status == 400 and reply["error"]["code"] == "invalid_precision"


def test_writes_are_rate_limited_per_token(tmp_path: Path) -> None:
    def sha(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    config = f"""
[auth]
write_rate = 100.0

[[auth.tokens]]
sha256 = "{sha("slow")}"
tenant = "acme"
role = "writer"
write_rate = 1.0
write_burst = 3

[[auth.tokens]]
sha256 = "{sha("fast")}"
tenant = "acme"
role = "writer"

[[auth.tokens]]
sha256 = "{sha("look")}"
tenant = "acme"
role = "reader"
"""
    daemon = start_daemon(tmp_path, config)
    try:
        slow = {**JSON, "Authorization": "Bearer slow", "Accept-Language": "pl"}
        body = json.dumps({"name": "rl.x", "value": 1, "type": "COUNTER"}).encode()
        assert [daemon.post("/api/v1/metrics", body, slow)[0] for _ in range(3)] == [201, 201, 201]
        request = urllib.request.Request(daemon.url("/api/v1/metrics"), data=body, headers=slow, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 429
        assert refused.value.headers["Retry-After"] == "1"
        reply = json.loads(refused.value.read())
        assert reply["error"]["code"] == "rate_limited"
        assert reply["error"]["message"].startswith("Ten token może zapisywać 1 razy na sekundę")
        # Line protocol counts against the same bucket; other tokens and reads are not limited.
        assert daemon.post("/api/v2/write", b"rl.x value=1\n", slow)[0] == 429
        fast = {**JSON, "Authorization": "Bearer fast"}
        assert daemon.post("/api/v1/metrics", body, fast)[0] == 201
        reads = [daemon.get("/api/v1/realtime?metric=rl.x", {"Authorization": "Bearer look"})[0] for _ in range(5)]
        assert reads == [200] * 5
        time.sleep(1.05)
        assert daemon.post("/api/v1/metrics", body, slow)[0] == 201
        # Refused writes stored nothing: 3 + 1 (fast) + 1.
        assert daemon.get("/api/v1/realtime?metric=rl.x", {"Authorization": "Bearer look"})[1]["value"] == 5.0
    finally:
        assert daemon.stop() == 0
