"""PostgreSQL sink costs against the real server on 127.0.0.1:5432 (a throwaway database each).

.venv/bin/python benchmarks/postgres.py flush [--flushes 8]   # flushes of 100,000 active series (build + COPY + upsert)
.venv/bin/python benchmarks/postgres.py raw        # raw points by binary COPY, rows/s
.venv/bin/python benchmarks/postgres.py history    # 30 days at 1h, one metric over 1,000 series: latency
.venv/bin/python benchmarks/postgres.py fleet      # 3 sources x 1,000 histogram series: fleet p99 error
.venv/bin/python benchmarks/postgres.py outage [--outage-seconds 600]   # cut under load, compare rows
.venv/bin/python benchmarks/postgres.py all
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectord.aggregation.query import Query  # noqa: E402
from collectord.clock import ManualClock  # noqa: E402
from collectord.config import load_config  # noqa: E402
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM, Sample  # noqa: E402
from collectord.pipeline import Pipeline  # noqa: E402
from collectord.ring import PAYLOAD_SAMPLES, Batch  # noqa: E402
from collectord.sinks.postgres.fleet import fleet_query  # noqa: E402
from collectord.sinks.postgres.sink import PostgresSink  # noqa: E402
from tests.integration.pg import fresh_database  # noqa: E402

DAY_START = 1_800_057_600.0


def pipeline_for(dsn: str, name: str, clock: ManualClock, **env: str) -> tuple[Pipeline, PostgresSink]:
    environ = {
        "COLLECTORD_STORAGE_DATA_DIR": tempfile.mkdtemp(),
        "COLLECTORD_STORAGE_WAL": "false",
        "COLLECTORD_POSTGRES_DSN": dsn,
        "COLLECTORD_INSTANCE_NAME": name,
        "COLLECTORD_LIMITS_MAX_SERIES": "1000000",
        **env,
    }
    pipeline = Pipeline(load_config(None, environ), clock)
    sink = PostgresSink(pipeline)
    pipeline.add_sink(sink)
    pipeline.recover()
    return pipeline, sink


def feed(pipeline: Pipeline, samples: list[Sample], tenant: str = "bench") -> None:
    for i in range(0, len(samples), 5000):
        pipeline.aggregator.apply(Batch(tenant, samples[i : i + 5000], pipeline.clock.now(), PAYLOAD_SAMPLES))


async def loop_probe(gaps: list[float], stop: asyncio.Event) -> None:
    """Record how long the event loop went without running this task (wanted: 1 ms)."""
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.001)
        gaps.append(time.perf_counter() - began - 0.001)


async def backend_cpu(dsn: str) -> float:
    """CPU seconds used so far by the PostgreSQL backends of the database (from /proc: the
    server runs on this host); 0 where /proc cannot be read. Under load, wall times measure the
    neighbours; CPU seconds measure the work."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]
    finally:
        await conn.close()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def bench_flush(series: int = 100_000, histogram_share: float = 0.2, flushes: int = 8) -> None:
    """Steady state: every series takes a sample in every flush interval, so every flush
    upserts its open 1m window (and its metric's); the flushes cross a 5m and an hour close,
    which add the closed coarse windows (COARSE_PER_PASS per pass at most).

    Flush time = from the slice close (`Pipeline.advance`, which rolls the closed slices up and
    hands the flush view to the sink) to the last row committed (`write_pending` returns).
    Reported apart: the advance (it holds the event loop), encoding rows (event loop, in
    slices), COPY and upsert (PostgreSQL; summed over the writer's connections) and the
    longest commit. A probe task sleeping 1 ms measures how long the event loop was held while
    the sink wrote (the advance is one synchronous call, reported by its own time)."""
    with fresh_database() as dsn:
        clock = ManualClock(DAY_START + 3600 - 50)
        pipeline, sink = pipeline_for(dsn, "bench", clock)
        rng = random.Random(1)
        hist = int(series * histogram_share)
        keys = [(f"m{i // 100}", (("id", str(i % 100)),)) for i in range(series)]
        totals: list[float] = []

        # As the daemon runs it: coarse roll-ups and prunes in slices, between other work (the
        # daemon's own loop, where the tree has it).
        background = hasattr(pipeline.aggregator, "background_rolls")
        if background:
            pipeline.aggregator.background_rolls = True

        async def roll_up() -> None:
            try:
                from collectord.rollups import RollUps
            except ImportError:  # an older tree: slices as its daemon ran them
                while True:
                    if background and pipeline.roll_slice(0.005):
                        await asyncio.sleep(0)
                    else:
                        await asyncio.sleep(0.25)
            await RollUps(pipeline).run()

        async def go() -> None:
            await sink._open()
            roller = asyncio.create_task(roll_up())
            for flush in range(flushes):
                samples: list[Sample] = [
                    (keys[i], KIND_HISTOGRAM if i < hist else KIND_COUNTER, rng.uniform(1, 100), 1.0, None)
                    for i in range(series)
                ]
                feed(pipeline, samples)
                # The daemon freezes its long-lived state after each checkpoint (daemon.py).
                gc.collect()
                gc.freeze()
                clock.advance(10)
                # Before the probe starts: its first gap must be the advance's (dropped below).
                pg_cpu = await backend_cpu(dsn)
                gaps: list[float] = []
                stop = asyncio.Event()
                probe = asyncio.create_task(loop_probe(gaps, stop))
                await asyncio.sleep(0.002)
                gaps.clear()
                began, cpu = time.perf_counter(), time.process_time()
                pipeline.advance()
                advanced = time.perf_counter() - began
                await sink.write_pending()
                total = time.perf_counter() - began
                cpu = time.process_time() - cpu
                stop.set()
                await probe
                pg_cpu = await backend_cpu(dsn) - pg_cpu
                gaps = gaps[1:]  # the first gap holds the advance, reported on its own
                totals.append(total)
                while background and pipeline.aggregator.rolling:
                    await asyncio.sleep(0.05)  # the next flush starts with the roll-ups done
                phases = ", ".join(f"{k} {v:.2f}" for k, v in getattr(sink, "last_flush_phases", {}).items())
                print(
                    f"flush {flush + 1} (closes {time.strftime('%H:%M:%S', time.gmtime(sink.offered_until))}): "
                    f"{series:,} series ({hist:,} histograms), {sink.last_flush_rows:,} rows: "
                    f"flush time {total:.2f} s = advance {advanced:.2f} s + sink {total - advanced:.2f} s "
                    f"({phases}); daemon CPU {cpu:.2f} s, PostgreSQL CPU {pg_cpu:.2f} s; "
                    f"loop held by the sink p99 {sorted(gaps)[int(len(gaps) * 0.99)] * 1000:.0f} ms, "
                    f"max {max(gaps) * 1000:.0f} ms; load {os.getloadavg()[0]:.1f}"
                )
            roller.cancel()
            await sink.close()

        asyncio.run(go())
        print(f"flush time: median {statistics.median(totals):.2f} s, max {max(totals):.2f} s")


def bench_raw(rows: int = 1_000_000, per_batch: int = 100) -> None:
    with fresh_database() as dsn:
        clock = ManualClock(time.time())
        _pipeline, sink = pipeline_for(dsn, "bench", clock)
        rng = random.Random(2)
        keys = [(f"raw{i % 20}", (("host", f"h{i % 200}"), ("region", "eu"))) for i in range(2000)]
        now = clock.now()
        for b in range(rows // per_batch):
            samples: list[Sample] = [
                (keys[rng.randrange(2000)], KIND_COUNTER, rng.uniform(0, 10), 1.0, now - rng.uniform(0, 60))
                for _ in range(per_batch)
            ]
            sink.on_batch(Batch("bench", samples, now + b * 1e-4, PAYLOAD_SAMPLES), False)

        async def go() -> None:
            await sink._open()
            began = time.perf_counter()
            await sink.write_pending()
            took = time.perf_counter() - began
            print(
                f"raw COPY: {rows:,} rows in {took:.2f} s = {rows / took:,.0f} rows/s "
                "(rows built from batches included)"
            )
            await sink.close()

        asyncio.run(go())


def bench_history(series: int = 1000, days: int = 30, runs: int = 100) -> None:
    """A 30-day query at 1h over one metric's 1,000 series, answered from PostgreSQL (memory has
    nothing: the daemon just started): the name-level rows, merged with the other sources'."""
    with fresh_database() as dsn:
        end = float(int(time.time()) // 3600 * 3600)
        start = end - days * 86400
        clock = ManualClock(end)
        import asyncpg

        from collectord.aggregation.sketch import Sketch
        from collectord.sinks.postgres.rows import AGGREGATE_COLUMNS, series_hash
        from collectord.sinks.postgres.schema import migrate, setup_codecs

        async def populate() -> None:
            conn = await asyncpg.connect(dsn)
            await setup_codecs(conn)
            await migrate(conn)
            rng = np.random.default_rng(3)
            # A pool of real sketches, reused: building 2 million distinct ones would take longer
            # than the query being measured, and reading them back costs the same.
            pool = []
            for _ in range(64):
                values = rng.lognormal(3, 1, 20)
                sketch = Sketch()
                sketch.add_many(values)
                pool.append((values, sketch.to_bytes()))
            for source in ("a", "b", "c"):
                records = []
                for hour in range(days * 24):
                    period = start + hour * 3600
                    for s in range(series + 1):
                        values, encoded = pool[(hour + s) % 64]
                        tags = None if s == series else (("id", str(s)),)
                        records.append(
                            (
                                "bench",
                                source,
                                "lat",
                                "HISTOGRAM",
                                1 if tags is None else 0,
                                "{}" if tags is None else f'{{"id": "{s}"}}',
                                series_hash(tags),
                                "1h",
                                period,
                                period + 3600,
                                20.0,
                                float(values.sum()),
                                float(values.min()),
                                float(values.max()),
                                None,
                                None,
                                None,
                                None,
                                None,
                                None,
                                encoded,
                                None,
                            )
                        )
                    if len(records) >= 200_000:
                        await conn.copy_records_to_table(
                            "metrics_aggregated", records=records, columns=AGGREGATE_COLUMNS
                        )
                        records = []
                if records:
                    await conn.copy_records_to_table("metrics_aggregated", records=records, columns=AGGREGATE_COLUMNS)
            await conn.execute("ANALYZE metrics_aggregated")
            plan = await conn.fetch(
                "EXPLAIN SELECT * FROM metrics_aggregated WHERE tenant_id = 'bench' AND metric_name = ANY('{lat}') "
                "AND granularity = '1h' AND scope = 1 AND period_start >= now() - interval '30 days'"
            )
            print("plan (no tag filter):", plan[0][0])
            plan = await conn.fetch(
                "EXPLAIN SELECT * FROM metrics_aggregated WHERE tenant_id = 'bench' AND metric_name = ANY('{lat}') "
                "AND granularity = '1h' AND scope = 0 AND tags @> '{\"id\": \"7\"}'"
            )
            print("plan (tag filter):", " / ".join(r[0].strip() for r in plan[:4]))
            await conn.close()

        asyncio.run(populate())
        pipeline, sink = pipeline_for(dsn, "a", clock)

        async def go() -> None:
            await sink._open()
            for label, tags in (("no tag filter (name-level rows)", []), ("tag filter id:7", [("id", "7")])):
                query = Query("bench", ["lat"], start, end, "1h", "P99", tags=tags)
                took = []
                for _ in range(runs):
                    began = time.perf_counter()
                    rows, _meta = await fleet_query(pipeline, query)
                    took.append((time.perf_counter() - began) * 1000)
                took.sort()
                print(
                    f"30 d at 1h, 3 sources x {series:,} series, {label}: {len(rows)} rows, "
                    f"p50 {statistics.median(took):.1f} ms, p99 {took[int(len(took) * 0.99) - 1]:.1f} ms"
                )
            await sink.close()

        asyncio.run(go())


def bench_fleet(series: int = 1000, per_series: int = 200) -> None:
    """Three daemons (in process, distinct source ids) take the same 1,000 histogram series;
    one fleet query answers the p99 of all their samples, per series and over everything."""
    with fresh_database() as dsn:
        clock = ManualClock(float(int(time.time()) // 86400 * 86400 + 600))
        rng = np.random.default_rng(4)
        pipelines = [pipeline_for(dsn, name, clock) for name in ("a", "b", "c")]
        everything: dict[str, list[np.ndarray]] = {}
        for index, (pipeline, _) in enumerate(pipelines):
            samples: list[Sample] = []
            for s in range(series):
                values = rng.lognormal(3 + index * 0.3, 1, per_series)
                everything.setdefault(f"{s % 100}/{s // 100}", []).append(values)
                # Two tag keys: the seed caps one key at 100 distinct values per metric.
                key = ("fleet.lat", (("id", str(s % 100)), ("shard", str(s // 100))))
                samples.extend((key, KIND_HISTOGRAM, float(v), 1.0, None) for v in values)
            feed(pipeline, samples)
        clock.advance(10)

        async def go() -> None:
            for pipeline, sink in pipelines:
                pipeline.advance()
                await sink._open()
                await sink.write_pending()
            pipeline, _ = pipelines[0]
            start, end = clock.now() - 3600, clock.now()
            rows, meta = await fleet_query(pipeline, Query("bench", ["fleet.lat"], start, end, "1h", "P99"))
            exact = float(np.quantile(np.concatenate([v for vs in everything.values() for v in vs]), 0.99))
            print(
                f"fleet p99 over {series:,} series x 3 sources: {rows[0]['p99']:.3f} vs exact {exact:.3f}: "
                f"{abs(rows[0]['p99'] - exact) / exact * 100:.3f}% (sources {meta['sources']})"
            )
            grouped, _ = await fleet_query(
                pipeline, Query("bench", ["fleet.lat"], start, end, "1h", "P99", group_by=["id", "shard"], limit=10000)
            )
            errors = []
            for row in grouped:
                key = f"{row['tags']['id']}/{row['tags']['shard']}"
                truth = float(np.quantile(np.concatenate(everything[key]), 0.99))
                errors.append(abs(row["p99"] - truth) / truth)
            print(
                f"per-series fleet p99 ({len(grouped):,} series): worst error {max(errors) * 100:.3f}%, "
                f"mean {statistics.fmean(errors) * 100:.3f}%"
            )
            for _, sink in pipelines:
                await sink.close()

        asyncio.run(go())


def bench_outage(seconds: float) -> None:
    """The integration test's scenario at full length: two daemons take the same writes, one
    reaches PostgreSQL through a proxy that is cut for `seconds`; afterwards both sources'
    rows must be identical."""
    from tests.integration.test_postgres import run_outage

    with fresh_database() as dsn:
        began = time.perf_counter()
        run_outage(Path(tempfile.mkdtemp()), dsn, seconds_before=10, seconds_cut=seconds, kill_during=False)
        print(
            f"outage of {seconds:.0f} s under load: rows identical to the run without outage "
            f"(raw and aggregates), {time.perf_counter() - began:.0f} s in all"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("flush", "raw", "history", "fleet", "outage", "all"))
    parser.add_argument("--outage-seconds", type=float, default=600.0)
    parser.add_argument("--flushes", type=int, default=8, help="flushes in `flush` (10 s apart, from 00:59:10)")
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}")
    if args.what in ("flush", "all"):
        bench_flush(flushes=args.flushes)
    if args.what in ("raw", "all"):
        bench_raw()
    if args.what in ("history", "all"):
        bench_history()
    if args.what in ("fleet", "all"):
        bench_fleet()
    if args.what in ("outage", "all"):
        bench_outage(args.outage_seconds)
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
