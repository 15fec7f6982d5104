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

import random
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.daemon import start_daemon
from tests.integration.influx_check import (
    OUTAGE_SECONDS,
    Load,
    assert_exact,
    influx_status,
    sink_config,
    wait_written,
)
from tests.integration.victoria import PrivateVictoria, require_shared

pytestmark = pytest.mark.integration


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
        # A flush may spool a file while the points are checked (a minute closing): it must
        # be sent and its file removed within a few seconds.
        spool = tmp_path / "data" / "spool" / "influx"
        deadline = time.monotonic() + 15
        while any(spool.glob("*.lp")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(spool.glob("*.lp")), "spool not emptied"
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
    log were sent already (their spool files deleted) and must not be sent again. A batch the
    server took just before the kill, before the spool could record it, is sent once more: the
    same points (InfluxDB overwrites them), never a different value or a lost one."""
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
        assert_exact(daemon, url, prefix, source, load, resends=True)
    finally:
        assert daemon.stop() == 0, daemon.log()
