"""SIGHUP reload against the real daemon: under a steady TCP and UDP load while the config
changes three times (TCP: received == sent exactly), an invalid config kept out, listeners moved
(the new socket first, open connections kept), a port that cannot be bound kept as it was."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.daemon import RunningDaemon, free_port, free_ports, start_daemon

pytestmark = pytest.mark.integration

TOKEN = "reload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TOKEN_TABLE = f"""
[[auth.tokens]]
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
tenant = "default"
role = "admin"
"""


def write_config(daemon: RunningDaemon, tmp: Path, statsd_tcp: int, http: int, extra: str = "") -> None:
    daemon.config_path.write_text(
        f"""
[listen]
statsd_udp = "127.0.0.1:{daemon.statsd}"
statsd_tcp = "127.0.0.1:{statsd_tcp}"
line_udp = "127.0.0.1:{daemon.line}"
line_tcp = "127.0.0.1:{daemon.line}"
http = "127.0.0.1:{http}"

[storage]
data_dir = "{tmp / "data"}"
{extra}
"""
    )


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def counter_total(port: int, metric: str, headers: dict[str, str] | None = None) -> float:
    status, body = get(port, f"/api/v1/realtime?metric={metric}", headers)
    assert status == 200, body
    return float(body["value"] or 0)


def reload_and_wait(daemon: RunningDaemon, done: int, timeout: float = 15.0) -> str:
    """Send SIGHUP and wait until the log shows `done` + 1 finished reloads (either outcome)."""
    daemon.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = daemon.log()
        if log.count("config reloaded") + log.count("reload refused") > done:
            return log
        assert daemon.process.poll() is None, log
        time.sleep(0.05)
    raise AssertionError(f"reload {done + 1} did not finish:\n{daemon.log()}")


class TcpSender(threading.Thread):
    def __init__(self, port: int, line: bytes, per_batch: int = 50, pause: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.payload = line * per_batch
        self.per_batch = per_batch
        self.pause = pause
        self.sent = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.sock.sendall(self.payload)
                self.sent += self.per_batch
                time.sleep(self.pause)
        except BaseException as error:
            self.error = error
        finally:
            self.sock.close()


class UdpSender(threading.Thread):
    def __init__(self, port: int, line: bytes, per_datagram: int = 20, pause: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.payload = line * per_datagram
        self.per_datagram = per_datagram
        self.pause = pause
        self.sent = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.stopping.is_set():
                sock.sendto(self.payload, ("127.0.0.1", self.port))
                self.sent += self.per_datagram
                time.sleep(self.pause)


def test_three_reloads_under_tcp_and_udp_load_lose_no_tcp_line(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    statsd_tcp, http = daemon.statsd, daemon.http
    tcp = TcpSender(statsd_tcp, b"reload.tcp:1|c\n")
    udp = UdpSender(daemon.statsd, b"reload.udp:1|c\n")
    tcp.start()
    udp.start()
    try:
        time.sleep(0.5)
        # 1: tokens required from now on, parsers rebuilt (limits), JSON logs, idle timeout.
        write_config(
            daemon,
            tmp_path,
            statsd_tcp,
            http,
            f'[limits]\nmax_tags = 10\n[ingest]\ntcp_idle_timeout = "10m"\n[log]\nformat = "json"\n{TOKEN_TABLE}',
        )
        reload_and_wait(daemon, 0)
        assert get(http, "/api/v1/series")[0] == 401
        assert get(http, "/api/v1/series", AUTH)[0] == 200
        time.sleep(0.5)
        # 2: the StatsD TCP listener moves; the sender's open connection stays.
        statsd_tcp = free_port()
        write_config(
            daemon,
            tmp_path,
            statsd_tcp,
            http,
            '[limits]\nmax_tags = 12\n[ingest]\nline_types = { "x.y" = "COUNTER" }\n'
            f'[aggregate]\nlate_allowance = "10m"\n[log]\nformat = "json"\n{TOKEN_TABLE}',
        )
        reload_and_wait(daemon, 1)
        with socket.create_connection(("127.0.0.1", statsd_tcp)) as late:
            late.sendall(b"reload.tcp:1|c\n" * 7)
        time.sleep(0.5)
        # 3: the HTTP port moves, logs back to logfmt at warning, a bigger UDP buffer.
        http = free_port()
        write_config(
            daemon,
            tmp_path,
            statsd_tcp,
            http,
            f'[ingest]\nudp_receive_buffer = "16MiB"\n[log]\nlevel = "warning"\n{TOKEN_TABLE}',
        )
        reload_and_wait(daemon, 2)
        time.sleep(0.5)
    finally:
        tcp.stopping.set()
        udp.stopping.set()
        tcp.join(timeout=5)
        udp.join(timeout=5)
    assert tcp.error is None, tcp.error
    sent_tcp = tcp.sent + 7
    deadline = time.monotonic() + 10
    while counter_total(http, "reload.tcp", AUTH) < sent_tcp and time.monotonic() < deadline:
        time.sleep(0.1)
    received_tcp = counter_total(http, "reload.tcp", AUTH)
    received_udp = counter_total(http, "reload.udp", AUTH)
    print(
        f"reload under load: tcp sent {sent_tcp} received {received_tcp}; udp sent {udp.sent} received {received_udp}"
    )
    assert received_tcp == sent_tcp
    assert 0.9 * udp.sent <= received_udp <= udp.sent
    log = daemon.log()
    assert log.count("config reloaded") == 3, log
    assert "reload refused" not in log and "cannot listen" not in log
    daemon.http = http
    assert daemon.stop() == 0, daemon.log()


def test_an_invalid_config_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    daemon.config_path.write_text('[listen]\nstatsd_upd = "127.0.0.1:1"\n[ingest]\ntenant = "x"\n')
    log = reload_and_wait(daemon, 0)
    refused = [line for line in log.splitlines() if "reload refused" in line]
    assert len(refused) == 1 and "listen.statsd_upd: unknown key" in refused[0], log
    # Still running on the old config: the same ports, the same tenant, no auth.
    daemon.send_udp(b"kept.old:3|c\n")
    daemon.wait_for(lambda: counter_total(daemon.http, "kept.old") == 3)
    status, metrics = daemon.get("/metrics")
    assert status == 200
    assert 'collectord_config_reloads_total{result="failure"} 1.0' in metrics
    assert 'collectord_config_reloads_total{result="success"} 0.0' in metrics
    # A broken TOML file is refused the same way.
    daemon.config_path.write_text("[listen\n")
    assert "invalid TOML" in reload_and_wait(daemon, 1)
    # A good file afterwards is taken.
    write_config(daemon, tmp_path, daemon.statsd, daemon.http, '[log]\nlevel = "debug"\n')
    assert "config reloaded" in reload_and_wait(daemon, 2)
    assert daemon.stop() == 0, daemon.log()


def test_listeners_move_new_socket_first_and_connections_stay(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    old_tcp, old_http = daemon.statsd, daemon.http
    held = socket.create_connection(("127.0.0.1", old_tcp))
    held.sendall(b"move.tcp:1|c\n" * 5)
    new_udp, new_tcp, new_http = free_ports()
    daemon.config_path.write_text(
        f"""
[listen]
statsd_udp = "127.0.0.1:{new_udp}"
statsd_tcp = "127.0.0.1:{new_tcp}"
line_udp = ""
line_tcp = "127.0.0.1:{daemon.line}"
http = "127.0.0.1:{new_http}"

[storage]
data_dir = "{tmp_path / "data"}"
"""
    )
    log = reload_and_wait(daemon, 0)
    assert "cannot listen" not in log, log
    # The connection opened before the move still counts; new ones go to the new port.
    held.sendall(b"move.tcp:1|c\n" * 5)
    held.close()
    with socket.create_connection(("127.0.0.1", new_tcp)) as fresh:
        fresh.sendall(b"move.tcp:1|c\n" * 5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", old_tcp), timeout=2).close()
    with pytest.raises(OSError):
        get(old_http, "/healthz")
    daemon.http = new_http
    daemon.send_udp(b"move.udp:2|c\n", port=new_udp)
    daemon.wait_for(lambda: counter_total(new_http, "move.tcp") == 15 and counter_total(new_http, "move.udp") == 2)
    # The line-protocol UDP listener was turned off.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", daemon.line))  # free again: nobody listens there
    assert daemon.stop() == 0, daemon.log()


def test_a_port_in_use_keeps_the_old_listener(tmp_path: Path) -> None:
    daemon = start_daemon(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        write_config(daemon, tmp_path, taken, daemon.http)
        log = reload_and_wait(daemon, 0)
    failed = [line for line in log.splitlines() if "cannot listen on the new address" in line]
    assert len(failed) == 1 and "statsd_tcp" in failed[0], log
    with socket.create_connection(("127.0.0.1", daemon.statsd)) as still:
        still.sendall(b"kept.tcp:4|c\n")
    daemon.wait_for(lambda: counter_total(daemon.http, "kept.tcp") == 4)
    assert daemon.stop() == 0, daemon.log()
