"""Cross-host streams through the real Redis: two in-process daemons, each with its hub."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from collectord.clock import ManualClock
from collectord.pipeline import Pipeline
from collectord.redis.sink import RedisSink
from tests.redis.helpers import START, redis_pipeline, send


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


Linked = tuple[Pipeline, RedisSink, Pipeline, RedisSink, list[asyncio.Task[None]]]


async def two_linked(tmp_path: Path, prefix: str) -> Linked:
    clock = ManualClock(START + 5)
    a, link_a = redis_pipeline(tmp_path, clock, prefix, "a")
    b, link_b = redis_pipeline(tmp_path, clock, prefix, "b")
    tasks = [asyncio.create_task(link_a.run()), asyncio.create_task(link_b.run())]
    await until(lambda: link_a.health.connected and link_b.health.connected)
    return a, link_a, b, link_b, tasks


async def stop(tasks: list[asyncio.Task[None]], *links: RedisSink) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for link in links:
        await link.drain()
        await link.close()


async def test_a_sample_recorded_on_b_reaches_a_stream_client_on_a(tmp_path: Path, prefix: str) -> None:
    a, link_a, b, link_b, tasks = await two_linked(tmp_path, prefix)
    try:
        assert not b.hub.active  # nobody follows anything: B's hot path pays a flag check
        sub = a.hub.subscribe("default", ["cpu"], [("host", "web1")])
        await until(lambda: ("default", "cpu") in b.hub.remote_interest)
        assert b.hub.active and ("default", "cpu") not in a.hub.remote_interest
        began = time.monotonic()
        send(b, b"cpu:0.5|g|#host:web1\ncpu:0.7|g|#host:web2\nmem:3|g|#host:web1")
        events, dropped = await sub.next(timeout=1.0)
        took = time.monotonic() - began
        assert took < 1.0 and dropped == 0
        assert [(e["name"], e["value"], e["tags"]) for e in events] == [("cpu", 0.5, {"host": "web1"})]
        assert events[0]["type"] == "GAUGE" and events[0]["timestamp"].endswith("Z")
        # A's own samples reach its client once, not again through Redis.
        send(a, b"cpu:0.9|g|#host:web1")
        events, _ = await sub.next(timeout=0.2)
        await asyncio.sleep(0.2)
        more, _ = await sub.next(timeout=0.05)
        assert [e["value"] for e in events + more] == [0.9]
        # Interest is by metric name; tag filters apply where the client is.
        assert link_b.streams.published == 2 and link_a.streams.received == 2
        a.hub.unsubscribe(sub)
        await until(lambda: not b.hub.remote_interest)
        assert not b.hub.active
    finally:
        await stop(tasks, link_a, link_b)


async def test_streams_are_scoped_to_their_tenant(tmp_path: Path, prefix: str) -> None:
    a, link_a, b, link_b, tasks = await two_linked(tmp_path, prefix)
    try:
        acme = a.hub.subscribe("acme", ["cpu"])
        await until(lambda: ("acme", "cpu") in b.hub.remote_interest)
        send(b, b"cpu:1|g", tenant="globex")
        send(b, b"cpu:2|g", tenant="acme")
        events, _ = await acme.next(timeout=1.0)
        await asyncio.sleep(0.1)
        more, _ = await acme.next(timeout=0.05)
        assert [e["value"] for e in events + more] == [2.0]
    finally:
        await stop(tasks, link_a, link_b)


async def test_a_daemon_that_stops_is_no_longer_forwarded_to(tmp_path: Path, prefix: str) -> None:
    a, link_a, b, link_b, tasks = await two_linked(tmp_path, prefix)
    try:
        a.hub.subscribe("default", ["cpu"])
        await until(lambda: bool(b.hub.remote_interest))
        tasks[0].cancel()
        await link_a.drain()  # at stop it leaves: B forgets its interest at once
        await until(lambda: not b.hub.remote_interest, timeout=2.0)
    finally:
        await stop(tasks, link_a, link_b)
