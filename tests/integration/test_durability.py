"""Nothing acknowledged is lost: SIGKILL at random moments, restarts, torn logs, a full disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("CRASH_TEST_KILLS", "6"))
BATCH = 50
BODY = json.dumps({"metrics": [{"name": "crash.http", "value": 1, "type": "COUNTER"}] * BATCH}).encode()
HEADERS = {"Content-Type": "application/json"}


class HttpWriter(threading.Thread):
    """Sends batches one after another; counts what was acknowledged and what was in flight."""

    def __init__(self, daemon: RunningDaemon) -> None:
        super().__init__(daemon=True)
        self.target = daemon
        self.acknowledged = 0
        self.in_flight = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.in_flight = BATCH
            try:
                status, _ = self.target.post("/api/v1/metrics/batch", BODY, HEADERS)
            except OSError:
                return  # killed mid-request: the batch may or may not be in the log
            self.in_flight = 0
            if status == 200:
                self.acknowledged += BATCH


class TcpWriter(threading.Thread):
    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.running = True

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port)) as conn:
                while self.running:
                    conn.sendall(b"crash.tcp:1|c\n" * 100)
                    self.sent += 100
                    time.sleep(0.002)
        except OSError:
            return


def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    daemon = start_daemon(tmp_path)
    known = 0.0  # HTTP samples known to be stored: acknowledged, or found after a restart
    tcp_sent = tcp_lost_bound = 0
    for _ in range(KILLS):
        http, tcp = HttpWriter(daemon), TcpWriter(daemon.statsd)
        http.start()
        tcp.start()
        time.sleep(rng.uniform(0.3, 1.2))
        daemon.kill()
        http.join(10)
        tcp.running = False
        tcp.join(10)
        tcp_sent += tcp.sent
        daemon = start_daemon(tmp_path, ports=daemon.ports)
        stored = daemon.total("crash.http")
        # Exactly what was acknowledged, plus the one batch in flight if it reached the log.
        assert stored - (known + http.acknowledged) in (0, http.in_flight), (stored, known, http.acknowledged)
        known = stored
        tcp_lost_bound += 10_000  # what a socket buffer can hold beyond the daemon's reach
    assert daemon.stop() == 0
    daemon = start_daemon(tmp_path, ports=daemon.ports)
    assert daemon.total("crash.http") == known  # a clean stop and start changes nothing
    tcp_counted = daemon.total("crash.tcp")
    assert tcp_counted <= tcp_sent
    assert daemon.stats()["wal"]["recovery"]["checkpoint"] is not None
    assert daemon.stop() == 0


def test_clean_restart_keeps_every_window_and_replays_nothing_twice(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    daemon.send_udp(b"restart.hits:1|c\nrestart.hits:2|c\nrestart.lat:10|ms\nrestart.lat:30|ms\nrestart.g:7|g")
    daemon.wait_for(lambda: daemon.stats()["accepted"] >= 5)
    before = daemon.get("/api/v1/query?metric=restart.lat&granularity=1m&aggregation=P99")[1]["data"]
    for _ in range(2):
        assert daemon.stop() == 0
        daemon = start_daemon(tmp_path, ports=daemon.ports)
        assert daemon.total("restart.hits") == 3.0
        assert daemon.get("/api/v1/query?metric=restart.lat&granularity=1m&aggregation=P99")[1]["data"] == before
        assert daemon.get("/api/v1/realtime?metric=restart.g")[1]["value"] == 7.0
    assert daemon.stop() == 0


def test_torn_and_corrupt_log_tails_are_cut_and_the_daemon_starts(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    for _ in range(20):
        status, _ = daemon.post(
            "/api/v1/metrics", json.dumps({"name": "torn.c", "value": 1, "type": "COUNTER"}).encode()
        )
        assert status == 201
    daemon.kill()
    segments = sorted((tmp_path / "data" / "wal").glob("wal-*.log"))
    last = segments[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-7] + b"\xde\xad")  # a torn last record with garbage after it
    daemon = start_daemon(tmp_path, ports=daemon.ports)
    assert daemon.total("torn.c") == 19.0
    wal = daemon.stats()["wal"]
    assert wal["recovery"]["walTruncatedBytes"] > 0
    assert "torn" in daemon.log() or "truncated" in daemon.log()
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="needs root to mount a small tmpfs")
def test_full_disk_refuses_http_writes_then_resumes(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        daemon = start_daemon(tmp_path, env={"COLLECTORD_STORAGE_DATA_DIR": str(mount)})
        filler = mount / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        body = json.dumps({"metrics": [{"name": "disk.c", "value": 1, "type": "COUNTER"}] * 200}).encode()
        status = 200
        for _ in range(200):
            status, reply = daemon.post("/api/v1/metrics/batch", body, HEADERS)
            if status == 503:
                break
        assert status == 503 and reply["error"]["code"] == "storage_unavailable"
        assert daemon.get("/readyz")[0] == 503
        assert daemon.stats()["wal"]["healthy"] is False
        stored_when_full = daemon.total("disk.c")
        filler.unlink()
        daemon.wait_for(lambda: daemon.post("/api/v1/metrics/batch", body, HEADERS)[0] == 200, timeout=10)
        assert daemon.get("/readyz")[0] == 200
        assert daemon.total("disk.c") == stored_when_full + 200
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_second_sigterm_stops_at_once(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    daemon.process.send_signal(signal.SIGTERM)
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=20) in (0, 1)


def test_background_checkpoints_keep_ingesting_and_trim_the_log(tmp_path: Path) -> None:
    daemon = start_daemon(
        tmp_path, env={"COLLECTORD_STORAGE_CHECKPOINT_INTERVAL": "1s", "COLLECTORD_STORAGE_SEGMENT_SIZE": "1MiB"}
    )
    body = json.dumps({"metrics": [{"name": "bg.c", "value": 1, "type": "COUNTER"}] * 500}).encode()
    acknowledged = 0
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        status, _ = daemon.post("/api/v1/metrics/batch", body, HEADERS)
        assert status == 200
        acknowledged += 500
    wal = daemon.wait_for(lambda: (w := daemon.stats()["wal"])["checkpoints"] >= 2 and w)
    segments = sorted((tmp_path / "data" / "wal").glob("wal-*.log"))
    assert len(segments) < wal["bytesWritten"] // (1 << 20)  # covered segments were deleted
    daemon.kill()
    daemon = start_daemon(tmp_path, ports=daemon.ports)
    assert daemon.total("bg.c") == acknowledged
    assert daemon.stats()["wal"]["recovery"]["checkpoint"] is not None
    assert daemon.stop() == 0
