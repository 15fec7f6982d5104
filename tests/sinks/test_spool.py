"""The spool: atomic segments, a cursor and a high-water mark that survive a restart, a bound."""

from __future__ import annotations

from pathlib import Path

from collectord.sinks.spool import MARKER, REJECTED, REJECTED_KEEP, Spool


def lines(n: int, tag: str = "x") -> list[bytes]:
    return [f"m,k={tag} value={i}.0 {i}".encode() for i in range(n)]


def reopened(spool: Spool) -> Spool:
    again = Spool(spool.directory, spool.max_bytes, spool.fsync)
    again.open()
    return again


def test_segments_come_back_in_order_with_their_cursor(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, "always")
    spool.open()
    spool.append(20, "s", lines(3, "b"))
    spool.append(10, "s", lines(2, "a"))  # older than the mark: a replayed flush, ignored
    spool.append(30, "s", lines(4, "c"))
    first = spool.oldest()
    assert first is not None and first.closed_until == 20
    spool.mark_sent(first, 2)
    again = reopened(spool)
    assert [s.closed_until for s in again.segments] == [20, 30]
    assert again.sent(again.segments[0]) == 2 and again.unsent_lines() == 1 + 4
    assert again.read(again.segments[0]) == lines(3, "b")
    assert again.spooled_until == 30
    again.mark_sent(again.segments[0], 3)
    assert [s.closed_until for s in reopened(again).segments] == [30]


def test_mark_survives_an_empty_spool_and_half_written_files_are_forgotten(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, "never")
    spool.open()
    spool.append(40, "s", lines(1))
    segment = spool.oldest()
    assert segment is not None
    spool.mark_sent(segment, 1)
    (tmp_path / "000000000050-3.s.lp.tmp").write_bytes(b"torn")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "cursor").write_text("garbage")
    again = reopened(spool)
    assert again.spooled_until == 40 and not again.segments and again.sent(segment) == 0
    assert not (tmp_path / "000000000050-3.s.lp.tmp").exists()


def test_mark_comes_from_segment_names_when_the_marker_is_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, "interval")
    spool.open()
    spool.append(60, "ms", lines(2))
    spool.sync_pending()
    (tmp_path / MARKER).unlink()
    assert reopened(spool).spooled_until == 60


def test_full_spool_drops_the_oldest_but_not_the_one_being_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 150, "never")
    spool.open()
    spool.append(10, "s", lines(3, "a"))
    spool.append(20, "s", lines(3, "b"))
    spool.in_flight = spool.segments[0].name
    dropped = spool.append(30, "s", lines(3, "c"))
    assert [s.closed_until for s in dropped] == [20]
    assert [s.closed_until for s in spool.segments] == [10, 30]
    assert spool.bytes == sum(s.size for s in spool.segments) <= 150
    assert sorted(p.name for p in tmp_path.glob("*.lp")) == [s.name for s in spool.segments]


def test_a_flush_larger_than_the_bound_is_still_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 50, "never")
    spool.open()
    spool.append(10, "s", lines(2))
    dropped = spool.append(20, "s", lines(10))
    assert len(dropped) == 1 and [s.closed_until for s in spool.segments] == [20]


def test_set_aside_keeps_only_the_newest_refusals(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, "never")
    spool.open()
    for i in range(REJECTED_KEEP + 5):
        spool.append(100 + i, "s", lines(1))
        segment = spool.oldest()
        assert segment is not None
        spool.set_aside(segment, 0, lines(1))
        spool.remove(segment)
    kept = sorted((tmp_path / REJECTED).glob("*.lp"))
    assert len(kept) == REJECTED_KEEP and kept[-1].name.startswith(f"{100 + REJECTED_KEEP + 4:012d}")
