"""A tenant never reads, counts or streams another tenant's data: a property over random tenants,
writes and queries, through the real daemon."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.daemon import RunningDaemon, start_daemon
from tests.integration.streams import sse_frames

pytestmark = pytest.mark.integration

TENANTS = ("t0", "t1", "t2")
METRICS = ("iso.a", "iso.b", "iso.c")
HOSTS = ("x", "y")
# Every tenant has a reader and a writer token: r-t0, w-t0, ...
TOKENS = ",".join(f"{role}-{t}:{t}:{name}" for t in TENANTS for role, name in (("r", "reader"), ("w", "writer")))

Write = tuple[int, str, str, int]
writes = st.lists(
    st.tuples(st.integers(0, len(TENANTS) - 1), st.sampled_from(METRICS), st.sampled_from(HOSTS), st.integers(1, 99)),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def tenants_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("tenancy"), env={"COLLECTORD_AUTH_TOKENS": TOKENS})
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def reader(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer r-{tenant}"}


def writer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer w-{tenant}", "Content-Type": "application/json"}


def write_all(daemon: RunningDaemon, batch: list[Write], as_lines: bool) -> None:
    by_tenant: dict[str, list[Write]] = defaultdict(list)
    for write in batch:
        by_tenant[TENANTS[write[0]]].append(write)
    for tenant, items in by_tenant.items():
        if as_lines:
            body = "".join(f"{m},host={h} value={v}\n" for _, m, h, v in items).encode()
            status, reply = daemon.post("/api/v2/write", body, writer(tenant))
            assert status == 204, reply
        else:
            metrics = [{"name": m, "value": v, "type": "GAUGE", "tags": {"host": h}} for _, m, h, v in items]
            status, reply = daemon.post(
                "/api/v1/metrics/batch", json.dumps({"metrics": metrics}).encode(), writer(tenant)
            )
            assert status == 200 and not reply["failed"], reply


# What each tenant has written so far, over every example: (metric, host) -> (sum, count).
MODEL: dict[str, dict[tuple[str, str], list[int]]] = {t: defaultdict(lambda: [0, 0]) for t in TENANTS}


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=writes, as_lines=st.booleans(), asker=st.sampled_from(TENANTS), host=st.sampled_from((None, *HOSTS)))
def test_a_tenant_reads_and_counts_only_its_own_data(
    tenants_daemon: RunningDaemon, batch: list[Write], as_lines: bool, asker: str, host: str | None
) -> None:
    daemon = tenants_daemon
    write_all(daemon, batch, as_lines)
    for tenant_index, metric, tag, value in batch:
        kept = MODEL[TENANTS[tenant_index]][(metric, tag)]
        kept[0] += value
        kept[1] += 1
    mine = MODEL[asker]
    tag_filter = f"&tag=host:{host}" if host else ""
    for metric in METRICS:
        wanted = [kept for (name, tag), kept in mine.items() if name == metric and host in (None, tag)]
        status, body = daemon.get(
            f"/api/v1/query?metric={metric}&start=-1d&granularity=1d&aggregation=SUM{tag_filter}", reader(asker)
        )
        assert status == 200, body
        assert sum(row["sum"] for row in body["data"]) == sum(k[0] for k in wanted)
        assert sum(row["count"] for row in body["data"]) == sum(k[1] for k in wanted)
        status, body = daemon.get(
            f"/api/v1/query?metric={metric}&start=-1d&group_by=host&granularity=1d", reader(asker)
        )
        assert {row["tags"]["host"] for row in body["data"]} == {tag for (name, tag) in mine if name == metric}
    status, body = daemon.get("/api/v1/series?metric=iso.", reader(asker))
    assert {(s["metricName"], s["tags"]["host"]) for s in body["series"]} == set(mine)
    assert body["totalCount"] == len(mine)
    status, body = daemon.get("/api/v1/cardinality", reader(asker))
    assert body["totalSeries"] == len(mine)
    assert {(m["metricName"], m["series"]) for m in body["byActiveSeries"]} == {
        (metric, sum(1 for name, _ in mine if name == metric)) for metric in {name for name, _ in mine}
    }
    status, body = daemon.get(f"/api/v1/realtime?metric=iso.a{tag_filter}", reader(asker))
    assert (body["series"] > 0) == any(name == "iso.a" and host in (None, tag) for name, tag in mine)


async def _stream_round(daemon: RunningDaemon, batch: list[Write]) -> dict[str, list[tuple[str, float]]]:
    """Every tenant follows every metric; returns what each one received for `batch`."""
    received: dict[str, list[tuple[str, float]]] = {t: [] for t in TENANTS}
    expected = {t: sum(1 for w in batch if TENANTS[w[0]] == t) for t in TENANTS}
    metrics = "&".join(f"metric={m}" for m in METRICS)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        responses = [await http.get(daemon.url(f"/api/v1/stream?{metrics}"), headers=reader(t)) for t in TENANTS]
        frames = [sse_frames(r) for r in responses]
        for f in frames:
            await anext(f)
        await asyncio.to_thread(write_all, daemon, batch, False)

        async def collect(tenant: str, stream: Any) -> None:
            while len(received[tenant]) < expected[tenant]:
                event, data = await anext(stream)
                if event == "metric":
                    received[tenant].append((data["name"], data["value"]))
            # Anything more (another tenant's samples) would arrive at once; wait a little.
            try:
                while True:
                    event, data = await asyncio.wait_for(anext(stream), 0.2)
                    if event == "metric":
                        received[tenant].append((data["name"], data["value"]))
            except TimeoutError:
                pass

        await asyncio.wait_for(asyncio.gather(*(collect(t, f) for t, f in zip(TENANTS, frames, strict=True))), 10)
        for r in responses:
            r.close()
    return received


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=writes)
def test_a_tenant_streams_only_its_own_samples(tenants_daemon: RunningDaemon, batch: list[Write]) -> None:
    received = asyncio.run(_stream_round(tenants_daemon, batch))
    for tenant_index, tenant in enumerate(TENANTS):
        sent = sorted((m, float(v)) for t, m, _, v in batch if t == tenant_index)
        assert sorted(received[tenant]) == sent
    # Keep the model in step for the read property (it shares the daemon).
    for tenant_index, metric, tag, value in batch:
        kept = MODEL[TENANTS[tenant_index]][(metric, tag)]
        kept[0] += value
        kept[1] += 1


def test_a_token_cannot_name_another_tenant(tenants_daemon: RunningDaemon) -> None:
    # Tenancy comes from the token only: parameters that look like a tenant are not one.
    status, body = tenants_daemon.get("/api/v1/series?metric=iso.&tenant=t1", reader("t0"))
    assert status == 200
    assert {(s["metricName"], s["tags"]["host"]) for s in body["series"]} == set(MODEL["t0"])
    status, _ = tenants_daemon.get("/api/v1/series", {"Authorization": "Bearer w-t0"})
    assert status == 403
