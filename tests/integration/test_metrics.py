"""/metrics on the real daemon: every exposed family is in the docs/operations.md table (and
the table names nothing that is not exposed); HTTP requests are counted by route template and
final status; WAL, flush and process metrics are there."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import redis

from tests.integration.daemon import RunningDaemon, start_daemon
from tests.redis.conftest import REDIS_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent


def families(exposition: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, flags=re.MULTILINE))


def documented() -> dict[str, str]:
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = doc.split("## Metrics", 1)[1]
    return dict(re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|", table, flags=re.MULTILINE))


def sample(exposition: str, name: str, **labels: str) -> float:
    for line in exposition.splitlines():
        match = re.match(rf"^{name}(?:\{{(.*)\}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    raise AssertionError(f"no sample {name} {labels}")


def test_every_exposed_metric_is_documented(daemon: RunningDaemon) -> None:
    status, text = daemon.get("/metrics")
    assert status == 200
    exposed = families(text)
    table = documented()
    undocumented = sorted(set(exposed) - set(table))
    assert not undocumented, f"add to the table in docs/operations.md: {undocumented}"
    stale = sorted(set(table) - set(exposed))
    assert not stale, f"documented but not exposed: {stale}"
    wrong = {name: (table[name], kind) for name, kind in exposed.items() if table[name] != kind}
    assert not wrong, wrong


def test_http_requests_are_counted_by_route_template(daemon: RunningDaemon) -> None:
    for _ in range(3):
        daemon.get("/api/v1/series?metric=nothing")
    daemon.get("/no/such/path/123")
    daemon.get("/api/v1/query")  # no metric: a 400 from the error middleware
    _, text = daemon.get("/metrics")
    assert sample(text, "collectord_http_requests_total", route="/api/v1/series", status="200") == 3
    assert sample(text, "collectord_http_requests_total", route="unmatched", status="404") == 1
    assert sample(text, "collectord_http_requests_total", route="/api/v1/query", status="400") == 1
    assert "/no/such/path" not in text
    assert sample(text, "collectord_http_request_duration_seconds_count", route="/api/v1/series") == 3
    assert sample(text, "collectord_http_request_duration_seconds_bucket", route="/api/v1/series", le="+Inf") == 3


def test_ingest_wal_flush_and_process(daemon: RunningDaemon) -> None:
    daemon.send_udp(b"m.a:1|c\nm.b:2|g\nnot a line\n")
    daemon.wait_for(lambda: daemon.stats()["lines"] == 3)
    _, text = daemon.get("/metrics")
    assert sample(text, "collectord_lines_total", protocol="statsd") == 3
    assert (
        sum(float(v) for v in re.findall(r'^collectord_bad_lines_total\{protocol="statsd",[^}]*\} (\S+)$', text, re.M))
        == 1
    )
    assert sample(text, "collectord_series") == 2
    assert sample(text, "collectord_wal_healthy") == 1
    assert sample(text, "collectord_wal_records_appended_total") >= 1
    assert sample(text, "process_resident_memory_bytes") > 10 << 20
    assert sample(text, "collectord_build_info") == 1
    # One observation per flush cycle.
    flushes = sample(text, "collectord_flushes_total")
    assert sample(text, "collectord_flush_duration_seconds_count") == flushes
    assert sample(text, "collectord_flush_duration_seconds_bucket", le="+Inf") == flushes


def test_a_sink_write_duration_histogram_per_sink(tmp_path: Path) -> None:
    """The real Redis on 127.0.0.1:6379 under a key prefix of this test's own."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    prefix = f"t{uuid.uuid4().hex[:12]}"
    daemon = start_daemon(
        tmp_path, f'[redis]\nurl = "{REDIS_URL}"\nkey_prefix = "{prefix}"\nwrite_interval = "200ms"\n'
    )
    try:
        daemon.send_udp(b"sinkmetric.a:1|c\n")

        def written() -> float:
            _, text = daemon.get("/metrics")
            return sample(text, "collectord_sink_write_duration_seconds_count", sink="redis")

        assert daemon.wait_for(lambda: written() >= 1)
        _, text = daemon.get("/metrics")
        assert sample(text, "collectord_sink_connected", sink="redis") == 1
        count = sample(text, "collectord_sink_write_duration_seconds_count", sink="redis")
        assert sample(text, "collectord_sink_write_duration_seconds_bucket", sink="redis", le="+Inf") == count
        assert daemon.stop() == 0, daemon.log()
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
