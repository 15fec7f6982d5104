"""The background roll-ups: the coarse windows and the prune that an advance queued, run a slice
at a time between the event loop's other work (the daemon's task; the PostgreSQL benchmark runs
the same loop, so it measures what the daemon does)."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Protocol

# Longest run of queued roll-up work before the event loop gets control back.
ROLL_SLICE = 0.005
# How often an idle loop looks for queued work.
IDLE_POLL = 0.25
# While a sink writes a pass, the roll-ups wait for it, at most this long per burst: reads of
# windows not rolled up yet are exact, and the roll-ups' CPU (an hour's close of 100,000 series:
# about 1.5 s) would lengthen that write by as much.
WAIT_FOR_WRITE_MAX = 5.0
WAIT_POLL = 0.005


class RollingPipeline(Protocol):
    def roll_slice(self, budget: float) -> bool: ...

    def rolls_pending(self) -> bool: ...

    def sinks_writing(self) -> bool: ...


class RollUps:
    def __init__(self, pipeline: RollingPipeline) -> None:
        self.pipeline = pipeline
        # Whether the collector is off for a burst (see run), to turn it back on.
        self.gc_paused = False

    async def run(self) -> None:
        try:
            await self._loop()
        finally:
            if self.gc_paused and not gc.isenabled():
                gc.enable()
            self.gc_paused = False

    async def _loop(self) -> None:
        waited_since: float | None = None
        while True:
            if self.pipeline.sinks_writing() and self.pipeline.rolls_pending():
                now = time.monotonic()
                waited_since = now if waited_since is None else waited_since
                if now - waited_since < WAIT_FOR_WRITE_MAX:
                    await asyncio.sleep(WAIT_POLL)
                    continue
            if self.pipeline.roll_slice(ROLL_SLICE):
                # A roll-up makes cells by the hundred thousand, and each full collection it
                # set off walked the whole state (300-430 ms each at 100k series): the
                # collector waits for the burst, then what it made is frozen with the rest.
                if not self.gc_paused and gc.isenabled():
                    gc.disable()
                    self.gc_paused = True
                await asyncio.sleep(0)
            else:
                waited_since = None
                if self.gc_paused:
                    self.gc_paused = False
                    gc.enable()
                    gc.collect(1)
                    gc.freeze()
                await asyncio.sleep(IDLE_POLL)
