"""Live streams over the hub: `GET /api/v1/stream` (SSE) and `GET /api/v1/ws` (WebSocket).

A stream holds one hub subscription from the moment it is accepted until the client leaves or
the daemon stops; the subscription is released in `finally`, whatever ended the stream. A quiet
stream sends a heartbeat every `streams.heartbeat_interval`; a client that left is noticed
within a second even when nothing is sent (the transport is checked while waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import msgspec
from aiohttp import WSMsgType, web
from msgspec import Meta

from collectord.aggregation.query import iso
from collectord.api import params
from collectord.api.auth import Authenticator, Principal
from collectord.api.errors import ApiError, error_body
from collectord.api.schemas import MetricName, Tags
from collectord.pipeline import Pipeline
from collectord.streams.hub import Event, StreamHub, Subscription, TooManyStreams

MAX_STREAM_METRICS = 5
# How often a waiting stream checks that its client is still there.
LIVENESS_CHECK = 1.0
# A WebSocket client must subscribe this soon after connecting.
SUBSCRIBE_TIMEOUT = 30.0
STREAM_TASKS = web.AppKey("stream_tasks", set[asyncio.Task[object]])


class SubscriptionRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The seed's MetricSubscriptionSchema: what a WebSocket client follows."""

    metricNames: Annotated[list[MetricName], Meta(min_length=1, max_length=MAX_STREAM_METRICS)]
    tags: Tags = msgspec.field(default_factory=dict)


class SubscribeMessage(msgspec.Struct, forbid_unknown_fields=True):
    """The first WebSocket message: `{"subscribe": {"metricNames": [...], "tags": {...}}}`."""

    subscribe: SubscriptionRequest


_encode = msgspec.json.Encoder().encode


def _text(message: object) -> str:
    # Text frames: browsers hand binary frames over as Blobs, not strings.
    return _encode(message).decode()


def sse_frame(event: str, data: object) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class StreamApi:
    def __init__(self, pipeline: Pipeline, auth: Authenticator, heartbeat: float) -> None:
        self.hub: StreamHub = pipeline.hub
        self.auth = auth
        self.heartbeat = heartbeat

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/stream", self.sse), web.get("/api/v1/ws", self.websocket)]

    @staticmethod
    async def on_shutdown(app: web.Application) -> None:
        """Streams never end on their own: end them so the side port can close."""
        tasks = app[STREAM_TASKS]
        for task in list(tasks):
            task.cancel()

    @contextlib.asynccontextmanager
    async def _held(self, request: web.Request, sub: Subscription) -> AsyncIterator[None]:
        """Registers the handler so shutdown can end it; always releases the subscription."""
        task = asyncio.current_task()
        tasks = request.app[STREAM_TASKS]
        if task is not None:
            tasks.add(task)
        try:
            yield
        finally:
            self.hub.unsubscribe(sub)
            if task is not None:
                tasks.discard(task)

    def _subscribe(self, principal: Principal, names: list[str], tags: list[tuple[str, str]]) -> Subscription:
        try:
            return self.hub.subscribe(principal.tenant, names, tags)
        except TooManyStreams:
            raise ApiError(
                429, "too_many_streams", details={"max": self.hub.max_per_tenant}, max=self.hub.max_per_tenant
            ) from None

    async def _events(
        self, request: web.Request, sub: Subscription, left: Callable[[], bool] = lambda: False
    ) -> AsyncIterator[tuple[list[Event], int]]:
        """Batches of (events, dropped); ([], 0) when a heartbeat is due. Ends when the client
        is gone (its connection closed, or `left()`)."""
        quiet_since = time.monotonic()
        while True:
            events, dropped = await sub.next(min(LIVENESS_CHECK, self.heartbeat))
            transport = request.transport
            if transport is None or transport.is_closing() or left():
                return
            if events or dropped:
                quiet_since = time.monotonic()
                yield events, dropped
            elif time.monotonic() - quiet_since >= self.heartbeat:
                quiet_since = time.monotonic()
                yield [], 0

    # ------------------------------------------------------------------ SSE

    async def sse(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "read")
        names = params.metric_names(request.query, max_count=MAX_STREAM_METRICS)
        tags = params.tag_filters(request.query)
        sub = self._subscribe(principal, names, tags)
        async with self._held(request, sub):
            response = web.StreamResponse(
                headers={
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    "X-Accel-Buffering": "no",  # proxies must not hold events back
                }
            )
            await response.prepare(request)
            # A first comment so clients see the stream open (the subscription is live).
            await response.write(b": subscribed\n\n")
            with contextlib.suppress(ConnectionError):
                async for events, dropped in self._events(request, sub):
                    if not events and not dropped:
                        await response.write(sse_frame("heartbeat", {"timestamp": iso(time.time())}))
                        continue
                    chunk = bytearray()
                    if dropped:
                        chunk += sse_frame("dropped", {"count": dropped})
                    for event in events:
                        chunk += sse_frame("metric", event)
                    await response.write(bytes(chunk))
            return response

    # ------------------------------------------------------------------ WebSocket

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "read")
        # A short close handshake: a stopping daemon does not wait long for silent clients.
        # No per-message deflate: small events to many clients cost more to compress than to send.
        ws = web.WebSocketResponse(heartbeat=self.heartbeat, max_msg_size=64 * 1024, timeout=1.0, compress=False)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "websocket_required")
        # Hold a place before upgrading, so a tenant at its limit gets a plain 429.
        placeholder = self._subscribe(principal, [], [])
        async with self._held(request, placeholder):
            await ws.prepare(request)
            wanted = await self._read_subscription(request, ws)
        if wanted is None:
            return ws
        # The place was released just now, with no await since: this cannot be refused.
        sub = self.hub.subscribe(principal.tenant, wanted.metricNames, sorted(wanted.tags.items()))
        async with self._held(request, sub):
            confirmation = {"event": "subscribed", "metricNames": wanted.metricNames, "tags": wanted.tags}
            with contextlib.suppress(ConnectionError):
                await ws.send_str(_text(confirmation))
                await self._pump(request, ws, sub)
        return ws

    async def _read_subscription(self, request: web.Request, ws: web.WebSocketResponse) -> SubscriptionRequest | None:
        try:
            message = await ws.receive(timeout=SUBSCRIBE_TIMEOUT)
        except TimeoutError:
            await self._refuse(request, ws, ApiError(400, "subscribe_timeout", seconds=SUBSCRIBE_TIMEOUT))
            return None
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        try:
            return msgspec.json.decode(message.data, type=SubscribeMessage).subscribe
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            await self._refuse(
                request, ws, ApiError(400, "invalid_subscription", details={"reason": str(error)}, reason=str(error))
            )
            return None

    @staticmethod
    async def _refuse(request: web.Request, ws: web.WebSocketResponse, error: ApiError) -> None:
        body = {"event": "error", **error_body(request, error)}
        with contextlib.suppress(ConnectionError):
            await ws.send_str(_text(body))
            await ws.close(code=1008, message=error.code.encode())

    async def _pump(self, request: web.Request, ws: web.WebSocketResponse, sub: Subscription) -> None:
        """Send events until the client closes (the reader sees the close frame)."""
        reader = asyncio.ensure_future(self._drain_incoming(ws))
        try:
            async for events, dropped in self._events(request, sub, lambda: reader.done() or ws.closed):
                if not events and not dropped:
                    await ws.send_str(_text({"event": "heartbeat", "timestamp": iso(time.time())}))
                    continue
                if dropped:
                    await ws.send_str(_text({"event": "dropped", "count": dropped}))
                for event in events:
                    await ws.send_str(_text({"event": "metric", **event}))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if not ws.closed:
                with contextlib.suppress(ConnectionError):
                    await ws.close()

    @staticmethod
    async def _drain_incoming(ws: web.WebSocketResponse) -> None:
        """Clients only subscribe; later messages are ignored, a close ends the stream."""
        async for _message in ws:
            pass
