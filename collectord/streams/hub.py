"""The stream hub: routes samples, as they are applied, to the clients following them.

Interest is indexed by (tenant, metric name), so a batch costs one `hub.active` check when
nobody follows anything, and one dict lookup per sample otherwise. Each subscription has a
bounded queue: a client that falls behind loses its oldest events, counted, never the daemon's
memory. Interest can also come from other hosts (`remote_interest`, kept by the Redis bridge):
samples they follow are handed to `forwarders`, which publish them for those hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from collectord.aggregation.query import iso
from collectord.model import TYPE_OF_KIND, Tags
from collectord.ring import Batch

Event = dict[str, Any]
Forwarder = Callable[[str, list[Event]], None]


class TooManyStreams(Exception):
    """The tenant already has as many streams as allowed."""


class Subscription:
    def __init__(self, tenant: str, names: Iterable[str], tags: Iterable[tuple[str, str]], max_queue: int) -> None:
        self.tenant = tenant
        self.names = frozenset(names)
        self.tags = tuple(tags)
        self.max_queue = max_queue
        self.delivered = 0
        self.dropped = 0
        self._queue: deque[Event] = deque()
        self._wake = asyncio.Event()

    def matches(self, tags: dict[str, str]) -> bool:
        return all(tags.get(k) == v for k, v in self.tags)

    def offer(self, event: Event) -> None:
        if len(self._queue) >= self.max_queue:
            self._queue.popleft()  # the oldest goes: a live view wants the newest
            self.dropped += 1
        self._queue.append(event)
        self._wake.set()

    async def next(self, timeout: float) -> tuple[list[Event], int]:
        """Wait up to `timeout` for events; returns them and how many were dropped since the
        last call (both empty/zero on timeout: time for a heartbeat)."""
        if not self._queue:
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands
            # together with a wake-up, and a stream would then outlive its client.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        events = list(self._queue)
        self._queue.clear()
        dropped, self.dropped = self.dropped, 0
        self.delivered += len(events)
        return events, dropped


def sample_event(name: str, tags: Tags, kind: int, value: float | str, when: float) -> Event:
    return {"name": name, "type": TYPE_OF_KIND[kind].value, "value": value, "tags": dict(tags), "timestamp": iso(when)}


class StreamHub:
    def __init__(self, max_queue: int = 1000, max_per_tenant: int = 100) -> None:
        self.max_queue = max_queue
        self.max_per_tenant = max_per_tenant
        self._local: dict[tuple[str, str], list[Subscription]] = {}
        self._per_tenant: dict[str, int] = {}
        # (tenant, name) -> how many other hosts follow it (kept by the Redis bridge).
        self.remote_interest: dict[tuple[str, str], int] = {}
        self.forwarders: list[Forwarder] = []
        # Told whenever local interest changes (the Redis bridge re-announces it).
        self.interest_listeners: list[Callable[[], None]] = []
        self.active = False

    # ------------------------------------------------------------------ subscriptions

    def subscribe(self, tenant: str, names: Iterable[str], tags: Iterable[tuple[str, str]] = ()) -> Subscription:
        if self._per_tenant.get(tenant, 0) >= self.max_per_tenant:
            raise TooManyStreams(tenant)
        sub = Subscription(tenant, names, tags, self.max_queue)
        for name in sub.names:
            self._local.setdefault((tenant, name), []).append(sub)
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        self._interest_changed()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        for name in sub.names:
            subs = self._local.get((sub.tenant, name))
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._local[(sub.tenant, name)]
        left = self._per_tenant.get(sub.tenant, 0) - 1
        if left > 0:
            self._per_tenant[sub.tenant] = left
        else:
            self._per_tenant.pop(sub.tenant, None)
        self._interest_changed()

    def set_remote_interest(self, interest: dict[tuple[str, str], int]) -> None:
        self.remote_interest = interest
        self._update_active()

    def local_interest(self) -> list[tuple[str, str]]:
        return list(self._local)

    def stream_count(self) -> int:
        return sum(self._per_tenant.values())

    def _interest_changed(self) -> None:
        self._update_active()
        for listener in self.interest_listeners:
            listener()

    def _update_active(self) -> None:
        self.active = bool(self._local or self.remote_interest)

    # ------------------------------------------------------------------ publishing

    def publish_batch(self, batch: Batch) -> None:
        """Local samples, as applied: to local followers, and to forwarders for remote ones."""
        tenant = batch.tenant
        local, remote = self._local, self.remote_interest
        forward: list[Event] = []
        for (name, tags), kind, value, _weight, ts in batch.samples:
            key = (tenant, name)
            subs = local.get(key)
            wanted_remotely = key in remote
            if subs is None and not wanted_remotely:
                continue
            event = sample_event(name, tags, kind, value, batch.received_at if ts is None else ts)
            if subs is not None:
                self._deliver(subs, event)
            if wanted_remotely:
                forward.append(event)
        if forward:
            for forwarder in self.forwarders:
                forwarder(tenant, forward)

    def deliver_remote(self, tenant: str, events: Iterable[Event]) -> None:
        """Events another host published for followers here."""
        local = self._local
        for event in events:
            subs = local.get((tenant, event.get("name", "")))
            if subs is not None:
                self._deliver(subs, event)

    @staticmethod
    def _deliver(subs: list[Subscription], event: Event) -> None:
        tags = event["tags"]
        for sub in subs:
            if sub.matches(tags):
                sub.offer(event)
