"""SSE and WebSocket streams through the real daemon: receive, filter, fall behind, leave, limits,
tenants."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.daemon import RunningDaemon, start_daemon
from tests.integration.streams import next_event, sse_frames

pytestmark = pytest.mark.integration

TOKENS = "ra:acme:reader,wa:acme:writer,rb:globex:reader,wb:globex:writer"
STREAMS = """
[ingest]
tenant = "acme"

[streams]
queue_size = 20
max_per_tenant = 3
heartbeat_interval = "300ms"
"""


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path, STREAMS, env={"COLLECTORD_AUTH_TOKENS": TOKENS})
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def record(http: aiohttp.ClientSession, d: RunningDaemon, token: str, **metric: object) -> None:
    async with http.post(d.url("/api/v1/metrics"), json=metric, headers=bearer(token)) as response:
        assert response.status == 201, await response.text()


async def stream_count(http: aiohttp.ClientSession, d: RunningDaemon) -> int:
    async with http.get(d.url("/api/v1/stats"), headers=bearer("ra")) as response:
        return int((await response.json())["streams"]["clients"])


async def wait_for_count(http: aiohttp.ClientSession, d: RunningDaemon, expected: int) -> None:
    deadline = time.monotonic() + 5
    while (count := await stream_count(http, d)) != expected:
        assert time.monotonic() < deadline, f"{count} streams open, expected {expected}"
        await asyncio.sleep(0.05)


async def test_sse_delivers_each_matching_sample_within_a_second(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    url = daemon.url("/api/v1/stream?metric=st.lat&metric=st.other&tag=env:prod")
    async with http.get(url, headers=bearer("ra")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        frames = sse_frames(response)
        assert await anext(frames) == ("", "subscribed")
        # StatsD over UDP: through the ring and the consumer task.
        sent = time.monotonic()
        daemon.send_udp(b"st.lat:12|ms|#env:prod\nst.lat:99|ms|#env:dev\nst.lat:13|ms|#env:prod,host:a\n")
        first = await asyncio.wait_for(next_event(frames, "metric"), 1.0)
        assert time.monotonic() - sent < 1.0
        second = await asyncio.wait_for(next_event(frames, "metric"), 1.0)
        assert (first["name"], first["type"], first["value"], first["tags"]) == (
            "st.lat",
            "HISTOGRAM",
            12.0,
            {"env": "prod"},
        )
        assert second["value"] == 13.0 and second["tags"] == {"env": "prod", "host": "a"}
        assert first["timestamp"].endswith("Z")
        # The record API publishes too; the dev sample above never arrived.
        await record(http, daemon, "wa", name="st.other", value=5, type="GAUGE", tags={"env": "prod"})
        third = await asyncio.wait_for(next_event(frames, "metric"), 1.0)
        assert (third["name"], third["value"], third["type"]) == ("st.other", 5.0, "GAUGE")
        # A quiet stream sends heartbeats.
        assert await asyncio.wait_for(next_event(frames, "heartbeat"), 2.0)


async def test_slow_client_gets_a_dropped_event_with_the_count(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    async with http.get(daemon.url("/api/v1/stream?metric=st.burst"), headers=bearer("ra")) as response:
        frames = sse_frames(response)
        await anext(frames)
        batch = [{"name": "st.burst", "value": i, "type": "GAUGE"} for i in range(100)]
        async with http.post(daemon.url("/api/v1/metrics/batch"), json={"metrics": batch}, headers=bearer("wa")) as r:
            assert r.status == 200
        # One batch is published at once: the queue of 20 keeps the newest 20.
        dropped = await asyncio.wait_for(next_event(frames, "dropped"), 2.0)
        assert dropped == {"count": 80}
        values = [(await next_event(frames, "metric"))["value"] for _ in range(20)]
        assert values == [float(i) for i in range(80, 100)]


async def test_leaving_releases_the_subscription(daemon: RunningDaemon, http: aiohttp.ClientSession) -> None:
    response = await http.get(daemon.url("/api/v1/stream?metric=st.leave"), headers=bearer("ra"))
    await anext(sse_frames(response))
    ws = await http.ws_connect(daemon.url("/api/v1/ws"), headers=bearer("ra"))
    await ws.send_json({"subscribe": {"metricNames": ["st.leave"]}})
    assert (await ws.receive_json(timeout=2))["event"] == "subscribed"
    await wait_for_count(http, daemon, 2)
    response.close()
    await wait_for_count(http, daemon, 1)
    await ws.close()
    await wait_for_count(http, daemon, 0)
    # Samples for nobody cost nothing and break nothing.
    await record(http, daemon, "wa", name="st.leave", value=1, type="GAUGE")


async def test_websocket_subscribes_filters_and_reports_drops(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(daemon.url("/api/v1/ws"), headers=bearer("ra")) as ws:
        await ws.send_json({"subscribe": {"metricNames": ["ws.a", "ws.b"], "tags": {"region": "eu"}}})
        confirmation = await ws.receive_json(timeout=2)
        assert confirmation == {"event": "subscribed", "metricNames": ["ws.a", "ws.b"], "tags": {"region": "eu"}}
        sent = time.monotonic()
        daemon.send_udp(b"ws.a:1|c|#region:us\nws.a:2|c|#region:eu\nws.c:3|c|#region:eu\n")
        message = await ws.receive_json(timeout=1)
        assert time.monotonic() - sent < 1.0
        assert message == {
            "event": "metric",
            "name": "ws.a",
            "type": "COUNTER",
            "value": 2.0,
            "tags": {"region": "eu"},
            "timestamp": message["timestamp"],
        }
        batch = [{"name": "ws.b", "value": i, "type": "GAUGE", "tags": {"region": "eu"}} for i in range(50)]
        async with http.post(daemon.url("/api/v1/metrics/batch"), json={"metrics": batch}, headers=bearer("wa")) as r:
            assert r.status == 200
        messages = [await ws.receive_json(timeout=2) for _ in range(21)]
        assert messages[0] == {"event": "dropped", "count": 30}
        assert [m["value"] for m in messages[1:]] == [float(i) for i in range(30, 50)]
        heartbeat = await ws.receive_json(timeout=2)
        assert heartbeat["event"] == "heartbeat"


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("not json", "invalid_subscription"),
        (json.dumps({"subscribe": {"metricNames": []}}), "invalid_subscription"),
        (json.dumps({"subscribe": {"metricNames": [f"m{i}" for i in range(6)]}}), "invalid_subscription"),
        (json.dumps({"subscribe": {"metricNames": ["9bad"]}}), "invalid_subscription"),
        (json.dumps({"unsubscribe": {}}), "invalid_subscription"),
    ],
)
async def test_websocket_bad_subscription_is_an_error_then_a_close(
    daemon: RunningDaemon, http: aiohttp.ClientSession, first: str, reason: str
) -> None:
    headers = {**bearer("ra"), "Accept-Language": "pl"}
    async with http.ws_connect(daemon.url("/api/v1/ws"), headers=headers) as ws:
        await ws.send_str(first)
        error = await ws.receive_json(timeout=2)
        assert error["event"] == "error" and error["error"]["code"] == reason
        assert error["error"]["message"].startswith("Nieprawidłowa subskrypcja")
        closing = await ws.receive(timeout=2)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008
    await wait_for_count(http, daemon, 0)


async def test_streams_need_a_reader_token(daemon: RunningDaemon, http: aiohttp.ClientSession) -> None:
    async with http.get(daemon.url("/api/v1/stream?metric=x")) as response:
        assert response.status == 401
    async with http.get(daemon.url("/api/v1/stream?metric=x"), headers=bearer("wa")) as response:
        assert response.status == 403 and (await response.json())["error"]["code"] == "forbidden"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(daemon.url("/api/v1/ws"), headers=bearer("wb"))
    assert refused.value.status == 403
    async with http.get(daemon.url("/api/v1/stream"), headers=bearer("ra")) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "missing_metric"
    too_many = "&".join(f"metric=m{i}" for i in range(6))
    async with http.get(daemon.url(f"/api/v1/stream?{too_many}"), headers=bearer("ra")) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "too_many_metrics"
    async with http.get(daemon.url("/api/v1/ws"), headers=bearer("ra")) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "websocket_required"
    await wait_for_count(http, daemon, 0)


async def test_a_tenant_never_streams_another_tenants_samples(
    daemon: RunningDaemon, http: aiohttp.ClientSession
) -> None:
    acme = await http.get(daemon.url("/api/v1/stream?metric=shared.name"), headers=bearer("ra"))
    globex = await http.get(daemon.url("/api/v1/stream?metric=shared.name"), headers=bearer("rb"))
    acme_frames, globex_frames = sse_frames(acme), sse_frames(globex)
    await anext(acme_frames)
    await anext(globex_frames)
    await record(http, daemon, "wb", name="shared.name", value=2, type="GAUGE")
    await record(http, daemon, "wa", name="shared.name", value=1, type="GAUGE")
    assert (await asyncio.wait_for(next_event(acme_frames, "metric"), 1))["value"] == 1.0
    assert (await asyncio.wait_for(next_event(globex_frames, "metric"), 1))["value"] == 2.0
    # UDP samples belong to the listeners' tenant (acme here).
    daemon.send_udp(b"shared.name:3|g\n")
    assert (await asyncio.wait_for(next_event(acme_frames, "metric"), 1))["value"] == 3.0
    await record(http, daemon, "wb", name="shared.name", value=5, type="GAUGE")
    assert (await asyncio.wait_for(next_event(globex_frames, "metric"), 1))["value"] == 5.0
    acme.close()
    globex.close()


async def test_streams_per_tenant_are_limited(daemon: RunningDaemon, http: aiohttp.ClientSession) -> None:
    held = [await http.get(daemon.url("/api/v1/stream?metric=lim.a"), headers=bearer("ra")) for _ in range(3)]
    assert all(r.status == 200 for r in held)
    async with http.get(daemon.url("/api/v1/stream?metric=lim.a"), headers=bearer("ra")) as refused:
        assert refused.status == 429
        assert (await refused.json())["error"]["code"] == "too_many_streams"
    with pytest.raises(aiohttp.WSServerHandshakeError) as ws_refused:
        await http.ws_connect(daemon.url("/api/v1/ws"), headers=bearer("ra"))
    assert ws_refused.value.status == 429
    # Another tenant is not affected; a closed stream frees its place.
    async with http.get(daemon.url("/api/v1/stream?metric=lim.a"), headers=bearer("rb")) as other:
        assert other.status == 200
    held.pop().close()
    await wait_for_count(http, daemon, 2)
    async with http.ws_connect(daemon.url("/api/v1/ws"), headers=bearer("ra")) as ws:
        await ws.send_json({"subscribe": {"metricNames": ["lim.a"]}})
        assert (await ws.receive_json(timeout=2))["event"] == "subscribed"
    for response in held:
        response.close()
    await wait_for_count(http, daemon, 0)


async def test_open_streams_do_not_hold_up_a_clean_stop(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    daemon = start_daemon(tmp_path)
    response = await http.get(daemon.url("/api/v1/stream?metric=stop.me"))
    await anext(sse_frames(response))
    ws = await http.ws_connect(daemon.url("/api/v1/ws"))
    await ws.send_json({"subscribe": {"metricNames": ["stop.me"]}})
    await ws.receive_json(timeout=2)
    began = time.monotonic()
    assert await asyncio.to_thread(daemon.stop) == 0, daemon.log()
    assert time.monotonic() - began < 5
    response.close()
    await ws.close()
