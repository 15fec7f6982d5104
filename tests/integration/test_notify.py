"""The notify protocol against the real daemon: a fake $NOTIFY_SOCKET (a real Unix datagram
socket owned by the test) receives READY=1 only once every listener and the HTTP port answer,
WATCHDOG=1 pings at half of WATCHDOG_USEC, STATUS= lines, RELOADING=1/READY=1 around a SIGHUP
and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.daemon import RunningDaemon, free_ports, start_daemon

pytestmark = pytest.mark.integration


def parse(datagram: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


class NotifySocket:
    """Collects every message; on READY=1 checks at once that the ports answer."""

    def __init__(self, ports: tuple[int, int, int]) -> None:
        self.name = f"collectord-notify-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())  # abstract, as systemd's own socket
        self.sock.settimeout(0.2)
        self.ports = ports
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.bound_at_ready: dict[int, bool] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _connects(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            message = parse(data)
            if message.get("READY") == "1" and not self.bound_at_ready:
                self.bound_at_ready = {port: self._connects(port) for port in self.ports}
            self.messages.append((time.monotonic(), message))

    def wait_for(self, predicate: object, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for _, message in self.messages[seen:]:
                seen += 1
                if predicate(message):  # type: ignore[operator]
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no such message in {timeout}s; got {[m for _, m in self.messages]}")

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        self.sock.close()


def test_notify_protocol_through_a_daemon_life(tmp_path: Path) -> None:
    ports = free_ports()
    notify = NotifySocket(ports)
    try:
        daemon: RunningDaemon = start_daemon(
            tmp_path, ports=ports, env={"NOTIFY_SOCKET": f"@{notify.name}", "WATCHDOG_USEC": "400000"}
        )
        ready = notify.wait_for(lambda m: m.get("READY") == "1")
        assert ready["MAINPID"] == str(daemon.process.pid)
        assert "lines/s" in ready["STATUS"] and "series" in ready["STATUS"]
        # Every TCP listener (StatsD, line protocol) and the HTTP port answered at READY=1.
        assert notify.bound_at_ready == {port: True for port in ports}

        # Pings at half of the 0.4 s watchdog: about 5 in 1.2 s.
        began = time.monotonic()
        time.sleep(1.2)
        pings = [at for at, m in notify.messages if m == {"WATCHDOG": "1"} and at >= began]
        assert 3 <= len(pings) <= 8, pings

        daemon.send_udp(b"notify.test:1|c\n" * 10)
        notify.wait_for(lambda m: "STATUS" in m and "READY" not in m and "RELOADING" not in m, timeout=8)

        daemon.process.send_signal(signal.SIGHUP)
        notify.wait_for(lambda m: m.get("RELOADING") == "1" and int(m["MONOTONIC_USEC"]) > 0)
        notify.wait_for(lambda m: m.get("READY") == "1")

        assert daemon.stop() == 0, daemon.log()
        stopping = notify.wait_for(lambda m: m.get("STOPPING") == "1")
        assert stopping["STATUS"].startswith("stopping")
    finally:
        notify.close()


def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path) -> None:
    ports = free_ports()
    notify = NotifySocket(ports)
    try:
        daemon = start_daemon(tmp_path, ports=ports, env={"NOTIFY_SOCKET": f"@{notify.name}"})
        notify.wait_for(lambda m: m.get("READY") == "1")
        time.sleep(0.6)
        assert daemon.stop() == 0, daemon.log()
        notify.wait_for(lambda m: m.get("STOPPING") == "1")
        assert not any("WATCHDOG" in m for _, m in notify.messages)
    finally:
        notify.close()
