"""The query cache: answers over closed periods only, so a cached answer is never stale.

A range is cacheable when every one of its periods has ended, and ended long enough ago that
no sample can still land in it: a timestamped sample is accepted only if it is at most
`aggregate.late_allowance` older than its arrival, so once a period's end is further back than
that (plus one flush interval, for batches still queued and for other daemons' flushes) its
content is final. A range that reaches into an open period, or into the late allowance, is
always computed. Two things can still change a closed period, and both invalidate: a batch
applied long after it arrived (a stalled consumer; `aggregator.touched` shows the write), and a
purge (`DELETE /api/v1/metrics` calls `purged`). Invalidation raises the tenant's generation;
an entry stored under an older generation is a miss, and until the raise reaches Redis the
tenant's queries bypass the cache.

Keys hold the tenant and this daemon's source id (an answer is what this daemon knows: its
own memory, plus what it reads from shared backends) and the normalised query: periods, not
the raw start/end, so "-1h" asked twice a second apart hits when it covers the same periods.
Entries live `redis.cache_ttl` (60 s), or `redis.cache_ttl_old` for ranges that ended over an
hour ago, and never past the moment the range's oldest window leaves memory (when no
PostgreSQL keeps it beyond that).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError

from collectord.aggregation.aggregator import LEVEL_OF_GRANULARITY
from collectord.aggregation.query import Query
from collectord.aggregation.series import Series
from collectord.aggregation.windows import GRANULARITY_SECONDS, align
from collectord.redis.health import Health
from collectord.redis.hooks import Compute, Rows, rows_of
from collectord.redis.keys import Keys

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline


# Ranges that ended longer ago than this get the longer TTL.
OLD_RANGE_SECONDS = 3600.0
_encode = msgspec.json.Encoder().encode


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    stored: int = 0
    invalidations: int = 0
    errors: int = 0

    def document(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "bypassed": self.bypassed,
            "stored": self.stored,
            "invalidations": self.invalidations,
            "errors": self.errors,
        }


class QueryCache:
    def __init__(self, pipeline: Pipeline, client: Any, keys: Keys, health: Health, source: str) -> None:
        self.pipeline = pipeline
        self.client = client
        self.keys = keys
        self.health = health
        self.source = source
        redis = pipeline.config.redis
        self.ttl, self.ttl_old, self.timeout = redis.cache_ttl, redis.cache_ttl_old, redis.timeout
        self.memory_only = not pipeline.config.postgres.dsn
        # Tenants whose generation must be raised (with a mark that changes at every new
        # reason); their queries bypass the cache meanwhile.
        self.stale_tenants: dict[str, int] = {}
        self._marks = 0
        self.counters = CacheCounters()
        self._stores: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ when

    def settled_before(self, now: float) -> float:
        """No sample accepted from now on can fall before this moment."""
        settings = self.pipeline.aggregator.settings
        return now - settings.late_allowance - settings.flush_interval

    def ttl_for(self, query: Query, now: float) -> float | None:
        """How long this query's answer may be kept, or None when it must be computed."""
        seconds = GRANULARITY_SECONDS[query.granularity]
        last_end = align(math.ceil(query.end) - 1, seconds) + seconds
        if last_end > align(now, seconds) or last_end > self.settled_before(now):
            return None
        if query.tenant in self.stale_tenants or self._touched(query, last_end):
            return None
        ttl = self.ttl_old if last_end <= now - OLD_RANGE_SECONDS else self.ttl
        if self.memory_only:
            # The oldest period leaves memory (and the answer) at its retention.
            retention = self.pipeline.aggregator.settings.retention[LEVEL_OF_GRANULARITY[query.granularity] - 1]
            ttl = min(ttl, align(query.start, seconds) + seconds + retention - now)
        return ttl if ttl >= 1.0 else None

    def _touched(self, query: Query, last_end: float) -> bool:
        """Late writes applied but not yet offered to sinks (offers come every tick)."""
        touched = self.pipeline.aggregator.touched
        if not touched:
            return False
        names = set(query.metrics)
        settled = self.settled_before(self.pipeline.clock.now())
        hit = False
        for series, earliest in touched.items():
            if series.tenant == query.tenant and series.name in names and earliest < last_end:
                hit = True
            if earliest < settled:
                self.mark_stale(series.tenant)
        return hit

    def note_touched(self, touched: dict[Series, float], now: float) -> None:
        """Late writes into periods that may be cached: invalidate their tenants."""
        settled = self.settled_before(now)
        for series, earliest in touched.items():
            if earliest < settled:
                self.mark_stale(series.tenant)

    def mark_stale(self, tenant: str) -> None:
        self._marks += 1
        self.stale_tenants[tenant] = self._marks

    # ------------------------------------------------------------------ what

    def digest(self, query: Query) -> str:
        seconds = GRANULARITY_SECONDS[query.granularity]
        first = align(query.start, seconds)
        last = align(math.ceil(query.end) - 1, seconds)
        normal = [
            self.source,
            list(dict.fromkeys(query.metrics)),
            query.granularity,
            first,
            last,
            query.aggregation,
            query.tags,
            query.group_by,
            query.limit,
        ]
        return hashlib.sha256(_encode(normal)).hexdigest()[:32]

    # ------------------------------------------------------------------ answer

    async def answer(self, query: Query, compute: Compute) -> tuple[Rows, bool]:
        """The rows of `query` and whether they came from the cache."""
        now = self.pipeline.clock.now()
        ttl = self.ttl_for(query, now) if self.health.connected else None
        if ttl is None:
            self.counters.bypassed += 1
            return await rows_of(compute), False
        entry = self.keys.cache_entry(query.tenant, self.digest(query))
        generation_key = self.keys.cache_generation(query.tenant)
        generation = b"0"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.get(generation_key)
            pipe.get(entry)
            held_generation, held = await asyncio.wait_for(pipe.execute(), self.timeout)
            generation = held_generation or b"0"
            if held is not None:
                stored_generation, _, body = held.partition(b"\n")
                if stored_generation == generation:
                    self.counters.hits += 1
                    return msgspec.json.decode(body), True
        except (RedisError, OSError, msgspec.DecodeError) as error:
            self.counters.errors += 1
            if not isinstance(error, msgspec.DecodeError):
                self.health.failed(error)
                return await rows_of(compute), False
        self.counters.misses += 1
        rows = await rows_of(compute)
        if query.tenant not in self.stale_tenants:
            # Stored under the generation read before computing: an invalidation meanwhile wins.
            task = asyncio.get_running_loop().create_task(self._store(entry, generation + b"\n" + _encode(rows), ttl))
            self._stores.add(task)
            task.add_done_callback(self._stores.discard)
        return rows, False

    async def _store(self, entry: str, value: bytes, ttl: float) -> None:
        try:
            await asyncio.wait_for(self.client.set(entry, value, ex=max(1, int(ttl))), self.timeout * 4)
            self.counters.stored += 1
        except (RedisError, OSError) as error:
            self.counters.errors += 1
            self.health.failed(error)

    def invalidation_commands(self) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
        """Commands raising the generation of every stale tenant (the writer sends them)."""
        tenants = dict(self.stale_tenants)
        keep = int(2 * max(self.ttl, self.ttl_old)) + 60
        commands: list[tuple[Any, ...]] = []
        for tenant in tenants:
            key = self.keys.cache_generation(tenant)
            commands.append(("INCR", key))
            commands.append(("EXPIRE", key, keep))
        return tenants, commands

    def invalidated(self, tenants: dict[str, int]) -> None:
        """The raises for `tenants` reached Redis; a tenant marked again since stays stale."""
        for tenant, mark in tenants.items():
            if self.stale_tenants.get(tenant) == mark:
                del self.stale_tenants[tenant]
        self.counters.invalidations += len(tenants)
