"""The writer's side-by-side upsert jobs: all succeed, or the first failure cancels the rest and
surfaces as itself (the retry loop matches on asyncpg's and OSError's types)."""

from __future__ import annotations

import asyncio

import pytest

from collectord.sinks.postgres.sink import _all_or_none


def test_all_jobs_run_to_the_end() -> None:
    done: list[int] = []

    async def job(n: int) -> None:
        await asyncio.sleep(0.001 * n)
        done.append(n)

    asyncio.run(_all_or_none([job(n) for n in (3, 1, 2)]))
    assert done == [1, 2, 3]


def test_first_failure_cancels_the_others_and_is_raised_as_itself() -> None:
    cancelled: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append("slow")
            raise

    async def failing() -> None:
        await asyncio.sleep(0.001)
        raise ConnectionResetError("cut")

    async def go() -> None:
        with pytest.raises(ConnectionResetError, match="cut"):
            await asyncio.wait_for(_all_or_none([slow(), failing()]), 5)

    asyncio.run(go())
    assert cancelled == ["slow"]


def test_cancelling_the_caller_cancels_every_job() -> None:
    cancelled: list[int] = []

    async def job(n: int) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    async def go() -> None:
        task = asyncio.ensure_future(_all_or_none([job(1), job(2)]))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sorted(cancelled) == [1, 2]
