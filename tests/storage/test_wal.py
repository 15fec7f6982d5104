"""Tests for collectord/storage/wal.py, on real files.

Round trips, rotation and trimming, crash simulations (a torn tail cut at every byte, flipped
bits, garbage, empty and foreign segments), a hypothesis property over random sessions of
appends, commits and crashes, the fsync policies under a fake clock, and a disk that refuses
writes (faults injected into os.pwrite, os.open, os.fsync and os.ftruncate).
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.storage import wal as wal_module
from collectord.storage.wal import (
    MAX_PAYLOAD,
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    WalError,
    WalPosition,
    WalRecord,
    WriteAheadLog,
    segment_name,
)

Rec = tuple[int, str, float, bytes]  # kind, tenant, received_at, payload
T0 = 1_800_000_000.0
TENANTS = ["acme", "", "zażółć-gęślą", "東京", "tenant with spaces", "🚀" * 10]


def opened(directory: Path, **options: Any) -> WriteAheadLog:
    wal = WriteAheadLog(directory, **options)
    report = wal.open()
    assert report.message is None, report.message
    return wal


def reopen(directory: Path, **options: Any) -> tuple[WriteAheadLog, Any]:
    wal = WriteAheadLog(directory, **options)
    return wal, wal.open()


def contents(records: Iterable[WalRecord]) -> list[Rec]:
    return [(r.kind, r.tenant, r.received_at, r.payload) for r in records]


def some_records(count: int, seed: int = 1, max_payload: int = 300) -> list[Rec]:
    rng = random.Random(seed)
    return [
        (
            rng.randrange(0x10000),
            rng.choice(TENANTS),
            T0 + rng.random() * 1e6,
            rng.randbytes(rng.choice([0, 1, rng.randrange(max_payload + 1)])),
        )
        for _ in range(count)
    ]


def write(wal: WriteAheadLog, records: list[Rec], every: int = 7) -> list[WalPosition]:
    """Append and commit in groups of `every`; the commit positions, one per group."""
    ends = []
    for i, record in enumerate(records, 1):
        wal.append(*record)
        if i % every == 0 or i == len(records):
            ends.append(wal.commit())
    return ends


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def record_size(record: Rec) -> int:
    return RECORD_HEADER_SIZE + len(record[1].encode()) + len(record[3])


# --- round trips -----------------------------------------------------------------------------


def test_round_trip_with_every_kind_of_record(tmp_path: Path) -> None:
    records = some_records(500)
    records += [(1, "acme", T0, b""), (3, "東京", T0 + 0.5, bytes(range(256)) * 4096)]  # 1 MiB
    records += [(2, "zażółć", -1.5, os.urandom(1 << 20)), (0, "", 0.0, b"\x00"), (0xFFFF, "x", 1e300, b"y")]
    wal = opened(tmp_path)
    commit_ends = write(wal, records)

    replayed = list(wal.replay())
    assert contents(replayed) == records
    ends = [r.end for r in replayed]
    assert ends == sorted(set(ends)), "positions strictly increase"
    assert wal.end() == ends[-1] == commit_ends[-1]
    assert set(commit_ends) <= set(ends)
    assert wal.stats.records_appended == len(records)
    assert wal.stats.replayed_records == len(records)
    wal.close()

    again, report = reopen(tmp_path)
    assert report.message is None
    assert (report.records, report.truncated_bytes, report.truncated_at) == (len(records), 0, None)
    assert contents(again.replay()) == records
    assert again.end() == ends[-1]
    again.close()


def test_replay_after_a_position_gives_exactly_the_later_records(tmp_path: Path) -> None:
    records = some_records(300, seed=2)
    wal = opened(tmp_path, segment_bytes=4096)
    write(wal, records, every=11)
    replayed = list(wal.replay())
    assert len({r.end[0] for r in replayed}) > 3
    for i in [*range(0, len(replayed), 17), len(replayed) - 1]:
        assert contents(wal.replay(after=replayed[i].end)) == records[i + 1 :]
    assert contents(wal.replay(after=(0, 0))) == records
    assert list(wal.replay(after=wal.end())) == []
    wal.close()


def test_a_reopened_log_writes_a_new_segment_and_positions_keep_growing(tmp_path: Path) -> None:
    first, second = some_records(20, seed=3), some_records(20, seed=4)
    wal = opened(tmp_path)
    write(wal, first)
    old_end = wal.end()
    wal.close()
    wal = opened(tmp_path)
    assert wal.end() == old_end
    write(wal, second)
    assert wal.end()[0] == old_end[0] + 1
    assert contents(wal.replay(after=old_end)) == second
    assert contents(wal.replay()) == first + second
    wal.close()


def test_an_empty_log(tmp_path: Path) -> None:
    wal = opened(tmp_path / "new" / "dir")
    assert wal.end() == (0, 0)
    assert wal.commit() == (0, 0)
    assert list(wal.replay()) == []
    assert wal.truncate_before((5, 100)) == 0
    wal.close()
    assert segments(tmp_path / "new" / "dir") == []


def test_append_rejects_what_the_format_cannot_hold(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    with pytest.raises(ValueError, match="not open"):
        wal.append(1, "acme", T0, b"x")
    wal.open()
    for bad in [(1, "acme", T0, bytes(MAX_PAYLOAD + 1)), (0x10000, "a", T0, b""), (-1, "a", T0, b"")]:
        with pytest.raises(ValueError, match="out of bounds"):
            wal.append(*bad)
    with pytest.raises(ValueError, match="out of bounds"):
        wal.append(1, "x" * 0x10000, T0, b"")
    assert wal.pending == 0
    wal.append(1, "acme", T0, bytes(MAX_PAYLOAD))
    wal.commit()
    assert contents(wal.replay()) == [(1, "acme", T0, bytes(MAX_PAYLOAD))]
    wal.close()
    with pytest.raises(ValueError, match="closed"):
        wal.append(1, "acme", T0, b"x")


def test_a_second_daemon_cannot_open_the_same_directory(tmp_path: Path) -> None:
    wal = opened(tmp_path)
    with pytest.raises(WalError) as caught:
        WriteAheadLog(tmp_path).open()
    assert caught.value.errno == errno.EBUSY
    wal.close()
    opened(tmp_path).close()


def test_a_directory_that_cannot_be_created_is_a_wal_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(WalError):
        WriteAheadLog(tmp_path / "file" / "wal").open()


# --- rotation and trimming -------------------------------------------------------------------


def test_segments_rotate_by_size_between_records(tmp_path: Path) -> None:
    records = some_records(2000, seed=5, max_payload=200)
    wal = opened(tmp_path, segment_bytes=4096)
    write(wal, records, every=50)
    files = segments(tmp_path)
    assert len(files) > 20
    assert wal.stats.segments == len(files)
    for path in files:
        assert SEGMENT_HEADER_SIZE < path.stat().st_size <= 4096
    replayed = list(wal.replay())
    assert contents(replayed) == records
    # Every record lies wholly inside the segment its position names.
    sizes = {int(path.name[4:-4]): path.stat().st_size for path in files}
    for record in replayed:
        assert record.end[1] <= sizes[record.end[0]]
    wal.close()


def test_a_record_larger_than_a_segment_gets_a_segment_of_its_own(tmp_path: Path) -> None:
    wal = opened(tmp_path, segment_bytes=1024)
    records = [(1, "a", T0, b"s"), (1, "a", T0, bytes(5000)), (1, "a", T0, b"t")]
    write(wal, records, every=1)
    assert [r.end[0] for r in wal.replay()] == [1, 2, 3]
    assert contents(wal.replay()) == records
    wal.close()


def test_truncate_before_deletes_only_covered_segments(tmp_path: Path) -> None:
    records = some_records(1500, seed=6, max_payload=200)
    wal = opened(tmp_path, segment_bytes=4096)
    write(wal, records, every=20)
    replayed = list(wal.replay())
    before = {int(p.name[4:-4]) for p in segments(tmp_path)}

    cut = replayed[700].end
    removed = wal.truncate_before(cut)
    after = {int(p.name[4:-4]) for p in segments(tmp_path)}
    assert removed == len(before - after) > 0
    assert after == {n for n in before if n >= cut[0]}, "a segment is kept unless wholly before the position"
    assert contents(wal.replay(after=cut)) == records[701:]
    assert wal.truncate_before(cut) == 0

    # The last record of a segment covers that whole segment.
    last_in_segment = max(r.end for r in replayed if r.end[0] == cut[0])
    assert wal.truncate_before(last_in_segment) == 1
    assert contents(wal.replay(after=last_in_segment)) == [
        rec for rec, r in zip(records, replayed, strict=True) if r.end > last_in_segment
    ]

    # Everything covered: the segment being written stays.
    assert wal.truncate_before(wal.end()) > 0
    assert [int(p.name[4:-4]) for p in segments(tmp_path)] == [wal.end()[0]]
    assert wal.stats.segments == 1
    wal.append(1, "acme", T0, b"more")
    end = wal.commit()
    assert contents(wal.replay(after=replayed[-1].end)) == [(1, "acme", T0, b"more")]
    wal.close()

    # A later run that writes nothing keeps the newest segment too, so numbering never restarts.
    wal = opened(tmp_path)
    assert wal.truncate_before(end) == 0
    wal.close()
    wal = opened(tmp_path)
    wal.append(1, "acme", T0, b"next")
    assert wal.commit()[0] == end[0] + 1
    wal.close()


def test_a_checkpoint_beyond_the_end_keeps_new_positions_after_it(tmp_path: Path) -> None:
    wal = opened(tmp_path)
    write(wal, some_records(5))
    wal.close()
    for path in segments(tmp_path):
        path.unlink()  # the log was lost; the checkpoint remembers (7, 500)
    wal = opened(tmp_path)
    assert list(wal.replay(after=(7, 500))) == []
    wal.append(1, "acme", T0, b"new")
    assert wal.commit() > (7, 500)
    assert contents(wal.replay(after=(7, 500))) == [(1, "acme", T0, b"new")]
    wal.close()


# --- crash simulations -----------------------------------------------------------------------


def build(directory: Path, records: list[Rec], **options: Any) -> list[WalRecord]:
    wal = opened(directory, **options)
    write(wal, records)
    replayed = list(wal.replay())
    wal.close()
    return replayed


def check_survivors(directory: Path, expected: list[Rec], cut_at: WalPosition | None) -> WriteAheadLog:
    """Open after damage: the report names the cut, replay gives `expected`, writing still works."""
    wal, report = reopen(directory)
    assert report.message is not None
    assert report.truncated_at == cut_at
    assert wal.stats.truncated_tails >= 1
    assert contents(wal.replay()) == expected
    wal.append(9, "after", T0, b"after the crash")
    wal.commit()
    assert contents(wal.replay()) == [*expected, (9, "after", T0, b"after the crash")]
    wal.close()
    # The repair is durable: a second start finds nothing to cut.
    again, second = reopen(directory)
    assert second.message is None, second.message
    again.close()
    return wal


def test_a_torn_last_record_is_cut_at_every_byte(tmp_path: Path) -> None:
    records = [*some_records(30, seed=7), (4, "zażółć", T0, b"the last record, torn")]
    source = tmp_path / "source"
    replayed = build(source, records)
    seg, end = replayed[-1].end
    start = replayed[-2].end[1]
    for offset in range(start + 1, end):
        directory = tmp_path / f"cut{offset}"
        shutil.copytree(source, directory)
        os.truncate(directory / segment_name(seg), offset)
        wal = check_survivors(directory, records[:-1], (seg, start))
        assert wal.stats.truncated_bytes == offset - start
        shutil.rmtree(directory)


def test_a_torn_large_record_is_cut_at_sampled_bytes(tmp_path: Path) -> None:
    records = [*some_records(10, seed=8), (3, "acme", T0, os.urandom(200_000))]
    source = tmp_path / "source"
    replayed = build(source, records)
    seg, end = replayed[-1].end
    start = replayed[-2].end[1]
    rng = random.Random(8)
    for offset in [start + 1, start + RECORD_HEADER_SIZE, end - 1, *rng.sample(range(start + 1, end), 10)]:
        directory = tmp_path / f"cut{offset}"
        shutil.copytree(source, directory)
        os.truncate(directory / segment_name(seg), offset)
        check_survivors(directory, records[:-1], (seg, start))


@pytest.mark.parametrize("seed", range(25))
def test_a_flipped_bit_is_detected_and_cut_there(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    records = some_records(200, seed=seed, max_payload=100)
    source = tmp_path / "source"
    replayed = build(source, records, segment_bytes=2048)
    victim = rng.randrange(len(records))
    seg, end = replayed[victim].end
    start = replayed[victim - 1].end[1] if victim and replayed[victim - 1].end[0] == seg else SEGMENT_HEADER_SIZE
    path = source / segment_name(seg)
    data = bytearray(path.read_bytes())
    bit = rng.randrange((end - start) * 8)
    data[start + bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    # The damaged segment keeps the records before the victim; later segments all replay.
    expected = [rec for rec, r in zip(records, replayed, strict=True) if r.end[0] != seg or r.end[1] < end]
    check_survivors(source, expected, (seg, start))


@pytest.mark.parametrize("garbage", [b"\x00" * 4096, b"\xff" * 7, os.urandom(10_000), b"\x01"])
def test_garbage_after_the_last_record_is_cut(tmp_path: Path, garbage: bytes) -> None:
    records = some_records(50, seed=9)
    replayed = build(tmp_path, records)
    seg, end = replayed[-1].end
    with open(tmp_path / segment_name(seg), "ab") as handle:
        handle.write(garbage)
    wal = check_survivors(tmp_path, records, (seg, end))
    assert wal.stats.truncated_bytes == len(garbage)


def test_a_corrupt_length_cannot_make_replay_allocate_gigabytes(tmp_path: Path) -> None:
    records = some_records(20, seed=10)
    replayed = build(tmp_path, records)
    seg, start = replayed[9].end
    path = tmp_path / segment_name(seg)
    data = bytearray(path.read_bytes())
    data[start + 4 : start + 8] = (0xFFFF_FFF0).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    wal, report = reopen(tmp_path)
    assert report.truncated_at == (seg, start)
    assert "limit" in (report.message or "")
    assert contents(wal.replay()) == records[:10]
    wal.close()


@pytest.mark.parametrize("size", [0, 5, SEGMENT_HEADER_SIZE - 1])
def test_a_segment_shorter_than_its_header_becomes_an_empty_segment(tmp_path: Path, size: int) -> None:
    records = some_records(30, seed=11)
    replayed = build(tmp_path, records)
    seg = replayed[-1].end[0]
    (tmp_path / segment_name(seg + 1)).write_bytes(b"\x00" * size)
    wal = check_survivors(tmp_path, records, (seg + 1, 0))
    assert wal.stats.truncated_bytes == size
    assert (tmp_path / segment_name(seg + 1)).stat().st_size == SEGMENT_HEADER_SIZE
    assert (tmp_path / segment_name(seg + 2)).exists(), "the number was not reused"


def test_a_segment_with_a_bad_magic_is_quarantined_and_later_segments_replay(tmp_path: Path) -> None:
    records = some_records(400, seed=12, max_payload=100)
    replayed = build(tmp_path, records, segment_bytes=2048)
    bad = replayed[len(replayed) // 2].end[0]
    path = tmp_path / segment_name(bad)
    data = bytearray(path.read_bytes())
    data[0:6] = b"NOTWAL"
    path.write_bytes(bytes(data))
    expected = [rec for rec, r in zip(records, replayed, strict=True) if r.end[0] != bad]
    wal, report = reopen(tmp_path)
    assert report.truncated_at == (bad, 0)
    assert "quarantine" in (report.message or "") or "renamed" in (report.message or "")
    assert (tmp_path / (segment_name(bad) + ".corrupt")).read_bytes() == bytes(data)
    assert contents(wal.replay()) == expected
    wal.close()


def test_a_quarantined_newest_segment_keeps_its_number_taken(tmp_path: Path) -> None:
    replayed = build(tmp_path, some_records(10, seed=13))
    seg = replayed[-1].end[0]
    (tmp_path / segment_name(seg + 1)).write_bytes(b"something else entirely")
    wal, report = reopen(tmp_path)
    assert report.truncated_at == (seg + 1, 0)
    wal.append(1, "acme", T0, b"x")
    assert wal.commit()[0] == seg + 2
    wal.close()


def test_corruption_in_an_earlier_segment_cuts_only_that_segment(tmp_path: Path) -> None:
    records = some_records(300, seed=14, max_payload=100)
    replayed = build(tmp_path, records, segment_bytes=2048)
    first = replayed[0].end[0]
    victim = next(i for i, r in enumerate(replayed) if r.end[0] == first + 1) + 2
    seg, start = replayed[victim - 1].end
    path = tmp_path / segment_name(seg)
    data = bytearray(path.read_bytes())
    data[start + RECORD_HEADER_SIZE - 1] ^= 0x40  # inside received_at
    path.write_bytes(bytes(data))
    expected = [rec for rec, r in zip(records, replayed, strict=True) if r.end[0] != seg or r.end[1] <= start]
    assert len(expected) < len(records) - 1
    check_survivors(tmp_path, expected, (seg, start))


def test_replay_refuses_a_record_that_changed_after_open(tmp_path: Path) -> None:
    replayed = build(tmp_path, some_records(20, seed=15))
    wal = opened(tmp_path)
    seg, start = replayed[4].end
    with open(tmp_path / segment_name(seg), "r+b") as handle:
        handle.seek(start + RECORD_HEADER_SIZE)
        handle.write(b"\xff")
    with pytest.raises(WalError, match="no longer valid"):
        list(wal.replay())
    with pytest.raises(WalError):
        list(wal.replay(after=(seg, start + 1)))  # not a record boundary
    # Cut at a record boundary behind the log's back: the records it promised are missing.
    os.truncate(tmp_path / segment_name(seg), replayed[-2].end[1])
    with pytest.raises(WalError, match=r"ends \d+ bytes early"):
        list(wal.replay(after=replayed[-3].end))
    wal.close()


# --- a property over random sessions ---------------------------------------------------------

op = st.one_of(
    st.tuples(
        st.just("append"),
        st.integers(0, 0xFFFF),
        st.sampled_from(TENANTS),
        st.binary(max_size=150),
    ),
    st.tuples(st.just("commit")),
    st.tuples(st.just("crash"), st.integers(0, 1 << 30)),
    st.tuples(st.just("close")),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=60), segment_bytes=st.sampled_from([64, 200, 1000, 1 << 20]))
def test_replay_is_the_surviving_prefix_of_what_was_committed(ops: list[tuple[Any, ...]], segment_bytes: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync="never")
        wal.open()
        committed: list[Rec] = []
        pending: list[Rec] = []
        for step in ops:
            if step[0] == "append":
                record = (step[1], step[2], T0 + len(committed), step[3])
                wal.append(*record)
                pending.append(record)
            elif step[0] == "commit":
                wal.commit()
                committed += pending
                pending = []
            elif step[0] == "close":
                wal.close()
                committed += pending
                pending = []
                wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync="never")
                assert wal.open().message is None
            else:
                ends = [r.end for r in wal.replay()]
                assert len(ends) == len(committed)
                wal.abandon()
                pending = []
                files = segments(directory)
                if files:
                    newest = files[-1]
                    seg = int(newest.name[4:-4])
                    cut = step[1] % (newest.stat().st_size + 1)
                    os.truncate(newest, cut)
                    committed = [
                        rec
                        for rec, end in zip(committed, ends, strict=True)
                        if end[0] != seg or (cut >= SEGMENT_HEADER_SIZE and end[1] <= cut)
                    ]
                wal = WriteAheadLog(directory, segment_bytes=segment_bytes, fsync="never")
                wal.open()
            assert contents(wal.replay()) == committed
        wal.close()


# --- fsync policies --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every os.fsync (files and directories)."""
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_fsync_always_syncs_every_commit(tmp_path: Path) -> None:
    wal = opened(tmp_path, fsync="always")
    for i in range(10):
        wal.append(1, "acme", T0, b"x" * i)
        wal.commit()
    wal.commit()  # nothing buffered: nothing to sync
    wal.maybe_fsync()
    assert wal.stats.fsyncs == 10
    wal.close()
    assert wal.stats.fsyncs == 10


def test_fsync_always_syncs_a_segment_before_rotating_away(tmp_path: Path) -> None:
    wal = opened(tmp_path, fsync="always", segment_bytes=256)
    for _ in range(3):
        wal.append(1, "acme", T0, b"x" * 200)
    wal.commit()  # one commit touching three segments
    assert wal.stats.fsyncs == 3
    wal.close()


def test_fsync_never_never_syncs_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_fsyncs(monkeypatch)
    wal = opened(tmp_path, fsync="never", segment_bytes=256)
    write(wal, some_records(100, seed=16), every=3)
    wal.maybe_fsync()
    wal.truncate_before(wal.end())
    wal.close()
    assert len(segments(tmp_path)) >= 1
    assert calls == []
    assert wal.stats.fsyncs == 0


def test_fsync_interval_syncs_at_most_once_per_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    wal = opened(tmp_path, fsync="interval", fsync_interval=1.0, clock=clock)

    def commit_at(when: float) -> None:
        clock.now = when
        wal.append(1, "acme", when, b"sample")
        wal.commit()

    def timer_at(when: float) -> None:
        clock.now = when
        wal.maybe_fsync()

    commit_at(100.0)
    assert wal.stats.fsyncs == 1  # the first commit has never been synced
    for when in (100.2, 100.5, 100.99):
        commit_at(when)
    timer_at(100.5)
    assert wal.stats.fsyncs == 1
    timer_at(101.0)
    assert wal.stats.fsyncs == 2  # unsynced data, interval passed
    timer_at(101.5)
    timer_at(105.0)
    assert wal.stats.fsyncs == 2  # nothing unsynced
    commit_at(106.0)
    assert wal.stats.fsyncs == 3
    commit_at(106.1)
    commit_at(107.2)
    assert wal.stats.fsyncs == 4
    commit_at(107.3)
    calls = count_fsyncs(monkeypatch)
    wal.close()
    assert len(calls) == 1 and wal.stats.fsyncs == 5  # close syncs what is unsynced


def test_fsync_interval_syncs_a_rotated_segment_before_closing_it(tmp_path: Path) -> None:
    clock = FakeClock()
    wal = opened(tmp_path, fsync="interval", fsync_interval=1.0, clock=clock, segment_bytes=256)
    wal.append(1, "acme", T0, b"x" * 150)
    wal.commit()  # synced: first ever
    wal.append(1, "acme", T0, b"x" * 50)
    wal.commit()  # not synced: interval not passed
    assert wal.stats.fsyncs == 1
    wal.append(1, "acme", T0, b"x" * 150)
    wal.commit()  # rotates: the old segment is synced now, the new one waits for its interval
    assert wal.stats.fsyncs == 2
    wal.close()


# --- a disk that refuses ---------------------------------------------------------------------


def fail_writes(monkeypatch: pytest.MonkeyPatch, error: int = errno.ENOSPC) -> Callable[[], None]:
    """os.pwrite writes half of what it is given, then refuses; returns a function that heals."""
    real = os.pwrite
    state = {"broken": True, "partial": True}

    def refusing(fd: int, data: Any, offset: int) -> int:
        if not state["broken"]:
            return real(fd, data, offset)
        if state["partial"] and len(data) > 1:
            state["partial"] = False
            return real(fd, bytes(data[: len(data) // 2]), offset)
        state["partial"] = True
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "pwrite", refusing)

    def heal() -> None:
        state["broken"] = False

    return heal


def sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in segments(directory)}


def test_a_full_disk_refuses_the_commit_keeps_the_buffer_and_writes_it_once_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = some_records(60, seed=17)
    wal = opened(tmp_path, fsync="always")
    write(wal, records[:20])
    on_disk = sizes(tmp_path)
    good_end = wal.end()

    heal = fail_writes(monkeypatch)
    for record in records[20:40]:
        wal.append(*record)
    pending = wal.pending
    for attempt in range(3):
        with pytest.raises(WalError) as caught:
            wal.commit()
        assert caught.value.errno == errno.ENOSPC
        assert wal.stats.write_errors == attempt + 1
        assert wal.failing
        assert wal.pending == pending
        assert wal.end() == good_end
        assert sizes(tmp_path) == on_disk, "the partial write was cut back off"
    assert "No space left" in (wal.stats.last_error or "")
    for record in records[40:]:
        wal.append(*record)  # the daemon may keep buffering while it refuses HTTP writes
    assert contents(wal.replay()) == records[:20]

    heal()
    wal.commit()
    assert not wal.failing
    assert wal.pending == 0
    assert contents(wal.replay()) == records
    wal.close()
    again, report = reopen(tmp_path)
    assert report.message is None
    assert contents(again.replay()) == records
    again.close()


def test_a_full_disk_while_creating_the_next_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = some_records(200, seed=18, max_payload=100)
    wal = opened(tmp_path, fsync="interval", segment_bytes=1024)
    write(wal, records[:50])
    on_disk = sizes(tmp_path)
    real_open = os.open

    def no_new_files(path: Any, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_CREAT and str(path).endswith(".log"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_new_files)
    for record in records[50:]:
        wal.append(*record)  # spans several new segments
    with pytest.raises(WalError):
        wal.commit()
    assert sizes(tmp_path) == on_disk
    monkeypatch.setattr(os, "open", real_open)
    wal.commit()
    assert contents(wal.replay()) == records
    wal.close()
    again, report = reopen(tmp_path)
    assert report.message is None
    assert contents(again.replay()) == records
    again.close()


def test_a_failed_fsync_under_always_is_not_acknowledged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = some_records(10, seed=19)
    wal = opened(tmp_path, fsync="always")
    write(wal, records[:5])
    on_disk = sizes(tmp_path)
    real = os.fsync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    for record in records[5:]:
        wal.append(*record)
    with pytest.raises(WalError) as caught:
        wal.commit()
    assert caught.value.errno == errno.EIO
    assert sizes(tmp_path) == on_disk
    monkeypatch.setattr(os, "fsync", real)
    wal.commit()
    assert contents(wal.replay()) == records
    wal.close()


def test_maybe_fsync_reports_a_failed_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    wal = opened(tmp_path, fsync="interval", clock=clock)
    wal.append(1, "acme", T0, b"x")
    wal.commit()
    wal.append(1, "acme", T0, b"y")
    wal.commit()
    clock.now += 2

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(WalError):
        wal.maybe_fsync()
    assert wal.failing and wal.stats.write_errors == 1
    monkeypatch.undo()
    wal.maybe_fsync()  # still unsynced: retried
    assert wal.stats.fsyncs == 2
    wal.append(1, "acme", T0, b"z")
    wal.commit()
    assert not wal.failing
    wal.close()


def test_discarded_records_never_come_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that lands but whose fsync fails, and whose cut-back fails too: the tail stays on
    disk until the next commit cuts it, so records refused (and discarded) are not replayed."""
    wal = opened(tmp_path, fsync="always")
    write(wal, [(1, "acme", T0, b"kept")])
    real_fsync, real_ftruncate = os.fsync, os.ftruncate

    def failing(*args: Any) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    for i in range(5):
        wal.append(2, "acme", T0, b"refused %d" % i)
    with pytest.raises(WalError):
        wal.commit()
    assert wal.discard() > 0
    assert wal.pending == 0
    monkeypatch.setattr(os, "fsync", real_fsync)
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    wal.append(3, "acme", T0, b"new")
    wal.commit()
    wal.abandon()
    again, report = reopen(tmp_path)
    assert report.message is None
    assert contents(again.replay()) == [(1, "acme", T0, b"kept"), (3, "acme", T0, b"new")]
    again.close()


def test_close_with_a_refusing_disk_still_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wal = opened(tmp_path)
    write(wal, [(1, "acme", T0, b"kept")])
    fail_writes(monkeypatch)
    wal.append(1, "acme", T0, b"lost")
    wal.close()
    monkeypatch.undo()
    again, report = reopen(tmp_path)
    assert report.message is None
    assert contents(again.replay()) == [(1, "acme", T0, b"kept")]
    again.close()


def test_the_module_writes_through_os_pwrite() -> None:
    # The fault injection above patches os.pwrite; this keeps it honest if the module changes.
    assert wal_module.os is os


# --- speed -----------------------------------------------------------------------------------


def test_replaying_50_mb_is_quick(tmp_path: Path) -> None:
    """A coarse guard only; benchmarks/wal.py measures."""
    payload = b"app.requests.%d:1|c|#env:prod,host:web-01,endpoint:/api/v1\n" * 10
    wal = opened(tmp_path, fsync="never")
    count = (50 << 20) // (len(payload) + 30)
    for i in range(count):
        wal.append(1, "acme", T0 + i, payload)
        if i % 200 == 199:
            wal.commit()
    wal.commit()
    wal.close()
    wal = opened(tmp_path)
    started = time.perf_counter()
    replayed = 0
    for record in wal.replay():
        replayed += len(record.payload)
    elapsed = time.perf_counter() - started
    assert replayed == count * len(payload)
    assert elapsed < 5.0, f"replaying 50 MB took {elapsed:.2f} s"
    wal.close()


def test_a_detached_interval_fsync_survives_a_rotation_and_reports_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    wal = opened(tmp_path, fsync="interval", clock=clock, segment_bytes=256)
    wal.append(1, "acme", T0, b"x" * 10)
    wal.commit()  # the first commit syncs at once (nothing synced yet)
    assert wal.take_due_fsync() is None  # nothing unsynced
    wal.append(1, "acme", T0, b"x" * 10)
    wal.commit()
    assert wal.take_due_fsync() is None  # not due yet
    clock.now += 2
    fd = wal.take_due_fsync()
    assert fd is not None and wal.take_due_fsync() is None  # taken: clean until the next write
    for _ in range(4):  # rotate the segment away while its fsync is pending
        wal.append(1, "acme", T0, b"y" * 200)
        wal.commit()
    before = wal.stats.fsyncs
    wal.fsync_detached(fd)
    assert wal.stats.fsyncs == before + 1
    clock.now += 2
    fd = wal.take_due_fsync()
    assert fd is not None

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(WalError):
        wal.fsync_detached(fd)
    monkeypatch.undo()
    clock.now += 2
    assert wal.take_due_fsync() is not None  # unsynced again: the next tick retries
    wal.close()
