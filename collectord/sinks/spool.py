"""A sink's durable queue of unsent flushes: one file per flush, oldest sent first.

`directory` holds

    <closed_until, 12 digits>-<lines>.<precision>.lp   one flush's points, line protocol
    cursor                                             "<segment name> <lines sent>" of the oldest
    spooled-until                                      the newest flush ever spooled
    rejected/                                          batches the server refused for good

Every file is written to a temporary name and renamed, so a kill -9 leaves either the whole
file or none of it. With `fsync = "always"` the data is forced to disk before the rename (a
power failure loses no spooled flush); with "interval" the sender forces it soon after, in a
thread; with "never" the OS decides. A segment's name carries the slice boundary
its flush closed, so after a crash `spooled_until` is the newest of the names and the marker:
the flushes a replay produces again are recognised and not spooled twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("collectord.sinks.spool")

FsyncPolicy = Literal["never", "interval", "always"]

_SEGMENT = re.compile(r"(\d{12,})-(\d+)\.(s|ms|us|ns)\.lp")
CURSOR = "cursor"
MARKER = "spooled-until"
REJECTED = "rejected"
# Refused batches kept for a person to read; older ones are deleted.
REJECTED_KEEP = 20


@dataclass(frozen=True)
class Segment:
    """One spooled flush."""

    name: str
    closed_until: int
    lines: int
    precision: str
    size: int


def segment_name(closed_until: int, lines: int, precision: str) -> str:
    return f"{closed_until:012d}-{lines}.{precision}.lp"


class Spool:
    """The files of one sink's spool; every method is synchronous and short."""

    def __init__(self, directory: Path, max_bytes: int, fsync: FsyncPolicy = "interval") -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segments: deque[Segment] = deque()
        self.bytes = 0
        self.spooled_until = -1
        # The segment the sender is writing: never dropped under it.
        self.in_flight: str | None = None
        self._cursor: tuple[str, int] | None = None
        # Segments written under fsync = "interval", synced later off the event loop.
        self.unsynced: list[str] = []

    # ------------------------------------------------------------------ opening

    def open(self) -> None:
        """Create the directory, forget half-written files, index what is spooled."""
        (self.directory / REJECTED).mkdir(parents=True, exist_ok=True)
        found: list[Segment] = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            match = _SEGMENT.fullmatch(path.name)
            if match is not None:
                size = path.stat().st_size
                found.append(Segment(path.name, int(match[1]), int(match[2]), match[3], size))
        found.sort(key=lambda segment: segment.closed_until)
        self.segments = deque(found)
        self.bytes = sum(segment.size for segment in found)
        self.spooled_until = max(self._read_marker(), found[-1].closed_until if found else -1)
        self._cursor = self._read_cursor()

    def _read_marker(self) -> int:
        try:
            return int((self.directory / MARKER).read_text().strip())
        except (OSError, ValueError):
            return -1

    def _read_cursor(self) -> tuple[str, int] | None:
        try:
            name, sent = (self.directory / CURSOR).read_text().split()
            return name, int(sent)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ writing

    def _write_atomically(self, path: Path, data: bytes, sync: bool) -> None:
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, closed_until: int, precision: str, lines: list[bytes]) -> list[Segment]:
        """Spool one flush; returns the older segments dropped to stay within max_bytes.
        The new flush itself is always kept (it is the freshest data)."""
        if closed_until <= self.spooled_until:
            return []
        data = b"\n".join(lines) + b"\n"
        dropped = self._make_room(len(data))
        sync = self.fsync == "always"
        name = segment_name(closed_until, len(lines), precision)
        self._write_atomically(self.directory / name, data, sync)
        self.segments.append(Segment(name, closed_until, len(lines), precision, len(data)))
        self.bytes += len(data)
        self.spooled_until = closed_until
        self._write_atomically(self.directory / MARKER, f"{closed_until}\n".encode(), False)
        if sync:
            self._sync_directory()
        elif self.fsync == "interval":
            self.unsynced.append(name)
        return dropped

    def sync_pending(self) -> None:
        """fsync the segments written since the last call, then the directory (in a thread:
        with fsync = "interval" a power failure may lose the last flushes, as with the log)."""
        names, self.unsynced = self.unsynced, []
        for name in names:
            try:
                fd = os.open(self.directory / name, os.O_RDONLY)
            except FileNotFoundError:
                continue  # sent or dropped already
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._sync_directory()

    def note_spooled(self, closed_until: int) -> None:
        """A flush with nothing to write, or one a checkpoint says was spooled already."""
        self.spooled_until = max(self.spooled_until, closed_until)

    def _make_room(self, size: int) -> list[Segment]:
        dropped: list[Segment] = []
        while self.bytes + size > self.max_bytes:
            victim = next((s for s in self.segments if s.name != self.in_flight), None)
            if victim is None:
                break
            self.segments.remove(victim)
            self.bytes -= victim.size
            (self.directory / victim.name).unlink(missing_ok=True)
            dropped.append(victim)
        return dropped

    # ------------------------------------------------------------------ sending

    def oldest(self) -> Segment | None:
        return self.segments[0] if self.segments else None

    def read(self, segment: Segment) -> list[bytes]:
        data = (self.directory / segment.name).read_bytes()
        return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")

    def sent(self, segment: Segment) -> int:
        """Lines of `segment` the server has already taken."""
        if self._cursor is not None and self._cursor[0] == segment.name:
            return self._cursor[1]
        return 0

    def unsent_lines(self) -> int:
        return sum(segment.lines for segment in self.segments) - (
            self._cursor[1]
            if self._cursor is not None and self.segments and self.segments[0].name == self._cursor[0]
            else 0
        )

    def mark_sent(self, segment: Segment, lines: int) -> None:
        """The server took `segment`'s first `lines` lines: remember it, or delete the segment."""
        if lines >= segment.lines:
            self.remove(segment)
            return
        self._cursor = (segment.name, lines)
        self._write_atomically(self.directory / CURSOR, f"{segment.name} {lines}\n".encode(), self.fsync == "always")

    def remove(self, segment: Segment) -> None:
        with contextlib.suppress(ValueError):
            self.segments.remove(segment)
            self.bytes -= segment.size
        (self.directory / segment.name).unlink(missing_ok=True)
        if self._cursor is not None and self._cursor[0] == segment.name:
            self._cursor = None
            (self.directory / CURSOR).unlink(missing_ok=True)

    def set_aside(self, segment: Segment, first: int, lines: list[bytes]) -> Path:
        """Keep a refused batch under rejected/ for a person to read (the newest few only)."""
        rejected = self.directory / REJECTED
        path = rejected / f"{segment.name.removesuffix('.lp')}-{first}.lp"
        self._write_atomically(path, b"\n".join(lines) + b"\n", False)
        kept = sorted(p for p in rejected.iterdir() if p.suffix == ".lp")
        for old in kept[:-REJECTED_KEEP]:
            old.unlink(missing_ok=True)
        return path
