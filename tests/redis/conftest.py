"""The shared Redis 7 on 127.0.0.1:6379, isolated per test by a key prefix removed afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

REDIS_URL = os.environ.get("COLLECTORD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def _reachable() -> bool:
    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        await client.aclose()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    if not await _reachable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL} (scripts/services starts it)")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
