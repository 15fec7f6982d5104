"""VictoriaMetrics for the InfluxDB sink's tests: the shared one (scripts/services, 127.0.0.1:8428)
or a private one a test starts and stops for outages.

Neither runs with -dedup.minScrapeInterval: VictoriaMetrics then keeps every sample it is sent,
so a point the sink wrote twice shows up twice and the tests can see it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import free_port

SHARED_URL = "http://127.0.0.1:8428"
BINARY = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"

# (metric name as VictoriaMetrics spells it: measurement_field, sorted labels) -> [(ms, value)]
Exported = dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]]


def _get(url: str, data: bytes | None = None, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
        body: bytes = response.read()
        return body


def healthy(url: str) -> bool:
    try:
        return _get(f"{url}/health", timeout=2).strip() == b"OK"
    except OSError:
        return False


def require_shared() -> str:
    """The shared instance; in CI its absence fails the test instead of skipping it."""
    if not healthy(SHARED_URL):
        if os.environ.get("CI") == "true":
            pytest.fail("VictoriaMetrics is not running on 127.0.0.1:8428 (scripts/services starts it)")
        pytest.skip("VictoriaMetrics is not running on 127.0.0.1:8428 (run scripts/services)")
    return SHARED_URL


def export(url: str, match: str) -> Exported:
    """Every raw sample of the series `match` selects, made visible first."""
    _get(f"{url}/internal/force_flush")
    body = _get(f"{url}/api/v1/export", urllib.parse.urlencode({"match[]": match, "start": "0"}).encode())
    out: Exported = defaultdict(list)
    for line in body.decode().splitlines():
        item: dict[str, Any] = json.loads(line)
        labels = dict(item["metric"])
        name = labels.pop("__name__")
        key = (name, tuple(sorted(labels.items())))
        out[key].extend(zip(item["timestamps"], item["values"], strict=True))
    for samples in out.values():
        samples.sort()
    return dict(out)


class PrivateVictoria:
    """A VictoriaMetrics of the test's own, on a free port, that it may stop and start."""

    def __init__(self, storage: Path) -> None:
        if not os.path.exists(BINARY):
            if os.environ.get("CI") == "true":
                pytest.fail("victoria-metrics is not installed (scripts/services installs it)")
            pytest.skip("victoria-metrics is not installed (run scripts/services)")
        self.port = free_port()
        self.storage = storage
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> None:
        """Start (again) on the same port and storage; `extra` flags for this run only."""
        args = [
            BINARY,
            f"-httpListenAddr=127.0.0.1:{self.port}",
            f"-storageDataPath={self.storage}",
            "-retentionPeriod=100y",
            *extra,
        ]
        log = (self.storage.parent / f"vm-{self.port}.log").open("ab")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if healthy(self.url):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"victoria-metrics exited with {self.process.returncode}")
            time.sleep(0.1)
        raise AssertionError("victoria-metrics did not come up in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None
