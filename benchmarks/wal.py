"""Write-ahead log throughput: append + commit per fsync policy, and replay at start-up.

    .venv/bin/python benchmarks/wal.py append [--seconds 3] [--payload 1024] [--batch 1 --batch 64]
    .venv/bin/python benchmarks/wal.py replay [--mb 250]

`append` appends records of one payload size and commits every `batch` records (the consumer
commits once per drain of the ring, so a busy daemon commits many batches at once), for each
fsync policy, for `seconds` of wall time each (wall, not CPU: fsync is time spent waiting);
MB/s counts log bytes (payload, 20-byte record header and tenant).
`replay` writes `mb` megabytes of 25-line StatsD packets (~650 bytes each, the shape the
daemon logs), then times open() (which verifies every checksum) and a full replay, the two
halves of a start. The files were just written, so they are read from the page cache: a cold
start adds the disk's sequential read time. The log lives in a temporary directory under
--dir (default: the system's temporary directory); use the disk the daemon will use.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Run from a checkout without installing: the package lives one directory up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectord.storage.wal import FsyncPolicy, WriteAheadLog

POLICIES: tuple[FsyncPolicy, ...] = ("never", "interval", "always")
LINES_PER_PACKET = 25
MB = 1 << 20


def _append(directory: Path, policy: FsyncPolicy, payload: bytes, batch: int, seconds: float) -> tuple[int, float, int]:
    """Records written and seconds taken, appending and committing for about `seconds`."""
    wal = WriteAheadLog(directory, fsync=policy)
    wal.open()
    append, commit = wal.append, wal.commit
    records = 0
    started = time.perf_counter()
    deadline = started + seconds
    clock = time.perf_counter
    while clock() < deadline:  # once per commit: a commit is a system call, the clock is not
        for _ in range(batch):
            append(1, "acme", 1_800_000_000.0, payload)
        commit()
        records += batch
    wal.maybe_fsync()
    elapsed = time.perf_counter() - started
    fsyncs = wal.stats.fsyncs
    wal.close()
    return records, elapsed, fsyncs


def append_throughput(root: Path | None, seconds: float, payload_bytes: int, batches: list[int]) -> None:
    payload = random.Random(1).randbytes(payload_bytes)
    record_bytes = payload_bytes + 20 + len("acme")
    print(f"append + commit, {payload_bytes}-byte payloads, {seconds:g} s per row")
    print(f"{'fsync':>8} {'batch':>6} {'records/s':>12} {'MB/s':>9} {'commits/s':>11} {'fsyncs':>7}")
    for policy in POLICIES:
        for batch in batches:
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                records, elapsed, fsyncs = _append(Path(tmp), policy, payload, batch, seconds)
            rate = records / elapsed
            print(
                f"{policy:>8} {batch:>6} {rate:>12,.0f} {rate * record_bytes / MB:>9,.1f} "
                f"{rate / batch:>11,.0f} {fsyncs:>7,}"
            )


def _packets(count: int) -> list[bytes]:
    rng = random.Random(42)
    packets = []
    for _ in range(count):
        lines = [f"app.http.requests.{rng.randrange(1000)}:{rng.randint(1, 9)}|c" for _ in range(LINES_PER_PACKET)]
        packets.append("\n".join(lines).encode() + b"\n")
    return packets


def replay_throughput(root: Path | None, megabytes: int) -> None:
    packets = _packets(1000)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        wal = WriteAheadLog(tmp, fsync="never")
        wal.open()
        target = megabytes * MB
        written = 0
        i = 0
        while written < target:
            packet = packets[i % len(packets)]
            wal.append(1, "acme", 1_800_000_000.0 + i, packet)
            written += len(packet) + 24
            i += 1
            if i % 200 == 0:
                wal.commit()
        wal.close()
        size = sum(path.stat().st_size for path in Path(tmp).glob("wal-*.log"))

        started = time.perf_counter()
        wal = WriteAheadLog(tmp)
        report = wal.open()
        opened = time.perf_counter() - started
        started = time.perf_counter()
        records = 0
        payload = 0
        for record in wal.replay():
            records += 1
            payload += len(record.payload)
        replayed = time.perf_counter() - started
        wal.close()

    assert records == i == report.records
    print(f"replay: {size / MB:,.0f} MB in {report.segments} segments, {records:,} records")
    print(f"{'phase':>14} {'seconds':>8} {'MB/s':>9} {'records/s':>12}")
    for phase, seconds in (("open (verify)", opened), ("replay", replayed), ("start total", opened + replayed)):
        print(f"{phase:>14} {seconds:>8.2f} {size / MB / seconds:>9,.0f} {records / seconds:>12,.0f}")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def end_to_end(rate: float, seconds: float, rounds: int) -> None:
    """UDP ingest into the real daemon with the WAL on and off, alternating, same load:
    accepted lines, loss, and lines per CPU-second of the daemon (its capacity on one core)."""
    from benchmarks.ingest import loadgen, settle
    from tests.integration.daemon import start_daemon

    print(f"{'wal':>5} {'sent':>10} {'accepted':>10} {'loss %':>7} {'cpu s':>6} {'lines/cpu-s':>12}")
    results: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(rounds):
        for wal in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                daemon = start_daemon(
                    Path(tmp),
                    '[ingest]\nudp_receive_buffer = "32MiB"\n',
                    env={"COLLECTORD_STORAGE_WAL": "true" if wal else "false"},
                )
                try:
                    before = daemon.stats()
                    cpu_before = _cpu_seconds(daemon.process.pid)
                    sent = loadgen(
                        "--proto",
                        "udp",
                        "--port",
                        str(daemon.statsd),
                        "--rate",
                        str(rate),
                        "--seconds",
                        str(seconds),
                        "--lines-per-packet",
                        "25",
                        "--series",
                        "1000",
                    )
                    after = settle(daemon)
                    cpu = _cpu_seconds(daemon.process.pid) - cpu_before
                finally:
                    daemon.stop()
            accepted = after["accepted"] - before["accepted"]
            loss = 100.0 * (sent["lines"] - accepted) / sent["lines"]
            results[wal].append(accepted / cpu)
            print(
                f"{'on' if wal else 'off':>5} {sent['lines']:>10,} {accepted:>10,} {loss:>7.3f}"
                f" {cpu:>6.2f} {accepted / cpu:>12,.0f}"
            )
    on, off = max(results[True]), max(results[False])
    print(f"WAL cost on ingest capacity: {100.0 * (1 - on / off):.1f}% (best of {rounds} each)")


def _restart(
    tmp: Path, env: dict[str, str], ports: tuple[int, int, int], code: Path | None
) -> tuple[Any, float, float]:
    """Start the daemon on tmp's data (with the package from `code` when given); the daemon,
    seconds until /readyz answered 200, and its CPU seconds by then."""
    from tests.integration.daemon import start_daemon

    if code is not None:
        # PYTHONSAFEPATH: `python -m` must not put the working directory (this checkout) first.
        env = {**env, "PYTHONPATH": str(code), "PYTHONSAFEPATH": "1"}
    began = time.perf_counter()
    daemon = start_daemon(tmp, env=env, ports=ports)
    took = time.perf_counter() - began
    # CPU time is what a loaded machine does not inflate (start-up included).
    return daemon, took, _cpu_seconds(daemon.process.pid)


def recovery(samples: int, shape: str = "timer", compare: Path | None = None, rounds: int = 1) -> None:
    """Time to start after kill -9 with `samples` samples in the log (no checkpoint since),
    and after a clean stop (checkpointed). With `compare` (another checkout of collectord),
    that checkout and this one take turns starting from copies of the same log, `rounds` times."""
    from benchmarks.ingest import loadgen
    from tests.integration.daemon import start_daemon

    with tempfile.TemporaryDirectory() as tmp:
        # No timed checkpoint during the load: the whole log must be replayed.
        env = {"COLLECTORD_STORAGE_CHECKPOINT_INTERVAL": "1h"}
        daemon = start_daemon(Path(tmp), env=env)
        loadgen(
            "--proto",
            "tcp",
            "--port",
            str(daemon.statsd),
            "--connections",
            "4",
            "--total",
            str(samples),
            "--seconds",
            "600",
            "--shape",
            shape,
            "--lines-per-packet",
            "25",
            "--series",
            "1000",
        )
        daemon.wait_for(lambda: daemon.stats()["aggregation"]["samples"] >= samples, timeout=600)
        expected = daemon.total(f"bench.{shape}.0", start="-2h")
        assert expected > 0
        daemon.kill()
        data = Path(tmp) / "data"
        wal_bytes = sum(f.stat().st_size for f in (data / "wal").glob("wal-*.log"))
        pristine = Path(tmp) / "pristine"
        shutil.copytree(data, pristine)
        print(f"{shape}: kill -9 with {samples:,} samples ({wal_bytes / MB:,.0f} MB of log)")
        variants: list[tuple[str, Path | None]] = [("this checkout", None)]
        if compare is not None:
            variants.insert(0, (str(compare), compare))
        for _ in range(rounds):
            for label, code in variants:
                shutil.rmtree(data)
                shutil.copytree(pristine, data)
                daemon, took, cpu = _restart(Path(tmp), env, daemon.ports, code)
                stats = daemon.stats()["wal"]["recovery"]
                assert daemon.total(f"bench.{shape}.0", start="-2h") == expected, "replay changed the numbers"
                print(
                    f"  {label}: ready in {took:.2f} s ({cpu:.2f} s CPU; recovery {stats['seconds']:.2f} s,"
                    f" {stats['replayedSamples']:,} samples in {stats['replayedRecords']:,} records);"
                    f" load average {os.getloadavg()[0]:.2f}"
                )
                daemon.stop()
        daemon, took, cpu = _restart(Path(tmp), env, daemon.ports, None)
        stats = daemon.stats()["wal"]["recovery"]
        assert daemon.total(f"bench.{shape}.0", start="-2h") == expected
        print(
            f"after a clean stop (checkpoint): ready in {took:.2f} s (recovery {stats['seconds']:.2f} s, "
            f"{stats['replayedSamples']:,} samples replayed)"
        )
        daemon.stop()


def exposure(seconds: float, tcp_rate: float, udp_rate: float) -> None:
    """What kill -9 can lose of UDP/TCP input: the time from a batch being read to its being
    in the log, measured by the daemon for every commit (`wal.exposureMs` in /api/v1/stats),
    under TCP (50 connections, at tcp_rate lines/s or flat out when 0) and UDP load at once."""
    import threading

    from benchmarks.ingest import loadgen
    from tests.integration.daemon import start_daemon

    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp))
        try:
            udp = threading.Thread(
                target=loadgen,
                args=(
                    "--proto",
                    "udp",
                    "--port",
                    str(daemon.statsd),
                    "--rate",
                    str(udp_rate),
                    "--seconds",
                    str(seconds),
                ),
            )
            udp.start()
            loadgen(
                "--proto",
                "tcp",
                "--port",
                str(daemon.statsd),
                "--connections",
                "50",
                "--seconds",
                str(seconds),
                "--rate",
                str(tcp_rate),
            )
            udp.join()
            wal = daemon.stats()["wal"]
        finally:
            daemon.stop()
    window = wal["exposureMs"]
    load = f"TCP {'flat out' if not tcp_rate else f'{tcp_rate:,.0f} lines/s'} + UDP {udp_rate:,.0f} lines/s"
    print(
        f"{load}: read-to-logged delay over {window['commits']:,} commits: p50 {window['p50']:.2f} ms, "
        f"p99 {window['p99']:.2f} ms, max {window['max']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where to put the temporary log")
    commands = parser.add_subparsers(dest="command", required=True)
    append = commands.add_parser("append", help="append + commit throughput per fsync policy")
    append.add_argument("--seconds", type=float, default=3.0, help="wall time per row")
    append.add_argument("--payload", type=int, default=1024, help="payload bytes per record")
    append.add_argument("--batch", type=int, action="append", help="records per commit (repeatable; default 1 and 64)")
    replay = commands.add_parser("replay", help="open (verify) and replay throughput")
    replay.add_argument("--mb", type=int, default=250, help="megabytes of log to replay")
    e2e = commands.add_parser("e2e", help="UDP ingest into the daemon with the WAL on and off, side by side")
    e2e.add_argument("--rate", type=float, default=1_500_000, help="lines/s offered (flat out above capacity)")
    e2e.add_argument("--seconds", type=float, default=8.0)
    e2e.add_argument("--rounds", type=int, default=2)
    rec = commands.add_parser("recovery", help="start-up time after kill -9 and after a clean stop")
    rec.add_argument("--samples", type=int, default=10_000_000)
    rec.add_argument("--shape", default="timer", choices=["counter", "timer", "gauge", "dogstatsd"])
    rec.add_argument("--compare", type=Path, default=None, help="another checkout to start from the same log")
    rec.add_argument("--rounds", type=int, default=1, help="turns of each checkout (with --compare)")
    exp = commands.add_parser("exposure", help="what kill -9 can lose of UDP/TCP input")
    exp.add_argument("--seconds", type=float, default=10.0)
    exp.add_argument("--tcp-rate", type=float, default=0, help="lines/s over TCP; 0 = flat out")
    exp.add_argument("--udp-rate", type=float, default=500_000)
    args = parser.parse_args()
    if args.command == "append":
        append_throughput(args.dir, args.seconds, args.payload, args.batch or [1, 64])
    elif args.command == "replay":
        replay_throughput(args.dir, args.mb)
    elif args.command == "e2e":
        end_to_end(args.rate, args.seconds, args.rounds)
    elif args.command == "recovery":
        recovery(args.samples, args.shape, args.compare, args.rounds)
    elif args.command == "exposure":
        exposure(args.seconds, args.tcp_rate, args.udp_rate)


if __name__ == "__main__":
    main()
