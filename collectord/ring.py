"""The bounded buffer between sources and aggregation.

It holds batches (one per packet or TCP read), not single samples: a source hands over the list
its parser filled, so the cost per sample is nothing and the cost per batch is one deque append.
Capacity is counted in samples. UDP sources drop a batch that does not fit (counted); TCP sources
pause reading until the consumer has made room (backpressure, nothing dropped).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from collectord.model import Sample

# What a batch's payload is, for the write-ahead log (replay parses it again).
PAYLOAD_NONE = 0
PAYLOAD_STATSD = 1
PAYLOAD_LINE = 2
PAYLOAD_SAMPLES = 3
# An audit event (JSON), logged so it is never lost; not applied to the aggregation.
PAYLOAD_AUDIT = 4
# A purge of in-memory windows (JSON: tenant's metric names and a time), logged so a replay
# applies it at the same point instead of bringing purged windows back.
PAYLOAD_PURGE = 5
# A worker's pre-aggregated frame (collectord/ingest/frame.py): connection id u64 | frame body.
PAYLOAD_FRAME = 6
# Key definitions a connection's later frames use, logged again after each checkpoint so a
# replay from any checkpoint finds them (msgpack: connection id, epoch, definitions).
PAYLOAD_FRAME_KEYS = 7


class Batch(NamedTuple):
    """Samples parsed from one packet or read, for one tenant, received at one moment, with the
    raw bytes they came from (logged as they are: cheaper than encoding the samples)."""

    tenant: str
    samples: list[Sample]
    received_at: float
    kind: int = PAYLOAD_NONE
    payload: bytes = b""
    # PAYLOAD_FRAME: the decoded frame (`samples` then holds only its raw samples, for streams).
    frame: Any = None


class Ring:
    """A bounded FIFO of batches with a wake-up for its single consumer."""

    def __init__(self, capacity: int, on_accept: Callable[[Batch], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least 1 sample")
        self.capacity = capacity
        # Told of every batch the ring takes (the write-ahead log appends it there and then).
        self.on_accept = on_accept
        self.fill = 0
        self.dropped_samples = 0
        self.dropped_batches = 0
        self.high_water = 0
        self._batches: deque[Batch] = deque()
        self._has_data = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()

    def offer(self, batch: Batch) -> bool:
        """Append the batch if it fits; otherwise count it as dropped and return False."""
        size = len(batch.samples)
        if self.fill + size > self.capacity and self.fill > 0:
            self.dropped_samples += size
            self.dropped_batches += 1
            return False
        self._append(batch, size)
        return True

    def force(self, batch: Batch, size: int | None = None) -> None:
        """Append even past capacity; for TCP, which has already paused its reader (and worker
        frames, whose `size` is the samples they stand for)."""
        self._append(batch, len(batch.samples) if size is None else size)

    def _append(self, batch: Batch, size: int) -> None:
        if self.on_accept is not None:
            self.on_accept(batch)
        self._batches.append(batch)
        self.fill += size
        if self.fill > self.high_water:
            self.high_water = self.fill
        if self.fill >= self.capacity:
            self._has_room.clear()
        self._has_data.set()

    @property
    def full(self) -> bool:
        return self.fill >= self.capacity

    def drain(self) -> list[Batch]:
        """Take every queued batch at once (the consumer works on them in one go)."""
        batches = list(self._batches)
        self._batches.clear()
        self.fill = 0
        self._has_data.clear()
        self._has_room.set()
        return batches

    async def wait_for_data(self) -> None:
        await self._has_data.wait()

    async def wait_for_room(self) -> None:
        await self._has_room.wait()
