"""The InfluxDB sink against real VictoriaMetrics (its /api/v2/write): what the daemon flushed
arrives exactly once, across outages of the server and a kill -9 of the daemon during one.

"Exactly" is checked two ways. Every point VictoriaMetrics holds is aligned to a slice, no
series has two samples at one timestamp (the instances run without deduplication, so a point
sent twice would show), and every counter rate is its count over the interval. And per minute
and per series, the slices' counts, sums, minima and maxima add up to the daemon's own 1-minute
window, which it builds from the same samples independently of any sink: a lost or a doubled
slice would break the equality.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import RunningDaemon, start_daemon
from tests.integration.victoria import Exported, PrivateVictoria, export, require_shared

pytestmark = pytest.mark.integration

INTERVAL = 1
OUTAGE_SECONDS = float(os.environ.get("INFLUX_OUTAGE_SECONDS", "6"))
KEYS = ("a", "b", "c")


def sink_config(url: str, source: str, extra: str = "") -> str:
    return f"""
checkpoint_interval = "2s"

[aggregate]
flush_interval = "{INTERVAL}s"

[instance]
name = "{source}"

[influx]
url = "{url}"
org = "collectord"
bucket = "tests"
retry_max = "1s"
timeout = "2s"
{extra}
"""


class Load(threading.Thread):
    """Sends StatsD datagrams until stopped: counters and histograms under three tag values, a
    gauge and a set. Remembers the last gauge value sent."""

    def __init__(self, daemon: RunningDaemon, prefix: str, lines_per_datagram: int = 20, pause: float = 0.005):
        super().__init__(daemon=True)
        self.port = daemon.statsd
        self.prefix = prefix
        self.lines = lines_per_datagram
        self.pause = pause
        self.running = True
        self.sent = 0
        self.last_gauge = 0

    def run(self) -> None:
        p = self.prefix
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            i = 0
            while self.running:
                out = []
                for _ in range(self.lines // 4):
                    i += 1
                    key = KEYS[i % 3]
                    out.append(f"{p}.c:1|c|#k:{key}")
                    out.append(f"{p}.h:{i % 100}|ms|#k:{key}")
                    out.append(f"{p}.g:{i}|g")
                    out.append(f"{p}.s:{i % 13}|s")
                sock.sendto("\n".join(out).encode(), ("127.0.0.1", self.port))
                self.last_gauge = i
                self.sent += len(out)
                time.sleep(self.pause)

    def stop(self) -> None:
        self.running = False
        self.join(timeout=10)


def influx_status(daemon: RunningDaemon) -> dict[str, Any]:
    return dict(daemon.stats()["sinks"]["influx"])


def wait_written(daemon: RunningDaemon, timeout: float = 60.0) -> dict[str, Any]:
    """After the load stopped: the last slice has closed and the spool is empty."""
    time.sleep(INTERVAL + 1.5)
    return dict(daemon.wait_for(lambda: (s := influx_status(daemon))["queued"] == 0 and s, timeout=timeout))


def minute(ms: int) -> int:
    return ms // 60_000 * 60


def daemon_minutes(daemon: RunningDaemon, metric: str) -> dict[tuple[str, int], dict[str, float]]:
    """The daemon's own 1-minute windows per value of tag k: count, sum, min, max."""
    status, body = daemon.get(
        f"/api/v1/query?metric={metric}&start=-1h&end=now&granularity=1m&aggregation=SUM&group_by=k&limit=10000"
    )
    assert status == 200, body
    out = {}
    for row in body["data"]:
        start = int(datetime.fromisoformat(row["periodStart"].replace("Z", "+00:00")).timestamp())
        out[(row["tags"]["k"], start)] = {k: float(row[k]) for k in ("count", "sum", "min", "max")}
    return out


def vm_minutes(points: Exported, name: str, source: str) -> dict[tuple[str, int], dict[str, list[float]]]:
    """VictoriaMetrics' points of `name` (measurement_field) grouped per value of k and minute."""
    out: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    measurement, field = name.rsplit("_", 1)
    for (metric, labels), samples in points.items():
        tags = dict(labels)
        if metric != name:
            continue
        assert tags["source"] == source and tags["tenant"] == "default", tags
        for ms, value in samples:
            out[(tags["k"], minute(ms))][field].append(value)
    return out


def assert_exact(daemon: RunningDaemon, vm_url: str, prefix: str, source: str, load: Load) -> Exported:
    points = export(vm_url, f'{{source="{source}"}}')
    assert points, "nothing arrived"
    for (metric, labels), samples in points.items():
        stamps = [ms for ms, _ in samples]
        assert len(stamps) == len(set(stamps)), f"duplicate points in {metric} {labels}"
        assert all(ms % (INTERVAL * 1000) == 0 for ms in stamps), f"unaligned points in {metric}"
        assert metric.startswith(prefix), metric
    # Counters: per minute, the slices' counts add up to the daemon's window; rate = count / interval.
    expected = daemon_minutes(daemon, f"{prefix}.c")
    got = vm_minutes(points, f"{prefix}.c_count", source)
    assert {key: sum(v["count"]) for key, v in got.items()} == {key: w["sum"] for key, w in expected.items()}
    counts = {(labels, ms): v for (m, labels), s in points.items() if m == f"{prefix}.c_count" for ms, v in s}
    rates = {(labels, ms): v for (m, labels), s in points.items() if m == f"{prefix}.c_rate" for ms, v in s}
    assert rates.keys() == counts.keys()
    assert all(rates[key] == counts[key] / INTERVAL for key in counts)
    # Histograms: count, sum, min and max per minute.
    expected = daemon_minutes(daemon, f"{prefix}.h")
    got = defaultdict(dict)
    for field in ("count", "sum", "min", "max"):
        for key, fields in vm_minutes(points, f"{prefix}.h_{field}", source).items():
            got[key][field] = fields[field]
    summary = {
        key: {"count": sum(f["count"]), "sum": sum(f["sum"]), "min": min(f["min"]), "max": max(f["max"])}
        for key, f in got.items()
    }
    assert summary == expected
    # Every histogram point has all nine fields, its percentiles within its extremes.
    by_point: dict[tuple[Any, int], dict[str, float]] = defaultdict(dict)
    for (metric, labels), samples in points.items():
        if metric.startswith(f"{prefix}.h_"):
            for ms, value in samples:
                by_point[(labels, ms)][metric.rsplit("_", 1)[1]] = value
    for fields in by_point.values():
        assert set(fields) == {"count", "sum", "min", "max", "mean", "p50", "p90", "p95", "p99"}
        assert fields["min"] <= fields["p50"] <= fields["p90"] <= fields["p95"] <= fields["p99"] <= fields["max"]
    # The gauge's newest point is the last value sent; sets count at most their 13 members.
    gauge = points[(f"{prefix}.g_value", (("source", source), ("tenant", "default")))]
    assert gauge[-1][1] == load.last_gauge
    for (metric, _), samples in points.items():
        if metric == f"{prefix}.s_count":
            assert all(1 <= value <= 13 for _, value in samples)
    return points


def test_flush_view_reaches_victoriametrics(tmp_path: Path) -> None:
    url = require_shared()
    uid = uuid.uuid4().hex[:10]
    prefix, source = f"ix{uid}", f"src-{uid}"
    daemon = start_daemon(tmp_path, sink_config(url, source))
    try:
        load = Load(daemon, prefix)
        load.start()
        time.sleep(3)
        load.stop()
        # Tags that line protocol must escape, through the HTTP API.
        status, _ = daemon.post(
            "/api/v1/metrics",
            b'{"name": "' + prefix.encode() + b'.odd", "value": 2, "type": "GAUGE", '
            b'"tags": {"k": "a b,c=d", "path": "C:\\\\dir\\\\"}}',
            {"Content-Type": "application/json"},
        )
        assert status == 201
        status_doc = wait_written(daemon)
        assert status_doc["written"] > 0 and status_doc["errors"] == 0 and status_doc["dropped"] == 0
        points = assert_exact(daemon, url, prefix, source, load)
        odd = [labels for (metric, labels) in points if metric == f"{prefix}.odd_value"]
        assert odd == [(("k", "a b,c=d"), ("path", "C:\\dir\\"), ("source", source), ("tenant", "default"))]
        assert not any((tmp_path / "data" / "spool" / "influx").glob("*.lp")), "spool not emptied"
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_outage_under_load_is_exact(tmp_path: Path) -> None:
    vm = PrivateVictoria(tmp_path / "vm")
    vm.start()
    uid = uuid.uuid4().hex[:10]
    prefix, source = f"ix{uid}", f"src-{uid}"
    daemon = start_daemon(tmp_path, sink_config(vm.url, source))
    try:
        load = Load(daemon, prefix)
        load.start()
        time.sleep(3)
        vm.stop()
        time.sleep(OUTAGE_SECONDS)
        during = influx_status(daemon)
        assert not during["connected"] and during["queued"] > 0 and during["spoolFlushes"] >= 2, during
        assert daemon.get("/readyz")[0] == 200
        vm.start()
        time.sleep(3)
        load.stop()
        after = wait_written(daemon)
        assert after["connected"] and after["dropped"] == 0 and after["retries"] > 0, after
        assert_exact(daemon, vm.url, prefix, source, load)
    finally:
        assert daemon.stop() == 0, daemon.log()
        vm.stop()


def test_kill_during_outage_loses_and_doubles_nothing(tmp_path: Path) -> None:
    vm = PrivateVictoria(tmp_path / "vm")
    vm.start()
    uid = uuid.uuid4().hex[:10]
    prefix, source = f"ix{uid}", f"src-{uid}"
    config = sink_config(vm.url, source)
    daemon = start_daemon(tmp_path, config)
    try:
        load = Load(daemon, prefix)
        load.start()
        time.sleep(3)
        vm.stop()
        time.sleep(OUTAGE_SECONDS / 2)
        daemon.kill()
        daemon = start_daemon(tmp_path, config, ports=daemon.ports)
        time.sleep(OUTAGE_SECONDS / 2)
        assert influx_status(daemon)["queued"] > 0
        vm.start()
        time.sleep(3)
        load.stop()
        after = wait_written(daemon)
        assert after["dropped"] == 0, after
        assert_exact(daemon, vm.url, prefix, source, load)
    finally:
        assert daemon.stop() == 0, daemon.log()
        vm.stop()


def test_refused_batches_are_counted_set_aside_and_not_retried(tmp_path: Path) -> None:
    url = require_shared()
    uid = uuid.uuid4().hex[:10]
    token = f"sekret-{uid}"
    # VictoriaMetrics answers 400 "unsupported path requested" under an unknown prefix.
    daemon = start_daemon(tmp_path, sink_config(f"{url}/nowhere", f"src-{uid}", f'token = "{token}"'))
    try:
        daemon.send_udp(f"ix{uid}.c:1|c\nix{uid}.h:5|ms".encode())
        status = daemon.wait_for(lambda: (s := influx_status(daemon))["errors"] > 0 and s, timeout=20)
        time.sleep(2)  # the sender moved on and does not come back to the refused batch
        status = influx_status(daemon)
        assert status["queued"] == 0 and status["retries"] == 0, status
        assert status["dropped"] == status["rejectedPoints"] > 0
        assert status["errors"] == len(list((tmp_path / "data" / "spool" / "influx" / "rejected").glob("*.lp")))
        assert "HTTP 400" in status["lastError"]
        assert daemon.get("/readyz")[0] == 200
        log = daemon.log()
        assert "InfluxDB refused a batch for good" in log and f"ix{uid}." in log
        assert token not in log
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_unauthorized_keeps_the_spool_until_the_server_takes_it(tmp_path: Path) -> None:
    vm = PrivateVictoria(tmp_path / "vm")
    vm.start("-httpAuth.username=collectord", "-httpAuth.password=right")
    uid = uuid.uuid4().hex[:10]
    prefix, source = f"ix{uid}", f"src-{uid}"
    daemon = start_daemon(tmp_path, sink_config(vm.url, source, 'token = "wrong"\nauth_retry = "1s"'))
    try:
        load = Load(daemon, prefix, pause=0.02)
        load.start()
        daemon.wait_for(lambda: influx_status(daemon)["errors"] >= 2, timeout=20)
        status = influx_status(daemon)
        assert "HTTP 401" in status["lastError"] and status["queued"] > 0 and status["dropped"] == 0, status
        vm.stop()
        vm.start()  # the operator fixed it
        time.sleep(2)
        load.stop()
        wait_written(daemon)
        assert_exact(daemon, vm.url, prefix, source, load)
    finally:
        assert daemon.stop() == 0, daemon.log()
        vm.stop()


def test_kill_while_sending_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """kill -9 at random moments with the server up: the flushes the restart replays from the
    log were sent already (their spool files deleted) and must not be sent again."""
    url = require_shared()
    uid = uuid.uuid4().hex[:10]
    prefix, source = f"ix{uid}", f"src-{uid}"
    config = sink_config(url, source)
    daemon = start_daemon(tmp_path, config)
    rng = random.Random(uid)
    try:
        load = Load(daemon, prefix)
        load.start()
        for _ in range(3):
            time.sleep(rng.uniform(2.5, 4.0))
            daemon.kill()
            daemon = start_daemon(tmp_path, config, ports=daemon.ports)
        time.sleep(2)
        load.stop()
        after = wait_written(daemon)
        assert after["dropped"] == 0, after
        assert_exact(daemon, url, prefix, source, load)
    finally:
        assert daemon.stop() == 0, daemon.log()
