"""The Redis link, as a sink: one client, three jobs, one status.

It sits among the sinks so it is told of every flush (series a flush closed or a late sample
touched still need their realtime value written; late writes into settled periods invalidate
the query cache) and so its health shows in /readyz, /api/v1/stats and /metrics like any
backend's. Its loops (the realtime writer, the stream publisher and the stream follower) each
reconnect with backoff; while Redis is away, ingest and local queries carry on untouched and
requests answer from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from collectord.aggregation.query import Query
from collectord.redis.health import Health
from collectord.redis.hooks import Compute, Rows
from collectord.redis.keys import Keys
from collectord.redis.query_cache import QueryCache
from collectord.redis.realtime import RealtimeWriter, merge_local, read_fleet, realtime_document
from collectord.redis.streams import StreamBridge
from collectord.selfmetrics import DurationHistogram
from collectord.sinks.base import Backoff, Flush, SinkStatus

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline

# Background writes may take this long before Redis counts as slow (requests wait far less).
COMMAND_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
# With nothing to write, Redis is still pinged this often so its health stays known.
PING_EVERY = 1.0
# Scanning the active series may take at most this share of the write interval.
SCAN_SHARE = 0.05
FORGET_EVERY = 60.0


class RedisSink:
    name = "redis"

    def __init__(self, pipeline: Pipeline) -> None:
        config = pipeline.config
        settings = config.redis
        self.pipeline = pipeline
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        source = config.instance.source_id()
        # Unique per process: two daemons may share a host name (and tests do).
        self.node = f"{source}:{os.getpid()}:{secrets.token_hex(4)}"
        self.client: Any = redis.asyncio.Redis.from_url(
            settings.url,
            socket_timeout=COMMAND_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            max_connections=64,
            # The loops here retry with their own backoff; a request never waits on retries.
            retry=Retry(NoBackoff(), 0),
        )
        self.health = Health()
        # Exported as collectord_sink_write_duration_seconds{sink="redis"}: one pipeline each.
        self.write_durations = DurationHistogram()
        self.realtime = RealtimeWriter(self.keys, settings.realtime_ttl, settings.recent_size)
        self.streams = StreamBridge(pipeline.hub, self.keys, self.node, settings.interest_ttl, self.health)
        self.cache = QueryCache(pipeline, self.client, self.keys, self.health, source)
        self.interval = settings.write_interval
        self._started = False

    # ------------------------------------------------------------------ the Sink protocol

    def on_flush(self, flush: Flush) -> None:
        if flush.replaying:
            return  # run() takes recovered values as already written
        self.realtime.note(record.series for record in flush.view)
        if flush.touched:
            self.realtime.note(flush.touched)
            self.cache.note_touched(flush.touched, self.pipeline.clock.now())

    async def run(self) -> None:
        if not self._started:
            self._started = True
            self.realtime.baseline(self.pipeline.aggregator)
        loops = [
            asyncio.create_task(self._write_loop(), name="redis:realtime"),
            asyncio.create_task(self.streams.follow(self.client), name="redis:follow"),
            asyncio.create_task(self.streams.publish_loop(self.client), name="redis:publish"),
        ]
        try:
            await asyncio.gather(*loops)
        finally:
            for loop in loops:
                loop.cancel()
            # The daemon awaits this task at stop without a bound of its own.
            await asyncio.wait(loops, timeout=2.0)

    async def drain(self) -> None:
        """At stop: the last realtime values, and tell the others to stop forwarding here."""
        with contextlib.suppress(RedisError, OSError):
            await self.write_once()
            await self.streams.leave(self.client)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def state(self) -> Any:
        return None

    def restore(self, state: Any) -> None:
        return None

    def status(self) -> SinkStatus:
        health, streams = self.health, self.streams
        return SinkStatus(
            name=self.name,
            connected=health.connected,
            lag_seconds=0.0 if health.connected else health.down_for(),
            queued=len(self.realtime.extra) + streams.outbox_events,
            written=self.realtime.series_written + streams.published,
            errors=health.errors,
            retries=health.retries,
            dropped=streams.dropped,
            last_error=health.last_error,
            extra={
                "node": self.node,
                "writeIntervalMs": round(self.interval * 1000.0, 1),
                "realtimeSeriesWritten": self.realtime.series_written,
                "streams": {
                    "localInterest": len(self.pipeline.hub.local_interest()),
                    "remoteInterest": len(self.pipeline.hub.remote_interest),
                    "published": streams.published,
                    "received": streams.received,
                    "dropped": streams.dropped,
                },
                "queryCache": self.cache.counters.document(),
            },
        )

    # ------------------------------------------------------------------ realtime writes

    async def _write_loop(self) -> None:
        backoff = Backoff(base=0.2, cap=10.0)
        last_contact = 0.0
        forget_at = time.monotonic() + FORGET_EVERY
        while True:
            await asyncio.sleep(self.interval)
            try:
                sent = await self.write_once()
                if sent or time.monotonic() - last_contact >= PING_EVERY:
                    if not sent:
                        await self.client.ping()
                    last_contact = time.monotonic()
                    self.health.ok()
                    backoff.reset()
            except (RedisError, OSError) as error:
                self.health.failed(error)
                await asyncio.sleep(backoff.next_delay())
            if time.monotonic() >= forget_at:
                forget_at = time.monotonic() + FORGET_EVERY
                self.realtime.forget_removed(self.pipeline.aggregator)

    async def write_once(self) -> bool:
        """One pipeline with every changed realtime value and pending invalidation; False when
        there was nothing to send. Raises when Redis fails (the changes stay pending)."""
        began = time.perf_counter()
        pending = self.realtime.scan(self.pipeline.aggregator)
        # A large fleet of active series must not turn the writer into a busy loop.
        self.interval = max(self.settings.write_interval, (time.perf_counter() - began) / SCAN_SHARE)
        commands = self.realtime.commands(pending, self.pipeline.clock.now())
        tenants, invalidations = self.cache.invalidation_commands()
        commands.extend(invalidations)
        if not commands:
            return False
        try:
            await self._execute(commands)
        except BaseException:
            self.realtime.failed(pending)
            raise
        self.realtime.done(pending)
        self.cache.invalidated(tenants)
        return True

    async def _execute(self, commands: list[tuple[Any, ...]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        with self.write_durations.time():
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise reply
            if isinstance(reply, RedisError):
                # A key of the wrong type (somebody else's data under our prefix): counted, and
                # not retried, which would add counter increments twice.
                self.health.errors += 1
                self.health.last_error = str(reply)[:300]

    # ------------------------------------------------------------------ requests

    async def realtime_answer(self, tenant: str, name: str, tags: list[tuple[str, str]]) -> dict[str, object] | None:
        """The fleet's realtime value, or None to answer from memory (Redis away or slow)."""
        if not self.health.connected:
            return None
        now = self.pipeline.clock.now()
        try:
            fleet = await asyncio.wait_for(
                read_fleet(self.client, self.keys, tenant, name, tags, now, self.settings.realtime_ttl),
                self.settings.timeout,
            )
        except (RedisError, OSError) as error:
            self.health.failed(error)
            return None
        local = self.pipeline.aggregator.matching_series(tenant, name, tags)
        merge_local(fleet, local, self.realtime)
        return realtime_document(name, fleet)

    async def answer_query(self, query: Query, compute: Compute) -> tuple[Rows, bool]:
        return await self.cache.answer(query, compute)
