"""The query cache through the real Redis: only closed periods, and invalidated when a closed
period changes after all."""

from __future__ import annotations

from pathlib import Path

from collectord.aggregation.query import Query, run_query
from collectord.clock import ManualClock
from collectord.pipeline import Pipeline
from collectord.redis.hooks import cached_rows, purged
from collectord.redis.sink import RedisSink
from tests.redis.helpers import START, redis_pipeline, send

Rows = list[dict[str, object]]


def query(start: float, end: float, tenant: str = "default", granularity: str = "1m", **extra: object) -> Query:
    return Query(tenant=tenant, metrics=["hits"], start=start, end=end, granularity=granularity, **extra)  # type: ignore[arg-type]


async def ask(pipeline: Pipeline, q: Query) -> tuple[Rows, bool]:
    return await cached_rows(pipeline, q, lambda: run_query(pipeline.aggregator, q))


async def filled(tmp_path: Path, prefix: str) -> tuple[ManualClock, Pipeline, RedisSink]:
    """hits: 1 at START+10 (the first minute), 2 at START+70; the clock an hour later."""
    clock = ManualClock(START + 10)
    pipeline, link = redis_pipeline(tmp_path, clock, prefix)
    send(pipeline, b"hits:1|c")
    clock.set(START + 70)
    send(pipeline, b"hits:2|c")
    clock.set(START + 1800)
    pipeline.advance()
    assert await link.write_once() is not None
    link.health.ok()
    return clock, pipeline, link


def test_only_ranges_settled_past_the_late_allowance_are_cacheable(tmp_path: Path) -> None:
    clock = ManualClock(START + 1000)
    _pipeline, link = redis_pipeline(tmp_path, clock, "unused", redis_url="redis://127.0.0.1:1/0")
    ttl = link.cache.ttl_for
    now = clock.now()
    # late_allowance 300 s + flush interval 10 s: the answer is final only for periods that
    # ended before now - 310.
    assert ttl(query(START, now), now) is None  # reaches the open minute
    assert ttl(query(START, START + 960), now) is None  # closed, but late samples may come
    assert ttl(query(START, START + 720), now) is None  # ends 30 s inside the late allowance
    assert ttl(query(START, START + 660), now) == 60.0
    assert ttl(query(START, START + 690.5), now) is None  # its last period ends at 720
    assert ttl(query(START, START + 3600, granularity="1h"), now) is None  # the open hour
    later = START + 3 * 3600
    assert ttl(query(START, START + 3600, granularity="1h"), later) == 600.0
    # Never past the moment the oldest 1m window leaves memory (6 h).
    assert ttl(query(START, START + 600), START + 6 * 3600 - 100) == 160.0
    assert ttl(query(START, START + 600), START + 6 * 3600 + 100) is None


async def test_a_closed_range_is_served_from_cache_and_an_open_one_never(tmp_path: Path, prefix: str) -> None:
    clock, pipeline, link = await filled(tmp_path, prefix)
    closed = query(START, START + 120)
    rows, hit = await ask(pipeline, closed)
    assert not hit and [r["sum"] for r in rows] == [1.0, 2.0]
    await _stored(link)
    again, hit = await ask(pipeline, query(START + 1, START + 119.5))  # the same two periods
    assert hit and again == rows
    open_range = query(START, clock.now())
    for _ in range(3):
        rows, hit = await ask(pipeline, open_range)
        await _stored(link)
        assert not hit and sum(r["sum"] for r in rows) == 3.0  # type: ignore[misc]
    # Another tenant's identical query is its own entry.
    rows, hit = await ask(pipeline, query(START, START + 120, tenant="acme"))
    assert not hit and rows == []
    counters = link.cache.counters
    assert counters.hits == 1 and counters.bypassed == 3
    await link.close()


async def test_a_late_write_into_a_cached_range_invalidates_it(tmp_path: Path, prefix: str) -> None:
    _clock, pipeline, link = await filled(tmp_path, prefix)
    closed = query(START, START + 120)
    await ask(pipeline, closed)
    await _stored(link)
    assert (await ask(pipeline, closed))[1]
    # A batch that waited (a stalled consumer): received long ago, applied now, into the
    # first minute, which the cache holds.
    send(pipeline, b"hits:40|c|T" + str(int(START + 20)).encode(), received=START + 25)
    rows, hit = await ask(pipeline, closed)
    assert not hit and [r["sum"] for r in rows] == [41.0, 2.0]
    pipeline.advance()  # offers the touch: the tenant's generation is raised at the next write
    assert await link.write_once()
    assert link.cache.counters.invalidations == 1
    rows, hit = await ask(pipeline, closed)
    assert not hit and [r["sum"] for r in rows] == [41.0, 2.0]
    await _stored(link)
    rows, hit = await ask(pipeline, closed)
    assert hit and [r["sum"] for r in rows] == [41.0, 2.0]
    await link.close()


async def test_a_purge_drops_the_tenants_cached_answers(tmp_path: Path, prefix: str) -> None:
    _clock, pipeline, link = await filled(tmp_path, prefix)
    closed = query(START, START + 120)
    await ask(pipeline, closed)
    await _stored(link)
    purged(pipeline, "default")
    assert not (await ask(pipeline, closed))[1]  # bypassed until the raise reaches Redis
    assert await link.write_once()
    assert not (await ask(pipeline, closed))[1]  # the old entry's generation is gone
    await _stored(link)
    assert (await ask(pipeline, closed))[1]
    await link.close()


async def test_with_redis_away_queries_are_computed(tmp_path: Path) -> None:
    clock = ManualClock(START + 10)
    pipeline, link = redis_pipeline(tmp_path, clock, "unused", redis_url="redis://127.0.0.1:1/0")
    send(pipeline, b"hits:1|c")
    clock.set(START + 1800)
    link.health.ok()  # believed up: the lookup itself fails, and the answer still comes
    rows, hit = await ask(pipeline, query(START, START + 120))
    assert not hit and [r["sum"] for r in rows] == [1.0]
    assert not link.health.connected and link.cache.counters.errors == 1
    await link.close()


async def _stored(link: RedisSink) -> None:
    """Let the background stores finish."""
    for task in list(link.cache._stores):
        await task
