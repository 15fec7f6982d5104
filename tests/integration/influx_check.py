"""Helpers for checking the InfluxDB sink against VictoriaMetrics: a StatsD load, the sink's
status, and the exactness check that tests and benchmarks/sinks.py share (see
tests/integration/test_influx_sink.py for what "exact" means)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from tests.integration.daemon import RunningDaemon
from tests.integration.victoria import Exported, export

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
    field = name.rsplit("_", 1)[1]
    for (metric, labels), samples in points.items():
        tags = dict(labels)
        if metric != name:
            continue
        assert tags["source"] == source and tags["tenant"] == "default", tags
        for ms, value in samples:
            out[(tags["k"], minute(ms))][field].append(value)
    return out


def _resends_collapsed(samples: list[tuple[int, float]], where: str) -> list[tuple[int, float]]:
    """One point per timestamp, where a re-sent batch left the same point twice (InfluxDB
    overwrites it; VictoriaMetrics without dedup keeps both): equal values only."""
    seen: dict[int, float] = {}
    for ms, value in samples:
        assert seen.setdefault(ms, value) == value, f"two different values at {ms} in {where}"
    return sorted(seen.items())


def assert_exact(
    daemon: RunningDaemon, vm_url: str, prefix: str, source: str, load: Load, resends: bool = False
) -> Exported:
    """`resends`: a kill -9 between the server accepting a batch and the spool recording it
    sends that batch again after the restart (at-least-once: the documented window); the
    repeated points must be the very same points, and are then counted once."""
    points = export(vm_url, f'{{source="{source}"}}')
    assert points, "nothing arrived"
    if resends:
        points = {key: _resends_collapsed(samples, f"{key[0]} {key[1]}") for key, samples in points.items()}
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
