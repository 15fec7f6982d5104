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
import random
import sys
import tempfile
import time
from pathlib import Path

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
    args = parser.parse_args()
    if args.command == "append":
        append_throughput(args.dir, args.seconds, args.payload, args.batch or [1, 64])
    elif args.command == "replay":
        replay_throughput(args.dir, args.mb)


if __name__ == "__main__":
    main()
