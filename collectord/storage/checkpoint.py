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
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from collectord.aggregation.aggregator import Aggregator
from collectord.aggregation.cells import Cell
from collectord.aggregation.series import LEVEL_COUNT, Series
from collectord.aggregation.sketch import Sketch, SketchDecodeError, pack_snapshots, unpack_snapshots

log = logging.getLogger("collectord.storage.checkpoint")

# Version 2: cells in columns, sketches as exact snapshots. Version 1 (a cell per tuple,
# sketches in their wire form) is still read, so an upgrade in place restarts from it.
MAGIC = b"CLDCKPT2"
MAGIC_V1 = b"CLDCKPT1"
VERSION = 2
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


_SCALARS = 6  # count, sum, sum_squares, min, max, last


def _encode_level(cells: dict[int, Cell]) -> list[Any] | None:
    """One level's cells in columns: starts and scalars as packed arrays (one C call each way),
    sketches as their exact snapshots, set members as lists."""
    if not cells:
        return None
    values = list(cells.values())
    scalars = array("d")
    for cell in values:
        scalars.extend((cell.count, cell.sum, cell.sum_squares, cell.min, cell.max, cell.last))
    # A series' cells all have its kind's shape: sketches in every cell or none, sets likewise.
    first = values[0]
    sketches = None
    if first.sketch is not None:
        sketches = pack_snapshots([c.sketch for c in values if c.sketch is not None])
    members = None
    if first.members is not None:
        members = [sorted(c.members) if c.members is not None else [] for c in values]
    return [array("q", cells).tobytes(), scalars.tobytes(), sketches, members]


def _decode_level(raw: Sequence[Any]) -> dict[int, Cell]:
    starts_raw, scalars_raw, sketches, members = raw
    starts = array("q")
    starts.frombytes(starts_raw)
    scalars = array("d")
    scalars.frombytes(scalars_raw)
    n = len(starts)
    unpacked = unpack_snapshots(*sketches) if sketches is not None else None
    if len(scalars) != n * _SCALARS or (unpacked is not None and len(unpacked) != n):
        raise CheckpointError("level columns disagree")
    if members is not None and len(members) != n:
        raise CheckpointError("level columns disagree")
    out: dict[int, Cell] = {}
    new = object.__new__
    columns = iter(scalars)
    rows = zip(columns, columns, columns, columns, columns, columns, strict=True)
    for i, (count, total, squares, low, high, last) in enumerate(rows):
        cell: Cell = new(Cell)
        cell.count = count
        cell.sum = total
        cell.sum_squares = squares
        cell.min = low
        cell.max = high
        cell.last = last
        cell.sketch = unpacked[i] if unpacked is not None else None
        held = members[i] if members is not None else None
        cell.members = set(held) if held is not None else None
        cell._percentiles = None
        out[starts[i]] = cell
    return out


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
        [_encode_level(level) for level in series.levels],
    ]


def _decode_cell_v1(raw: Sequence[Any]) -> Cell:
    count, total, squares, low, high, last, sketch, members = raw
    cell = Cell(sketch=Sketch.from_bytes(sketch) if sketch is not None else None)
    cell.members = set(members) if members is not None else None
    cell.count, cell.sum, cell.sum_squares = float(count), float(total), float(squares)
    cell.min, cell.max, cell.last = float(low), float(high), float(last)
    return cell


def _decode_level_v1(raw: Sequence[Any]) -> dict[int, Cell]:
    return {int(start): _decode_cell_v1(cell) for start, cell in raw}


def _decode_series(raw: Sequence[Any], version: int = VERSION) -> Series:
    tenant, name, tags, kind, first_seen, last_seen, total, last_value, last_ts, levels = raw
    series = Series(tenant, name, tuple((str(k), str(v)) for k, v in tags), int(kind), float(first_seen))
    series.last_seen, series.total = float(last_seen), float(total)
    series.last_value, series.last_timestamp = float(last_value), float(last_ts)
    if len(levels) != LEVEL_COUNT:
        raise CheckpointError("wrong number of levels")
    for level, cells in enumerate(levels):
        if cells:
            series.levels[level] = _decode_level(cells) if version >= 2 else _decode_level_v1(cells)
    return series


def capture(aggregator: Aggregator, wal_position: Position | None, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise the aggregator (all series, windows, sketches, realtime values, counters)."""
    everything = [*aggregator.table.all_series(), *aggregator.name_totals.values()]
    position_of = {id(series): index for index, series in enumerate(everything)}
    state = CheckpointState(
        version=VERSION,
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
    if magic not in (MAGIC, MAGIC_V1) or length != len(body) or zlib.crc32(body) != crc:
        raise CheckpointError("header or checksum mismatch")
    version = 2 if magic == MAGIC else 1
    try:
        state = msgspec.msgpack.decode(zlib.decompress(body), type=CheckpointState)
        series = [_decode_series(raw, version) for raw in state.series]
        totals = [_decode_series(raw, version) for raw in state.name_totals]
    except (msgspec.DecodeError, zlib.error, ValueError, TypeError, KeyError, SketchDecodeError) as error:
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
