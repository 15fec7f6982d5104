"""Cross-host streams: samples recorded here reach stream clients connected to other daemons.

Interest travels first. Each daemon announces which (tenant, metric) its stream clients follow:
a hash per daemon with a TTL renewed at a third of it, its id in a sorted set scored by expiry,
and a message on a control channel whenever it changes, so the others re-read it at once. Each
daemon hands the union of the others' interest to its hub (`set_remote_interest`); only then
does the hub pass samples to `forward`, so with nobody following anything the hot path pays
one flag check. Forwarded events leave in one PUBLISH per (tenant, metric) per batch, on a
tenant-scoped channel that only the daemons with local followers subscribe to; they are handed
to the hub there (`deliver_remote`). Events are live data: when Redis is away they are dropped
and counted, never queued for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from redis.exceptions import RedisError

from collectord.redis.health import Health
from collectord.redis.keys import Keys
from collectord.sinks.base import Backoff
from collectord.streams.hub import Event, StreamHub

log = logging.getLogger("collectord.redis")

# How long the follower waits for a message before looking at its own interest again.
POLL_SECONDS = 0.1
CLOSE_SECONDS = 1.0
# Events waiting to be published; beyond it new ones are dropped (counted).
MAX_OUTBOX = 100_000


class Envelope(msgspec.Struct):
    o: str  # the publishing daemon's node id
    e: list[dict[str, Any]]


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Envelope).decode


class StreamBridge:
    def __init__(self, hub: StreamHub, keys: Keys, node: str, interest_ttl: float, health: Health) -> None:
        self.hub = hub
        self.keys = keys
        self.node = node
        self.interest_ttl = interest_ttl
        self.health = health
        self.outbox: list[tuple[str, list[Event]]] = []
        self.outbox_events = 0
        self.published = 0
        self.received = 0
        self.dropped = 0
        self._wake = asyncio.Event()
        self._interest_dirty = True
        self._remote_dirty = False
        self._channels: set[str] = set()
        hub.forwarders.append(self.forward)
        hub.interest_listeners.append(self.interest_changed)

    # ------------------------------------------------------------------ outgoing

    def forward(self, tenant: str, events: list[Event]) -> None:
        """The hub's forwarder: local samples some other daemon follows."""
        if self.outbox_events >= MAX_OUTBOX:
            self.dropped += len(events)
            return
        self.outbox.append((tenant, events))
        self.outbox_events += len(events)
        self._wake.set()

    async def publish_loop(self, client: Any) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.publish_pending(client)

    async def publish_pending(self, client: Any) -> None:
        outbox, count = self.outbox, self.outbox_events
        if not outbox:
            return
        self.outbox, self.outbox_events = [], 0
        grouped: dict[tuple[str, str], list[Event]] = {}
        for tenant, events in outbox:
            for event in events:
                grouped.setdefault((tenant, event["name"]), []).append(event)
        pipe = client.pipeline(transaction=False)
        for (tenant, name), events in grouped.items():
            pipe.publish(self.keys.stream(tenant, name), _encode(Envelope(self.node, events)))
        try:
            await pipe.execute()
        except (RedisError, OSError) as error:
            self.dropped += count
            self.health.failed(error)
            return
        self.published += count

    # ------------------------------------------------------------------ interest

    def interest_changed(self) -> None:
        """The hub's interest listener: a local client came or went."""
        self._interest_dirty = True

    def local_interest(self) -> dict[str, str]:
        return {f"{tenant}:{name}": "1" for tenant, name in self.hub.local_interest()}

    async def announce(self, client: Any, changed: bool) -> None:
        """Write this daemon's interest and renew its TTL; tell the others when it changed."""
        key, ttl = self.keys.interest(self.node), self.interest_ttl
        interest = self.local_interest()
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        if interest:
            pipe.hset(key, mapping=interest)
            pipe.expire(key, int(ttl) + 1)
        pipe.zadd(self.keys.nodes, {self.node: time.time() + ttl})
        if changed:
            pipe.publish(self.keys.interest_changed, self.node)
        await pipe.execute()

    async def refresh_remote(self, client: Any) -> None:
        """Read every other live daemon's interest and hand the union to the hub."""
        pipe = client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.nodes, "-inf", time.time())
        pipe.zrange(self.keys.nodes, 0, -1)
        _, nodes = await pipe.execute()
        others = [n.decode() for n in nodes if n.decode() != self.node]
        remote: dict[tuple[str, str], int] = {}
        if others:
            pipe = client.pipeline(transaction=False)
            for node in others:
                pipe.hgetall(self.keys.interest(node))
            for held in await pipe.execute():
                for field in held:
                    tenant, _, name = field.decode().partition(":")
                    remote[(tenant, name)] = remote.get((tenant, name), 0) + 1
        if remote != self.hub.remote_interest:
            self.hub.set_remote_interest(remote)

    async def leave(self, client: Any) -> None:
        """At stop: the others stop forwarding to this daemon at once, not after the TTL."""
        pipe = client.pipeline(transaction=False)
        pipe.delete(self.keys.interest(self.node))
        pipe.zrem(self.keys.nodes, self.node)
        pipe.publish(self.keys.interest_changed, self.node)
        await pipe.execute()

    # ------------------------------------------------------------------ incoming

    async def follow(self, client: Any) -> None:
        """Keep subscriptions and interest in step with local clients, receive what others
        publish; reconnects with backoff whenever Redis goes away."""
        backoff = Backoff(base=0.2, cap=5.0)
        while True:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.interest_changed)
                self._channels = set()
                self._interest_dirty = True
                renew_at = 0.0
                while True:
                    if self._interest_dirty:
                        self._interest_dirty = False
                        await self._sync_channels(pubsub)
                        await self.announce(client, changed=True)
                    if time.monotonic() >= renew_at:
                        await self.announce(client, changed=False)
                        self._remote_dirty = True
                        renew_at = time.monotonic() + self.interest_ttl / 3
                    if self._remote_dirty:
                        self._remote_dirty = False
                        await self.refresh_remote(client)
                        self.health.ok()
                        backoff.reset()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_SECONDS)
                    while message is not None:
                        self._handle(message)
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
            except (RedisError, OSError) as error:
                self.health.failed(error)
                # Nobody elsewhere can be reached: stop forwarding until Redis is back.
                self.hub.set_remote_interest({})
                self.outbox, self.outbox_events = [], 0
                await asyncio.sleep(backoff.next_delay())
            finally:
                # Bounded: a connection cut mid-read must not hold up the daemon's stop.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), CLOSE_SECONDS)

    async def _sync_channels(self, pubsub: Any) -> None:
        wanted = {self.keys.stream(tenant, name) for tenant, name in self.hub.local_interest()}
        new, gone = wanted - self._channels, self._channels - wanted
        if new:
            await pubsub.subscribe(*new)
        if gone:
            await pubsub.unsubscribe(*gone)
        self._channels = wanted

    def _handle(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message["channel"].decode()
        data = message["data"]
        if channel == self.keys.interest_changed:
            if data.decode() != self.node:
                self._remote_dirty = True
            return
        target = self.keys.parse_stream(channel)
        if target is None:
            return
        try:
            envelope = _decode(data)
        except msgspec.DecodeError:
            log.warning("undecodable stream message", extra={"channel": channel})
            return
        if envelope.o == self.node:
            return  # our own samples reached our clients through the hub already
        self.received += len(envelope.e)
        self.hub.deliver_remote(target[0], envelope.e)
