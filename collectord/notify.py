"""The systemd notify protocol (sd_notify(3)) without libsystemd: datagrams to $NOTIFY_SOCKET.

READY=1 once every listener and the HTTP port are bound, RELOADING=1 around a SIGHUP reload,
STOPPING=1 on stop, STATUS= with a one-line summary refreshed every few seconds, and WATCHDOG=1
at half of $WATCHDOG_USEC, sent from the event loop and only while the daemon's own tasks run:
a wedged loop or a dead timer task stops the pings and systemd restarts the service.
Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

from collectord.pipeline import Pipeline

log = logging.getLogger("collectord.notify")

STATUS_EVERY = 5.0


def socket_address(value: str) -> str | bytes | None:
    """The address to send to: a path, or an abstract name for "@name"; None if unusable."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (not reachable under RestrictAddressFamilies anyway)


class Notifier:
    """Sends notify messages; never raises (a lost status line must not stop the daemon)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(socket_address(env.get("NOTIFY_SOCKET", "")))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of "KEY=value" lines; True when it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as error:
            if not self._warned:
                self._warned = True
                log.warning("cannot notify the service manager", extra={"error": str(error)})
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match the reload to this message.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping: draining and writing a checkpoint")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of $WATCHDOG_USEC), or None when no watchdog is asked of us."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (owner and owner != str(os.getpid() if pid is None else pid)):
        return None
    return usec / 2_000_000


class StatusLine:
    """The one-line STATUS= summary: rates since the previous line, series, ring, WAL."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._lines = self._total_lines()
        self._at = time.monotonic()

    def _total_lines(self) -> int:
        return self.pipeline.statsd_stats.lines + self.pipeline.line_stats.lines

    def __call__(self) -> str:
        p = self.pipeline
        now, lines = time.monotonic(), self._total_lines()
        rate = (lines - self._lines) / max(now - self._at, 1e-9)
        self._lines, self._at = lines, now
        ring = p.ring
        journal = p.journal
        wal = "off" if journal is None else ("ok" if journal.healthy else "failing")
        connections = sum(c.connections_open for c in p.sources.values())
        return (
            f"{rate:.0f} lines/s, {p.aggregator.table.count} series, ring {100 * ring.fill / ring.capacity:.1f}% "
            f"full, {connections} tcp connections, wal {wal}"
        )


class Heartbeat:
    """The task that pings the watchdog and refreshes STATUS= while the daemon is healthy."""

    def __init__(
        self,
        notifier: Notifier,
        summary: Callable[[], str],
        healthy: Callable[[], bool],
        watchdog: float | None,
        status_every: float = STATUS_EVERY,
    ) -> None:
        self.notifier = notifier
        self.summary = summary
        self.healthy = healthy
        self.watchdog = watchdog
        self.status_every = status_every

    async def run(self) -> None:
        period = self.status_every if self.watchdog is None else min(self.watchdog, self.status_every)
        since_status = 0.0
        while True:
            await asyncio.sleep(period)
            since_status += period
            if self.watchdog is not None and self.healthy():
                self.notifier.watchdog()
            if since_status >= self.status_every:
                since_status = 0.0
                self.notifier.status(self.summary())
