"""Checkpoints: the whole aggregation state in one file, written atomically.

A checkpoint records the write-ahead-log position it covers, so start-up is "load the newest
valid checkpoint, replay the log after its position". Files are written to a temporary name,
fsynced, renamed and the directory fsynced: a crash leaves either the old or the new file,
never half of one. Each file carries a checksum; a damaged newest file falls back to the one
before it (whose log segments are kept until a newer checkpoint is known good).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from collectord.aggregation.aggregator import Aggregator
from collectord.aggregation.cells import Cell
from collectord.aggregation.series import LEVEL_COUNT, Series
from collectord.aggregation.sketch import Sketch, SketchDecodeError

log = logging.getLogger("collectord.storage.checkpoint")

MAGIC = b"CLDCKPT1"
_HEADER = struct.Struct("<8sQI")  # magic, body length, crc32 of the body
KEEP = 2  # the newest and the one before it
Position = tuple[int, int]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted (truncated, corrupt, foreign)."""


class CheckpointState(msgspec.Struct, array_like=True):
    version: int
    wal_position: tuple[int, int] | None
    now: float
    rolled_until: list[int]
    samples: int
    rejected: dict[str, int]
    rejected_by_metric: list[tuple[str, str, int]]
    series: list[Any]
    name_totals: list[Any]
    extra: dict[str, Any]
    # Per level, the series awaiting roll-up in roll-up order, as indices into
    # series + name_totals: restoring the order makes later merges repeat exactly.
    pending: list[list[int]] = []


def _encode_cell(cell: Cell) -> tuple[Any, ...]:
    return (
        cell.count,
        cell.sum,
        cell.sum_squares,
        cell.min,
        cell.max,
        cell.last,
        cell.sketch.to_bytes() if cell.sketch is not None else None,
        sorted(cell.members) if cell.members is not None else None,
    )


def _decode_cell(raw: Sequence[Any]) -> Cell:
    count, total, squares, low, high, last, sketch, members = raw
    try:
        decoded = Sketch.from_bytes(sketch) if sketch is not None else None
    except SketchDecodeError as error:
        raise CheckpointError(f"bad sketch: {error}") from error
    cell = Cell(sketch=decoded, members=set(members) if members is not None else None)
    cell.count, cell.sum, cell.sum_squares = float(count), float(total), float(squares)
    cell.min, cell.max, cell.last = float(low), float(high), float(last)
    return cell


def _encode_series(series: Series) -> list[Any]:
    return [
        series.tenant,
        series.name,
        [list(pair) for pair in series.tags],
        series.kind,
        series.first_seen,
        series.last_seen,
        series.total,
        series.last_value,
        series.last_timestamp,
        [[[start, _encode_cell(cell)] for start, cell in level.items()] for level in series.levels],
    ]


def _decode_series(raw: Sequence[Any]) -> Series:
    tenant, name, tags, kind, first_seen, last_seen, total, last_value, last_ts, levels = raw
    series = Series(tenant, name, tuple((str(k), str(v)) for k, v in tags), int(kind), float(first_seen))
    series.last_seen, series.total = float(last_seen), float(total)
    series.last_value, series.last_timestamp = float(last_value), float(last_ts)
    if len(levels) != LEVEL_COUNT:
        raise CheckpointError("wrong number of levels")
    for level, cells in enumerate(levels):
        if cells:
            target = series.writable(level)
            for start, cell in cells:
                target[int(start)] = _decode_cell(cell)
    return series


def capture(aggregator: Aggregator, wal_position: Position | None, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise the aggregator (all series, windows, sketches, realtime values, counters)."""
    everything = [*aggregator.table.all_series(), *aggregator.name_totals.values()]
    position_of = {id(series): index for index, series in enumerate(everything)}
    state = CheckpointState(
        version=1,
        wal_position=wal_position,
        now=aggregator.now,
        rolled_until=list(aggregator.rolled_until),
        samples=aggregator.counters.samples,
        rejected=dict(aggregator.counters.rejected),
        rejected_by_metric=[(t, n, c) for (t, n), c in aggregator.table.rejected_by_metric.items()],
        series=[_encode_series(s) for s in aggregator.table.all_series()],
        name_totals=[_encode_series(s) for s in aggregator.name_totals.values()],
        extra=extra or {},
        pending=[[position_of[id(s)] for s in level] for level in aggregator.pending_order()],
    )
    body = zlib.compress(msgspec.msgpack.encode(state), 1)
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def restore(aggregator: Aggregator, data: bytes) -> CheckpointState:
    """Load a checkpoint into a fresh aggregator; returns the state (for its WAL position)."""
    if len(data) < _HEADER.size:
        raise CheckpointError("file too short")
    magic, length, crc = _HEADER.unpack_from(data)
    body = data[_HEADER.size :]
    if magic != MAGIC or length != len(body) or zlib.crc32(body) != crc:
        raise CheckpointError("header or checksum mismatch")
    try:
        state = msgspec.msgpack.decode(zlib.decompress(body), type=CheckpointState)
        series = [_decode_series(raw) for raw in state.series]
        totals = [_decode_series(raw) for raw in state.name_totals]
    except (msgspec.DecodeError, zlib.error, ValueError, TypeError, KeyError) as error:
        raise CheckpointError(f"undecodable: {error}") from error
    if len(state.rolled_until) != LEVEL_COUNT:
        raise CheckpointError("wrong number of levels")
    aggregator.now = state.now
    aggregator.rolled_until = list(state.rolled_until)
    aggregator.counters.samples = state.samples
    aggregator.counters.rejected = dict(state.rejected)
    for tenant, name, count in state.rejected_by_metric:
        aggregator.table.rejected_by_metric[(tenant, name)] = count
    for one in series:
        aggregator.table.restore(one)
    for one in totals:
        aggregator.name_totals[(one.tenant, one.name)] = one
    aggregator.rebuild_pending()
    everything = [*series, *totals]
    if len(state.pending) == LEVEL_COUNT and all(0 <= i < len(everything) for level in state.pending for i in level):
        aggregator.restore_pending_order([[everything[i] for i in level] for level in state.pending])
    return state


class CheckpointStore:
    """Checkpoint files in a directory: `checkpoint-<sequence>.ckpt`, the newest KEEP kept."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.written = 0
        self.last_bytes = 0
        # WAL positions of the checkpoints kept, as far as this process knows them.
        self.positions: dict[Path, Position | None] = {}

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("checkpoint-*.ckpt"))

    def write(self, data: bytes, position: Position | None = None) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        files = self._files()
        sequence = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        final = self.directory / f"checkpoint-{sequence:010d}.ckpt"
        temporary = final.with_suffix(".tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        _fsync_directory(self.directory)
        self.positions[final] = position
        for old in self._files()[:-KEEP]:
            old.unlink(missing_ok=True)
            self.positions.pop(old, None)
        self.written += 1
        self.last_bytes = len(data)
        return final

    def candidates(self) -> list[Path]:
        """Checkpoint files, newest first."""
        return list(reversed(self._files()))

    def adopt_newest(self, position: Position) -> None:
        """Note the position of the checkpoint a background writer just wrote, and forget
        files it removed."""
        files = self._files()
        self.positions = {path: pos for path, pos in self.positions.items() if path in files}
        if files:
            self.positions[files[-1]] = position
            self.written += 1
            self.last_bytes = files[-1].stat().st_size

    def remember(self, path: Path, position: Position | None) -> None:
        """Note the position of a checkpoint loaded at start."""
        self.positions[path] = position

    def truncation_point(self) -> Position | None:
        """Log segments before this position are covered by every kept checkpoint we know of
        (so even falling back to the older one can still replay what it needs)."""
        kept = self._files()
        if len(kept) < KEEP or any(path not in self.positions for path in kept):
            return None
        known = [self.positions[path] for path in kept]
        if any(position is None for position in known):
            return None
        return min(p for p in known if p is not None)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
