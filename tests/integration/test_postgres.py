"""The PostgreSQL sink end to end: real daemons (subprocesses) against the real PostgreSQL 15
on 127.0.0.1:5432, each test in its own database. Needs: PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integration.daemon import RunningDaemon, start_daemon
from tests.integration.pg import Proxy, fresh_database, query


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    with fresh_database() as dsn:
        yield dsn


def home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def pg_config(dsn: str, name: str, extra: str = "") -> str:
    return f"""
checkpoint_interval = "2s"

[aggregate]
flush_interval = "1s"

[instance]
name = "{name}"

[postgres]
dsn = "{dsn}"
{extra}
"""


def send_tcp(daemon: RunningDaemon, lines: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", daemon.statsd)) as sock:
        sock.sendall(("\n".join(lines) + "\n").encode())


def sink_status(daemon: RunningDaemon) -> dict[str, Any]:
    return dict(daemon.stats()["sinks"]["postgres"])


def caught_up(daemon: RunningDaemon) -> bool:
    status = sink_status(daemon)
    return bool(status["connected"]) and status["queued"] == 0


def test_three_sources_merge_into_one_fleet_answer(tmp_path: Path, pg_dsn: str) -> None:
    daemons = [start_daemon(home(tmp_path / n), pg_config(pg_dsn, n)) for n in ("src-a", "src-b", "src-c")]
    try:
        rng = random.Random(5)
        everything: list[float] = []
        by_group: dict[str, list[float]] = {}
        for daemon in daemons:
            lines = []
            for _ in range(3000):
                group = f"g{rng.randrange(20)}"
                value = round(rng.lognormvariate(3, 1), 3)
                everything.append(value)
                by_group.setdefault(group, []).append(value)
                lines.append(f"fleet.lat:{value}|ms|#grp:{group},quote:it's")
            send_tcp(daemon, lines)
        first = daemons[0]

        def merged() -> Any:
            status, body = first.get("/api/v1/query?metric=fleet.lat&start=-1d&granularity=1d&aggregation=P99")
            assert status == 200, body
            rows = body["data"]
            return body if rows and sum(r["count"] for r in rows) == len(everything) else None

        body = first.wait_for(merged, timeout=30)
        assert sorted(body["metadata"]["fleet"]["sources"]) == ["src-a", "src-b", "src-c"]
        if len(body["data"]) == 1:  # not across midnight UTC
            exact = float(np.quantile(everything, 0.99))
            assert abs(body["data"][0]["p99"] - exact) / exact < 0.01
        # group_by and tag filters mean the same on the PostgreSQL path as in memory.
        status, grouped = first.get(
            "/api/v1/query?metric=fleet.lat&start=-1d&granularity=1d&aggregation=P99&group_by=grp&tag=quote:it's"
        )
        assert status == 200
        counts: dict[str, float] = {}
        for row in grouped["data"]:
            counts[row["tags"]["grp"]] = counts.get(row["tags"]["grp"], 0) + row["count"]
            assert row["tags"]["quote"] == "it's"
        assert counts == {g: len(v) for g, v in by_group.items()}
        if len(grouped["data"]) == len(by_group):
            for row in grouped["data"]:
                exact = float(np.quantile(by_group[row["tags"]["grp"]], 0.99))
                assert abs(row["p99"] - exact) / exact < 0.01
        status, none = first.get("/api/v1/query?metric=fleet.lat&start=-1d&granularity=1d&tag=quote:other")
        assert status == 200 and none["data"] == []
    finally:
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log()


TOKENS = {"admin-token": "admin", "reader-token": "reader", "writer-token": "writer"}


def token_config() -> str:
    return "".join(
        f'\n[[auth.tokens]]\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\ntenant = "acme"\nrole = "{r}"\n'
        for t, r in TOKENS.items()
    )


def request(daemon: RunningDaemon, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        daemon.url(path),
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_purge_is_admin_only_and_everything_is_audited(tmp_path: Path, pg_dsn: str) -> None:
    daemon = start_daemon(tmp_path, pg_config(pg_dsn, "src-a") + token_config())
    try:
        old_ms = int((time.time() - 240) * 1000)
        status, _ = request(
            daemon,
            "POST",
            "/api/v1/metrics",
            "writer-token",
            {"name": "old.m", "value": 2, "type": "GAUGE", "timestamp": old_ms},
        )
        assert status == 201
        batch = {"metrics": [{"name": "old.m", "value": i, "type": "GAUGE", "timestamp": old_ms} for i in range(5)]}
        batch["metrics"].append({"name": "bad name", "value": 1, "type": "GAUGE"})
        assert request(daemon, "POST", "/api/v1/metrics/batch", "writer-token", batch)[0] == 200
        assert request(daemon, "GET", "/api/v1/query?metric=old.m&start=-10m", "reader-token")[0] == 200
        daemon.wait_for(lambda: caught_up(daemon) and query(pg_dsn, "SELECT count(*) AS n FROM metrics")[0]["n"] == 6)
        daemon.wait_for(
            lambda: query(pg_dsn, "SELECT count(*) AS n FROM metrics_aggregated WHERE granularity='1m'")[0]["n"] >= 2
        )
        status, body = request(daemon, "DELETE", "/api/v1/metrics?older_than=-2m", "writer-token")
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = request(daemon, "DELETE", "/api/v1/metrics?metric=old.m", "admin-token")
        assert status == 400 and body["error"]["code"] == "missing_older_than"
        before_agg = query(
            pg_dsn, "SELECT count(*) AS n FROM metrics_aggregated WHERE period_end <= now() - interval '2 minutes'"
        )[0]["n"]
        status, body = request(daemon, "DELETE", "/api/v1/metrics?metric=old.m&older_than=-2m", "admin-token")
        assert status == 200, body
        assert body["deletedCount"] == 6 + before_agg
        assert query(pg_dsn, "SELECT count(*) AS n FROM metrics")[0]["n"] == 0
        status, after = request(
            daemon, "GET", "/api/v1/query?metric=old.m&start=-10m&end=-2m&granularity=1m", "reader-token"
        )
        assert status == 200 and after["data"] == []  # memory purged too

        def audited() -> Any:
            rows = query(
                pg_dsn, "SELECT action, tenant_id, user_id, entity_id, metadata FROM audit_log ORDER BY created_at"
            )
            return rows if len(rows) >= 5 else None

        rows = daemon.wait_for(audited)
        actions = [r["action"] for r in rows]
        assert actions == [
            "METRIC_RECORDED",
            "METRICS_BATCH_RECORDED",
            "METRICS_QUERIED",
            "METRICS_PURGED",
            "METRICS_QUERIED",
        ]
        assert rows[0]["metadata"]["metricName"] == "old.m" and rows[0]["entity_id"] == rows[0]["metadata"]["metricId"]
        assert rows[1]["metadata"] == {"successCount": 5, "failCount": 1}
        assert rows[2]["metadata"]["queryParams"]["metricNames"] == ["old.m"]
        assert rows[3]["metadata"]["deletedCount"] == body["deletedCount"]
        assert rows[3]["metadata"]["metricNames"] == ["old.m"] and rows[3]["user_id"] == "admin"
        assert {r["tenant_id"] for r in rows} == {"acme"}
    finally:
        assert daemon.stop() == 0, daemon.log()


def _post_until_taken(daemon: RunningDaemon, body: dict[str, Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, answer = daemon.post("/api/v1/metrics/batch", json.dumps(body).encode())
            assert status == 200, answer
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


AGG_ROWS = (
    "SELECT metric_name, scope, tags, granularity, period_start, count, sum, min, max, p50, p99, members "
    "FROM metrics_aggregated WHERE source = $1 ORDER BY metric_name, scope, granularity, period_start, tags::text"
)
RAW_ROWS = (
    'SELECT metric_name, metric_value, tags, "timestamp" FROM metrics WHERE source = $1 '
    'ORDER BY metric_name, "timestamp", metric_value, tags::text'
)


def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: float(f"{v:.10g}") if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def run_outage(tmp_path: Path, pg_dsn: str, seconds_before: float, seconds_cut: float, kill_during: bool) -> None:
    """Two daemons take the same timestamped writes; one reaches PostgreSQL through a proxy the
    test cuts (and optionally is killed -9 and restarted during the cut). Afterwards both
    sources' rows are identical: nothing lost or doubled."""
    host, port = "127.0.0.1", 5432
    proxy = Proxy((host, port))
    proxied = pg_dsn.replace(f"{host}:{port}", f"{host}:{proxy.port}")
    ref = start_daemon(home(tmp_path / "ref"), pg_config(pg_dsn, "ref"))
    cut = start_daemon(home(tmp_path / "cut"), pg_config(proxied, "cut", 'connect_timeout = "1s"'))
    rng = random.Random(11)
    try:

        def load(seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                now_ms = int(time.time() * 1000)
                metrics = [
                    {
                        "name": rng.choice(("o.lat", "o.hits")),
                        "value": round(rng.uniform(0, 100), 2),
                        "type": "HISTOGRAM" if i % 2 else "COUNTER",
                        "tags": {"k": str(rng.randrange(10))},
                        "timestamp": now_ms - rng.randrange(0, 20_000),
                    }
                    for i in range(100)
                ]
                for i, m in enumerate(metrics):
                    m["name"] = "o.lat" if i % 2 else "o.hits"
                for daemon in (ref, cut):
                    _post_until_taken(daemon, {"metrics": metrics})
                time.sleep(0.05)

        load(seconds_before)
        cut.wait_for(lambda: caught_up(cut), timeout=20)
        proxy.cut()
        load(seconds_cut / 2)
        status = cut.wait_for(lambda: (s := sink_status(cut)) and not s["connected"] and s)
        assert status["queued"] > 0
        _, ready = cut.get("/readyz")
        assert ready["degraded"] == ["postgres"]
        if kill_during:
            cut.kill()
            cut = start_daemon(
                home(tmp_path / "cut"), pg_config(proxied, "cut", 'connect_timeout = "1s"'), ports=cut.ports
            )
        load(seconds_cut / 2)
        proxy.restore()
        for daemon in (ref, cut):
            daemon.wait_for(lambda d=daemon: caught_up(d), timeout=60)
        time.sleep(2.5)  # one more flush each: the newest windows closed on both
        for daemon in (ref, cut):
            daemon.wait_for(lambda d=daemon: caught_up(d), timeout=60)
        assert query(pg_dsn, RAW_ROWS, "cut") == query(pg_dsn, RAW_ROWS, "ref")
        # Sums may differ in the last bits: the two daemons closed slices at different moments
        # relative to the samples' arrival, so additions ran in another order.
        assert rounded(query(pg_dsn, AGG_ROWS, "cut")) == rounded(query(pg_dsn, AGG_ROWS, "ref"))
        assert len(query(pg_dsn, RAW_ROWS, "ref")) > 0
    finally:
        for daemon in (ref, cut):
            daemon.stop()
        proxy.close()


def test_outage_then_catch_up_loses_and_doubles_nothing(tmp_path: Path, pg_dsn: str) -> None:
    run_outage(tmp_path, pg_dsn, seconds_before=3, seconds_cut=6, kill_during=False)


def test_kill_during_outage_then_restart_catches_up(tmp_path: Path, pg_dsn: str) -> None:
    run_outage(tmp_path, pg_dsn, seconds_before=3, seconds_cut=8, kill_during=True)
