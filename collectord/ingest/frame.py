"""What a worker ships to the owner: pre-aggregated samples of one ship interval, as one frame.

Messages on a worker's socket (both ways) are `body length u32 | type u8 | body`. A frame's body
is msgpack (`WireFrame`): series keys are defined once per worker table as small ids (`keys`,
ids counting up from 0 within an `epoch`), then every entry names its series by id:

- counters: (id, samples, count, sum, min, max, last): count and sum weighted by 1/rate;
- gauges:   (id, samples, sum, min, max, last, total) for series whose samples in the interval
  were all absolute (a delta needs the series' previous value, which only the owner has: a
  series with a delta goes raw, in order);
- dists:    (id, kind, weight, count, sum, sum of squares, min, max, values) per series and
  sample rate, the values in arrival order (the owner's sketch takes them in bulk);
- sets:     (id, samples, distinct members);
- raw:      samples passed through as they were parsed (id, kind, value, weight, timestamp):
  timestamped ones, gauges with deltas, and every sample of a followed metric (streams get one
  event per sample).

`FrameBuilder` (worker side) makes frames from parsed samples; `KeyTable` (owner side, one per
worker connection, and one per connection id during a replay) decodes them into a `Frame` the
aggregator applies (`Aggregator.apply_frame`). Decoding checks everything the aggregator
relies on, so a garbage frame raises `BadFrame` before any of it is applied.
"""

from __future__ import annotations

import re
import struct
from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import numpy as np
import numpy.typing as npt

from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    Sample,
    SeriesKey,
)

if TYPE_CHECKING:
    from collectord.protocols.statsd_columns import StatsdColumns

HEADER = struct.Struct("<IB")
# worker -> owner
MSG_FRAME = 1
MSG_STATS = 2
MSG_BYE = 3
# owner -> worker
MSG_INTEREST = 10
MSG_STOP = 11
# A frame must fit one write-ahead log record (16 MiB) with room to spare; workers ship early
# long before (MAX_FRAME_SAMPLES).
MAX_MESSAGE = 8 << 20
MAX_FRAME_SAMPLES = 200_000
# A worker starts a new key table (a new epoch) past this many keys, so hostile cardinality
# cannot grow its memory or the owner's without bound.
MAX_TABLE_KEYS = 1 << 21
# A distinct-tuple pass (counting repeated lines in C) pays when tuples repeat this often.
COUNT_REPEATS = 3

_TENANT = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_DISTRIBUTIONS = frozenset({KIND_HISTOGRAM, KIND_SUMMARY})
_KINDS = frozenset({KIND_COUNTER, KIND_GAUGE, KIND_GAUGE_DELTA, KIND_HISTOGRAM, KIND_SUMMARY, KIND_SET})

CounterEntry = tuple[int, int, float, float, float, float, float]
GaugeEntry = tuple[int, int, float, float, float, float, float]
DistEntry = tuple[int, int, float, float, float, float, float, float, list[float]]
SetEntry = tuple[int, int, list[str]]
RawEntry = tuple[int, int, float | str, float, float | None]
KeyDef = tuple[int, str, tuple[tuple[str, str], ...]]


class WireFrame(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    """The frame on the wire. Entries travel as columns (native-endian int64 and float64 arrays,
    row after row): the owner turns each into rows in C instead of decoding an object per entry.
    """

    epoch: int
    received_at: float
    tenant: str
    keys: list[KeyDef]
    counter_ints: bytes = b""  # id, samples
    counter_floats: bytes = b""  # count, sum, min, max, last
    gauge_ints: bytes = b""  # id, samples
    gauge_floats: bytes = b""  # sum, min, max, last, total
    dist_ints: bytes = b""  # id, kind, number of values
    dist_floats: bytes = b""  # weight, count, sum, sum of squares, min, max
    dist_values: bytes = b""  # every entry's values, one entry after another
    sets: list[SetEntry] = msgspec.field(default_factory=list)
    raw: list[RawEntry] = msgspec.field(default_factory=list)


def _column(kind: str, raw: bytes) -> list[Any]:
    values = array(kind)
    try:
        values.frombytes(raw)
    except ValueError as error:
        raise BadFrame("torn column") from error
    return values.tolist()


def _rows(ints_raw: bytes, floats_raw: bytes, width_ints: int, width_floats: int) -> list[tuple[Any, ...]]:
    ints, floats = _column("q", ints_raw), _column("d", floats_raw)
    rows = len(ints) // width_ints
    if len(ints) != rows * width_ints or len(floats) != rows * width_floats:
        raise BadFrame("columns of different lengths")
    columns = [ints[i::width_ints] for i in range(width_ints)] + [floats[i::width_floats] for i in range(width_floats)]
    return list(zip(*columns, strict=True))


class WireStats(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Counter deltas since the worker's previous stats message (per source where it says so)."""

    lines: int = 0
    accepted: int = 0
    events: int = 0
    service_checks: int = 0
    rejected: dict[str, int] = msgspec.field(default_factory=dict)
    last_rejected: dict[str, bytes] = msgspec.field(default_factory=dict)
    # source name -> counter name -> delta (SourceCounters fields; connections_open absolute)
    sources: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)


class BadFrame(ValueError):
    """A frame the owner refuses (undecodable, or referring to what was never defined)."""


class Frame(NamedTuple):
    """A decoded frame: entries name their series by id into `keys` (the connection's table)."""

    received_at: float
    tenant: str
    keys: list[SeriesKey]
    counters: list[CounterEntry]
    gauges: list[GaugeEntry]
    dists: list[DistEntry]
    sets: list[SetEntry]
    raw: list[Sample]
    samples: int


_frame_decoder = msgspec.msgpack.Decoder(WireFrame)
_frame_encoder = msgspec.msgpack.Encoder()


def message(kind: int, body: bytes) -> bytes:
    return HEADER.pack(len(body), kind) + body


class KeyInterner:
    """One key object per series key across every worker table: the aggregator's identity index
    then hits whichever worker a sample came through. Starts over past `limit` keys."""

    def __init__(self, limit: int = MAX_TABLE_KEYS) -> None:
        self.limit = limit
        self.keys: dict[SeriesKey, SeriesKey] = {}

    def intern(self, key: SeriesKey) -> SeriesKey:
        found = self.keys.get(key)
        if found is None:
            if len(self.keys) >= self.limit:
                self.keys.clear()
            self.keys[key] = found = key
        return found


class KeyTable:
    """The owner's view of one worker connection's key ids (per epoch)."""

    def __init__(self, interner: KeyInterner | None = None) -> None:
        self.interner = interner or KeyInterner()
        self.epoch: int | None = None
        self.keys: list[SeriesKey] = []

    def decode(self, body: bytes | memoryview) -> Frame:
        try:
            wire = _frame_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            raise BadFrame(f"undecodable frame: {error}") from error
        return self.adopt(wire)

    def define(self, epoch: int, definitions: list[KeyDef]) -> None:
        """Key definitions (from a frame, or re-logged ones during a replay)."""
        if epoch != self.epoch:
            self.epoch, self.keys = epoch, []
        keys, intern = self.keys, self.interner.intern
        for sid, name, tags in definitions:
            if sid == len(keys):
                keys.append(intern((name, tags)))
            elif not (0 <= sid < len(keys) and keys[sid] == (name, tags)):
                raise BadFrame(f"key id {sid} out of order")

    def adopt(self, wire: WireFrame) -> Frame:
        if not _TENANT.fullmatch(wire.tenant):
            raise BadFrame("bad tenant")
        self.define(wire.epoch, wire.keys)
        keys = self.keys
        known = len(keys)
        counters: list[CounterEntry] = _rows(wire.counter_ints, wire.counter_floats, 2, 5)
        gauges: list[GaugeEntry] = _rows(wire.gauge_ints, wire.gauge_floats, 2, 5)
        heads = _rows(wire.dist_ints, wire.dist_floats, 3, 6)
        values = _column("d", wire.dist_values)
        dists: list[DistEntry] = []
        if heads:
            sizes = list(map(itemgetter(2), heads))
            if min(sizes) < 1 or sum(sizes) != len(values):
                raise BadFrame("distribution values do not add up")
            ends = list(accumulate(sizes))
            parts = [values[end - size : end] for end, size in zip(ends, sizes, strict=True)]
            dists = [
                (sid, kind, weight, count, total, squares, lo, hi, part)
                for (sid, kind, _, weight, count, total, squares, lo, hi), part in zip(heads, parts, strict=True)
            ]
        elif values:
            raise BadFrame("distribution values without entries")
        for entries in (counters, gauges, dists, wire.sets):
            if entries:
                ids = list(map(itemgetter(0), entries))
                if min(ids) < 0 or max(ids) >= known:
                    raise BadFrame("undefined key id")
        if dists and not set(map(itemgetter(1), dists)) <= _DISTRIBUTIONS:
            raise BadFrame("bad distribution kind")
        raw: list[Sample] = []
        for sid, kind, value, weight, ts in wire.raw:
            if not 0 <= sid < known or kind not in _KINDS or (type(value) is str) != (kind == KIND_SET):
                raise BadFrame("bad raw sample")
            raw.append((keys[sid], kind, value, weight, ts))
        samples = (
            len(raw)
            + sum(map(itemgetter(1), counters))
            + sum(map(itemgetter(1), gauges))
            + len(values)
            + sum(map(itemgetter(1), wire.sets))
        )
        return Frame(wire.received_at, wire.tenant, keys, counters, gauges, dists, wire.sets, raw, samples)


class FrameBuilder:
    """The worker's side: interns keys as small ids and turns one interval's samples into a frame."""

    def __init__(self, max_keys: int = MAX_TABLE_KEYS) -> None:
        self.max_keys = max_keys
        self.epoch = 0
        self._sids: dict[SeriesKey, int] = {}
        # id(key) -> (key, sid): the parser hands out interned keys, so an int lookup usually hits.
        self._by_id: dict[int, tuple[SeriesKey, int]] = {}
        self._new: list[KeyDef] = []

    def _sid(self, key: SeriesKey) -> int:
        known = self._by_id.get(id(key))
        if known is not None and known[0] is key:
            return known[1]
        sid = self._sids.get(key)
        if sid is None:
            sid = self._sids[key] = len(self._sids)
            self._new.append((sid, key[0], key[1]))
        if len(self._by_id) > 2 * len(self._sids) + 4096:
            self._by_id.clear()
        self._by_id[id(key)] = (key, sid)
        return sid

    def _new_epoch_if_full(self) -> None:
        if len(self._sids) >= self.max_keys:
            self.epoch += 1
            self._sids.clear()
            self._by_id.clear()
            self._new = []

    def build(self, tenant: str, received_at: float, samples: list[Sample], followed: frozenset[str]) -> bytes:
        """One frame for `samples` (parsed in order, all received in one slice)."""
        self._new_epoch_if_full()
        n = len(samples)
        times: Counter[int] | None = None
        ids = list(map(id, samples))
        last_at = dict(zip(ids, range(n), strict=True))
        if len(last_at) * COUNT_REPEATS <= n:
            # Repeated lines are the very same tuple: count them in C, work once per distinct one,
            # in order of last occurrence (so each series' `last` is its last sample's).
            times = Counter(ids)
            order = [samples[i] for i in sorted(last_at.values())]
        else:
            order = samples
        counters: dict[int, list[float]] = {}
        gauges: dict[int, list[float]] = {}
        # (sid, weight) -> [kind, values]; the slot is the bare sid at weight 1 (the usual case).
        dists: dict[int | tuple[int, float], list[Any]] = {}
        sets: dict[int, tuple[list[int], set[str], list[str]]] = {}
        raw_gauges: set[int] = set()
        in_order = False
        sid_of = self._sid
        by_id = self._by_id
        for sample in order:
            key, kind, value, weight, ts = sample
            known = by_id.get(id(key))
            sid = known[1] if known is not None and known[0] is key else sid_of(key)
            repeat = 1 if times is None else times[id(sample)]
            if ts is not None or (followed and key[0] in followed):
                in_order = True  # sent raw, in arrival order (below)
                if kind in (KIND_GAUGE, KIND_GAUGE_DELTA):
                    raw_gauges.add(sid)  # its other samples too: a delta resolves in order
                continue
            if kind == KIND_COUNTER:
                v = float(value)
                acc = counters.get(sid)
                part = v * weight
                if acc is None:
                    counters[sid] = [repeat, weight * repeat, part * repeat, v, v, v]
                else:
                    acc[0] += repeat
                    acc[1] += weight * repeat
                    acc[2] += part * repeat
                    if v < acc[3]:
                        acc[3] = v
                    if v > acc[4]:
                        acc[4] = v
                    acc[5] = v
            elif kind in (KIND_HISTOGRAM, KIND_SUMMARY):
                slot = sid if weight == 1.0 else (sid, weight)
                held = dists.get(slot)
                if held is None:
                    dists[slot] = [kind, [value] * repeat]
                elif repeat == 1:
                    held[1].append(value)
                    if kind != held[0]:
                        held[0] = -1  # one series, two kinds: raw keeps the order
                else:
                    held[1].extend([value] * repeat)
                    if kind != held[0]:
                        held[0] = -1
            elif kind == KIND_GAUGE:
                v = float(value)
                acc = gauges.get(sid)
                if acc is None:
                    gauges[sid] = [repeat, v * repeat, v, v, v]
                else:
                    acc[0] += repeat
                    acc[1] += v * repeat
                    if v < acc[2]:
                        acc[2] = v
                    if v > acc[3]:
                        acc[3] = v
                    acc[4] = v
            elif kind == KIND_SET:
                held_set = sets.get(sid)
                if held_set is None:
                    sets[sid] = ([repeat], {value}, [value])  # type: ignore[arg-type,list-item]
                else:
                    held_set[0][0] += repeat
                    if value not in held_set[1]:
                        held_set[1].add(value)  # type: ignore[arg-type]
                        held_set[2].append(value)  # type: ignore[arg-type]
            else:  # a gauge delta: the series goes raw, in order (below)
                raw_gauges.add(sid)
        slots: dict[tuple[int, float], list[Any]] = {
            (slot, 1.0) if isinstance(slot, int) else slot: held for slot, held in dists.items()
        }
        mixed = {slot for slot, held in slots.items() if held[0] < 0}
        if len(slots) > len({sid for sid, _ in slots}):
            slots = self._last_slot_last(order, slots, followed)
        raw: list[RawEntry] = []
        if in_order or raw_gauges or mixed:
            raw = self._ordered_raw(samples, raw_gauges, {sid for sid, _ in mixed}, followed)
            for sid in raw_gauges:
                gauges.pop(sid, None)
            # Raw carries every distribution sample of such a series, whatever its rate.
            mixed_sids = {sid for sid, _ in mixed}
            for slot in [slot for slot in slots if slot[0] in mixed_sids]:
                del slots[slot]
        counter_ints, counter_floats = array("q"), array("d")
        for sid, a in counters.items():
            counter_ints.extend((sid, int(a[0])))
            counter_floats.extend((a[1], a[2], a[3], a[4], a[5]))
        gauge_ints, gauge_floats = array("q"), array("d")
        for sid, a in gauges.items():
            gauge_ints.extend((sid, int(a[0])))
            gauge_floats.extend((a[1], a[2], a[3], a[4], a[1]))
        dist_ints, dist_floats, dist_values = array("q"), array("d"), array("d")
        for (sid, weight), (kind, values) in slots.items():
            dist_ints.extend((sid, kind, len(values)))
            dist_floats.append(weight)
            dist_floats.extend(_moments(values, weight))
            dist_values.extend(values)
        wire = WireFrame(
            self.epoch,
            received_at,
            tenant,
            self._new,
            counter_ints.tobytes(),
            counter_floats.tobytes(),
            gauge_ints.tobytes(),
            gauge_floats.tobytes(),
            dist_ints.tobytes(),
            dist_floats.tobytes(),
            dist_values.tobytes(),
            [(sid, held[0][0], held[2]) for sid, held in sets.items()],
            raw,
        )
        self._new = []
        return _frame_encoder.encode(wire)

    def build_columns(
        self, tenant: str, received_at: float, chunks: Sequence[StatsdColumns], followed: frozenset[str]
    ) -> bytes | None:
        """The frame build() makes of the chunks' samples (`parse_columns` results, in arrival
        order: every sample a distribution, none timestamped), without a tuple per sample:
        values are grouped per series and rate by a stable sort, moments by numpy where that
        is exact (integer values, sums below 2**53: any grouping gives the same float) and by
        `_moments` otherwise. None when build() must do it: a followed metric (streams get
        raw samples), or one series and rate sent as two kinds (raw keeps their order)."""
        self._new_epoch_if_full()
        sid_of = self._sid
        slot_of: dict[tuple[int, float], int] = {}
        sids: list[int] = []
        kinds: list[int] = []
        weights: list[float] = []
        line_slots: list[npt.NDArray[np.intp]] = []
        for chunk in chunks:
            group_slots = []
            for key, kind, weight in zip(chunk.keys, chunk.kinds, chunk.weights, strict=True):
                if followed and key[0] in followed:
                    return None
                sid = sid_of(key)
                slot = slot_of.get((sid, weight))
                if slot is None:
                    slot = slot_of[(sid, weight)] = len(sids)
                    sids.append(sid)
                    kinds.append(kind)
                    weights.append(weight)
                elif kinds[slot] != kind:
                    return None
                group_slots.append(slot)
            line_slots.append(np.asarray(group_slots, dtype=np.intp)[chunk.groups])
        if not sids:
            return None
        slots = np.concatenate(line_slots)
        values = np.concatenate([chunk.values for chunk in chunks])
        # Entries in order of first appearance (slots are numbered so), or of last appearance
        # when a series has two rates: the entry holding its last sample must go last.
        entry_order = np.arange(len(sids))
        if len(set(sids)) < len(sids):
            last_seen = len(slots) - 1 - np.unique(slots[::-1], return_index=True)[1]
            entry_order = np.argsort(last_seen, kind="stable")
        rank = np.empty(len(sids), dtype=np.intp)
        rank[entry_order] = np.arange(len(sids))
        grouped = values[np.argsort(rank[slots], kind="stable")]
        counts = np.bincount(rank[slots], minlength=len(sids))
        starts = np.cumsum(counts) - counts
        entry_weights = np.asarray(weights)[entry_order]
        moments = _column_moments(grouped, counts, starts, entry_weights)
        dist_ints = np.column_stack((np.asarray(sids)[entry_order], np.asarray(kinds)[entry_order], counts))
        wire = WireFrame(
            self.epoch,
            received_at,
            tenant,
            self._new,
            dist_ints=dist_ints.astype(np.int64).tobytes(),
            dist_floats=np.column_stack((entry_weights, *moments)).tobytes(),
            dist_values=grouped.tobytes(),
        )
        self._new = []
        return _frame_encoder.encode(wire)

    def _last_slot_last(
        self, order: list[Sample], dists: dict[tuple[int, float], list[Any]], followed: frozenset[str]
    ) -> dict[tuple[int, float], list[Any]]:
        """A series sent with two sample rates has an entry per rate: the one holding its last
        sample goes last, so the owner's `last` is that sample's value."""
        rank: dict[tuple[int, float], int] = {}
        for key, kind, _value, weight, ts in reversed(order):
            if kind in _DISTRIBUTIONS and ts is None and not (followed and key[0] in followed):
                rank.setdefault((self._sid(key), weight), -len(rank))
        return {slot: dists[slot] for slot in sorted(dists, key=rank.__getitem__)}

    def _ordered_raw(
        self, samples: list[Sample], gauge_sids: set[int], dist_sids: set[int], followed: frozenset[str]
    ) -> list[RawEntry]:
        """In arrival order: timestamped samples, every sample of a followed metric, and the
        samples of series that must keep their order (gauges with deltas, a series sent as two
        distribution kinds)."""
        out: list[RawEntry] = []
        for key, kind, value, weight, ts in samples:
            sid = self._sid(key)
            if (
                ts is not None
                or (followed and key[0] in followed)
                or (sid in gauge_sids and kind in (KIND_GAUGE, KIND_GAUGE_DELTA))
                or (sid in dist_sids and kind in _DISTRIBUTIONS)
            ):
                out.append((sid, kind, value, weight, ts))
        return out


def _moments(values: list[float], weight: float) -> tuple[float, float, float, float, float]:
    """count, sum, sum of squares (weighted), min, max."""
    total = 0.0
    squares = 0.0
    for v in values:
        total += v
        squares += v * v
    return len(values) * weight, total * weight, squares * weight, min(values), max(values)


# Integer values whose sums (and sums of squares) stay below this add up exactly in any order.
_EXACT_SUM = float(1 << 53)


def _column_moments(
    grouped: npt.NDArray[np.float64],
    counts: npt.NDArray[np.intp],
    starts: npt.NDArray[np.intp],
    weights: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], ...]:
    """_moments of every entry (its values `grouped[start:start + count]`) as columns: count,
    sum, sum of squares (weighted), min, max, each float the one `_moments` gives."""
    biggest = float(np.abs(grouped).max())
    zeros = grouped == 0.0
    exact = (
        biggest * biggest * len(grouped) < _EXACT_SUM
        and bool((np.floor(grouped) == grouped).all())
        # min() keeps the first of 0.0 and -0.0; numpy may not: -0.0 takes the loop.
        and not (zeros.any() and np.signbit(grouped[zeros]).any())
    )
    if exact:
        # + 0.0: the loop's sum starts at 0.0, so it is never -0.0.
        total = np.add.reduceat(grouped, starts) + 0.0
        squares = np.add.reduceat(grouped * grouped, starts)
        lo = np.minimum.reduceat(grouped, starts)
        hi = np.maximum.reduceat(grouped, starts)
        return counts * weights, total * weights, squares * weights, lo, hi
    parts = np.split(grouped, starts[1:])
    rows = [_moments(part.tolist(), weight) for part, weight in zip(parts, weights.tolist(), strict=True)]
    return tuple(np.array(column, dtype=np.float64) for column in zip(*rows, strict=True))


# ---------------------------------------------------------------------------- the log's view

_CONNECTION = struct.Struct("<Q")
_keys_decoder = msgspec.msgpack.Decoder(tuple[int, int, list[KeyDef]])


def frame_record(connection: int, body: bytes) -> bytes:
    """A PAYLOAD_FRAME record: which connection's key table the frame's ids refer to, then the
    frame as the worker sent it."""
    return _CONNECTION.pack(connection) + body


def keys_record(connection: int, epoch: int, definitions: list[KeyDef]) -> bytes:
    """A PAYLOAD_FRAME_KEYS record: definitions that later frames of `connection` use."""
    return _frame_encoder.encode((connection, epoch, definitions))


class ReplayTables:
    """Key tables per connection id while a log is replayed."""

    def __init__(self) -> None:
        self.interner = KeyInterner()
        self.tables: dict[int, KeyTable] = {}

    def _table(self, connection: int) -> KeyTable:
        table = self.tables.get(connection)
        if table is None:
            table = self.tables[connection] = KeyTable(self.interner)
        return table

    def define(self, payload: bytes) -> None:
        try:
            connection, epoch, definitions = _keys_decoder.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
            raise BadFrame(f"undecodable key record: {error}") from error
        self._table(connection).define(epoch, definitions)

    def decode(self, payload: bytes) -> Frame:
        if len(payload) < _CONNECTION.size:
            raise BadFrame("short frame record")
        (connection,) = _CONNECTION.unpack_from(payload)
        return self._table(connection).decode(memoryview(payload)[_CONNECTION.size :])
