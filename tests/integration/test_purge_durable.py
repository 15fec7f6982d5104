"""DELETE /api/v1/metrics survives kill -9: the purge is in the write-ahead log, and a replay
applies it at the same point, so windows purged after the newest checkpoint do not come back.
Needs: nothing but the daemon (no PostgreSQL: the purge is of memory)."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.integration.daemon import RunningDaemon, start_daemon

TOKENS = {"admin-token": "admin", "writer-token": "writer"}
CONFIG = 'checkpoint_interval = "1h"\n' + "".join(
    f'\n[[auth.tokens]]\nsha256 = "{hashlib.sha256(t.encode()).hexdigest()}"\ntenant = "acme"\nrole = "{r}"\n'
    for t, r in TOKENS.items()
)


def call(daemon: RunningDaemon, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        daemon.url(path),
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def counts(daemon: RunningDaemon) -> dict[str, float]:
    out = {}
    for name in ("old.m", "keep.m"):
        status, body = call(
            daemon, "GET", f"/api/v1/query?metric={name}&start=-15m&granularity=1m&aggregation=COUNT", "admin-token"
        )
        assert status == 200, body
        out[name] = sum(row["count"] for row in body["data"])
    return out


def test_purge_then_kill_9_keeps_purged_windows_gone(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path, CONFIG)
    old_ms = int((time.time() - 240) * 1000)
    metrics = [
        {"name": n, "value": i, "type": "GAUGE", "timestamp": old_ms} for n in ("old.m", "keep.m") for i in range(5)
    ]
    assert call(daemon, "POST", "/api/v1/metrics/batch", "writer-token", {"metrics": metrics})[0] == 200
    assert daemon.stop() == 0, daemon.log()  # a checkpoint holding both metrics
    daemon = start_daemon(tmp_path, CONFIG, ports=daemon.ports)
    try:
        assert counts(daemon) == {"old.m": 5, "keep.m": 5}
        status, body = call(daemon, "DELETE", "/api/v1/metrics?metric=old.m&older_than=-2m", "admin-token")
        assert status == 200 and body["deletedCount"] > 0, body
        assert counts(daemon) == {"old.m": 0, "keep.m": 5}
        daemon.kill()  # the newest checkpoint predates the purge
        daemon = start_daemon(tmp_path, CONFIG, ports=daemon.ports)
        assert counts(daemon) == {"old.m": 0, "keep.m": 5}
    finally:
        daemon.stop()
