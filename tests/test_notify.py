"""collectord/notify.py: the notify protocol over a real Unix datagram socket, the watchdog's
schedule and the heartbeat's rule (pings only while healthy)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectord.notify import Heartbeat, Notifier, socket_address, watchdog_interval


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def messages(sock: socket.socket) -> list[dict[str, str]]:
    """Every datagram waiting on `sock`, as dicts."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(4096).decode()
            out.append(dict(line.split("=", 1) for line in data.split("\n")))
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("@/org/freedesktop/systemd1/notify/123", b"\0/org/freedesktop/systemd1/notify/123"),
        ("", None),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str, expected: str | bytes | None) -> None:
    assert socket_address(value) == expected


def test_messages_reach_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("12 lines/s")
    assert notifier.watchdog()
    assert notifier.reloading()
    assert notifier.stopping()
    got = messages(sock)
    assert got[0] == {"READY": "1", "STATUS": "12 lines/s", "MAINPID": str(os.getpid())}
    assert got[1] == {"WATCHDOG": "1"}
    assert got[2]["RELOADING"] == "1" and int(got[2]["MONOTONIC_USEC"]) > 0
    assert got[3]["STOPPING"] == "1"
    notifier.close()


def test_messages_reach_an_abstract_socket() -> None:
    name = f"collectord-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": f"@{name}"})
        assert notifier.status("all good")
        assert sock.recv(4096) == b"STATUS=all good"
        notifier.close()


def test_without_a_socket_nothing_is_sent_and_nothing_raises(tmp_path: Path) -> None:
    assert not Notifier.from_environ({}).ready("x")
    # A socket that went away: a warning, never an exception.
    gone = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert not gone.ready("x")
    assert not gone.watchdog()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4242"}, 0.25),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, pid=4242) == expected


async def test_heartbeat_pings_only_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    health = {"ok": True}
    beat = Heartbeat(Notifier(path), lambda: "summary", lambda: health["ok"], watchdog=0.02, status_every=0.1)
    task = asyncio.get_running_loop().create_task(beat.run())
    await asyncio.sleep(0.25)
    healthy = messages(sock)
    health["ok"] = False
    await asyncio.sleep(0.25)
    unhealthy = messages(sock)
    task.cancel()
    assert sum(m == {"WATCHDOG": "1"} for m in healthy) >= 5
    assert {"STATUS": "summary"} in healthy
    assert {"WATCHDOG": "1"} not in unhealthy
    assert {"STATUS": "summary"} in unhealthy  # the status line goes on; only the pings stop
