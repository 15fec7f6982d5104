"""The daemon's roll-up task turns the garbage collector off for a burst of roll-ups and back on
(freezing what the burst made) when it ends, or when the task is cancelled mid-burst; it waits
while a sink writes a pass, for a bounded time."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest

from collectord import rollups
from collectord.config import load_config
from collectord.daemon import Daemon
from collectord.rollups import RollUps
from tests.test_reload import write


class BurstyPipeline:
    """roll_slice reports work left for `slices` calls, recording whether the collector ran."""

    def __init__(self, slices: int, writing: bool = False) -> None:
        self.left = slices
        self.collector_on: list[bool] = []
        self.writing = writing

    def rolls_pending(self) -> bool:
        return self.left > 0

    def sinks_writing(self) -> bool:
        return self.writing

    def roll_slice(self, budget: float) -> bool:
        self.collector_on.append(gc.isenabled())
        self.left -= 1
        return self.left > 0


@pytest.fixture
def daemon(tmp_path: Path) -> Daemon:
    path = tmp_path / "collectord.toml"
    write(path, 0, tmp_path / "data")
    return Daemon(load_config(path, {}), config_path=str(path))


async def test_collector_waits_for_a_burst_and_is_back_after_it(daemon: Daemon) -> None:
    assert gc.isenabled()
    frozen_before = gc.get_freeze_count()
    pipeline = BurstyPipeline(slices=5)
    task = asyncio.create_task(RollUps(pipeline).run())
    while pipeline.left > 0:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    assert gc.isenabled()
    # Off from the second slice (the first found work left) until the burst ended.
    assert pipeline.collector_on[0] is True
    assert not any(pipeline.collector_on[1:5])
    assert gc.get_freeze_count() > frozen_before
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelled_mid_burst_turns_the_collector_back_on(daemon: Daemon) -> None:
    pipeline = BurstyPipeline(slices=10**9)
    daemon.roll_ups = RollUps(pipeline)
    task = asyncio.create_task(daemon._roll_up())
    while len(pipeline.collector_on) < 3:
        await asyncio.sleep(0)
    assert not gc.isenabled()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.isenabled()


async def test_roll_ups_wait_while_a_sink_writes_but_not_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollups, "WAIT_FOR_WRITE_MAX", 0.2)
    pipeline = BurstyPipeline(slices=3, writing=True)
    task = asyncio.create_task(RollUps(pipeline).run())
    await asyncio.sleep(0.1)
    assert pipeline.collector_on == []  # waiting for the write
    pipeline.writing = False
    while pipeline.left > 0:
        await asyncio.sleep(0.001)
    assert len(pipeline.collector_on) == 3
    # A write that never ends holds the next burst back only WAIT_FOR_WRITE_MAX.
    pipeline.writing, pipeline.left = True, 2
    await asyncio.sleep(0.6)  # the idle poll (0.25 s), then the bounded wait
    assert pipeline.left == 0 and len(pipeline.collector_on) == 5
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
