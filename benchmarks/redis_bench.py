"""What Redis costs and gives: ingest with and without it, stream delivery between two daemons,
cached queries. Uses the shared Redis on 127.0.0.1:6379 under a key prefix of its own.

    .venv/bin/python benchmarks/redis_bench.py ingest [--rate 300000] [--seconds 5] [--rounds 3]
    .venv/bin/python benchmarks/redis_bench.py stream [--samples 1000]
    .venv/bin/python benchmarks/redis_bench.py cache [--requests 2000]
    .venv/bin/python benchmarks/redis_bench.py all

ingest: the same UDP load into a daemon without Redis and one with Redis configured and no
stream subscribers, alternating, several rounds; the figure is samples applied per CPU-second of
the daemon process (wall throughput on a shared 2-core VM measures the neighbours), plus loss.
stream: two daemons sharing Redis, an SSE client on A, samples sent to B over UDP one at a time;
delay from the send until the client has parsed the event.
cache: one closed-range query over a kept-alive connection, answered from the cache, against
the same query over an open range (always computed).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import redis  # noqa: E402

from benchmarks.ingest import loadgen, settle  # noqa: E402
from tests.integration.daemon import RunningDaemon, start_daemon  # noqa: E402
from tests.integration.streams import next_event, sse_frames  # noqa: E402

REDIS_URL = os.environ.get("COLLECTORD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TICKS = os.sysconf("SC_CLK_TCK")


def redis_config(prefix: str, name: str = "bench") -> str:
    return f'\n[instance]\nname = "{name}"\n\n[redis]\nurl = "{REDIS_URL}"\nkey_prefix = "{prefix}"\n'


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100.0 * (len(ordered) - 1)))]


def cleanup(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# ---------------------------------------------------------------------------------------------- ingest


def ingest_once(with_redis: bool, rate: float, seconds: float, series: int, prefix: str) -> dict[str, Any]:
    extra = '[ingest]\nudp_receive_buffer = "32MiB"\n' + (redis_config(prefix) if with_redis else "")
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp), extra)
        try:
            before, cpu_before = daemon.stats(), cpu_seconds(daemon.process.pid)
            sent = loadgen(
                "--proto", "udp", "--port", str(daemon.statsd), "--rate", str(rate), "--seconds", str(seconds),
                "--shape", "counter", "--lines-per-packet", "25", "--series", str(series),
            )  # fmt: skip
            after = settle(daemon, quiet=0.5)
            cpu = cpu_seconds(daemon.process.pid) - cpu_before
            redis_status = after["sinks"].get("redis")
        finally:
            daemon.stop()
    accepted = after["accepted"] - before["accepted"]
    return {
        "redis": with_redis,
        "sent": sent["lines"],
        "accepted": accepted,
        "loss_pct": round(100.0 * (sent["lines"] - accepted) / max(sent["lines"], 1), 3),
        "cpu_s": round(cpu, 2),
        "samples_per_cpu_s": round(accepted / cpu) if cpu else None,
        "realtime_series_written": redis_status["realtimeSeriesWritten"] if redis_status else None,
    }


def bench_ingest(rate: float, seconds: float, rounds: int, series: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    runs: list[dict[str, Any]] = []
    try:
        for _ in range(rounds):
            for with_redis in (False, True):
                run = ingest_once(with_redis, rate, seconds, series, prefix)
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
    finally:
        cleanup(prefix)
    without = statistics.median(r["samples_per_cpu_s"] for r in runs if not r["redis"])
    with_ = statistics.median(r["samples_per_cpu_s"] for r in runs if r["redis"])
    return {
        "rate": rate,
        "seconds": seconds,
        "series": series,
        "rounds": rounds,
        "samples_per_cpu_s_without_redis": without,
        "samples_per_cpu_s_with_redis": with_,
        "redis_overhead_pct": round(100.0 * (without - with_) / without, 1),
        "max_loss_pct": max(r["loss_pct"] for r in runs),
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------- stream


def bench_stream(samples: int) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        a = start_daemon(Path(tmp) / "a", redis_config(prefix, "host-a"))
        b = start_daemon(Path(tmp) / "b", redis_config(prefix, "host-b"))
        try:
            delays = asyncio.run(_follow(a, b, samples))
        finally:
            a.stop()
            b.stop()
            cleanup(prefix)
    delays_ms = [d * 1000.0 for d in delays]
    return {
        "samples": len(delays_ms),
        "p50_ms": round(percentile(delays_ms, 50), 2),
        "p99_ms": round(percentile(delays_ms, 99), 2),
        "max_ms": round(max(delays_ms), 2),
    }


async def _follow(a: RunningDaemon, b: RunningDaemon, samples: int) -> list[float]:
    """An SSE client on A; samples sent to B over UDP, one at a time."""
    delays: list[float] = []
    async with aiohttp.ClientSession() as http, http.get(a.url("/api/v1/stream?metric=bench.stream")) as sse:
        frames = sse_frames(sse)
        await anext(frames)
        while b.stats()["sinks"]["redis"]["streams"]["remoteInterest"] < 1:
            await asyncio.sleep(0.05)
        for i in range(samples):
            sent = time.monotonic()
            b.send_udp(f"bench.stream:{i}|ms".encode())
            event = await asyncio.wait_for(next_event(frames, "metric"), 5.0)
            if event["value"] != float(i):
                raise SystemExit(f"expected {i}, got {event}")
            delays.append(time.monotonic() - sent)
    return delays


# ---------------------------------------------------------------------------------------------- cache


def timed_queries(daemon: RunningDaemon, path: str, requests: int) -> tuple[list[float], list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http)
    latencies, server_ms, hits = [], [], 0
    for _ in range(requests):
        began = time.perf_counter()
        conn.request("GET", path)
        body = json.loads(conn.getresponse().read())
        latencies.append((time.perf_counter() - began) * 1000.0)
        server_ms.append(body["metadata"]["executionTimeMs"])
        hits += body["metadata"]["fromCache"]
    conn.close()
    return latencies, server_ms, hits


def bench_cache(requests: int) -> dict[str, Any]:
    """200 histogram series, 5 values each, in one minute; with late_allowance 0 the minute is
    settled 10 s (one flush interval) after it ends, then cached."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    extra = redis_config(prefix) + '\n[aggregate]\nlate_allowance = "0s"\n'
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp), extra)
        try:
            began = time.time()
            for i in range(200):
                daemon.send_udp("\n".join(f"bench.lat:{v * i}|ms|#host:h{i % 20}" for v in range(5)).encode())
            minute_end = (int(began) // 60 + 1) * 60
            time.sleep(max(0.0, minute_end + 11 - time.time()))
            base = "/api/v1/query?metric=bench.lat&granularity=1m&aggregation=P99&group_by=host"
            base += f"&start={(minute_end - 1800) * 1000}"
            closed = f"{base}&end={minute_end * 1000}"
            open_range = f"{base}&end=now"
            timed_queries(daemon, closed, 5)
            cached, cached_server, hits = timed_queries(daemon, closed, requests)
            computed, _, open_hits = timed_queries(daemon, open_range, requests)
        finally:
            daemon.stop()
            cleanup(prefix)
    return {
        "requests": requests,
        "cached_hits": hits,
        "cached_p50_ms": round(percentile(cached, 50), 3),
        "cached_p99_ms": round(percentile(cached, 99), 3),
        "cached_server_p99_ms": round(percentile(cached_server, 99), 3),
        "open_range_hits": open_hits,
        "open_range_p50_ms": round(percentile(computed, 50), 3),
        "open_range_p99_ms": round(percentile(computed, 99), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ingest", "stream", "cache", "all"])
    parser.add_argument("--rate", type=float, default=300_000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    results: dict[str, Any] = {"load_before": os.getloadavg()}
    if args.what in ("ingest", "all"):
        results["ingest"] = bench_ingest(args.rate, args.seconds, args.rounds, args.series)
    if args.what in ("stream", "all"):
        results["stream"] = bench_stream(args.samples)
    if args.what in ("cache", "all"):
        results["cache"] = bench_cache(args.requests)
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
