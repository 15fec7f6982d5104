"""A mergeable quantile sketch with a relative-error guarantee (DDSketch-style).

Guarantee: for any data and any q, `quantile(q)` lies within 1% relative error of an order
statistic bracketing rank q*(W-1) (W = total weight), the same rank numpy's default 'linear'
`percentile` uses; when the two bracketing samples share a sign it is also within 1% of
`np.percentile` itself. The guarantee survives any number of `merge` calls and a
`to_bytes`/`from_bytes` roundtrip, with two documented exceptions:

- Values with |v| < ZERO_THRESHOLD (1e-9) are counted as exactly 0; their error is absolute
  (< 1e-9), not relative. This keeps float noise such as 5.6e-17 from spreading the buckets.
- Each sign keeps at most MAX_BUCKETS (4096) buckets, a value range of about 1.6e35. Beyond that
  the buckets nearest the bottom of the distribution are collapsed: the smallest positive
  values and the most negative values are reported as the smallest kept bucket. Only the lowest
  quantiles (of each sign) are affected; this exists so hostile input cannot grow memory.

How it works: a positive value v goes to bucket k = ceil(log_gamma(v)), gamma = (1+a)/(1-a), and
is reported as 2*gamma**k/(gamma+1), which is within a of every value in that bucket. a is
0.0099 rather than 0.01 so float rounding in the key computation cannot break the 1% promise.
Negative values use the same buckets on |v| in a second store, keyed by -k so that both stores
ascend with the value. Buckets are dense numpy arrays with an index offset.

Counts are kept as integer multiples of a per-sketch unit weight, in the smallest unsigned dtype
that holds the largest bucket (uint8, growing to uint16/32/64). Weights that are all integers
(1, 10) or all the same fraction (1/0.3 = 3.333...) stay exact and compact; a mix of unrelated
fractional weights switches the sketch once to float64 counts. Equality and merging look only at
the weights the buckets represent, never at the representation.

Note: `add` uses math.log and `add_many` numpy's log. They agree bit for bit on common builds;
where a numpy build's log differs in the last ulp, a value within ~1e-15 of a bucket boundary
may land in the neighbouring bucket, which the error bound tolerates.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from math import ceil as _ceil
from math import log as _log
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_BUCKETS",
    "MAX_WEIGHT",
    "RELATIVE_ACCURACY",
    "ZERO_THRESHOLD",
    "Sketch",
    "SketchDecodeError",
    "encode_many",
    "merge_encoded",
    "quantiles_many",
    "summaries_many",
]

RELATIVE_ACCURACY: Final = 0.0099
"""Internal alpha; callers are promised 1%, the gap absorbs float rounding."""
ZERO_THRESHOLD: Final = 1e-9
"""Values with a smaller magnitude are counted as 0."""
MAX_BUCKETS: Final = 4096
"""Bucket cap per sign (about 1.6e35 of value range)."""
MAX_WEIGHT: Final = 1e15
"""Weights above this (a sample rate below 1e-15) are ignored, so totals stay finite."""

FORMAT_VERSION: Final = 1

_GAMMA: Final = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
_LOG_GAMMA: Final = math.log(_GAMMA)
_INV_LOG_GAMMA: Final = 1.0 / _LOG_GAMMA
# log of the factor 2/(gamma+1) that puts a bucket's value where the error is symmetric.
_LOG_VALUE_FACTOR: Final = math.log(2.0 / (_GAMMA + 1.0))
_LOG_FLOAT_MAX: Final = math.log(sys.float_info.max)
_INF: Final = math.inf
# Below this per bucket, 8193 buckets sum to a finite total. Decoded buckets must stay below it;
# only merging absurd sketches exceeds it, and then count/quantiles take overflow-safe paths.
_HUGE_WEIGHT: Final = 1e300

# Key range of positive values in [ZERO_THRESHOLD, float max]; used to reject hostile encodings.
_KEY_MIN: Final = math.ceil(math.log(ZERO_THRESHOLD) * _INV_LOG_GAMMA) - 1
_KEY_MAX: Final = math.ceil(_LOG_FLOAT_MAX * _INV_LOG_GAMMA) + 1

# Extra buckets allocated beyond a new extreme, so the first samples of a fresh sketch do not
# each reallocate; 32 buckets cost 32 bytes at uint8.
_SLACK: Final = 32
# add() holds back at most this many values before putting them in the stores.
PENDING_MAX: Final = 512
# A sketch holding only this many held-back values (nothing in its stores) stays compact: reads
# answer from a settled temporary copy, and a merge into an empty sketch copies the values
# packed as bytes (8 each) instead of numpy stores (~170 bytes for the smallest). Most timer
# series hold a handful of samples per window. Below _SMALL_BATCH, so settling the values (one
# add() each, by math.log) gives the same buckets however they were split or joined.
COMPACT_MAX: Final = 16
# Below this many values add_many loops over add: numpy's fixed cost per call is higher.
_SMALL_BATCH: Final = 32
# Largest integer increment per add; bigger weight ratios use float counts.
_MAX_INCREMENT: Final = 1 << 32
# Integer counts stay below this total so uint64 sums and collapses can never wrap.
_INT_TOTAL_LIMIT: Final = float(1 << 62)
# A store narrower than uint64 holds at most this total, so only uint64 stores need summing.
_NARROW_TOTAL_BOUND: Final = float(MAX_BUCKETS * ((1 << 32) - 1))
_U64_MAX: Final = (1 << 64) - 1

_UINT_RUNGS: Final = (
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.uint32),
    np.dtype(np.uint64),
)
_LIMIT: Final = {dtype: int(np.iinfo(dtype).max) for dtype in _UINT_RUNGS}
_U64: Final = np.dtype(np.uint64)
_F64: Final = np.dtype(np.float64)

# Encoded integer count widths (bytes) and their little-endian dtypes.
_WIDTHS: Final = {dtype.itemsize: dtype.newbyteorder("<") for dtype in _UINT_RUNGS}

_FLAG_FLOAT: Final = 0x01
_FLAG_UNIT: Final = 0x02
_F64_LE: Final = struct.Struct("<d")

Counts = npt.NDArray[Any]
_T = TypeVar("_T")

# Shared by every empty store; never written to (stores are replaced, not resized).
_EMPTY: Final[Counts] = np.zeros(0, dtype=np.uint8)
_EMPTY.flags.writeable = False


class SketchDecodeError(ValueError):
    """Raised by Sketch.from_bytes for any malformed, truncated or hostile encoding."""


def _pack(values: list[float]) -> bytes:
    """Held-back values as a compact sketch keeps them: float64 bytes, 8 per value."""
    return array("d", values).tobytes()


def _unpack(packed: bytes) -> list[float]:
    values = array("d")
    values.frombytes(packed)
    return values.tolist()


# A compact sketch's buckets: (sign, key, count), in value order, with the zero bucket.
_Buckets = list[tuple[int, int, int]]


def _compact_quantiles(buckets: _Buckets, unit: float, qs: Sequence[float]) -> list[float | None]:
    """Sketch.quantiles of a compact sketch's buckets, without numpy: the same float steps
    (running sums of the counts, scaled by the unit; ranks, snapping, interpolation) over the
    nonzero buckets, which is where the numpy form's search always lands."""
    kept = [bucket for bucket in buckets if bucket[2]]
    if not kept:
        return [None] * len(qs)
    cum: list[float] = []
    running = 0.0
    for _, _, count in kept:
        running += float(count)
        cum.append(running)
    cum = [total * unit for total in cum]
    top = cum[-1]
    max_rank = top - 1.0
    snap = 1e-12 * top
    last = len(kept) - 1

    def value_of(idx: int) -> float:
        sign, key, _ = kept[min(idx, last)]
        if sign < 0:
            return -_value_of_key(-key)
        return _value_of_key(key) if sign else 0.0

    result: list[float | None] = []
    for q in qs:
        rank = max(q * max_rank, 0.0)
        nearest = round(rank)
        if abs(rank - nearest) <= snap:
            rank = float(nearest)
        below = math.floor(rank)
        frac = rank - below
        lo = min(bisect_right(cum, below), last)
        hi = min(bisect_right(cum, math.ceil(rank)), last)
        v_lo = value_of(lo)
        result.append(v_lo if lo == hi else (1.0 - frac) * v_lo + frac * value_of(hi))
    return result


def _compact_encoding(buckets: _Buckets, unit: float) -> bytes:
    """Sketch.to_bytes of a compact sketch's buckets: integer counts below 256, one byte each."""
    flags = _FLAG_UNIT if unit != 1.0 else 0
    out = bytearray((FORMAT_VERSION, flags))
    if unit != 1.0:
        out += _F64_LE.pack(unit)
    _put_varint(out, next(count for sign, _, count in buckets if sign == 0))
    for wanted in (-1, 1):
        counts = {key: count for sign, key, count in buckets if sign == wanted}
        if not counts:
            _put_varint(out, 0)
            continue
        first, end = min(counts), max(counts) + 1
        _put_varint(out, end - first)
        _put_varint(out, (first << 1) ^ (first >> 63))
        out.append(1)
        body = bytearray(end - first)  # the keys between are empty buckets
        for key, count in counts.items():
            body[key - first] = count
        out += body
    return bytes(out)


def _rung_for(max_count: int) -> np.dtype[Any]:
    for dtype in _UINT_RUNGS:
        if max_count <= _LIMIT[dtype]:
            return dtype
    raise OverflowError(max_count)


def _value_of_key(key: int) -> float:
    """The reported value of positive-store bucket `key` (clamped to the float range)."""
    return math.exp(min(key * _LOG_GAMMA + _LOG_VALUE_FACTOR, _LOG_FLOAT_MAX))


def _trim(counts: Counts, lo: int) -> tuple[Counts, int]:
    """The slice of `counts` between its first and last nonzero bucket, and its offset."""
    nz = np.flatnonzero(counts)
    if len(nz) == 0:
        return _EMPTY, 0
    first, last = int(nz[0]), int(nz[-1])
    return counts[first : last + 1], lo + first


def _place(dst: Counts, dst_lo: int, src: Counts, src_lo: int) -> None:
    """Add `src` into `dst`; src buckets below dst's first key collapse into dst[0]."""
    below = dst_lo - src_lo
    if below > 0:
        dst[0] += src[:below].sum(dtype=dst.dtype)
        src = src[below:]
        src_lo = dst_lo
    start = src_lo - dst_lo
    dst[start : start + len(src)] += src


def _collapse_sum(a: Counts, a_lo: int, b: Counts, b_lo: int, wide: np.dtype[Any]) -> tuple[Counts, int]:
    """a + b as one store of dtype `wide`, collapsing keys more than MAX_BUCKETS - 1 below
    the highest nonzero key into the lowest kept bucket. Returns the store and its first key.
    """
    a, a_lo = _trim(a, a_lo)
    b, b_lo = _trim(b, b_lo)
    ends = [(lo, lo + len(c) - 1) for c, lo in ((a, a_lo), (b, b_lo)) if len(c)]
    hi = max(end for _, end in ends)
    new_lo = max(min(start for start, _ in ends), hi - MAX_BUCKETS + 1)
    merged = np.zeros(hi - new_lo + 1, dtype=wide)
    for counts, lo in ((a, a_lo), (b, b_lo)):
        if len(counts):
            _place(merged, new_lo, counts.astype(wide), lo)
    return merged, new_lo


class Sketch:
    """A quantile sketch: add values, merge sketches, ask quantiles within 1% relative error.

    Not thread-safe. Values may be any finite float; NaN and +-inf are ignored, as are weights
    outside (0, MAX_WEIGHT]. Equal sketches (==) hold the same weight per bucket.
    """

    __slots__ = ("_dtype", "_neg", "_neg_lo", "_pending", "_pos", "_pos_lo", "_unit", "_zero")

    _pos: Counts
    _pos_lo: int
    _neg: Counts
    _neg_lo: int
    # Weight of the zero bucket, in units (int) or weight (float, in float mode).
    _zero: int | float
    # Every count is a multiple of this weight; always 1.0 in float mode.
    _unit: float
    # Dtype of both stores: an unsigned rung, or float64 ("float mode").
    _dtype: np.dtype[Any]
    # Values add() took at the unit weight, not yet in the stores (None: none): a list while
    # values arrive, or packed float64 bytes in a compact copy (see COMPACT_MAX). Every reader
    # settles them first, by add_many, or (compact) reads a settled temporary copy.
    _pending: list[float] | bytes | None

    def __init__(self) -> None:
        self._pending = None
        self._pos = _EMPTY
        self._pos_lo = 0
        self._neg = _EMPTY
        self._neg_lo = 0
        self._zero = 0
        self._unit = 1.0
        self._dtype = _UINT_RUNGS[0]

    # ------------------------------------------------------------------ adding

    def add(self, value: float, weight: float = 1.0) -> None:
        """Count `value` with `weight` (1/sample_rate). Non-finite values are ignored.

        At the sketch's unit weight (the usual case: one sample rate per series) the value
        waits in a list and joins the stores with others, by add_many, when one is read or
        PENDING_MAX have gathered: a list append instead of two numpy scalar accesses."""
        if weight != self._unit:
            if self._pending is None and self._dtype is not _F64 and 0.0 < weight <= MAX_WEIGHT and self.is_empty():
                self._unit = float(weight)  # the first weight becomes the unit (see _increment)
            else:
                self._settle()
                self._add(value, weight)
                return
        pending = self._pending
        if pending is None:
            self._pending = [value]
        else:
            try:
                pending.append(value)  # type: ignore[union-attr]  # bytes raise: handled below
            except AttributeError:
                # A compact copy (a rolled-up window) taking a late sample: a list again.
                assert isinstance(pending, bytes)
                self._pending = pending = [*_unpack(pending), value]
            if len(pending) >= PENDING_MAX:
                self._settle()

    def add_list(self, values: list[float], weight: float = 1.0) -> None:
        """add() for each of `values` in turn, as one list extend at the unit weight (a worker's
        frame hands the owner a series' values of one interval at once)."""
        pending = self._pending
        if pending.__class__ is bytes:
            assert isinstance(pending, bytes)
            self._pending = pending = _unpack(pending)
        if pending is not None and weight == self._unit:
            assert isinstance(pending, list)
            pending.extend(values)
            if len(pending) >= PENDING_MAX:
                self._settle()
            return
        add = self.add
        for value in values:
            add(value, weight)

    def _settle(self) -> None:
        """Put the values add() held back into the stores."""
        pending = self._pending
        if pending is not None:
            self._pending = None
            self.add_many(_unpack(pending) if isinstance(pending, bytes) else pending, self._unit)

    def _compact(self) -> list[float] | None:
        """The held-back values while this sketch is compact (at most COMPACT_MAX of them,
        nothing in the stores), else None."""
        pending = self._pending
        if pending is None or len(self._pos) or len(self._neg) or self._zero:
            return None
        if isinstance(pending, bytes):
            return _unpack(pending) if len(pending) <= 8 * COMPACT_MAX else None
        return pending if len(pending) <= COMPACT_MAX else None

    def pack(self) -> None:
        """Keep a compact sketch's held-back values packed (8 bytes each, not a float object
        and a list slot each), or nothing when none is valid: as a merge into an empty sketch
        leaves it. For a slice kept as its closed window's cell."""
        pending = self._pending
        if not isinstance(pending, list) or len(pending) > COMPACT_MAX:
            return
        values = self._compact()
        if values is None:
            return
        if any(-_INF < value < _INF for value in values):
            self._pending = _pack(values)
        else:
            self.__init__()  # type: ignore[misc]

    def _compact_buckets(self) -> _Buckets | None:
        """A compact sketch's buckets in value order, (sign, key, count) with sign -1, 0 (the
        zero bucket) or 1, computed as add() computes them; None when not compact, or when the
        numpy form must answer (float counts, or a key range near the bucket cap)."""
        if self._pending is None or self._dtype is _F64:
            return None
        values = self._compact()
        if values is None:
            return None
        pos: dict[int, int] = {}
        neg: dict[int, int] = {}
        zero = 0
        for value in values:
            if ZERO_THRESHOLD <= value < _INF:
                key = _ceil(_log(value) * _INV_LOG_GAMMA)
                pos[key] = pos.get(key, 0) + 1
            elif -_INF < value <= -ZERO_THRESHOLD:
                key = -_ceil(_log(-value) * _INV_LOG_GAMMA)
                neg[key] = neg.get(key, 0) + 1
            elif -ZERO_THRESHOLD < value < ZERO_THRESHOLD:
                zero += 1
        for store in (pos, neg):
            if store and max(store) - min(store) >= MAX_BUCKETS // 2:
                return None  # collapsing is the numpy form's business
        buckets: _Buckets = [(-1, key, neg[key]) for key in sorted(neg)]
        buckets.append((0, 0, zero))
        buckets += [(1, key, pos[key]) for key in sorted(pos)]
        return buckets

    def _view(self) -> Sketch:
        """This sketch with every value in its stores, for reading: itself, settled, or while it
        is compact a settled temporary copy (reading does not give it numpy stores)."""
        if self._pending is None:
            return self
        values = self._compact()
        if values is None:
            self._settle()
            return self
        view = Sketch.__new__(Sketch)
        view._pending = None
        view._pos, view._pos_lo, view._neg, view._neg_lo = self._pos, self._pos_lo, self._neg, self._neg_lo
        view._zero, view._unit, view._dtype = self._zero, self._unit, self._dtype
        view.add_many(values, self._unit)
        return view

    def _add(self, value: float, weight: float) -> None:
        """add() at once: one value into the stores."""
        inc: int | float
        if weight == self._unit:
            inc = 1
        else:
            inc = self._increment(weight)
            if not inc:
                return
        if ZERO_THRESHOLD <= value < _INF:
            key = _ceil(_log(value) * _INV_LOG_GAMMA)
            counts = self._pos
            i = key - self._pos_lo
            if 0 <= i < len(counts):
                try:
                    counts[i] = counts.item(i) + inc
                    return
                except OverflowError:
                    pass  # the dtype is too narrow: _insert widens it
            self._insert(True, key, inc)
        elif -_INF < value <= -ZERO_THRESHOLD:
            key = -_ceil(_log(-value) * _INV_LOG_GAMMA)
            counts = self._neg
            i = key - self._neg_lo
            if 0 <= i < len(counts):
                try:
                    counts[i] = counts.item(i) + inc
                    return
                except OverflowError:
                    pass
            self._insert(False, key, inc)
        elif -ZERO_THRESHOLD < value < ZERO_THRESHOLD:
            self._zero += inc

    def add_many(self, values: Sequence[float] | npt.NDArray[np.floating[Any]], weight: float = 1.0) -> None:
        """Count every value in `values`, each with `weight`; same result as add() in a loop."""
        if self._pending is not None:
            self._settle()
        arr = np.asarray(values, dtype=np.float64).ravel()
        n = len(arr)
        if n == 0:
            return
        if n < _SMALL_BATCH:
            add = self._add
            for v in arr.tolist():
                add(v, weight)
            return
        inc = self._increment(weight)
        if not inc:
            return
        if self._dtype is not _F64 and n * float(inc) >= _INT_TOTAL_LIMIT:
            self._to_float()
            inc = weight
        low, high = arr.min().item(), arr.max().item()
        # The common cases (all positive, all negative) skip the masks. Key bounds come from
        # math.log with a margin of one bucket, in case numpy's log differs in the last ulp.
        if low >= ZERO_THRESHOLD and high < _INF:
            keys = np.log(arr)
            keys *= _INV_LOG_GAMMA
            np.ceil(keys, out=keys)
            low_key = _ceil(_log(low) * _INV_LOG_GAMMA) - 1
            high_key = _ceil(_log(high) * _INV_LOG_GAMMA) + 1
            self._add_keys(True, keys, low_key, high_key, inc)
            return
        if low > -_INF and high <= -ZERO_THRESHOLD:
            keys = np.log(-arr)
            keys *= -_INV_LOG_GAMMA
            np.floor(keys, out=keys)  # -ceil(x) == floor(-x)
            low_key = -_ceil(_log(-low) * _INV_LOG_GAMMA) - 1
            high_key = -_ceil(_log(-high) * _INV_LOG_GAMMA) + 1
            self._add_keys(False, keys, low_key, high_key, inc)
            return
        pos = arr[(arr >= ZERO_THRESHOLD) & (arr < _INF)]
        if len(pos):
            keys = np.ceil(np.log(pos) * _INV_LOG_GAMMA)
            self._add_keys(True, keys, int(keys.min()), int(keys.max()), inc)
        neg = arr[(arr <= -ZERO_THRESHOLD) & (arr > -_INF)]
        if len(neg):
            keys = -np.ceil(np.log(-neg) * _INV_LOG_GAMMA)
            self._add_keys(False, keys, int(keys.min()), int(keys.max()), inc)
        zeros = int(np.count_nonzero(np.abs(arr) < ZERO_THRESHOLD))
        if zeros:
            self._zero += zeros * inc

    def merge(self, other: Sketch) -> None:
        """Add every bucket of `other` into this sketch; `other` is not changed.

        Exact while counts are integers (integral or single-rate weights): the result equals
        one sketch fed both inputs. Float counts (unrelated fractional weights) add with float
        rounding.
        """
        if other._pending is not None and other._merge_compact(self):
            return
        if self._takes_pending(other):
            self._take_pending(other)
            return
        self._settle()
        other = other._view()
        if other.is_empty():
            return
        if self.is_empty():
            # The common first merge into a fresh window or group: take a copy.
            self._assign(other)
            return
        # astype copies, so `other` may be `self`.
        o_pos, o_neg, o_zero = other._pos, other._neg, other._zero
        o_total: float | None = None
        if self._dtype is not _F64:
            factor = None if other._dtype is _F64 else self._factor_for(other._unit)
            if factor is None:
                self._to_float()
            else:
                o_pos, o_neg = o_pos.astype(_U64), o_neg.astype(_U64)
                if factor != 1:
                    o_pos *= np.uint64(factor)
                    o_neg *= np.uint64(factor)
                o_zero = int(o_zero) * factor
                if factor == 1 and other._dtype is not _U64:
                    o_total = _NARROW_TOTAL_BOUND
        if self._dtype is _F64:
            o_pos = o_pos.astype(_F64) * other._unit
            o_neg = o_neg.astype(_F64) * other._unit
            o_zero = float(o_zero) * other._unit
        if len(o_pos):
            self._add_block(True, other._pos_lo, o_pos, o_total)
        if len(o_neg):
            self._add_block(False, other._neg_lo, o_neg, o_total)
        self._zero += o_zero

    def _takes_pending(self, other: Sketch) -> bool:
        """Whether `other` holds only values add() held back (a slice's sketch, never read) and
        both count in integers: merging it is then adding those values (the same buckets), and
        they join this sketch's own held-back values, stored with them in one add_many when
        this sketch is read, instead of being stored twice (other's stores, then a merge)."""
        return (
            other._pending is not None
            and other is not self
            and not len(other._pos)
            and not len(other._neg)
            and not other._zero
            and self._dtype is not _F64
            and other._dtype is not _F64
            # The same unit (or none yet): counts stay integers. Across units the values
            # would be added one by one in float counts, rounding unlike a merge.
            and (self._unit == other._unit or (self._pending is None and self.is_empty()))
        )

    def _take_pending(self, other: Sketch) -> None:
        """Merge a `_takes_pending` sketch: its held-back values become this one's."""
        pending = other._pending
        assert pending is not None
        values = _unpack(pending) if isinstance(pending, bytes) else pending
        if self._pending is None:
            if self._unit != other._unit and not any(-_INF < value < _INF for value in values):
                return  # nothing valid: merging an empty sketch leaves this one's unit alone
            self._unit = other._unit  # the same, or taken by an empty sketch (as add() does)
            self._pending = list(values)
            if len(values) >= PENDING_MAX:
                self._settle()
        else:
            self.add_list(values, other._unit)  # the same unit: extends the list

    def _merge_compact(self, into: Sketch) -> bool:
        """merge() of this compact sketch into `into` when the result can stay compact (or
        is unchanged): True if done. The same buckets as merging the settled sketches: each
        value is settled by one add() either way (fewer than _SMALL_BATCH), into integer
        counts (or float counts of whole units) that cannot overflow."""
        values = self._compact()
        if values is None:
            return False
        if not any(-_INF < value < _INF for value in values):
            return True  # empty: merge() changes nothing
        if into.is_empty():
            # A fresh window's first part: a compact copy, as _assign would take. Packed values
            # are shared, not copied: bytes never change (a sketch that takes more replaces them).
            pending = self._pending
            into._pending = pending if isinstance(pending, bytes) else _pack(values)
            into._pos = into._neg = _EMPTY
            into._pos_lo = into._neg_lo = 0
            into._zero, into._unit, into._dtype = self._zero, self._unit, self._dtype
            return True
        mine = into._compact()
        if mine is None or into._unit != self._unit or into._dtype is not self._dtype:
            return False
        if len(mine) + len(values) > COMPACT_MAX:
            return False
        into._pending = _pack([*mine, *values])
        return True

    def merge_many(self, others: Sequence[Sketch]) -> None:
        """Merge several sketches at once: the same buckets as merging them one by one (up to
        float rounding when unrelated fractional weights have made counts floats).

        Sketches with integer counts in a common unit are summed bucket-wise into one numpy
        array per sign first and merged in once: the query path merges the open slices of
        every series of a metric, and one merge each would cost a few microseconds apiece.
        """
        rest = []
        for other in others:
            if self._takes_pending(other):
                self._take_pending(other)
            else:
                rest.append(other)
        others = rest
        self._settle()
        # Compact parts are read through settled copies: a query must not grow them.
        groups: dict[float, list[Sketch]] = {}
        for other in [other._view() for other in others]:
            if other.is_empty():
                continue
            if other._dtype is _F64:
                self.merge(other)
                continue
            groups.setdefault(other._unit, []).append(other)
        for unit, members in groups.items():
            if len(members) < 4:
                for member in members:
                    self.merge(member)
                continue
            combined = Sketch()
            combined._unit = unit
            combined._dtype = _U64
            combined._zero = sum(int(member._zero) for member in members)
            for positive in (True, False):
                stores = [member._store(positive) for member in members]
                stores = [(counts, lo) for counts, lo in stores if len(counts)]
                if not stores:
                    continue
                lo = min(start for _, start in stores)
                hi = max(start + len(counts) for counts, start in stores)
                total = np.zeros(hi - lo, dtype=_U64)
                for counts, start in stores:
                    total[start - lo : start - lo + len(counts)] += counts
                combined._set_store(positive, total, lo)
            self.merge(combined)

    # ----------------------------------------------------------------- reading

    @property
    def count(self) -> float:
        """Total weight added."""
        self = self._view()
        if self._huge():
            # Python float sums saturate at inf where numpy's would warn.
            return float(sum(self._neg.tolist()) + float(self._zero) + sum(self._pos.tolist()))
        if self._dtype is _F64:
            # Float counts: an exactly rounded sum, so the answer does not depend on how the
            # buckets are laid out (numpy's pairwise sum rounds by array length and offset).
            return math.fsum([*self._neg.tolist(), float(self._zero), *self._pos.tolist()]) * self._unit
        total = float(self._pos.sum(dtype=_F64)) + float(self._neg.sum(dtype=_F64))
        return (total + float(self._zero)) * self._unit

    def is_empty(self) -> bool:
        """True when nothing (with a valid value and weight) was added."""
        if self._pending is not None:
            values = self._compact()
            if values is not None:
                return not any(-_INF < value < _INF for value in values)
            self._settle()
        return len(self._pos) == 0 and len(self._neg) == 0 and not self._zero

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) within 1% relative error, or None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """quantile(q) for each q in `qs`, in one pass over the buckets."""
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        buckets = self._compact_buckets()
        if buckets is not None:
            return _compact_quantiles(buckets, self._unit, qs)
        self = self._view()
        if self.is_empty():
            return [None] * len(qs)
        neg, pos = self._neg, self._pos
        # Buckets in value order: negative store, zero, positive store.
        weights = np.concatenate((neg, (self._zero,), pos), dtype=_F64)
        overflowed = self._huge()
        if overflowed:
            # Rank on fractions of the largest bucket, whose running sum cannot overflow.
            weights /= weights.max()
        cum = weights.cumsum()
        max_rank = 0.0
        if not overflowed:
            cum *= self._unit
            max_rank = float(cum[-1]) - 1.0
        # Float weights leave rounding noise in ranks (45.000000000001 for 45); interpolating on
        # that noise toward a far neighbour would add error, so near-integer ranks snap.
        snap = 1e-12 * float(cum[-1])
        fracs: list[float] = []
        ranks: list[float] = []
        for q in qs:
            if overflowed:
                fracs.append(0.0)
                ranks += (q * float(cum[-1]),) * 2
                continue
            rank = max(q * max_rank, 0.0)
            nearest = round(rank)
            if abs(rank - nearest) <= snap:
                rank = float(nearest)
            below = math.floor(rank)
            fracs.append(rank - below)
            ranks += (below, math.ceil(rank))
        # The bucket holding the sample of a rank is the first whose running sum passes it.
        found = cum.searchsorted(ranks, side="right").tolist()
        last, n_neg, neg_lo, pos_lo = len(cum) - 1, len(neg), self._neg_lo, self._pos_lo

        def value_of(idx: int) -> float:
            if idx < n_neg:
                return -_value_of_key(-(neg_lo + idx))
            if idx == n_neg:
                return 0.0
            return _value_of_key(pos_lo + idx - n_neg - 1)

        result: list[float | None] = []
        for i, frac in enumerate(fracs):
            lo, hi = min(found[2 * i], last), min(found[2 * i + 1], last)
            v_lo = value_of(lo)
            if lo == hi:
                result.append(v_lo)
            else:
                # Interpolate like numpy's 'linear' method; this form cannot overflow.
                result.append((1.0 - frac) * v_lo + frac * value_of(hi))
        return result

    def copy(self) -> Sketch:
        """An independent sketch with the same buckets."""
        clone = Sketch.__new__(Sketch)
        clone._assign(self)
        return clone

    def nbytes(self) -> int:
        """Bytes held by this sketch: the object plus its bucket arrays (or compact values)."""
        if self._compact() is not None:
            return sys.getsizeof(self) + sys.getsizeof(self._pending)
        self._settle()
        size = sys.getsizeof(self)
        for counts in (self._pos, self._neg):
            if len(counts):
                size += sys.getsizeof(counts)
        return size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sketch):
            return NotImplemented
        self = self._view()
        other = other._view()
        if float(self._zero) * self._unit != float(other._zero) * other._unit:
            return False
        for mine, theirs in (
            ((self._pos, self._pos_lo), (other._pos, other._pos_lo)),
            ((self._neg, self._neg_lo), (other._neg, other._neg_lo)),
        ):
            a, a_lo = _trim(*mine)
            b, b_lo = _trim(*theirs)
            if len(a) != len(b) or (len(a) and a_lo != b_lo):
                return False
            if self._unit == other._unit and self._dtype is not _F64 and other._dtype is not _F64:
                if not np.array_equal(a, b):
                    return False
            elif not np.array_equal(a.astype(_F64) * self._unit, b.astype(_F64) * other._unit):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        self = self._view()
        buckets = int(np.count_nonzero(self._pos)) + int(np.count_nonzero(self._neg))
        return f"Sketch(count={self.count!r}, buckets={buckets + (1 if self._zero else 0)})"

    # ------------------------------------------------------------ serialising

    def to_bytes(self) -> bytes:
        """A compact, versioned encoding (first byte: format version); see from_bytes.

        Layout (version 1), little-endian: version u8, flags u8 (1 = float64 counts,
        2 = unit follows), [unit f64], zero count (LEB128 varint, or f64 with flag 1), then the
        negative and the positive store, each as varint n and, when n > 0, a zigzag varint
        first key, then either u8 width (1, 2, 4 or 8) and n unsigned counts of that width, or
        with flag 1 n f64 counts. About one byte per bucket while no bucket exceeds 255.
        """
        # Counts are packed at one width per store (the narrowest holding its largest count),
        # not as varints: a numpy varint body took ~50 us each way, this takes ~1 us, and with
        # counts below 256 it is no larger.
        buckets = self._compact_buckets()
        if buckets is not None:
            return _compact_encoding(buckets, self._unit)
        self = self._view()
        is_float = self._dtype is _F64
        if not is_float and self._zero > _U64_MAX:
            # Only absurd weights get here; an encoded integer count holds 64 bits.
            wide = self.copy()
            wide._to_float()
            return wide.to_bytes()
        flags = (_FLAG_FLOAT if is_float else 0) | (_FLAG_UNIT if self._unit != 1.0 else 0)
        out = bytearray((FORMAT_VERSION, flags))
        if self._unit != 1.0:
            out += _F64_LE.pack(self._unit)
        if is_float:
            out += _F64_LE.pack(float(self._zero))
        else:
            _put_varint(out, int(self._zero))
        for counts, lo in ((self._neg, self._neg_lo), (self._pos, self._pos_lo)):
            body, first = _trim(counts, lo)
            _put_varint(out, len(body))
            if len(body):
                _put_varint(out, (first << 1) ^ (first >> 63))
                if is_float:
                    out += body.astype("<f8").tobytes()
                else:
                    width = _rung_for(int(body.max())).newbyteorder("<")
                    out.append(width.itemsize)
                    out += body.astype(width).tobytes()
        return bytes(out)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Sketch:
        """Decode to_bytes output. Any malformed input raises SketchDecodeError, nothing else.

        Accepts any bytes-like object (a database driver may hand back a memoryview).
        Allocation is bounded by MAX_BUCKETS and by the input's length, whatever the header
        claims.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SketchDecodeError(f"expected bytes, got {type(data).__name__}")
        try:
            return _decode(cls, bytes(data))
        except SketchDecodeError:
            raise
        except Exception as exc:
            # Hostile bytes must never surface as another exception type; the cause is kept.
            raise SketchDecodeError(f"malformed sketch: {exc!r}") from exc

    # --------------------------------------------------------------- internals

    def _increment(self, weight: float) -> int | float:
        """The count increment for `weight`, adjusting unit or dtype first; 0 = ignore."""
        if not 0.0 < weight <= MAX_WEIGHT:
            return 0
        if self._dtype is _F64:
            return float(weight)
        if self.is_empty():
            # The first weight becomes the unit, so a series with one sample rate (the usual
            # case) takes add()'s fast path and counts samples, not weight, in its buckets.
            self._unit = float(weight)
            return 1
        # Ratios below 1 (even ones that round to 0.0) must not count as integers.
        ratio = weight / self._unit
        if 1.0 <= ratio <= _MAX_INCREMENT and ratio.is_integer():
            return int(ratio)
        factor = self._unit / weight
        if 1.0 <= factor <= _MAX_INCREMENT and factor.is_integer() and self._rescale(int(factor)):
            self._unit = float(weight)
            return 1
        self._to_float()
        return float(weight)

    def _factor_for(self, other_unit: float) -> int | None:
        """Make this (integer) sketch's unit divide `other_unit` and return other_unit / unit,
        or None when no integer ratio exists (the caller then switches to float counts)."""
        if other_unit == self._unit:
            return 1
        ratio = other_unit / self._unit
        if 1.0 <= ratio <= _MAX_INCREMENT and ratio.is_integer():
            return int(ratio)
        factor = self._unit / other_unit
        if 1.0 <= factor <= _MAX_INCREMENT and factor.is_integer() and self._rescale(int(factor)):
            self._unit = other_unit
            return 1
        return None

    def _rescale(self, factor: int) -> bool:
        """Multiply integer counts by `factor` (the unit shrinks); False if it would not fit."""
        biggest = max(int(self._pos.max(initial=0)), int(self._neg.max(initial=0)))
        total = float(self._pos.sum(dtype=_F64)) + float(self._neg.sum(dtype=_F64))
        if (total + float(self._zero)) * factor >= _INT_TOTAL_LIMIT:
            return False
        dtype = max(self._dtype, _rung_for(biggest * factor), key=lambda d: d.itemsize)
        scale = np.uint64(factor)
        if len(self._pos):
            self._pos = (self._pos.astype(_U64) * scale).astype(dtype)
        if len(self._neg):
            self._neg = (self._neg.astype(_U64) * scale).astype(dtype)
        self._dtype = dtype
        self._zero = int(self._zero) * factor
        return True

    def _to_float(self) -> None:
        """Switch to float64 counts in weight units (once, when integers cannot be exact)."""
        if self._dtype is _F64:
            return
        unit = self._unit
        if len(self._pos):
            self._pos = self._pos.astype(_F64) * unit
        if len(self._neg):
            self._neg = self._neg.astype(_F64) * unit
        self._zero = float(self._zero) * unit
        self._unit = 1.0
        self._dtype = _F64

    def _widen(self, needed: int | float) -> int | float:
        """Widen both stores to hold a count of `needed`; return it in the new representation."""
        if isinstance(needed, int) and needed <= _U64_MAX:
            dtype = _rung_for(needed)
            if len(self._pos):
                self._pos = self._pos.astype(dtype)
            if len(self._neg):
                self._neg = self._neg.astype(dtype)
            self._dtype = dtype
            return needed
        unit = self._unit
        self._to_float()
        return float(needed) * unit

    def _fit(self, biggest: int) -> None:
        """Widen the integer dtype, if needed, to hold a count of `biggest`."""
        if self._dtype is not _F64 and biggest > _LIMIT[self._dtype]:
            self._widen(biggest)

    def _huge(self) -> bool:
        """True if float counts could overflow when summed (only after absurd merges)."""
        if self._dtype is not _F64:
            return False
        biggest = max(float(self._pos.max(initial=0.0)), float(self._neg.max(initial=0.0)))
        return max(biggest, float(self._zero)) >= _HUGE_WEIGHT

    def _assign(self, other: Sketch) -> None:
        """Become a copy of `other`."""
        values = other._compact()
        if values is not None:
            self._pending = _pack(values)
        else:
            other._settle()
            self._pending = None
        self._pos = other._pos.copy() if len(other._pos) else _EMPTY
        self._pos_lo = other._pos_lo
        self._neg = other._neg.copy() if len(other._neg) else _EMPTY
        self._neg_lo = other._neg_lo
        self._zero = other._zero
        self._unit = other._unit
        self._dtype = other._dtype

    def _store(self, positive: bool) -> tuple[Counts, int]:
        return (self._pos, self._pos_lo) if positive else (self._neg, self._neg_lo)

    def _set_store(self, positive: bool, counts: Counts, lo: int) -> None:
        if positive:
            self._pos, self._pos_lo = counts, lo
        else:
            self._neg, self._neg_lo = counts, lo

    def _insert(self, positive: bool, key: int, inc: int | float) -> None:
        """add()'s slow path: grow or collapse the store, or widen the dtype, then count."""
        counts, lo = self._store(positive)
        if not lo <= key < lo + len(counts):
            grown = self._grow(counts, lo, key)
            if grown is None:
                block = np.array([inc], dtype=_F64 if self._dtype is _F64 else _U64)
                self._add_block(positive, key, block)
                return
            counts, lo = grown
            self._set_store(positive, counts, lo)
        i = key - lo
        total = counts.item(i) + inc
        try:
            counts[i] = total
        except OverflowError:
            total = self._widen(total)
            counts, _ = self._store(positive)
            counts[i] = total

    def _grow(self, counts: Counts, lo: int, key: int) -> tuple[Counts, int] | None:
        """A copy of the store extended (with slack) to cover `key`; None if over the cap."""
        n = len(counts)
        if n == 0:
            grown = np.zeros(2 * _SLACK + 1, dtype=self._dtype)
            return grown, key - _SLACK
        end = lo + n
        if key < lo:
            if end - key > MAX_BUCKETS:
                return None
            new_lo = max(key - _SLACK, end - MAX_BUCKETS)
            grown = np.zeros(end - new_lo, dtype=self._dtype)
            grown[lo - new_lo :] = counts
            return grown, new_lo
        if key + 1 - lo > MAX_BUCKETS:
            return None
        grown = np.zeros(min(key + 1 + _SLACK, lo + MAX_BUCKETS) - lo, dtype=self._dtype)
        grown[:n] = counts
        return grown, lo

    def _add_keys(
        self,
        positive: bool,
        keys: npt.NDArray[np.float64],
        low_key: int,
        high_key: int,
        inc: int | float,
    ) -> None:
        """Count integral float `keys` (all >= low_key, <= high_key) with `inc` each."""
        if high_key - low_key >= MAX_BUCKETS:
            # Collapse now so bincount stays within the cap whatever the input range; the
            # floor is conservative (high_key may be one too high), _add_block applies the rule.
            low_key = high_key - MAX_BUCKETS - 1
            np.maximum(keys, low_key, out=keys)
        binned = np.bincount(keys.astype(np.int64) - low_key)
        counts, lo = self._store(positive)
        start = low_key - lo
        narrow = self._dtype is not _F64 and self._dtype is not _U64
        if narrow and start >= 0 and start + len(binned) <= len(counts):
            # In range, narrow ints: add in int64 (cannot overflow), widen if a bucket outgrew.
            end = start + len(binned)
            if inc != 1:
                binned *= int(inc)
            binned += counts[start:end]
            self._fit(int(binned.max()))
            counts, _ = self._store(positive)
            counts[start:end] = binned
            return
        wide = _F64 if self._dtype is _F64 else _U64
        block: Counts = binned.astype(wide) * wide.type(inc)
        self._add_block(positive, low_key, block, len(keys) * float(inc))

    def _add_block(self, positive: bool, b_lo: int, block: Counts, block_total: float | None = None) -> None:
        """Add `block` (uint64 in units, or float64 weights in float mode) at key `b_lo`.

        `block` holds at least one nonzero count; `block_total`, if given, bounds its sum
        (which saves summing it for the overflow guard).
        """
        counts, lo = self._store(positive)
        if self._dtype is not _F64:
            if block_total is None:
                block_total = float(block.sum(dtype=_F64))
            narrow = self._dtype is not _U64
            store_total = _NARROW_TOTAL_BOUND if narrow else float(counts.sum(dtype=_F64))
            if store_total + block_total >= _INT_TOTAL_LIMIT:
                unit = self._unit
                self._to_float()
                block = block.astype(_F64) * unit
                counts, lo = self._store(positive)
        wide = _F64 if self._dtype is _F64 else _U64
        start = b_lo - lo
        if len(counts) and start >= 0 and start + len(block) <= len(counts):
            merged = counts[start : start + len(block)].astype(wide)
            merged += block
            if wide is _U64:
                self._fit(int(merged.max()))
                counts, _ = self._store(positive)
            counts[start : start + len(block)] = merged
            return
        b_hi = b_lo + len(block) - 1
        a_lo, a_hi = (lo, lo + len(counts) - 1) if len(counts) else (b_lo, b_hi)
        new_lo, new_hi = min(a_lo, b_lo), max(a_hi, b_hi)
        if new_hi - new_lo < MAX_BUCKETS:
            # The union fits under the cap, so nothing can collapse: just grow, with slack on
            # a side that grew (as add() does) so later batches reallocate less often.
            if b_lo < a_lo:
                new_lo = max(new_lo - _SLACK, new_hi - MAX_BUCKETS + 1)
            if b_hi > a_hi:
                new_hi = min(new_hi + _SLACK, new_lo + MAX_BUCKETS - 1)
            merged = np.zeros(new_hi - new_lo + 1, dtype=wide)
            if len(counts):
                merged[lo - new_lo : lo - new_lo + len(counts)] = counts
            merged[b_lo - new_lo : b_lo - new_lo + len(block)] += block
        else:
            merged, new_lo = _collapse_sum(counts, lo, block, b_lo, wide)
        if wide is _U64:
            self._fit(int(merged.max()))
        self._set_store(positive, merged.astype(self._dtype), new_lo)


# ------------------------------------------------------------------ encoding


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _get_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise SketchDecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if value > _U64_MAX:
                raise SketchDecodeError("varint exceeds 64 bits")
            return value, pos
    raise SketchDecodeError("varint longer than 10 bytes")


def _get_f64(data: bytes, pos: int) -> tuple[float, int]:
    if pos + 8 > len(data):
        raise SketchDecodeError("truncated float")
    return _F64_LE.unpack_from(data, pos)[0], pos + 8


def _store_first_key(data: bytes, pos: int, n: int, positive: bool) -> tuple[int, int]:
    """The first key of an encoded store of `n` buckets (zigzag varint), checked against the
    bucket cap and the key range of its sign; returns it and the position after it."""
    if n > MAX_BUCKETS:
        raise SketchDecodeError(f"{n} buckets exceed the cap of {MAX_BUCKETS}")
    raw, pos = _get_varint(data, pos)
    lo = (raw >> 1) ^ -(raw & 1)
    key_min, key_max = (_KEY_MIN, _KEY_MAX) if positive else (-_KEY_MAX, -_KEY_MIN)
    if lo < key_min or lo + n - 1 > key_max:
        raise SketchDecodeError("bucket keys out of range")
    return lo, pos


def _decode(cls: type[Sketch], data: bytes) -> Sketch:
    if len(data) < 2:
        raise SketchDecodeError("too short")
    if data[0] != FORMAT_VERSION:
        raise SketchDecodeError(f"unknown sketch format version {data[0]}")
    flags = data[1]
    if flags & ~(_FLAG_FLOAT | _FLAG_UNIT) or flags == _FLAG_FLOAT | _FLAG_UNIT:
        raise SketchDecodeError(f"bad flags {flags:#x}")
    is_float = bool(flags & _FLAG_FLOAT)
    pos = 2
    unit = 1.0
    if flags & _FLAG_UNIT:
        unit, pos = _get_f64(data, pos)
        if not 0.0 < unit <= MAX_WEIGHT:
            raise SketchDecodeError("unit weight out of range")
    zero: int | float
    if is_float:
        zero, pos = _get_f64(data, pos)
        if not 0.0 <= zero <= _HUGE_WEIGHT:
            raise SketchDecodeError("zero count out of range")
    else:
        zero, pos = _get_varint(data, pos)
    stores: list[tuple[Counts, int]] = []
    for positive in (False, True):
        n, pos = _get_varint(data, pos)
        if n == 0:
            stores.append((_EMPTY, 0))
            continue
        lo, pos = _store_first_key(data, pos, n, positive)
        counts: Counts
        if is_float:
            if pos + 8 * n > len(data):
                raise SketchDecodeError("truncated counts")
            counts = np.frombuffer(data, dtype="<f8", count=n, offset=pos).astype(_F64)
            pos += 8 * n
            if not ((counts >= 0.0) & (counts <= _HUGE_WEIGHT)).all():
                raise SketchDecodeError("counts out of range")
        else:
            if pos >= len(data) or data[pos] not in _WIDTHS:
                raise SketchDecodeError("bad count width")
            width = data[pos]
            pos += 1
            if pos + width * n > len(data):
                raise SketchDecodeError("truncated counts")
            counts = np.frombuffer(data, dtype=_WIDTHS[width], count=n, offset=pos)
            pos += width * n
        stores.append(_trim(counts, lo))
    if pos != len(data):
        raise SketchDecodeError(f"{len(data) - pos} trailing bytes")

    (neg, neg_lo), (pos_counts, pos_lo) = stores
    sketch = cls()
    sketch._unit = unit
    sketch._zero = zero
    if is_float:
        dtype = _F64
    else:
        biggest = max(int(neg.max(initial=0)), int(pos_counts.max(initial=0)))
        dtype = _rung_for(biggest)
    sketch._dtype = dtype
    sketch._neg, sketch._neg_lo = (neg.astype(dtype), neg_lo) if len(neg) else (_EMPTY, 0)
    sketch._pos, sketch._pos_lo = (pos_counts.astype(dtype), pos_lo) if len(pos_counts) else (_EMPTY, 0)
    if not is_float:
        total = float(neg.sum(dtype=_F64)) + float(pos_counts.sum(dtype=_F64)) + float(zero)
        if total >= _INT_TOTAL_LIMIT:
            # Keep the invariant that integer totals cannot wrap uint64 arithmetic.
            sketch._to_float()
    return sketch


# ---------------------------------------------------------- compact sketches, grouped

# A compact sketch's bucket as one sortable int64: its owner (index in the group) << 20, its
# store (0 negative, 1 zero, 2 positive) << 18, its key + _KEY_BIAS. Keys of either store lie
# within +-_KEY_MAX, so sorting orders by owner, then by value.
_KEY_BIAS: Final = 1 << 16
_STORE_SHIFT: Final = 18
_OWNER_SHIFT: Final = 20
assert _KEY_MAX < _KEY_BIAS and -_KEY_MIN < _KEY_BIAS and 2 * _KEY_BIAS <= 1 << _STORE_SHIFT
_NEGATIVE, _ZERO, _POSITIVE = 0, 1, 2

# Bucket values by key (index key - _KEY_MIN), each computed by _value_of_key when first
# needed; 0.0 is "not yet" (no bucket's value is 0). np.zeros leaves untouched pages unmapped.
_BUCKET_VALUES: Final = np.zeros(_KEY_MAX - _KEY_MIN + 1, dtype=_F64)


def _bucket_values(keys: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """_value_of_key of each of `keys` (within [_KEY_MIN, _KEY_MAX]): math.exp, once per key."""
    at = keys - _KEY_MIN
    values = _BUCKET_VALUES[at]
    missing = (values == 0.0).nonzero()[0]
    if len(missing):
        for index in np.unique(at[missing]).tolist():
            _BUCKET_VALUES[index] = _value_of_key(index + _KEY_MIN)
        values = _BUCKET_VALUES[at]
    return values


def _varint_sizes(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Bytes of each value's LEB128 varint; values below 2**28 (here: at most a zigzag key)."""
    return 1 + (values >= 1 << 7) + (values >= 1 << 14) + (values >= 1 << 21)


def _put_varints(buf: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], values: npt.NDArray[np.int64]) -> None:
    """Write each of `values` as a LEB128 varint at its offset in `at`."""
    sizes = _varint_sizes(values)
    for k in range(int(sizes.max(initial=0))):
        more = sizes > k
        byte = ((values >> (7 * k)) & 0x7F) | ((sizes > k + 1) << 7)
        buf[at[more] + k] = byte[more]


def _run_starts(ordered: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
    """Where each run of equal entries of `ordered` starts."""
    change = np.empty(len(ordered), dtype=bool)
    change[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    return change.nonzero()[0]


class _CompactGroup:
    """The buckets of a batch's compact sketches (integer counts, held-back values, nothing in
    the stores), found together: their values unpacked at once, keyed by math.log one by one
    (exactly as add() keys them), then sorted and counted by numpy. `quantiles` and `encodings`
    answer for all of them with a few numpy calls, the same floats and bytes as
    `_compact_quantiles` and `_compact_encoding` give one by one. The batch's other sketches,
    and compact ones `_compact_buckets` refuses (a key range near the cap) or whose values do
    not pack as floats, are `others`: their rows are placeholders, to be answered elsewhere."""

    __slots__ = (
        "count",
        "first_of_owner",
        "key",
        "others",
        "owner",
        "per_owner",
        "size",
        "store",
        "store_first",
        "store_kind",
        "store_last",
        "store_owner",
        "store_start",
        "units",
    )

    def __init__(self, sketches: Sequence[Sketch]) -> None:
        self.size = size = len(sketches)
        self.others: list[int] = []
        raw = array("d")
        lengths: list[int] = []
        units: list[float] = []
        for i, sketch in enumerate(sketches):
            pending = sketch._pending
            units.append(sketch._unit)
            # _compact() with integer counts (what _compact_buckets answers), inline: a flush
            # asks this of every distribution window. Empty stores are the shared _EMPTY (any
            # other empty array only sends its sketch the stored way).
            if (
                pending is not None
                and sketch._pos is _EMPTY
                and sketch._neg is _EMPTY
                and sketch._dtype is not _F64
                and not sketch._zero
            ):
                if isinstance(pending, bytes):
                    if len(pending) <= 8 * COMPACT_MAX:
                        raw.frombytes(pending)
                        lengths.append(len(pending) >> 3)
                        continue
                elif len(pending) <= COMPACT_MAX:
                    try:
                        raw.fromlist(pending)
                    except (OverflowError, TypeError):  # an int beyond the float range, say
                        pass
                    else:
                        lengths.append(len(pending))
                        continue
            self.others.append(i)
            lengths.append(0)
        self.units = np.array(units, dtype=_F64)
        values = np.frombuffer(raw, dtype=_F64) if len(raw) else np.zeros(0, dtype=_F64)
        magnitudes = np.abs(values)
        bucketed = (magnitudes >= ZERO_THRESHOLD) & (magnitudes < _INF)
        zero = magnitudes < ZERO_THRESHOLD  # NaN and +-inf are neither: ignored, as add() does
        # Keys as add() computes them, _ceil(_log(v) * _INV_LOG_GAMMA): math.log value by value
        # (numpy's log may differ in the last ulp), then the same IEEE multiply and an exact
        # ceil in numpy. 1.0 (key 0) stands in for the values without a key.
        logs = map(_log, np.where(bucketed, magnitudes, 1.0).tolist())
        keys = np.ceil(np.fromiter(logs, dtype=_F64, count=len(values)) * _INV_LOG_GAMMA).astype(np.int64)
        negative = values <= -ZERO_THRESHOLD
        np.negative(keys, out=keys, where=negative)
        stores = _POSITIVE - (_POSITIVE - _NEGATIVE) * negative - (_POSITIVE - _ZERO) * zero
        owners = np.repeat(np.arange(size, dtype=np.int64), lengths)
        packed = (owners << _OWNER_SHIFT) | (stores << _STORE_SHIFT) | (keys + _KEY_BIAS)
        packed = packed[bucketed | zero]
        packed.sort()
        self._count(packed)
        wide = (self.store_kind != _ZERO) & (self.store_last - self.store_first >= MAX_BUCKETS // 2)
        if wide.any():  # collapsing is the numpy form's business (as in _compact_buckets)
            refused = np.unique(self.store_owner[wide])
            self.others = sorted(self.others + refused.tolist())
            self._count(packed[~np.isin(packed >> _OWNER_SHIFT, refused)])

    def _count(self, packed: npt.NDArray[np.int64]) -> None:
        """Buckets (runs of equal entries in sorted `packed`) and stores (runs of one owner's
        buckets of one sign), each with its owner, store kind and keys."""
        starts = _run_starts(packed)
        self.count = np.diff(starts, append=len(packed))
        buckets = packed[starts]
        sides = buckets >> _STORE_SHIFT
        self.owner = sides >> (_OWNER_SHIFT - _STORE_SHIFT)
        self.store = sides & 3
        self.key = (buckets & ((1 << _STORE_SHIFT) - 1)) - _KEY_BIAS
        self.per_owner = np.bincount(self.owner, minlength=self.size)
        self.first_of_owner = np.cumsum(self.per_owner) - self.per_owner
        self.store_start = _run_starts(sides)
        self.store_owner = self.owner[self.store_start]
        self.store_kind = self.store[self.store_start]
        self.store_first = self.key[self.store_start]
        self.store_last = self.key[np.diff(self.store_start, append=len(sides)) + self.store_start - 1]

    def quantiles(self, qs: Sequence[float]) -> list[list[float | None]]:
        """Each member's `_compact_quantiles`: the same float steps, one row per member.

        Ranks and running sums are laid out members x buckets (at most COMPACT_MAX each), and
        bisect_right is a count of the running sums not above the rank."""
        size, per_owner = self.size, self.per_owner
        if not len(self.count):
            return [[None] * len(qs) for _ in range(size)]
        width = int(per_owner.max())
        column = np.arange(len(self.count)) - self.first_of_owner[self.owner]
        cum = np.zeros((size, width), dtype=_F64)
        cum[self.owner, column] = self.count
        cum = cum.cumsum(axis=1) * self.units[:, None]
        last = per_owner - 1
        top = cum[np.arange(size), np.maximum(last, 0)]
        snap = 1e-12 * top
        rank = np.maximum(np.multiply.outer(top - 1.0, np.asarray(qs, dtype=_F64)), 0.0)
        nearest = np.rint(rank)  # round half to even, as round()
        rank = np.where(np.abs(rank - nearest) <= snap[:, None], nearest, rank)
        below = np.floor(rank)
        frac = rank - below
        cum[np.arange(width) >= per_owner[:, None]] = _INF  # past a member's last bucket
        lo = np.minimum((cum[:, None, :] <= below[:, :, None]).sum(axis=2), last[:, None])
        hi = np.minimum((cum[:, None, :] <= np.ceil(rank)[:, :, None]).sum(axis=2), last[:, None])
        values = self._values()
        v_lo = values[self.first_of_owner[:, None] + lo]
        v_hi = values[self.first_of_owner[:, None] + hi]
        with np.errstate(over="ignore", invalid="ignore"):  # as Python floats: inf, no warning
            mixed = (1.0 - frac) * v_lo + frac * v_hi  # separate ufuncs: no fused multiply-add
        rows: list[list[float | None]] = np.where(lo == hi, v_lo, mixed).tolist()
        for i in (per_owner == 0).nonzero()[0].tolist():
            rows[i] = [None] * len(qs)
        return rows

    def _values(self) -> npt.NDArray[np.float64]:
        """Each bucket's reported value, as value_of in `_compact_quantiles` gives it."""
        negative = self.store == _NEGATIVE
        values = _bucket_values(np.where(negative, -self.key, self.key))
        return np.where(negative, -values, np.where(self.store == _ZERO, 0.0, values))

    def encodings(self) -> list[bytes]:
        """Each member's `_compact_encoding`, laid out one after another in one zeroed buffer
        (a varint 0 is a zero byte: absent stores and zero counts need no write): version,
        flags, [unit], zero count, then per store its length and, when not empty, its zigzag
        first key, width 1 and one byte per count (at most COMPACT_MAX)."""
        size = self.size
        if len(self.others) == size:
            return [b""] * size  # nothing compact: all placeholders
        has_unit = self.units != 1.0
        zeros = np.zeros(size, dtype=np.int64)
        is_zero = self.store_kind == _ZERO
        zeros[self.store_owner[is_zero]] = self.count[self.store_start[is_zero]]
        # Per store (row 0 negative, row 1 positive) and member: length and first key.
        lengths = np.zeros((2, size), dtype=np.int64)
        firsts = np.zeros((2, size), dtype=np.int64)
        side = self.store_kind >> 1
        kept = self.store_kind != _ZERO
        lengths[side[kept], self.store_owner[kept]] = self.store_last[kept] - self.store_first[kept] + 1
        firsts[side[kept], self.store_owner[kept]] = self.store_first[kept]
        present = lengths > 0
        zigzags = (firsts << 1) ^ (firsts >> 63)
        length_sizes = _varint_sizes(lengths)
        zigzag_sizes = _varint_sizes(zigzags) * present
        store_sizes = length_sizes + present * (zigzag_sizes + 1 + lengths)
        head = 3 + 8 * has_unit  # version, flags, [unit], zero count (at most COMPACT_MAX: one byte)
        ends = np.cumsum(head + store_sizes[0] + store_sizes[1])
        starts = ends - head - store_sizes[0] - store_sizes[1]
        buf = np.zeros(int(ends[-1]) if size else 0, dtype=np.uint8)
        buf[starts] = FORMAT_VERSION
        buf[starts + head - 1] = zeros
        if has_unit.any():
            at = starts[has_unit]
            buf[at + 1] = _FLAG_UNIT
            buf[at[:, None] + np.arange(2, 10)] = self.units[has_unit].astype("<f8").view(np.uint8).reshape(-1, 8)
        stores_at = np.stack((starts + head, starts + head + store_sizes[0]))
        _put_varints(
            buf,
            np.concatenate((stores_at[present], (stores_at + length_sizes)[present])),
            np.concatenate((lengths[present], zigzags[present])),
        )
        bodies = stores_at + length_sizes + zigzag_sizes + 1
        buf[bodies[present] - 1] = 1  # the count width
        stored = self.store != _ZERO
        side_of, owner = self.store[stored] >> 1, self.owner[stored]
        buf[bodies[side_of, owner] + self.key[stored] - firsts[side_of, owner]] = self.count[stored]
        raw = buf.tobytes()
        return [raw[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]


def _answer_others(
    sketches: Sequence[Sketch], others: list[int], answer: Callable[[list[Sketch]], list[_T]], out: list[_T]
) -> None:
    """Put answer(the sketches at `others`) at their places in `out`."""
    if len(others) == len(sketches):
        out[:] = answer(list(sketches))
        return
    for i, found in zip(others, answer([sketches[i] for i in others]), strict=True):
        out[i] = found


# Below this, every running sum of a batch of integer counts is exact in a float64.
_EXACT_SUM: Final = float(1 << 53)


def quantiles_many(sketches: Sequence[Sketch], qs: Sequence[float]) -> list[list[float | None]]:
    """[s.quantiles(qs) for s in sketches], the same floats, with the ranks of the common
    sketches (integer counts at unit weight, no negative values) found for all of them at once:
    one cumulative sum and one search over their buckets laid end to end, instead of about ten
    numpy calls per sketch (a flush encodes thousands of small sketches). The others, and a
    batch whose sums could lose exactness, take `quantiles` one by one."""
    _check_quantiles(qs)
    group = _CompactGroup(sketches)
    out = group.quantiles(qs)
    if group.others:
        _answer_others(sketches, group.others, lambda others: _quantiles_stored(others, qs), out)
    return out


def _check_quantiles(qs: Sequence[float]) -> None:
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q!r}")


def _quantiles_stored(sketches: Sequence[Sketch], qs: Sequence[float]) -> list[list[float | None]]:
    """quantiles_many of sketches that are not compact with integer counts (or that the compact
    group refused): the common ones' ranks searched together, the others one by one."""
    out: list[list[float | None] | None] = [None] * len(sketches)
    picked: list[int] = []
    stores: list[Counts] = []
    for i, sketch in enumerate(sketches):
        if sketch._compact() is not None:
            out[i] = sketch.quantiles(qs)  # a few values: pure Python, and it stays compact
            continue
        sketch._settle()
        dtype = sketch._dtype
        if (
            dtype is _F64
            or dtype is _U64
            or sketch._unit != 1.0
            or len(sketch._neg)
            or not len(sketch._pos)
            or sketch._zero >= _MAX_INCREMENT
        ):
            out[i] = sketch.quantiles(qs)
        else:
            picked.append(i)
            stores.append(sketch._pos)
    if picked:
        lengths = np.fromiter((len(s) for s in stores), dtype=np.int64, count=len(stores))
        zeros = np.fromiter((sketches[i]._zero for i in picked), dtype=_F64, count=len(picked))
        running = np.concatenate(stores, dtype=np.int64).cumsum()
        if float(running[-1]) + float(zeros.sum()) >= _EXACT_SUM:
            for i in picked:
                out[i] = sketches[i].quantiles(qs)
        else:
            _ranks_laid_end_to_end(sketches, picked, qs, running, lengths, zeros, out)
    return out  # type: ignore[return-value]  # every slot is filled


def _ranks_laid_end_to_end(
    sketches: Sequence[Sketch],
    picked: list[int],
    qs: Sequence[float],
    running: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    zeros: npt.NDArray[np.float64],
    out: list[list[float | None] | None],
) -> None:
    """quantiles() of the picked sketches, whose positive stores are laid end to end in
    `running` (their cumulative sum). A sketch's own running sum over [zero, pos...] is
    zero + running[j] - base (base: the sum before its first bucket), so "the first bucket whose
    running sum passes rank r" is one search for r - zero + base in `running`; every value here
    is an integer below 2**53, so the comparisons are the one-by-one path's exactly."""
    ends = lengths.cumsum()
    starts = ends - lengths
    bases = np.concatenate(((0,), running[:-1]))[starts].astype(_F64)
    totals = zeros + (running[ends - 1].astype(_F64) - bases)
    max_rank = totals - 1.0
    snap = 1e-12 * totals
    # Rows: sketches; columns: the quantiles. The same float steps as `quantiles`.
    rank = np.maximum(np.multiply.outer(max_rank, np.asarray(qs, dtype=_F64)), 0.0)
    nearest = np.rint(rank)
    rank = np.where(np.abs(rank - nearest) <= snap[:, None], nearest, rank)
    below = np.floor(rank)
    fracs = (rank - below).tolist()
    shift = (bases - zeros)[:, None]
    found_lo = _found(running, below, shift, zeros, starts, lengths)
    found_hi = _found(running, np.ceil(rank), shift, zeros, starts, lengths)
    # Bucket values by key, each computed once per batch (index 0 is the zero bucket).
    values: dict[int, float] = {}
    for row, i in enumerate(picked):
        base = sketches[i]._pos_lo - 1
        result: list[float | None] = []
        for lo, hi, frac in zip(found_lo[row], found_hi[row], fracs[row], strict=True):
            v_lo = values.get(base + lo) if lo else 0.0
            if v_lo is None:
                v_lo = values[base + lo] = _value_of_key(base + lo)
            if lo == hi:
                result.append(v_lo)
                continue
            v_hi = values.get(base + hi) if hi else 0.0
            if v_hi is None:
                v_hi = values[base + hi] = _value_of_key(base + hi)
            result.append((1.0 - frac) * v_lo + frac * v_hi)
        out[i] = result


def encode_many(sketches: Sequence[Sketch]) -> list[bytes]:
    """[s.to_bytes() for s in sketches], the same bytes, with the common sketches (one-byte
    counts at unit weight, no negative values) trimmed together: one search for nonzero buckets
    over their stores laid end to end instead of four numpy calls each; compact ones (a few
    held-back values) laid out together in one buffer, see `_CompactGroup`."""
    group = _CompactGroup(sketches)
    out = group.encodings()
    if group.others:
        _answer_others(sketches, group.others, _encode_stored, out)
    return out


def _encode_stored(sketches: Sequence[Sketch]) -> list[bytes]:
    """encode_many of sketches that are not compact with integer counts (or that the compact
    group refused)."""
    out: list[bytes | None] = [None] * len(sketches)
    picked: list[int] = []
    stores: list[Counts] = []
    for i, sketch in enumerate(sketches):
        if sketch._compact() is not None:
            out[i] = sketch.to_bytes()  # a few values: pure Python, and it stays compact
            continue
        sketch._settle()
        if (
            sketch._dtype is not _UINT_RUNGS[0]
            or sketch._unit != 1.0
            or len(sketch._neg)
            or not len(sketch._pos)
            or sketch._zero > _U64_MAX
        ):
            out[i] = sketch.to_bytes()
        else:
            picked.append(i)
            stores.append(sketch._pos)
    if picked:
        laid = np.concatenate(stores)
        ends = np.cumsum([len(store) for store in stores])
        starts = ends - np.fromiter((len(store) for store in stores), dtype=np.int64, count=len(stores))
        nonzero = np.flatnonzero(laid)
        # Per store: its first nonzero bucket and one past its last (equal: all zero).
        first = nonzero[np.minimum(nonzero.searchsorted(starts), len(nonzero) - 1)] if len(nonzero) else starts
        stop = nonzero.searchsorted(ends)
        last = nonzero[np.maximum(stop - 1, 0)] + 1 if len(nonzero) else starts
        raw = laid.tobytes()
        for i, lo, hi, start, end in zip(
            picked, first.tolist(), last.tolist(), starts.tolist(), ends.tolist(), strict=True
        ):
            sketch = sketches[i]
            encoded = bytearray((FORMAT_VERSION, 0))  # flags: integer counts, unit weight 1
            _put_varint(encoded, int(sketch._zero))
            if not start <= lo < end or not start < hi <= end or hi <= lo:
                encoded += b"\x00\x00"  # both stores empty
            else:
                encoded.append(0)  # the negative store
                _put_varint(encoded, hi - lo)
                key = sketch._pos_lo + lo - start
                _put_varint(encoded, (key << 1) ^ (key >> 63))
                encoded.append(1)  # one byte per count
                encoded += raw[lo:hi]
            out[i] = bytes(encoded)
    return out  # type: ignore[return-value]  # every slot is filled


def summaries_many(sketches: Sequence[Sketch], qs: Sequence[float]) -> tuple[list[list[float | None]], list[bytes]]:
    """(quantiles_many(sketches, qs), encode_many(sketches)) with the compact sketches' buckets
    found once for both: a flush writes each distribution window's percentiles and sketch."""
    _check_quantiles(qs)
    group = _CompactGroup(sketches)
    quantiles, encodings = group.quantiles(qs), group.encodings()
    if group.others:
        _answer_others(sketches, group.others, lambda others: _quantiles_stored(others, qs), quantiles)
        _answer_others(sketches, group.others, _encode_stored, encodings)
    return quantiles, encodings


def _found(
    running: npt.NDArray[np.int64],
    ranks: npt.NDArray[np.float64],
    shift: npt.NDArray[np.float64],
    zeros: npt.NDArray[np.float64],
    starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
) -> list[list[int]]:
    """Per sketch and rank: the index, in [zero, pos...], of the first bucket whose running sum
    exceeds the rank (searchsorted side="right"), clamped to the last bucket."""
    in_store = running.searchsorted(ranks + shift, side="right") - starts[:, None]
    in_store = np.clip(in_store, 0, lengths[:, None])
    found = in_store + (zeros[:, None] <= ranks)
    found = np.minimum(found, lengths[:, None])
    return found.tolist()  # type: ignore[no-any-return]


def merge_encoded(blobs: Sequence[bytes | bytearray | memoryview]) -> Sketch:
    """The merge of many `to_bytes` encodings: the same buckets as decoding each and merging
    them (up to float rounding when unrelated fractional weights made counts floats), checked
    as strictly (SketchDecodeError). Encodings with integer counts of unit
    weight below 2**32 (what sketches of plain samples are) are summed straight from their
    bytes into one array per sign, without a Sketch each; the rest are decoded one by one.
    A fleet query merges thousands of stored sketches."""
    parts: tuple[list[tuple[int, Counts]], list[tuple[int, Counts]]] = ([], [])
    zero = 0
    others: list[bytes | bytearray | memoryview] = []
    small = _LIMIT[_UINT_RUNGS[2]]
    try:
        for data in blobs:
            if not isinstance(data, bytes):
                data = bytes(data)
            size = len(data)
            if size < 3 or data[0] != FORMAT_VERSION or data[1] != 0:
                others.append(data)
                continue
            if data[2] < 0x80:  # one-byte varints are the rule: read them inline
                count, pos = data[2], 3
            else:
                count, pos = _get_varint(data, 2)
            fast = count < small
            found: list[tuple[int, int, Counts]] = []
            for positive in (0, 1):
                if pos < size and data[pos] < 0x80:
                    n, pos = data[pos], pos + 1
                else:
                    n, pos = _get_varint(data, pos)
                if n == 0:
                    continue
                lo, pos = _store_first_key(data, pos, n, positive == 1)
                width = data[pos] if pos < size else 0
                if width not in _WIDTHS:
                    raise SketchDecodeError("bad count width")
                pos += 1
                if pos + width * n > size:
                    raise SketchDecodeError("truncated counts")
                if width > 4:
                    fast = False
                found.append((positive, lo, np.frombuffer(data, _WIDTHS[width], n, pos)))
                pos += width * n
            if pos != size:
                raise SketchDecodeError(f"{size - pos} trailing bytes")
            if not fast:
                others.append(data)
                continue
            zero += count
            for positive, lo, counts in found:
                parts[positive].append((lo, counts))
    except SketchDecodeError:
        raise
    except Exception as exc:
        raise SketchDecodeError(f"malformed sketch: {exc!r}") from exc
    combined = Sketch()
    combined._dtype = _U64
    combined._zero = zero
    span = 0
    for positive in (0, 1):
        stores = parts[positive]
        if not stores:
            continue
        lo = min(start for start, _ in stores)
        hi = max(start + len(counts) for start, counts in stores)
        total = np.zeros(hi - lo, dtype=_U64)
        for start, counts in stores:
            total[start - lo : start - lo + len(counts)] += counts
        counts, lo = _trim(total, lo)
        span = max(span, len(counts))
        combined._set_store(bool(positive), counts, lo)
    if span <= MAX_BUCKETS and not others:
        return combined  # already a valid sketch (uint64 counts, within the bucket cap)
    out = Sketch()
    out.merge(combined)
    for data in others:
        out.merge(Sketch.from_bytes(data))
    return out


# ---------------------------------------------------------------------- checkpoints

# Dtype codes for snapshots: the unsigned rungs, then float64.
_SNAPSHOT_DTYPES: Final = (*_UINT_RUNGS, _F64)
_SNAPSHOT_CODE: Final = {dtype: code for code, dtype in enumerate(_SNAPSHOT_DTYPES)}
_SNAPSHOT_INTS: Final = 5  # dtype code, negative first key, its bytes, positive first key, its bytes


def pack_snapshots(sketches: Sequence[Sketch]) -> tuple[bytes, bytes, bytes]:
    """Many sketches' exact in-memory state in three packed columns, for this process's own
    checkpoints (checksummed files it wrote itself): no trimming, validation or re-encoding,
    so a large state reloads fast. Not a wire format: use to_bytes for anything another
    program may hand back."""
    ints = array("q")
    floats = array("d")
    blob = bytearray()
    for sketch in sketches:
        sketch = sketch._view()  # a checkpoint must not grow compact sketches
        neg, pos = sketch._neg.tobytes(), sketch._pos.tobytes()
        ints.extend((_SNAPSHOT_CODE[sketch._dtype], sketch._neg_lo, len(neg), sketch._pos_lo, len(pos)))
        floats.extend((sketch._unit, float(sketch._zero)))
        blob += neg
        blob += pos
    return ints.tobytes(), floats.tobytes(), bytes(blob)


def unpack_snapshots(ints_raw: bytes, floats_raw: bytes, blob_raw: bytes) -> list[Sketch]:
    """The sketches pack_snapshots packed. Their stores are writable views into one shared
    buffer (stores are replaced, never resized, so no copy is needed). Raises
    SketchDecodeError when the columns disagree."""
    ints = array("q")
    floats = array("d")
    try:
        ints.frombytes(ints_raw)
        floats.frombytes(floats_raw)
    except ValueError as error:
        raise SketchDecodeError(f"bad snapshot columns: {error}") from error
    count = len(floats) // 2
    if len(ints) != count * _SNAPSHOT_INTS or len(floats) != count * 2:
        raise SketchDecodeError("snapshot columns disagree")
    blob = bytearray(blob_raw)
    out: list[Sketch] = []
    new = object.__new__
    frombuffer = np.frombuffer
    offset = 0
    ints_iter, floats_iter = iter(ints), iter(floats)
    try:
        for code, neg_lo, neg_bytes, pos_lo, pos_bytes in zip(*[ints_iter] * _SNAPSHOT_INTS, strict=True):
            unit, zero = next(floats_iter), next(floats_iter)
            dtype = _SNAPSHOT_DTYPES[code]
            sketch: Sketch = new(Sketch)
            sketch._pending = None
            sketch._dtype = dtype
            sketch._unit = unit
            sketch._zero = zero if dtype is _F64 else int(zero)
            sketch._neg_lo = neg_lo
            sketch._pos_lo = pos_lo
            sketch._neg = frombuffer(blob, dtype, neg_bytes // dtype.itemsize, offset) if neg_bytes else _EMPTY
            offset += neg_bytes
            sketch._pos = frombuffer(blob, dtype, pos_bytes // dtype.itemsize, offset) if pos_bytes else _EMPTY
            offset += pos_bytes
            out.append(sketch)
    except (IndexError, ValueError) as error:
        raise SketchDecodeError(f"bad snapshot: {error}") from error
    if offset != len(blob):
        raise SketchDecodeError("snapshot blob length disagrees")
    return out
