"""Stream clients for the tests and the benchmark: SSE over aiohttp, parsed frame by frame."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp


async def sse_frames(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) per SSE frame; comments come as ("", comment text). Reads whatever has
    arrived and splits it into frames (cheap enough for hundreds of clients in one process)."""
    pending = b""
    async for chunk in response.content.iter_any():
        pending += chunk
        *frames, pending = pending.split(b"\n\n")
        for frame in frames:
            event, data = "message", []
            for line in frame.decode().split("\n"):
                if line.startswith(":"):
                    yield "", line[1:].strip()
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if data:
                yield event, json.loads("\n".join(data))


async def next_event(frames: AsyncIterator[tuple[str, Any]], wanted: str) -> Any:
    """The data of the next frame of type `wanted`, skipping heartbeats and comments."""
    async for event, data in frames:
        if event == wanted:
            return data
    raise AssertionError(f"stream ended before a {wanted!r} event")
