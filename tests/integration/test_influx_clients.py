"""The real influxdb-client library (sync and async write APIs) and Telegraf-style v1 writes
against the daemon's /api/v2/write and /write."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from tests.integration.daemon import RunningDaemon, start_daemon

pytestmark = pytest.mark.integration
READER = {"Authorization": "Bearer look"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    running = start_daemon(tmp_path, env={"COLLECTORD_AUTH_TOKENS": "ink:acme:writer,look:acme:reader"})
    yield running
    assert running.stop() == 0, running.log()


def value(daemon: RunningDaemon, metric: str, tag: str = "") -> object:
    status, body = daemon.get(f"/api/v1/realtime?metric={metric}{tag}", READER)
    assert status == 200, body
    return body["value"]


@pytest.mark.parametrize("gzip", [False, True])
def test_sync_client_writes_points_and_lines(daemon: RunningDaemon, gzip: bool) -> None:
    now = int(time.time())
    with InfluxDBClient(url=daemon.url(""), token="ink", org="any", enable_gzip=gzip) as client:
        writer = client.write_api(write_options=SYNCHRONOUS)
        point = Point("ic.cpu").tag("host", "a").field("usage", 12.5).field("idle", 80.0).time(now, WritePrecision.S)
        writer.write(bucket="b", record=point, write_precision=WritePrecision.S)
        writer.write(bucket="b", record=f"ic.mem,host=a value=42i {now * 1000}", write_precision=WritePrecision.MS)
    assert value(daemon, "ic.cpu.usage", "&tag=host:a") == 12.5
    assert value(daemon, "ic.cpu.idle") == 80.0
    assert value(daemon, "ic.mem") == 42.0


def test_sync_client_sees_a_400_for_a_bad_line_and_the_good_lines_are_kept(daemon: RunningDaemon) -> None:
    with InfluxDBClient(url=daemon.url(""), token="ink", org="any") as client:
        writer = client.write_api(write_options=SYNCHRONOUS)
        with pytest.raises(ApiException) as refused:
            writer.write(bucket="b", record=["ic.good value=1", "ic.bad value=", "ic.good2 value=2"])
    assert refused.value.status == 400
    assert "invalid_line" in refused.value.body and '"line":2' in refused.value.body
    assert value(daemon, "ic.good") == 1.0 and value(daemon, "ic.good2") == 2.0


def test_sync_client_with_a_wrong_token_is_refused(daemon: RunningDaemon) -> None:
    with InfluxDBClient(url=daemon.url(""), token="nope", org="any") as client, pytest.raises(ApiException) as refused:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="ic.x value=1")
    assert refused.value.status == 401
    with (
        InfluxDBClient(url=daemon.url(""), token="look", org="any") as client,
        pytest.raises(ApiException) as forbidden,
    ):
        client.write_api(write_options=SYNCHRONOUS).write(bucket="b", record="ic.x value=1")
    assert forbidden.value.status == 403


async def test_async_client_writes(daemon: RunningDaemon) -> None:
    async with InfluxDBClientAsync(url=daemon.url(""), token="ink", org="any", enable_gzip=True) as client:
        written = await client.write_api().write(
            bucket="b",
            record=[Point("ic.async").tag("region", "eu").field("value", float(i)) for i in range(3)],
        )
        assert written is True
        with pytest.raises(ApiException) as refused:
            await client.write_api().write(bucket="b", record="ic.async value=1 not-a-timestamp")
        assert refused.value.status == 400
    assert value(daemon, "ic.async", "&tag=region:eu") == 2.0


def test_v1_write_with_basic_auth_like_telegraf(daemon: RunningDaemon) -> None:
    basic = base64.b64encode(b"telegraf:ink").decode()
    now_ns = time.time_ns()
    status, _ = daemon.post(
        "/write?db=telegraf&precision=n",
        f"ic.v1,host=x value=7 {now_ns}\n".encode(),
        {"Authorization": f"Basic {basic}"},
    )
    assert status == 204
    assert value(daemon, "ic.v1") == 7.0
    wrong = base64.b64encode(b"telegraf:bad").decode()
    status, reply = daemon.post("/write?db=telegraf", b"ic.v1 value=8\n", {"Authorization": f"Basic {wrong}"})
    assert status == 401 and reply["error"]["code"] == "unauthorized"
    status, reply = daemon.post("/write", b"ic.v1 value=8\n", {"Authorization": "Basic !!!"})
    assert status == 401
