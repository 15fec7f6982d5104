"""The HTTP side port under load: record and batch latency, stream delivery latency with many clients.

.venv/bin/python benchmarks/http_api.py record     # single record and 500-metric batch latency, durable acks
.venv/bin/python benchmarks/http_api.py streams    # SSE and WebSocket delivery latency, 200 concurrent clients
.venv/bin/python benchmarks/http_api.py clients    # how many stream clients one daemon holds, and their cost
.venv/bin/python benchmarks/http_api.py all

Latencies are measured by the client, over real sockets, against the daemon as a subprocess on
the same machine (so the client's own work is included: the numbers are upper bounds).
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named http_api.py: its directory must not shadow the standard library's http.
HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import aiohttp  # noqa: E402

from tests.integration.daemon import RunningDaemon, start_daemon  # noqa: E402
from tests.integration.streams import sse_frames  # noqa: E402

STREAM_CONFIG = """
[streams]
max_per_tenant = 5000
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


def summary(label: str, timings_ms: list[float]) -> dict[str, float]:
    result = {
        "n": len(timings_ms),
        "p50": round(percentile(timings_ms, 0.50), 3),
        "p99": round(percentile(timings_ms, 0.99), 3),
        "max": round(max(timings_ms), 3),
    }
    print(f"{label}: {json.dumps(result)}")
    return result


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------ writes


def _post_latencies(daemon: RunningDaemon, path: str, bodies: list[bytes], expect: int) -> list[float]:
    """Latencies in ms over one kept-alive connection (a producer holds one)."""
    connection = http.client.HTTPConnection("127.0.0.1", daemon.http, timeout=10)
    headers = {"Content-Type": "application/json"}
    timings = []
    for body in bodies:
        began = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        timings.append((time.perf_counter() - began) * 1000)
        assert response.status == expect, response.status
    connection.close()
    return timings


def record(rounds: int = 2000, batches: int = 300) -> None:
    for fsync in ("interval", "always"):
        with tempfile.TemporaryDirectory() as tmp:
            daemon = start_daemon(Path(tmp), f'fsync = "{fsync}"\n')
            try:
                single = [
                    json.dumps({"name": "bench.rec", "value": i, "type": "HISTOGRAM", "tags": {"host": "a"}}).encode()
                    for i in range(rounds)
                ]
                _post_latencies(daemon, "/api/v1/metrics", single[:100], 201)  # warm up
                cpu = _cpu_seconds(daemon.process.pid)
                timings = _post_latencies(daemon, "/api/v1/metrics", single, 201)
                per_request = (_cpu_seconds(daemon.process.pid) - cpu) / rounds * 1000
                summary(f"record, fsync={fsync} (daemon CPU {per_request:.3f} ms/request)", timings)
                batch = [
                    json.dumps(
                        {
                            "metrics": [
                                {"name": f"bench.b{j % 50}", "value": i + j, "type": "GAUGE", "tags": {"i": str(j)}}
                                for j in range(500)
                            ]
                        }
                    ).encode()
                    for i in range(batches)
                ]
                _post_latencies(daemon, "/api/v1/metrics/batch", batch[:10], 200)
                cpu = _cpu_seconds(daemon.process.pid)
                timings = _post_latencies(daemon, "/api/v1/metrics/batch", batch, 200)
                per_request = (_cpu_seconds(daemon.process.pid) - cpu) / batches * 1000
                summary(f"batch of 500, fsync={fsync} (daemon CPU {per_request:.3f} ms/request)", timings)
            finally:
                daemon.stop()
    print(load())


# ------------------------------------------------------------------------------ streams


async def _sse_client(http: aiohttp.ClientSession, url: str, ready: asyncio.Event, out: list[float], want: int) -> None:
    async with http.get(url) as response:
        frames = sse_frames(response)
        await anext(frames)
        ready.set()
        got = 0
        async for event, data in frames:
            if event == "metric":
                out.append((time.time() - float(data["value"])) * 1000)
                got += 1
                if got >= want:
                    return


async def _ws_client(http: aiohttp.ClientSession, url: str, ready: asyncio.Event, out: list[float], want: int) -> None:
    async with http.ws_connect(url) as ws:
        await ws.send_json({"subscribe": {"metricNames": ["bench.stream"]}})
        await ws.receive_json()
        ready.set()
        got = 0
        while got < want:
            message = await ws.receive_json()
            if message.get("event") == "metric":
                out.append((time.time() - float(message["value"])) * 1000)
                got += 1


async def _stream_round(daemon: RunningDaemon, kind: str, clients: int, samples: int, rate: float) -> list[float]:
    """`clients` followers of one metric; `samples` UDP samples at `rate`/s, each stamped with
    its send time in its value; returns every (sample, client) delay in ms."""
    delays: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
        readies = [asyncio.Event() for _ in range(clients)]
        if kind == "sse":
            url = daemon.url("/api/v1/stream?metric=bench.stream")
            tasks = [asyncio.create_task(_sse_client(http, url, r, delays, samples)) for r in readies]
        else:
            url = daemon.url("/api/v1/ws")
            tasks = [asyncio.create_task(_ws_client(http, url, r, delays, samples)) for r in readies]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(samples):
                udp.sendto(b"bench.stream:%.6f|g" % time.time(), ("127.0.0.1", daemon.statsd))
                await asyncio.sleep(1 / rate)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return delays


def streams(clients: int = 200, samples: int = 100, rate: float = 20.0) -> None:
    """With the default fsync policy, and with fsync = "never" to show the stream path alone
    (the log's fsync runs on the event loop: a slow disk stalls every client at once)."""
    for fsync in ("interval", "never"):
        with tempfile.TemporaryDirectory() as tmp:
            daemon = start_daemon(Path(tmp), f'fsync = "{fsync}"\n{STREAM_CONFIG}')
            try:
                for kind in ("sse", "ws"):
                    delays = asyncio.run(_stream_round(daemon, kind, clients, samples, rate))
                    assert len(delays) == clients * samples, len(delays)
                    label = f"{kind}, fsync={fsync}: {clients} clients x {samples} samples at {rate:g}/s, delay ms"
                    summary(label, delays)
            finally:
                daemon.stop()
    print(load())


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _hold(daemon: RunningDaemon, clients: int, seconds: float) -> tuple[int, float]:
    """Open `clients` idle SSE streams, hold them; the daemon's RSS growth and CPU while idle."""
    pid = daemon.process.pid
    before = _rss_kib(pid)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as http:
        responses = []
        for i in range(clients):
            response = await http.get(daemon.url(f"/api/v1/stream?metric=bench.idle{i % 50}"))
            await response.content.readline()
            responses.append(response)
        cpu = _cpu_seconds(pid)
        await asyncio.sleep(seconds)
        idle_cpu = (_cpu_seconds(pid) - cpu) / seconds
        grown = _rss_kib(pid) - before
        for response in responses:
            response.close()
    return grown, idle_cpu


def clients_cost(counts: tuple[int, ...] = (200, 1000, 2000)) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            daemon = start_daemon(Path(tmp), STREAM_CONFIG)
            try:
                grown, idle_cpu = asyncio.run(_hold(daemon, count, 5.0))
                print(
                    f"{count} idle SSE clients: daemon RSS +{grown / 1024:.1f} MiB "
                    f"({grown * 1024 / count / 1024:.1f} KiB each), CPU while idle {idle_cpu * 100:.1f}% of a core"
                )
            finally:
                daemon.stop()
    print(load())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["record", "streams", "clients", "all"])
    args = parser.parse_args()
    if args.what in ("record", "all"):
        record()
    if args.what in ("streams", "all"):
        streams()
    if args.what in ("clients", "all"):
        clients_cost()


if __name__ == "__main__":
    main()
