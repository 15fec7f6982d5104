"""Sinks: how fast they write, and what they keep across an outage.

    .venv/bin/python benchmarks/sinks.py influx throughput [--series 20000] [--flushes 10] [--url URL]
    .venv/bin/python benchmarks/sinks.py influx outage [--seconds 300]

`influx throughput` builds `flushes` flush views of `series` series (half counters, a quarter
histograms with 5 samples each, a quarter gauges) in an in-process aggregator, hands each to an
InfluxSink (encoding + spooling on the caller's thread, as on the event loop), then drains the
spool into VictoriaMetrics (default the shared one on 127.0.0.1:8428): points/s for the spooling
and for the sending (gzip, HTTP, the server's ingest), and a check that every point arrived.

`influx outage` runs the real daemon under a StatsD load with its own VictoriaMetrics, stops
that for `seconds`, starts it again, stops the load, waits for the spool to empty and runs the
exactness check of tests/integration/test_influx_sink.py (no duplicate, every minute of every
series equal to the daemon's own window). Prints the spool's peak and the catch-up time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Run from a checkout without installing: the package lives one directory up.
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectord.aggregation.aggregator import AggregationSettings, Aggregator, FlushRecord  # noqa: E402
from collectord.config import Config, Influx, Instance, Storage  # noqa: E402
from collectord.limits import Limits  # noqa: E402
from collectord.model import KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM  # noqa: E402
from collectord.ring import Batch  # noqa: E402
from collectord.sinks.base import Flush  # noqa: E402
from collectord.sinks.influx import InfluxSink  # noqa: E402

T0 = 1_790_000_000


def flush_views(series: int, flushes: int, prefix: str) -> tuple[Aggregator, list[list[FlushRecord]]]:
    """`flushes` consecutive 1-second slices, each with every series."""
    settings = AggregationSettings(flush_interval=1, emit_idle_gauges=False)
    agg = Aggregator(Limits(max_tag_values_per_key=100_000, max_series=10 * series), settings, T0)
    views = []
    for k in range(flushes):
        samples = []
        for i in range(series):
            key = (f"{prefix}.m{i % 50}", (("host", f"h{i // 50}"),))
            if i % 4 < 2:
                samples.append((key, KIND_COUNTER, 1.0 + i % 7, 1.0, None))
            elif i % 4 == 2:
                samples.extend((key, KIND_HISTOGRAM, float(j * i % 97), 1.0, None) for j in range(5))
            else:
                samples.append((key, KIND_GAUGE, float(i), 1.0, None))
        agg.apply(Batch("default", samples, T0 + k + 0.5))  # type: ignore[arg-type]
        views.append(agg.advance(T0 + k + 1))
    return agg, views


def influx_throughput(url: str, series: int, flushes: int) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    agg, views = flush_views(series, flushes, prefix)
    lines = 0
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(
            storage=Storage(data_dir=tmp, fsync="interval"),
            instance=Instance(name=prefix),
            influx=Influx(url=url, org="bench", bucket="bench", spool_max_bytes=8 << 30),
        )
        sink = InfluxSink(config, Path(tmp) / "spool" / "influx")
        began = time.perf_counter()
        for k, view in enumerate(views):
            sink.on_flush(Flush(view, {}, T0 + k + 1, agg))
        spooled = time.perf_counter() - began
        lines = sink.status().queued
        spool_bytes = sink.spool.bytes

        async def drain() -> float:
            began = time.perf_counter()
            await sink.drain()
            took = time.perf_counter() - began
            await sink.close()
            return took

        sent = asyncio.run(drain())
        status = sink.status()
    per_flush = spooled / flushes * 1000
    print(
        f"influx: {series:,} series x {flushes} flushes = {lines:,} points ({spool_bytes / lines:.0f} B/point)\n"
        f"  encode + spool: {spooled:.2f} s = {lines / spooled:,.0f} points/s ({per_flush:.0f} ms per flush)\n"
        f"  send (gzip, batches of 5000) to {url}: {sent:.2f} s = {lines / sent:,.0f} points/s\n"
        f"  written {status.written:,}, errors {status.errors}, queued {status.queued}"
    )
    assert status.written == lines and status.queued == 0, status


def influx_outage(seconds: float) -> None:
    from tests.integration.daemon import start_daemon
    from tests.integration.influx_check import Load, assert_exact, influx_status, sink_config, wait_written
    from tests.integration.victoria import PrivateVictoria

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        vm = PrivateVictoria(tmp / "vm")
        vm.start()
        uid = uuid.uuid4().hex[:10]
        prefix, source = f"ox{uid}", f"src-{uid}"
        daemon = start_daemon(tmp, sink_config(vm.url, source))
        try:
            load = Load(daemon, prefix)
            load.start()
            time.sleep(5)
            vm.stop()
            began = time.monotonic()
            peak: dict[str, float] = {"spoolBytes": 0, "spoolFlushes": 0, "queued": 0}
            while time.monotonic() - began < seconds:
                time.sleep(min(5.0, seconds))
                status = influx_status(daemon)
                for key in peak:
                    peak[key] = max(peak[key], status[key])
            vm.start()
            restarted = time.monotonic()
            caught_up = daemon.wait_for(
                lambda: influx_status(daemon)["spoolFlushes"] <= 1 and time.monotonic(), timeout=600
            )
            load.stop()
            after = wait_written(daemon)
            assert_exact(daemon, vm.url, prefix, source, load)
            stats = daemon.stats()
            print(
                f"influx outage: {seconds:.0f} s with the server away under "
                f"{load.sent / (time.monotonic() - began + 5):,.0f} lines/s of StatsD load\n"
                f"  spool peak: {peak['spoolFlushes']:.0f} flushes, {peak['queued']:,.0f} points, "
                f"{peak['spoolBytes'] / 1e6:.2f} MB\n"
                f"  caught up {caught_up - restarted:.1f} s after the server came back\n"
                f"  written {after['written']:,} points, dropped {after['dropped']}, retries {after['retries']}, "
                f"samples applied {stats.get('samples', 'n/a')}\n"
                "  exact: every minute of every series equals the daemon's window, no duplicate point"
            )
        finally:
            daemon.stop()
            vm.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sinks = parser.add_subparsers(dest="sink", required=True)
    influx = sinks.add_parser("influx", help="the InfluxDB sink against VictoriaMetrics")
    runs = influx.add_subparsers(dest="run", required=True)
    throughput = runs.add_parser("throughput", help="points/s spooled and written")
    throughput.add_argument("--url", default="http://127.0.0.1:8428")
    throughput.add_argument("--series", type=int, default=20_000)
    throughput.add_argument("--flushes", type=int, default=10)
    outage = runs.add_parser("outage", help="a server outage under load, checked exactly")
    outage.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    if args.sink == "influx" and args.run == "throughput":
        influx_throughput(args.url, args.series, args.flushes)
    elif args.sink == "influx" and args.run == "outage":
        influx_outage(args.seconds)


if __name__ == "__main__":
    main()
