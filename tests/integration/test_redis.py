"""Two daemons sharing one Redis (the real Redis 7 on 127.0.0.1:6379, a key prefix per test),
and one daemon whose own Redis server the test kills and restarts under UDP load."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from collectord.clock import SystemClock
from collectord.config import load_config
from collectord.pipeline import Pipeline
from collectord.redis.sink import RedisSink
from tests.integration.daemon import RunningDaemon, free_port, start_daemon
from tests.integration.streams import next_event, sse_frames
from tests.redis.conftest import REDIS_URL

pytestmark = pytest.mark.integration


def redis_config(url: str, prefix: str, name: str) -> str:
    return f"""
[instance]
name = "{name}"

[redis]
url = "{url}"
key_prefix = "{prefix}"
"""


@pytest.fixture
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError):
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (scripts/services starts it)")
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def pair(tmp_path: Path, prefix: str) -> Iterator[tuple[RunningDaemon, RunningDaemon]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = start_daemon(tmp_path / "a", redis_config(REDIS_URL, prefix, "host-a"))
    b = start_daemon(tmp_path / "b", redis_config(REDIS_URL, prefix, "host-b"))
    yield a, b
    for daemon in (a, b):
        assert daemon.stop() == 0, daemon.log()


def realtime(daemon: RunningDaemon, query: str) -> dict[str, Any]:
    status, body = daemon.get(f"/api/v1/realtime?{query}")
    assert status == 200, body
    return dict(body)


def test_realtime_values_recorded_on_either_daemon_are_seen_on_both(
    pair: tuple[RunningDaemon, RunningDaemon],
) -> None:
    a, b = pair
    a.send_udp(b"orders:3|c|#shop:x\ntemp:20|g|#room:1")
    b.send_udp(b"orders:4|c|#shop:x\norders:5|c|#shop:y\nlat:12|ms")
    time.sleep(0.1)
    b.send_udp(b"temp:22|g|#room:1")
    for daemon in (a, b):
        daemon.wait_for(lambda d=daemon: realtime(d, "metric=orders")["value"] == 12, timeout=5)
        answer = realtime(daemon, "metric=orders&tag=shop:x")
        assert answer["value"] == 7 and answer["fleet"] is True and answer["series"] == 1
        daemon.wait_for(lambda d=daemon: realtime(d, "metric=temp")["value"] == 22, timeout=5)
        latency = realtime(daemon, "metric=lat")
        assert latency["value"] == 12 and latency["type"] == "HISTOGRAM"
    # Each daemon's own windows are its own: its query totals do not double-count the other.
    assert a.total("orders") == 3 and b.total("orders") == 9
    sink = a.stats()["sinks"]["redis"]
    assert sink["connected"] and sink["realtimeSeriesWritten"] >= 2


def test_a_stream_follower_on_one_host_sees_samples_sent_to_the_other_within_a_second(
    tmp_path: Path, prefix: str
) -> None:
    """The follower is an in-process daemon core (pipeline, hub and Redis link); the sender
    a daemon process receiving UDP."""
    sender = start_daemon(tmp_path, redis_config(REDIS_URL, prefix, "sender"))

    async def follow() -> list[float]:
        environ = {
            "COLLECTORD_STORAGE_WAL": "false",
            "COLLECTORD_REDIS_URL": REDIS_URL,
            "COLLECTORD_REDIS_KEY_PREFIX": prefix,
        }
        pipeline = Pipeline(load_config(None, environ), SystemClock())
        link = RedisSink(pipeline)
        pipeline.add_sink(link)
        task = asyncio.create_task(link.run())
        sub = pipeline.hub.subscribe("default", ["checkout.latency"])
        delays: list[float] = []
        try:
            deadline = time.monotonic() + 10
            while sender.stats()["sinks"]["redis"]["streams"]["remoteInterest"] < 1:
                assert time.monotonic() < deadline, "the sender never saw the follower's interest"
                await asyncio.sleep(0.05)
            for i in range(20):
                sent = time.monotonic()
                sender.send_udp(f"checkout.latency:{i}|ms|#run:{prefix}".encode())
                events, _ = await sub.next(timeout=2.0)
                assert [e["value"] for e in events] == [float(i)]
                delays.append(time.monotonic() - sent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await link.drain()
            await link.close()
        return delays

    try:
        delays = asyncio.run(follow())
        assert max(delays) < 1.0, delays
    finally:
        assert sender.stop() == 0, sender.log()


async def _stream_across(a: RunningDaemon, b: RunningDaemon, run: str) -> list[float]:
    """An SSE client on A and a WebSocket client on B; samples sent to the other daemon."""
    delays: list[float] = []
    async with aiohttp.ClientSession() as http:
        sse = await http.get(a.url(f"/api/v1/stream?metric=x.lat&tag=run:{run}"))
        ws = await http.ws_connect(b.url("/api/v1/ws"))
        try:
            frames = sse_frames(sse)
            assert await anext(frames) == ("", "subscribed")
            await ws.send_json({"subscribe": {"metricNames": ["x.lat"], "tags": {"run": run}}})
            assert (await ws.receive_json(timeout=2))["event"] == "subscribed"
            deadline = time.monotonic() + 10
            while min(d.stats()["sinks"]["redis"]["streams"]["remoteInterest"] for d in (a, b)) < 1:
                assert time.monotonic() < deadline, "the daemons never saw each other's interest"
                await asyncio.sleep(0.05)
            for i in range(10):
                # Sent to B: A's client gets it through Redis, B's own client directly.
                sent = time.monotonic()
                b.send_udp(f"x.lat:{i}|ms|#run:{run}".encode())
                event = await asyncio.wait_for(next_event(frames, "metric"), 1.0)
                delays.append(time.monotonic() - sent)
                assert (event["name"], event["value"], event["tags"]) == ("x.lat", float(i), {"run": run})
                assert (await ws.receive_json(timeout=1.0))["value"] == float(i)
                # Sent to A: the other way round.
                sent = time.monotonic()
                a.send_udp(f"x.lat:{100 + i}|ms|#run:{run}".encode())
                message = await ws.receive_json(timeout=1.0)
                delays.append(time.monotonic() - sent)
                assert (message["event"], message["value"]) == ("metric", float(100 + i))
                assert (await asyncio.wait_for(next_event(frames, "metric"), 1.0))["value"] == float(100 + i)
            # Each client got each sample once: nothing else is waiting.
            with contextlib.suppress(TimeoutError):
                extra = await ws.receive_json(timeout=0.3)
                assert extra["event"] == "heartbeat", extra
        finally:
            await ws.close()
            sse.close()
    return delays


def test_stream_clients_on_each_daemon_see_samples_sent_to_the_other_within_a_second(
    pair: tuple[RunningDaemon, RunningDaemon], prefix: str
) -> None:
    a, b = pair
    delays = asyncio.run(_stream_across(a, b, prefix))
    assert len(delays) == 20 and max(delays) < 1.0, delays


def test_only_closed_ranges_come_from_the_cache(pair: tuple[RunningDaemon, RunningDaemon]) -> None:
    a, _ = pair
    a.send_udp(b"visits:1|c")
    closed = "/api/v1/query?metric=visits&start=-3h&end=-2h&granularity=1m"
    status, first = a.get(closed)
    assert status == 200 and first["metadata"]["fromCache"] is False
    answer = a.wait_for(lambda: a.get(closed)[1]["metadata"]["fromCache"] and a.get(closed)[1])
    assert answer["data"] == first["data"]
    open_range = "/api/v1/query?metric=visits&start=-10m&end=now&granularity=1m"
    for _ in range(5):
        status, body = a.get(open_range)
        assert status == 200 and body["metadata"]["fromCache"] is False
        assert sum(row["sum"] for row in body["data"]) == 1
        time.sleep(0.05)
    # Closed, but inside the late allowance (300 s): late samples may still land there.
    recent = "/api/v1/query?metric=visits&start=-10m&end=-4m&granularity=1m"
    for _ in range(3):
        assert a.get(recent)[1]["metadata"]["fromCache"] is False
        time.sleep(0.05)
    cache = a.stats()["sinks"]["redis"]["queryCache"]
    assert cache["hits"] >= 1 and cache["bypassed"] >= 8


class RedisServer:
    """A Redis of the test's own, to kill and restart."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (scripts/services installs it)")
        self.binary = binary
        self.port = free_port()
        self.dir = tmp
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except (redis.RedisError, OSError):
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


class UdpLoad(threading.Thread):
    def __init__(self, daemon: RunningDaemon) -> None:
        super().__init__(daemon=True)
        self.target = daemon
        self.sent = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.target.send_udp(b"load:1|c\nload:1|c\nload:1|c\nload:1|c")
            self.sent += 4
            time.sleep(0.002)


def test_redis_killed_and_restarted_under_load(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    daemon = start_daemon(tmp_path, redis_config(server.url, "outage", "solo"))
    load = UdpLoad(daemon)
    try:
        daemon.wait_for(lambda: daemon.stats()["sinks"]["redis"]["connected"])
        load.start()
        time.sleep(1.0)
        server.kill()
        daemon.wait_for(lambda: "redis" in daemon.get("/readyz")[1].get("degraded", []), timeout=10)
        status, ready = daemon.get("/readyz")
        assert status == 200 and ready["sinks"]["redis"]["connected"] is False
        sink = daemon.stats()["sinks"]["redis"]
        assert not sink["connected"] and sink["errors"] >= 1 and sink["lastError"]
        # Answers keep coming, from memory, without waiting on the dead server.
        began = time.monotonic()
        answer = realtime(daemon, "metric=load")
        assert time.monotonic() - began < 0.5 and "fleet" not in answer and answer["value"] > 0
        time.sleep(1.5)
        server.start()
        daemon.wait_for(lambda: daemon.stats()["sinks"]["redis"]["connected"], timeout=15)
        time.sleep(0.5)
        load.running = False
        load.join()
        daemon.wait_for(lambda: daemon.total("load") == load.sent, timeout=10)
        stats = daemon.stats()
        assert stats["dropped"] == 0 and stats["kernelDrops"] == 0
        # The restarted Redis (no persistence) holds what was written after it came back,
        # including the increments kept while it was away; the realtime answer is the fleet's again.
        daemon.wait_for(lambda: realtime(daemon, "metric=load").get("fleet") is True, timeout=10)
        assert "degraded" not in daemon.get("/readyz")[1]
    finally:
        load.running = False
        assert daemon.stop() == 0, daemon.log()
        server.kill()
