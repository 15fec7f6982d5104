"""The write-ahead log: every accepted batch is appended here before it changes memory.

The consumer appends each batch's raw payload (an in-memory copy, no system call), commits
(one positional write per segment touched, then an fsync as the policy says) and only then
applies the batches. Start-up is "load the newest checkpoint, replay the log after its
position"; a checkpoint makes every segment before its position deletable.

On disk, `directory` holds `wal-<segment number>.log` files (8+ digits, so they sort); an
flock on the directory itself keeps a second daemon out. Every segment starts with a 16-byte
header

    magic b"CLDWAL" | format version u16 | segment number u64            (little-endian)

followed by records, each

    crc32 u32 | payload length u32 | kind u16 | tenant length u16 | received_at f64
    | tenant (utf-8) | payload

where the crc covers everything after itself (header fields, tenant and payload). A torn
write ends mid-record (its length runs past the end of the file); a flipped bit fails the
crc; a corrupt length is either over MAX_PAYLOAD or fails the crc. Each segment is written by
one process lifetime only: open() never appends to an existing segment, so a position stored
by a checkpoint always names an immutable prefix, even after the tail it pointed into was lost.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

log = logging.getLogger("collectord.storage.wal")

WalPosition = tuple[int, int]
"""(segment number, byte offset just after a record); tuples order the way the log does."""

FsyncPolicy = Literal["never", "interval", "always"]

MAGIC = b"CLDWAL"
FORMAT_VERSION = 1
_SEGMENT_HEADER = struct.Struct("<6sHQ")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size
_RECORD_HEADER = struct.Struct("<IIHHd")
_CRC = struct.Struct("<I")
_FIELDS = struct.Struct("<IHHd")  # the record header after its crc: what the crc covers first
RECORD_HEADER_SIZE = _RECORD_HEADER.size
# A corrupt length must not make replay allocate gigabytes; HTTP bodies are capped well below.
MAX_PAYLOAD = 16 << 20
MAX_TENANT_BYTES = 0xFFFF
MAX_KIND = 0xFFFF
# Replay reads this much per system call: large enough that syscalls vanish from the profile.
READ_CHUNK = 8 << 20
_QUARANTINE_SUFFIX = ".corrupt"
# Quarantined segments keep their number on disk, so numbering never goes back below them.
_SEGMENT_NAME = re.compile(r"wal-(\d{8,})\.log(\.corrupt)?")


class WalError(OSError):
    """The disk refused: the log cannot be opened, written or synced (errno says why)."""


class WalRecord(NamedTuple):
    """One committed record, as replay yields it."""

    end: WalPosition
    kind: int
    tenant: str
    received_at: float
    payload: bytes


@dataclass
class WalStats:
    records_appended: int = 0
    bytes_written: int = 0
    commits: int = 0
    fsyncs: int = 0  # fsync calls on segment files (directory fsyncs are not counted)
    segments: int = 0
    truncated_tails: int = 0  # torn or corrupt tails (and unusable segments) cut at open
    truncated_bytes: int = 0
    write_errors: int = 0
    last_error: str | None = None
    replayed_records: int = 0


@dataclass
class RecoveryReport:
    """What open() found: the segments and records kept, and what it had to cut."""

    segments: int
    records: int
    truncated_bytes: int
    truncated_at: WalPosition | None  # the first position where something was cut
    message: str | None  # None when the log was clean


def segment_name(number: int) -> str:
    return f"wal-{number:08d}.log"


class _Cursor:
    """Where a walk over one segment stopped, and why (problem None: it reached `stop` cleanly)."""

    __slots__ = ("end", "problem", "records")

    def __init__(self, start: int) -> None:
        self.end = start
        self.problem: str | None = None
        self.records = 0


def _walk(path: Path, segment: int, start: int, stop: int, cursor: _Cursor, emit: bool = True) -> Iterator[WalRecord]:
    """The valid records of one segment file between byte offsets `start` and `stop`.

    Stops at the first record that is incomplete, too long or fails its crc, and says so in
    `cursor`; never reads more than one record beyond MAX_PAYLOAD plus a chunk. With `emit`
    false it only verifies (open() does, and builds no objects it would throw away).
    """
    unpack = _RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    new = tuple.__new__
    tenants: dict[bytes, str] = {}
    count = 0
    with open(path, "rb", buffering=0) as handle:
        handle.seek(start)
        buf = b""
        view = memoryview(buf)
        base = start  # file offset of buf[0]
        pos = 0
        try:
            while True:
                avail = len(buf)
                need = RECORD_HEADER_SIZE
                while pos + RECORD_HEADER_SIZE <= avail:
                    crc, size, kind, name_len, received_at = unpack(buf, pos)
                    if size > MAX_PAYLOAD:
                        cursor.problem = f"record length {size} over the {MAX_PAYLOAD}-byte limit (corrupt)"
                        return
                    body = pos + RECORD_HEADER_SIZE
                    end = body + name_len + size
                    if end > avail:
                        need = end - pos
                        break
                    if crc32(view[pos + 4 : end]) != crc:
                        cursor.problem = "checksum mismatch"
                        return
                    pos = end
                    count += 1
                    if emit:
                        raw = buf[body : body + name_len]
                        tenant = tenants.get(raw)
                        if tenant is None:
                            # The crc vouches for these bytes; "replace" only guards a crc collision.
                            tenant = tenants[raw] = raw.decode("utf-8", "replace")
                        payload = buf[body + name_len : end]
                        # tuple.__new__ skips NamedTuple's Python-level __new__: a fifth of replay's cost.
                        yield new(WalRecord, ((segment, base + end), kind, tenant, received_at, payload))
                remaining = stop - (base + avail)
                chunk = handle.read(min(max(READ_CHUNK, need), remaining)) if remaining > 0 else b""
                if not chunk:
                    if pos < avail:
                        cursor.problem = "incomplete record (torn write, or a corrupt length)"
                    elif remaining > 0:
                        cursor.problem = f"file ends {remaining} bytes early"
                    return
                buf = buf[pos:] + chunk if pos < avail else chunk
                view = memoryview(buf)
                base += pos
                pos = 0
        finally:
            cursor.end = base + pos
            cursor.records = count


class WriteAheadLog:
    """An append-only, checksummed, segmented log of accepted batches (single-threaded)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 << 20,
        fsync: FsyncPolicy = "interval",
        fsync_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if segment_bytes <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"segment_bytes must exceed the {SEGMENT_HEADER_SIZE}-byte segment header")
        if fsync not in ("never", "interval", "always"):
            raise ValueError(f"unknown fsync policy {fsync!r}")
        if fsync_interval <= 0:
            raise ValueError("fsync_interval must be positive")
        self.directory = Path(directory)
        self.stats = WalStats()
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._fsync_interval = fsync_interval
        self._clock = clock
        self._state: Literal["new", "open", "closed"] = "new"
        self._dir_fd: int | None = None  # holds the flock; fsynced after segments come and go
        # Committed state: segment number -> committed size, ascending; the segment being written.
        self._segments: dict[int, int] = {}
        self._fd: int | None = None
        self._seg = 0  # 0: nothing written by this process yet
        self._size = 0
        self._end: WalPosition = (0, 0)
        self._dirty = False  # written to _fd since its last fsync
        self._last_fsync = -float("inf")
        # A failed commit could not cut its partial write off the current segment: cut it first.
        self._stale_tail = False
        self._failing = False
        # Buffered state: chunks of records per segment, the tail they build, the next number.
        self._chunks: list[tuple[int, bytearray]] = []
        self._buf: bytearray | None = None
        self._tail_seg = 0
        self._tail_size = 0
        self._next_seg = 1
        self._committed_next_seg = 1

    # --- start ----------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Lock the directory, verify every segment and cut what is torn or corrupt.

        Raises WalError only when the directory cannot be created, listed or locked; damaged
        content is cut (a torn tail, a corrupt record and everything after it in its segment),
        quarantined (a segment with a foreign header is renamed to `*.log.corrupt`) or rewritten
        (a segment shorter than its header becomes an empty one), and reported. Repairs are
        fsynced whatever the policy.
        """
        if self._state != "new":
            raise ValueError("the write-ahead log was already opened")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise WalError(exc.errno, f"WAL directory cannot be opened: {exc.strerror}", str(self.directory)) from exc
        try:
            # Locking the directory, not a file in it, works on a full or read-only disk too.
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            names = os.listdir(self.directory)
        except OSError as exc:
            os.close(dir_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise WalError(errno.EBUSY, "WAL directory is in use by another process", str(self.directory)) from exc
            raise WalError(exc.errno, f"WAL directory cannot be listed: {exc.strerror}", str(self.directory)) from exc
        self._dir_fd = dir_fd
        self._state = "open"

        matches = [match for name in names if (match := _SEGMENT_NAME.fullmatch(name))]
        numbers = sorted(int(match.group(1)) for match in matches if match.group(2) is None)
        highest = max((int(match.group(1)) for match in matches), default=0)
        problems: list[str] = []
        records = 0
        cut_bytes = 0
        cut_at: WalPosition | None = None
        directory_changed = False
        for number in numbers:
            kept, count, cut, problem, renamed = self._recover_segment(number)
            directory_changed |= renamed
            records += count
            if kept is not None:
                self._segments[number] = kept
            if problem is not None:
                problems.append(problem)
                log.warning("write-ahead log damaged: %s", problem, extra={"directory": str(self.directory)})
                if cut is not None:
                    cut_bytes += cut[1]
                    self.stats.truncated_tails += 1
                    if cut_at is None:
                        cut_at = (number, cut[0])
        if directory_changed and self._fsync != "never":
            self._fsync_directory_quietly()
        if self._segments:
            last = max(self._segments)
            self._end = (last, self._segments[last])
        # Numbers only grow: positions stored by checkpoints must keep ordering after this run's.
        self._next_seg = self._committed_next_seg = highest + 1
        self.stats.segments = len(self._segments)
        self.stats.truncated_bytes += cut_bytes
        return RecoveryReport(
            segments=len(self._segments),
            records=records,
            truncated_bytes=cut_bytes,
            truncated_at=cut_at,
            message="; ".join(problems) if problems else None,
        )

    def _recover_segment(self, number: int) -> tuple[int | None, int, tuple[int, int] | None, str | None, bool]:
        """Verify one segment: (size kept or None, records, (cut offset, bytes cut), problem, renamed)."""
        path = self.directory / segment_name(number)
        expected = _SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, number)
        try:
            size = os.stat(path).st_size
            if size < SEGMENT_HEADER_SIZE:
                # A crash between creating the file and writing its first chunk: nothing in it.
                # Rewritten as an empty segment rather than removed, so its number stays taken.
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, expected, 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                problem = f"{path.name}: {size} bytes, shorter than a segment header; rewritten as an empty segment"
                return SEGMENT_HEADER_SIZE, 0, (0, size), problem, False
            with open(path, "rb") as handle:
                header = handle.read(SEGMENT_HEADER_SIZE)
            if header != expected:
                # Not ours, another version, or a corrupt header: keep the bytes for a human.
                os.replace(path, path.with_name(path.name + _QUARANTINE_SUFFIX))
                problem = f"{path.name}: foreign or corrupt segment header; renamed to {path.name}{_QUARANTINE_SUFFIX}"
                return None, 0, (0, size), problem, True
            cursor = _Cursor(SEGMENT_HEADER_SIZE)
            for _ in _walk(path, number, SEGMENT_HEADER_SIZE, size, cursor, emit=False):
                pass
        except OSError as exc:
            # Unreadable or unrepairable (EIO, permissions, read-only): skip it, replay the rest.
            return None, 0, None, f"{path.name}: cannot be read or repaired ({exc.strerror}); skipped", False
        if cursor.problem is None:
            return size, cursor.records, None, None, False
        good = cursor.end
        problem = f"{path.name}: {cursor.problem} at byte {good}; cut {size - good} bytes"
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, good)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # Read-only disk: replay stops at `good` anyway, and new records go to a new segment.
            problem += f" (could not truncate the file: {exc.strerror})"
        return good, cursor.records, (good, size - good), problem, False

    # --- writing --------------------------------------------------------------------------

    def append(self, kind: int, tenant: str, received_at: float, payload: bytes) -> None:
        """Buffer one record (no system call); commit() writes it."""
        name = tenant.encode()
        size = len(payload)
        if size > MAX_PAYLOAD or len(name) > MAX_TENANT_BYTES or not 0 <= kind <= MAX_KIND:
            raise ValueError(
                f"record out of bounds: payload {size} bytes (max {MAX_PAYLOAD}), tenant {len(name)} bytes "
                f"(max {MAX_TENANT_BYTES}), kind {kind} (0..{MAX_KIND})"
            )
        fields = _FIELDS.pack(size, kind, len(name), received_at)
        record = RECORD_HEADER_SIZE + len(name) + size
        buf = self._buf
        if buf is None or (self._tail_size + record > self._segment_bytes and self._tail_size > SEGMENT_HEADER_SIZE):
            buf = self._next_chunk(record)
        buf += _CRC.pack(zlib.crc32(payload, zlib.crc32(name, zlib.crc32(fields))))
        buf += fields
        buf += name
        buf += payload
        self._tail_size += record
        self.stats.records_appended += 1

    def _next_chunk(self, record: int) -> bytearray:
        """Start buffering into the current segment or, when it is full or absent, a new one."""
        if self._state != "open":
            raise ValueError(f"the write-ahead log is {self._state}, not open")
        # Rotation happens between records, and a segment always takes at least one record.
        if self._tail_seg == 0 or (
            self._tail_size + record > self._segment_bytes and self._tail_size > SEGMENT_HEADER_SIZE
        ):
            self._tail_seg = self._next_seg
            self._next_seg += 1
            self._tail_size = SEGMENT_HEADER_SIZE
            buf = bytearray(_SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, self._tail_seg))
        else:
            buf = bytearray()
        self._chunks.append((self._tail_seg, buf))
        self._buf = buf
        return buf

    @property
    def has_pending(self) -> bool:
        """Whether anything is buffered (the hot path's cheap form of `pending`)."""
        return bool(self._chunks)

    @property
    def pending(self) -> int:
        """Bytes buffered and not yet committed (segment headers included)."""
        return sum(len(chunk) for _, chunk in self._chunks)

    @property
    def failing(self) -> bool:
        """True from a failed commit or fsync until the next one that succeeds."""
        return self._failing

    def commit(self) -> WalPosition:
        """Write everything buffered, fsync as the policy says, and return the end position.

        On a refusal from the disk, raises WalError and keeps the buffer: what this call wrote
        is cut back off (or, failing that, overwritten in place by the retry), so a later
        commit() writes every record exactly once.
        """
        if not self._chunks:
            if self._state != "open":
                raise ValueError(f"the write-ahead log is {self._state}, not open")
            return self._end
        touched: list[tuple[int, int, int, bool]] = []  # (segment, fd, size before, created here)
        try:
            if self._stale_tail and self._fd is not None:
                os.ftruncate(self._fd, self._size)
                self._stale_tail = False
            for seg, data in self._chunks:
                if seg == self._seg and self._fd is not None:
                    fd, start = self._fd, self._size
                    touched.append((seg, fd, start, False))
                else:
                    fd, start = self._create(seg), 0
                    touched.append((seg, fd, start, True))
                written = os.pwrite(fd, data, start)
                if written != len(data):
                    self._write_rest(fd, data, start, written)
            self._sync_after_write(touched)
        except OSError as exc:
            self._roll_back(touched)
            raise self._failure("commit", exc) from exc

        last_seg, last_fd = touched[-1][0], touched[-1][1]
        for retired in touched[:-1]:
            self._close_quietly(retired[1])
        if self._fd is not None and last_seg != self._seg and all(fd != self._fd for _, fd, _, _ in touched):
            self._close_quietly(self._fd)
        for (seg, _fd, start, _created), (_seg, data) in zip(touched, self._chunks, strict=True):
            self._segments[seg] = start + len(data)
            self.stats.bytes_written += len(data)
        self._fd, self._seg, self._size = last_fd, last_seg, self._segments[last_seg]
        self._end = (last_seg, self._size)
        self._chunks = []
        self._buf = None
        self._committed_next_seg = self._next_seg
        self.stats.commits += 1
        self.stats.segments = len(self._segments)
        if self._failing:
            self._failing = False
            log.warning("write-ahead log writable again", extra={"directory": str(self.directory)})
        return self._end

    def _create(self, seg: int) -> int:
        # O_TRUNC: a file with this number can only be the leftover of our own failed commit.
        path = self.directory / segment_name(seg)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if self._fsync != "never":
                self._fsync_directory()
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd

    @staticmethod
    def _write_rest(fd: int, data: bytearray, start: int, written: int) -> None:
        """Finish a short write (a filling disk writes what fits, then refuses the rest)."""
        while written < len(data):
            # A copy, not a memoryview: an export kept alive by a traceback would forbid later
            # appends to this buffer from resizing it.
            n = os.pwrite(fd, data[written:], start + written)
            if n <= 0:
                raise OSError(errno.EIO, "write made no progress")
            written += n

    def _sync_after_write(self, touched: list[tuple[int, int, int, bool]]) -> None:
        if self._fsync == "never":
            return
        last_seg, last_fd = touched[-1][0], touched[-1][1]
        # Segments rotated away are synced now: later fsyncs only reach the current one.
        if self._fd is not None and last_seg != self._seg and (self._dirty or touched[0][1] == self._fd):
            self._fsync_file(self._fd)
        for _seg, fd, _start, _created in touched[:-1]:
            if fd != self._fd:
                self._fsync_file(fd)
        if self._fsync == "always" or self._clock() - self._last_fsync >= self._fsync_interval:
            self._fsync_file(last_fd)
            self._last_fsync = self._clock()
            self._dirty = False
        else:
            self._dirty = True

    def _roll_back(self, touched: list[tuple[int, int, int, bool]]) -> None:
        for seg, fd, start, created in reversed(touched):
            try:
                if created:
                    os.close(fd)
                    (self.directory / segment_name(seg)).unlink(missing_ok=True)
                else:
                    os.ftruncate(fd, start)
            except OSError:
                # The retry rewrites the same bytes at the same offsets; only the tail beyond
                # them needs cutting, which the next commit tries first.
                if not created:
                    self._stale_tail = True

    def maybe_fsync(self) -> None:
        """For the "interval" policy: fsync if something is unsynced and the interval has passed.

        Call it from a timer at least twice per fsync_interval. Raises WalError if the fsync fails.
        """
        if self._fsync != "interval" or not self._dirty or self._fd is None:
            return
        if self._clock() - self._last_fsync < self._fsync_interval:
            return
        try:
            self._fsync_file(self._fd)
        except OSError as exc:
            raise self._failure("fsync", exc) from exc
        self._last_fsync = self._clock()
        self._dirty = False

    def take_due_fsync(self) -> int | None:
        """For the "interval" policy, off the event loop: when an fsync is due, a duplicate of
        the segment's descriptor for `fsync_detached` to sync in another thread (a duplicate,
        so a rotation closing the segment meanwhile cannot pull it away); None when nothing is
        due. What is written after this call is synced by the next one."""
        if self._fsync != "interval" or not self._dirty or self._fd is None:
            return None
        if self._clock() - self._last_fsync < self._fsync_interval:
            return None
        try:
            fd = os.dup(self._fd)
        except OSError as exc:
            raise self._failure("fsync", exc) from exc
        self._last_fsync = self._clock()
        self._dirty = False
        return fd

    def fsync_detached(self, fd: int) -> None:
        """Sync and close a descriptor from take_due_fsync (any thread). On failure the log
        counts as unsynced again and WalError is raised for the caller to report."""
        try:
            os.fsync(fd)
            self.stats.fsyncs += 1
        except OSError as exc:
            self._dirty = True
            raise self._failure("fsync", exc) from exc
        finally:
            os.close(fd)

    def _fsync_file(self, fd: int) -> None:
        os.fsync(fd)
        self.stats.fsyncs += 1

    def _fsync_directory(self) -> None:
        if self._dir_fd is not None:
            os.fsync(self._dir_fd)

    def _fsync_directory_quietly(self) -> None:
        try:
            self._fsync_directory()
        except OSError as exc:
            log.warning("write-ahead log directory fsync failed: %s", exc.strerror)

    def _failure(self, action: str, exc: OSError) -> WalError:
        self.stats.write_errors += 1
        message = f"write-ahead log {action} failed: {exc.strerror or exc}"
        self.stats.last_error = message
        if not self._failing:
            # Once per episode: a full disk fails every commit until space returns.
            self._failing = True
            log.error(message, extra={"directory": str(self.directory), "errno": exc.errno})
        return WalError(exc.errno or errno.EIO, message, str(self.directory))

    def discard(self) -> int:
        """Drop every buffered record (e.g. after refusing their senders); returns the bytes dropped."""
        dropped = self.pending
        self._chunks = []
        self._buf = None
        self._tail_seg = self._seg
        self._tail_size = self._size
        # Reuse the numbers: a leftover file of a failed commit is then overwritten, not replayed.
        self._next_seg = self._committed_next_seg
        return dropped

    def end(self) -> WalPosition:
        """The position just after the last committed record ((0, 0) for an empty log)."""
        return self._end

    # --- reading and trimming -------------------------------------------------------------

    def replay(self, after: WalPosition | None = None) -> Iterator[WalRecord]:
        """Every record committed before this call, strictly after `after`, in order.

        Raises WalError if a segment cannot be read or a record open() verified no longer is
        (the disk changed under us, or `after` is not a record boundary).
        """
        if self._state != "open":
            raise ValueError(f"the write-ahead log is {self._state}, not open")
        if after is not None and after > self._end:
            # The checkpoint knows records this log lost (segments deleted or cut by hand). New
            # segments must still sort after its position, or the next start would skip them.
            log.warning(
                "checkpoint position %s is beyond the write-ahead log's end %s "
                "(the log lost an unsynced tail, or segments were removed)",
                after,
                self._end,
                extra={"directory": str(self.directory)},
            )
            if self._seg == 0 and not self._chunks:
                self._next_seg = self._committed_next_seg = max(self._next_seg, after[0] + 1)
        return self._replay(list(self._segments.items()), after)

    def _replay(self, segments: list[tuple[int, int]], after: WalPosition | None) -> Iterator[WalRecord]:
        for seg, size in segments:
            start = SEGMENT_HEADER_SIZE
            if after is not None:
                if seg < after[0]:
                    continue
                if seg == after[0]:
                    start = max(start, after[1])
            if start >= size:
                continue
            cursor = _Cursor(start)
            path = self.directory / segment_name(seg)
            try:
                yield from _walk(path, seg, start, size, cursor)
            except FileNotFoundError:
                continue  # deleted by truncate_before since: covered by a checkpoint
            except OSError as exc:
                raise WalError(exc.errno, f"write-ahead log unreadable: {exc.strerror}", str(path)) from exc
            finally:
                self.stats.replayed_records += cursor.records
            if cursor.problem is not None:
                raise WalError(
                    errno.EIO,
                    f"write-ahead log record at byte {cursor.end} no longer valid ({cursor.problem}): "
                    "the file changed since open, or the replay position is not a record boundary",
                    str(path),
                )

    def truncate_before(self, position: WalPosition) -> int:
        """Delete every segment that lies entirely before `position`; returns how many.

        The newest segment is kept even when covered (it may be the one being written, and its
        number keeps new positions ordered after old ones across restarts). Call it only once the
        checkpoint holding `position` is durable.
        """
        removed = 0
        newest = max(self._segments, default=0)
        for seg, size in list(self._segments.items()):
            if seg == newest or seg > position[0] or (seg == position[0] and position[1] < size):
                break
            try:
                (self.directory / segment_name(seg)).unlink(missing_ok=True)
            except OSError as exc:
                # Harmless to keep: replay skips covered records; the next checkpoint retries.
                self.stats.last_error = f"write-ahead log segment deletion failed: {exc.strerror}"
                log.warning(self.stats.last_error, extra={"segment": seg})
                break
            del self._segments[seg]
            removed += 1
        if removed and self._fsync != "never":
            self._fsync_directory_quietly()
        self.stats.segments = len(self._segments)
        return removed

    # --- stop -----------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is buffered if the disk allows, fsync (unless the policy is "never"), close."""
        if self._state != "open":
            self._state = "closed"
            return
        if self._chunks:
            try:
                self.commit()
            except WalError:
                log.error("write-ahead log closed with %d buffered bytes unwritten", self.pending)
        if self._fd is not None:
            try:
                if self._fsync != "never" and self._dirty:
                    self._fsync_file(self._fd)
                    self._dirty = False
            except OSError as exc:
                self._failure("fsync", exc)
            finally:
                self._close_quietly(self._fd)
        self._release()

    def abandon(self) -> None:
        """Close without committing or syncing, as a crash would (tests, fatal-error paths)."""
        if self._fd is not None:
            self._close_quietly(self._fd)
        self._release()

    def _release(self) -> None:
        self._fd = None
        self._chunks = []
        self._buf = None
        if self._dir_fd is not None:
            self._close_quietly(self._dir_fd)  # closing releases the flock
            self._dir_fd = None
        self._state = "closed"

    @staticmethod
    def _close_quietly(fd: int) -> None:
        try:
            os.close(fd)
        except OSError as exc:
            log.warning("closing a write-ahead log file failed: %s", exc.strerror)
