"""Starts the real daemon as a subprocess on free loopback ports and talks to it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def free_ports() -> tuple[int, int, int]:
    """Three different free ports (each free_port() is free on its own; two may be the same)."""
    while True:
        ports = (free_port(), free_port(), free_port())
        if len(set(ports)) == 3:
            return ports


@dataclass
class RunningDaemon:
    process: subprocess.Popen[bytes]
    statsd: int
    line: int
    http: int
    config_path: Path
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url(path), headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = response.read()
                status = response.status
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            body, status, kind = error.read(), error.code, error.headers.get("Content-Type", "")
        return status, json.loads(body) if "json" in kind else body.decode()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.url(path), data=body, headers=headers or {}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                payload, status = response.read(), response.status
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            payload, status, kind = error.read(), error.code, error.headers.get("Content-Type", "")
        return status, json.loads(payload) if "json" in kind else payload.decode()

    def total(self, metric: str, start: str = "-3h") -> float:
        """The SUM of a metric over recent hours, merged over every series."""
        status, body = self.get(f"/api/v1/query?metric={metric}&start={start}&granularity=1h&aggregation=SUM")
        assert status == 200, body
        return float(sum(row["value"] for row in body["data"]))

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/api/v1/stats")
        assert status == 200, body
        return dict(body)

    def send_udp(self, payload: bytes, port: int | None = None) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, ("127.0.0.1", port or self.statsd))

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(0.05)
        raise AssertionError(f"condition not met in {timeout}s; last value {last!r}")

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.statsd, self.line, self.http

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_daemon(
    tmp: Path,
    extra_config: str = "",
    env: dict[str, str] | None = None,
    ports: tuple[int, int, int] | None = None,
) -> RunningDaemon:
    """Start the daemon with its data in tmp/data; `ports` (statsd, line, http) to restart one
    where it was."""
    statsd, line, http = ports or free_ports()
    config = tmp / "collectord.toml"
    config.write_text(
        f"""
[listen]
statsd_udp = "127.0.0.1:{statsd}"
statsd_tcp = "127.0.0.1:{statsd}"
line_udp = "127.0.0.1:{line}"
line_tcp = "127.0.0.1:{line}"
http = "127.0.0.1:{http}"

[storage]
data_dir = "{tmp / "data"}"
{extra_config}
"""
    )
    log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "collectord", "run", "--config", str(config)],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env=full_env,
    )
    daemon = RunningDaemon(process, statsd, line, http, config, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daemon exited with {process.returncode}:\n{daemon.log()}")
        try:
            status, _ = daemon.get("/readyz")
            if status == 200:
                return daemon
        except OSError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"daemon not ready in 60 s:\n{daemon.log()}")
