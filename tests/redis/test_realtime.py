"""Realtime values through the real Redis: two in-process daemons sharing one prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio
from redis.exceptions import RedisError

from collectord.clock import ManualClock
from collectord.redis.keys import tags_id
from tests.redis.conftest import REDIS_URL
from tests.redis.helpers import START, redis_pipeline, send


async def test_counters_add_up_over_the_fleet_and_unwritten_samples_count(tmp_path: Path, prefix: str) -> None:
    clock = ManualClock(START + 5)
    a, link_a = redis_pipeline(tmp_path, clock, prefix, "a")
    b, link_b = redis_pipeline(tmp_path, clock, prefix, "b")
    send(a, b"hits:3|c|#route:x\nhits:2|c|#route:y")
    send(b, b"hits:4|c|#route:x\nhits:0.5|c|@0.1|#route:x")
    assert await link_a.write_once() and await link_b.write_once()
    link_a.health.ok()
    link_b.health.ok()
    for link in (link_a, link_b):
        answer = await link.realtime_answer("default", "hits", [])
        assert answer is not None and answer["value"] == 3 + 2 + 4 + 5 and answer["type"] == "COUNTER"
        assert answer["series"] == 2 and answer["fleet"] is True
    only_x = await link_a.realtime_answer("default", "hits", [("route", "x")])
    assert only_x is not None and only_x["value"] == 3 + 4 + 5
    # Parsed on A, not yet written: A sees it at once, B after A's next write.
    send(a, b"hits:10|c|#route:x")
    answer = await link_a.realtime_answer("default", "hits", [])
    assert answer is not None and answer["value"] == 24
    answer = await link_b.realtime_answer("default", "hits", [])
    assert answer is not None and answer["value"] == 14
    assert await link_a.write_once()
    answer = await link_b.realtime_answer("default", "hits", [])
    assert answer is not None and answer["value"] == 24
    # Nothing changed: nothing is sent (and increments are never sent twice).
    assert not await link_a.write_once()
    answer = await link_b.realtime_answer("default", "hits", [])
    assert answer is not None and answer["value"] == 24
    await link_a.close()
    await link_b.close()


async def test_newest_gauge_wins_and_distributions_keep_a_bounded_recent_list(tmp_path: Path, prefix: str) -> None:
    clock = ManualClock(START + 5)
    a, link_a = redis_pipeline(tmp_path, clock, prefix, "a", redis_recent_size="3")
    b, link_b = redis_pipeline(tmp_path, clock, prefix, "b", redis_recent_size="3")
    send(a, b"temp:5|g")
    clock.advance(1)
    send(b, b"temp:9|g")
    for value in (1, 2, 3, 4):
        send(a, f"lat:{value}|ms".encode())
        assert await link_a.write_once()
    assert await link_b.write_once()
    link_a.health.ok()
    gauge = await link_a.realtime_answer("default", "temp", [])
    assert gauge is not None and gauge["value"] == 9 and gauge["type"] == "GAUGE"
    latency = await link_a.realtime_answer("default", "lat", [])
    assert latency is not None and latency["value"] == 4 and latency["type"] == "HISTOGRAM"
    assert latency["recent"] == [4.0, 3.0, 2.0]
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    key = link_a.keys.realtime("default", "lat", tags_id(()))
    ttl = await client.ttl(key)
    assert 0 < ttl <= 86400
    assert await client.llen(link_a.keys.recent("default", "lat", tags_id(()))) == 3
    await client.aclose()
    await link_a.close()
    await link_b.close()


async def test_tenants_never_see_each_others_values(tmp_path: Path, prefix: str) -> None:
    clock = ManualClock(START + 5)
    a, link = redis_pipeline(tmp_path, clock, prefix, "a")
    send(a, b"secret:7|c", tenant="acme")
    assert await link.write_once()
    link.health.ok()
    other = await link.realtime_answer("globex", "secret", [])
    assert other is not None and other["value"] is None and other["series"] == 0
    own = await link.realtime_answer("acme", "secret", [])
    assert own is not None and own["value"] == 7
    await link.close()


async def test_a_restarted_daemon_does_not_add_its_recovered_totals_again(tmp_path: Path, prefix: str) -> None:
    clock = ManualClock(START + 5)
    a, link = redis_pipeline(tmp_path, clock, prefix, "a")
    send(a, b"jobs:5|c")
    assert await link.write_once()
    # The same memory under a new link (as after a restart that recovered it).
    again, relink = redis_pipeline(tmp_path, clock, prefix, "a2")
    again.aggregator = a.aggregator
    relink.realtime.baseline(again.aggregator)
    assert not await relink.write_once()
    send(again, b"jobs:1|c")
    assert await relink.write_once()
    relink.health.ok()
    answer = await relink.realtime_answer("default", "jobs", [])
    assert answer is not None and answer["value"] == 6
    await link.close()
    await relink.close()


async def test_unreachable_redis_answers_from_memory_and_keeps_changes_for_later(tmp_path: Path, prefix: str) -> None:
    clock = ManualClock(START + 5)
    a, link = redis_pipeline(tmp_path, clock, prefix, "a", redis_url="redis://127.0.0.1:1/0")
    send(a, b"hits:2|c")
    with pytest.raises((RedisError, OSError)):
        await link.write_once()
    assert not link.health.connected
    assert await link.realtime_answer("default", "hits", []) is None
    assert a.aggregator.matching_series("default", "hits", [])[0] in link.realtime.extra
    await link.close()
