"""Stream clients for the tests and the benchmark: SSE over aiohttp, parsed frame by frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


async def sse_frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) per SSE frame; comments come as ("", comment text)."""
    event, data = "message", []
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            yield "", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def next_event(frames: AsyncIterator[tuple[str, Any]], wanted: str) -> Any:
    """The data of the next frame of type `wanted`, skipping heartbeats and comments."""
    async for event, data in frames:
        if event == wanted:
            return data
    raise AssertionError(f"stream ended before a {wanted!r} event")
