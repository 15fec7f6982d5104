"""What the HTTP API asks of the Redis link, importable without loading redis-py: a daemon
with no Redis configured never pays for that import (start-up time)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from collectord.aggregation.query import Query

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline
    from collectord.redis.sink import RedisSink

Rows = list[dict[str, object]]
Compute = Callable[[], Rows | Awaitable[Rows]]


def redis_of(pipeline: Pipeline) -> RedisSink | None:
    for sink in pipeline.sinks:
        if sink.name == "redis":
            return sink  # type: ignore[return-value]
    return None


async def rows_of(compute: Compute) -> Rows:
    result = compute()
    if inspect.isawaitable(result):
        return await result
    return result


async def cached_rows(pipeline: Pipeline, query: Query, compute: Compute) -> tuple[Rows, bool]:
    """The query API's hook: rows from the cache when the range is closed and cached, else
    computed (and cached when closed). The bool says whether they came from the cache."""
    link = redis_of(pipeline)
    if link is None:
        return await rows_of(compute), False
    return await link.answer_query(query, compute)


async def fleet_realtime(
    pipeline: Pipeline, tenant: str, name: str, tags: list[tuple[str, str]]
) -> dict[str, object] | None:
    """The realtime hook: the fleet's answer from Redis, or None for the in-memory answer."""
    link = redis_of(pipeline)
    return None if link is None else await link.realtime_answer(tenant, name, tags)


def purged(pipeline: Pipeline, tenant: str) -> None:
    """Call after a purge (DELETE /api/v1/metrics): the tenant's cached answers are dropped."""
    link = redis_of(pipeline)
    if link is not None:
        link.cache.mark_stale(tenant)
