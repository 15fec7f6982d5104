"""Throwaway PostgreSQL databases on the shared server (127.0.0.1:5432), one per test, and a
TCP proxy a test can cut to simulate an outage."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import asyncpg
import pytest

from collectord.sinks.postgres.schema import setup_codecs

SERVER = os.environ.get("COLLECTORD_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
# Sessions sharing the server tell their databases apart by this prefix (not COLLECTORD_*:
# the daemons the tests start refuse unknown COLLECTORD_ variables).
DB_PREFIX = os.environ.get("PGTEST_DB_PREFIX", "collectord_test_")


def _admin(sql: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(f"{SERVER}/postgres", timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def server_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new empty database; yields its DSN; dropped afterwards (with its connections)."""
    if not server_available():
        if os.environ.get("CI") == "true":
            raise AssertionError("PostgreSQL is not running on 127.0.0.1:5432 (scripts/services starts it)")
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"{DB_PREFIX}{secrets.token_hex(6)}"
    _admin(f"CREATE DATABASE {name}")
    try:
        yield f"{SERVER}/{name}"
    finally:
        _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=5)
        await setup_codecs(conn)  # timestamps as unix seconds, jsonb decoded
        try:
            return [dict(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


class Proxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` closes every connection and refuses new
    ones until `restore()`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self.up = True
        self.closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # shutdown, not just close: the other direction's thread may be blocked in recv,
            # which keeps the socket open (no FIN) until it returns.
            for one in (source, sink):
                with suppress(OSError):
                    one.shutdown(socket.SHUT_RDWR)
                with suppress(OSError):
                    one.close()

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for one in self._sockets:
                with suppress(OSError):
                    one.shutdown(socket.SHUT_RDWR)
                one.close()
            self._sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()
