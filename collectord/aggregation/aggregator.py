"""The aggregation stage: applies batches from the ring to series windows and rolls them up.

Levels: 0 = slices of one flush interval, 1 = 1m, 2 = 5m, 3 = 1h, 4 = 1d. A sample touches
exactly one cell, the open slice of its series (the hot path). When a period closes, its cells
are merged into the next level ("rolled up"); slices are then dropped, coarser cells kept for
their retention. Every sample therefore sits in exactly one "frontier" cell: the finest cell
holding it that has not yet been rolled up. A read of a period merges its own cell with the
frontier cells inside it, so open windows are exact to the last sample and closed windows cost
one lookup. Percentiles only ever come from merged sketches.

Each metric name also has a name-level aggregate (all its series merged), fed at roll-up time,
so "one metric over 1,000 series for a day" reads one cell per period instead of 1,000.

Time: an untimestamped sample belongs to its batch's receive time, not to the moment it is
applied, so replaying a write-ahead log puts every sample back in the same window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from operator import itemgetter
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from collectord.aggregation.cells import Cell
from collectord.aggregation.series import LEVEL_COUNT, Series, SeriesTable
from collectord.aggregation.windows import VALID_FLUSH_INTERVALS, align
from collectord.limits import Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    MetricType,
    Sample,
    SeriesKey,
    Tags,
)
from collectord.ring import PAYLOAD_STATSD, Batch

if TYPE_CHECKING:
    from collectord.protocols.statsd_columns import StatsdColumns

if TYPE_CHECKING:
    from collectord.ingest.frame import Frame

LEVEL_OF_GRANULARITY = {"1m": 1, "5m": 2, "1h": 3, "1d": 4}
# A sample may be stamped this far in the future (clock skew between hosts).
FUTURE_TOLERANCE = 60.0
# Period-start ints shared between series before the cache starts over (periods in retention:
# 360 1m + 576 5m + 336 1h + 90 1d, plus slices and late data).
MAX_SHARED_PERIODS = 4096
# Counting repeated counter lines (apply_many) pays off from this many samples in a run of
# batches, and only when each distinct tuple repeats this often on average (measured: break-even
# near 6 repeats, 1.5x faster at 25).
COLLAPSE_MIN_SAMPLES = 64
COLLAPSE_MIN_REPEATS = 8
# Sums of integers are exact (whatever the grouping) while every partial sum stays below 2**53:
# a counted sample's contribution stays below 2**31 times its repeats (fewer than 2**20), the
# sums it is added to below 2**51.
_EXACT_PART = float(1 << 31)
# apply_deferred groups a batch by series from this many samples, when each series has this
# many samples in it on average (below that, apply() is as fast).
GROUP_MIN_SAMPLES = 64
# The identity index may hold this many entries beyond one per series before it starts over
# (entries of keys a parser has let go pile up; at 1,000,000 series each entry costs ~70 bytes).
IDENTITY_SLACK = 4096
GROUP_MIN_REPEATS = 3
# Deferred values folded by numpy from this many (a numpy call costs a few plain additions).
FOLD_VECTOR_MIN = 16
_EXACT_SUM = float(1 << 51)


@dataclass
class AggregationSettings:
    """What the aggregation stage needs from the config (seconds throughout)."""

    flush_interval: int = 10
    late_allowance: float = 300.0
    series_idle_expiry: float = 86400.0
    retention: tuple[float, float, float, float] = (6 * 3600.0, 2 * 86400.0, 14 * 86400.0, 90 * 86400.0)
    emit_idle_gauges: bool = True


class FlushRecord(NamedTuple):
    """One series' content for one flush interval: the StatsD flush view that sinks write.

    `cell` may be the series' 1m cell itself (a minute's first slice becomes its minute), so it
    reads as the slice only until the aggregator next changes: a sink reads the slice's numbers
    in `on_flush` (the PostgreSQL sink keeps the view longer, for which series changed only)."""

    series: Series
    period_start: int
    cell: Cell


@dataclass
class AggregationCounters:
    samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


_DISTRIBUTIONS = frozenset({KIND_HISTOGRAM, KIND_SUMMARY})


class _Deferred(NamedTuple):
    cell: Cell
    series: Series
    weight: float
    values: list[float]
    # Runs of values in numpy arrays (apply_columns), each with its place in `values`: it
    # comes before values[at:].
    arrays: list[tuple[int, npt.NDArray[np.float64]]]


def _joined(held: _Deferred) -> npt.NDArray[np.float64]:
    """Every deferred value of a cell, in the order they came."""
    pieces: list[Sequence[float] | npt.NDArray[np.float64]] = []
    done = 0
    for at, array in held.arrays:
        if at > done:
            pieces.append(held.values[done:at])
            done = at
        pieces.append(array)
    if done < len(held.values):
        pieces.append(held.values[done:])
    return np.concatenate(pieces)


class _RollJob:
    """A coarse level's roll-up (1m into 5m, 5m into 1h, 1h into 1d) under way over
    [old, boundary): the series to roll, in order (a finer roll-up queued before it may append
    more: the cells it creates), and those rolled. Until a series is rolled, reads take its
    level-`level` cells from `old` on (Aggregator._rolled_for), so every read stays exact."""

    __slots__ = ("boundary", "done", "level", "old", "order", "position")

    def __init__(self, level: int, old: int, boundary: int, series: list[Series]) -> None:
        self.level = level
        self.old = old
        self.boundary = boundary
        self.order = series
        self.position = 0
        self.done: set[Series] = set()


def _fold(held: _Deferred) -> None:
    """Apply deferred distribution samples exactly as the hot path would have, in order."""
    cell, series, weight, values, arrays = held
    arr = _joined(held) if arrays else None
    if len(values) + sum(len(array) for _, array in arrays) < FOLD_VECTOR_MIN:
        if arr is not None:
            values = arr.tolist()
        count, total, squares, series_total = cell.count, cell.sum, cell.sum_squares, series.total
        for value in values:
            count += weight
            total += value * weight
            squares += value * value * weight
            series_total += value * weight
        cell.count, cell.sum, cell.sum_squares, series.total = count, total, squares, series_total
    else:
        # Running sums by numpy's accumulate, which adds strictly left to right (unlike sum(),
        # which adds pairwise): bit for bit the loop above, four sums in one call.
        if arr is None:
            arr = np.array(values, dtype=np.float64)
        sums = np.empty((4, len(arr) + 1))
        sums[:, 0] = (cell.count, cell.sum, cell.sum_squares, series.total)
        sums[0, 1:] = weight
        np.multiply(arr, weight, out=sums[1, 1:])
        np.multiply(arr, arr, out=sums[2, 1:])
        sums[2, 1:] *= weight
        sums[3, 1:] = sums[1, 1:]
        cell.count, cell.sum, cell.sum_squares, series.total = np.add.accumulate(sums, axis=1)[:, -1].tolist()
        low, high = arr.min().item(), arr.max().item()
        # Without NaN numpy's extremes equal min()'s and max()'s, but of equal zeros min() and
        # max() keep the first (-0.0 or 0.0): take that one.
        if low == low and high == high:
            if low == 0.0 or high == 0.0:
                first_zero = arr[np.flatnonzero(arr == 0.0)[0]].item()
                low = first_zero if low == 0.0 else low
                high = first_zero if high == 0.0 else high
            if low < cell.min:
                cell.min = low
            if high > cell.max:
                cell.max = high
            cell.last = series.last_value = arr[-1].item()
            assert cell.sketch is not None
            cell.sketch.add_many(arr, weight)
            return
        values = arr.tolist()
    low, high = min(values), max(values)
    if low < cell.min:
        cell.min = low
    if high > cell.max:
        cell.max = high
    cell.last = series.last_value = values[-1]
    assert cell.sketch is not None
    cell.sketch.add_many(values, weight)


def _series_of(by_identity: dict[int, Series], table: dict[SeriesKey, Series], key: SeriesKey) -> Series | None:
    """The series of `key`, found by the key object's identity where the index knows it (an
    entry counts only if the series' key is that object or equal to it: the id may be another
    object's by now), else by the key; a found series is indexed under this key object."""
    series = by_identity.get(id(key))
    if series is None or (series.key is not key and series.key != key):
        series = table.get(key)
        if series is not None:
            by_identity[id(key)] = series
    return series


class Aggregator:
    """Owns every series and window; single-threaded, driven by the daemon's loop."""

    def __init__(self, limits: Limits, settings: AggregationSettings, now: float) -> None:
        if settings.flush_interval not in VALID_FLUSH_INTERVALS:
            raise ValueError(f"aggregate.flush_interval must divide a minute: one of {VALID_FLUSH_INTERVALS} s")
        self.settings = settings
        self.table = SeriesTable(limits)
        self.level_seconds = (settings.flush_interval, 60, 300, 3600, 86400)
        # rolled_until[k]: every level-k period starting before it has been merged upwards.
        self.rolled_until = [align(now, length) for length in self.level_seconds]
        self.now = now
        # Series holding cells not yet rolled up, per level. Dicts, not sets: roll-ups then run
        # in a deterministic order, so merges (and their float rounding) repeat exactly.
        self._pending: list[dict[Series, None]] = [{} for _ in range(LEVEL_COUNT)]
        self.name_totals: dict[tuple[str, str], Series] = {}
        self.counters = AggregationCounters()
        self._last_housekeeping = now
        # Query rows built from single stored cells (see query._row).
        self.row_cache: dict[tuple[object, ...], tuple[Cell, float, int, dict[str, object]]] = {}
        # Cells whose distribution values wait for a bulk insert (only while replaying).
        self._deferred: dict[int, _Deferred] | None = None
        # tenant -> id(key) -> series: the hot path's shortcut, dropped on any removal. A hit
        # counts if the series' `key` is that very object or equal to it (an id may have been
        # reused since). The series keeps the key it was created with: pointing it at each new
        # equal object a parser makes (its caches start over) would keep a second copy of every
        # key alive, about 300 bytes a series.
        self._by_identity: dict[str, dict[int, Series]] = {}
        # Series that took samples in windows already rolled up, with the earliest such time:
        # the flush view does not show those, and sinks must rewrite the windows.
        self.touched: dict[Series, float] = {}
        # Period starts as shared int objects (see _period).
        self._periods: dict[int, int] = {}
        # Distinct sample tuples in the last run apply_many tried to count (see there).
        self._distinct_seen = 0
        # With background_rolls (the daemon), advance rolls only slices up at once; coarse
        # roll-ups are queued here and run series by series (roll_some) between other work.
        self.background_rolls = False
        self._jobs: list[_RollJob] = []
        # A prune queued with background_rolls: the series to prune, and how many are done.
        self._to_prune: list[Series] | None = None
        self._pruned = 0

    # ------------------------------------------------------------------ ingest

    def apply(self, batch: Batch) -> None:
        """Apply one batch: the hot path. Untimestamped samples of known series go straight
        into the series' open slice; everything else takes `_apply_one`."""
        received = batch.received_at
        if received > self.now:
            self.now = received
        slice_len = self.level_seconds[0]
        slice_start = int(received // slice_len) * slice_len
        if slice_start < self.rolled_until[0]:
            slice_start = -2  # that slice is already closed: every sample takes the slow path
        table = self.table.tenant_table(batch.tenant)
        tenant = batch.tenant
        by_identity = self._identity_index(tenant, table)
        applied = 0
        deferred = self._deferred
        for sample in batch.samples:
            key, kind, value, weight, ts = sample
            # Parsers intern keys, so the key object usually identifies its series: an int
            # lookup instead of hashing a nested tuple. An entry counts if the series' key is
            # that object or equal to it (the id may be another object's by now).
            series: Series | None = by_identity.get(id(key))
            if series is None or (series.key is not key and series.key != key):
                series = table.get(key)
                if series is not None:
                    by_identity[id(key)] = series
            if series is None or ts is not None or series.slice_start != slice_start:
                applied += self._apply_one(tenant, table, sample, received)
                continue
            cell = series.slice_cell
            assert cell is not None
            if kind == series.kind:
                if kind == KIND_SET:
                    cell.add_member(value)  # type: ignore[arg-type]
                elif deferred is not None and cell.sketch is not None:
                    held = deferred.get(id(cell))
                    if held is not None and held.weight == weight:
                        held.values.append(value)  # type: ignore[arg-type]
                    else:
                        self._defer(cell, series, value, weight)  # type: ignore[arg-type]
                else:
                    # Cell.observe, inlined: a method call per sample costs more than its body.
                    fvalue: float = value  # type: ignore[assignment]
                    cell.count += weight
                    cell.sum += fvalue * weight
                    if fvalue < cell.min:
                        cell.min = fvalue
                    if fvalue > cell.max:
                        cell.max = fvalue
                    cell.last = fvalue
                    if cell.sketch is not None:
                        cell.sketch.add(fvalue, weight)
                        cell.sum_squares += fvalue * fvalue * weight
                    series.total += fvalue * weight
                    series.last_value = fvalue
            elif kind == KIND_GAUGE_DELTA and series.kind == KIND_GAUGE:
                fvalue = series.last_value + value  # type: ignore[operator]
                cell.count += 1.0
                cell.sum += fvalue
                if fvalue < cell.min:
                    cell.min = fvalue
                if fvalue > cell.max:
                    cell.max = fvalue
                cell.last = fvalue
                series.last_value = fvalue
            else:
                self._reject("type_mismatch")
                continue
            series.last_seen = received
            series.last_timestamp = received
            applied += 1
        self.counters.samples += applied

    def apply_many(self, batches: list[Batch]) -> int:
        """Apply batches in order, as apply() one by one would; returns how many samples they held.

        Runs of consecutive batches of one tenant and one open slice whose samples are all
        integer-valued counters of known series are applied by counting: a line the parser has
        seen before arrives as the very same tuple, so each distinct tuple is applied once with
        its number of repeats. Integer sums do not depend on grouping, so the cells end exactly
        as the one-by-one path (and a replay of the log, batch by batch) leaves them."""
        slice_len = self.level_seconds[0]
        open_from = self.rolled_until[0]
        total = 0
        i, n = 0, len(batches)
        while i < n:
            first = batches[i]
            start = int(first.received_at // slice_len) * slice_len
            j = i + 1
            size = len(first.samples)
            while j < n:
                batch = batches[j]
                if batch.tenant != first.tenant or int(batch.received_at // slice_len) * slice_len != start:
                    break
                size += len(batch.samples)
                j += 1
            total += size
            # Counting pays off when the run repeats its tuples: try it only on runs long enough
            # to repeat the number of distinct tuples the last attempt found often enough.
            # A single batch counts too: a TCP read holds thousands of lines.
            if (
                size < COLLAPSE_MIN_SAMPLES
                or size < COLLAPSE_MIN_REPEATS * self._distinct_seen
                or start < open_from
                or not self._apply_counted(batches[i:j], start, size)
            ):
                for batch in batches[i:j]:
                    self.apply(batch)
            i = j
        return total

    def _apply_counted(self, run: list[Batch], slice_start: int, size: int) -> bool:
        """apply() for a run of batches by counting repeated sample tuples; False (nothing
        applied) unless every sample qualifies (see apply_many).

        The tuples are told apart by identity (the batches keep them alive, so ids are unique):
        numpy sorts the ids (an unstable sort: no order is needed within a group), and each
        group's size is its tuple's count and its largest position the last occurrence (its
        series' last value and last_seen)."""
        ids = np.fromiter(map(id, chain.from_iterable(batch.samples for batch in run)), dtype=np.int64, count=size)
        order = np.argsort(ids)
        ordered = ids[order]
        head = np.empty(size, dtype=np.bool_)
        head[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
        heads = np.flatnonzero(head)
        self._distinct_seen = len(heads)
        if len(heads) * COLLAPSE_MIN_REPEATS > size:
            return False
        last = np.maximum.reduceat(order, heads)
        counts = np.diff(np.append(heads, size))
        # In order of last occurrence: of two tuples of one series the later one's value stays.
        by_last = np.argsort(last)
        positions = last[by_last].tolist()
        repeat_counts = counts[by_last].tolist()
        lengths = np.fromiter(map(len, (batch.samples for batch in run)), dtype=np.int64, count=len(run))
        ends = np.cumsum(lengths)
        batch_of = np.searchsorted(ends, positions, side="right").tolist()
        starts = (ends - lengths).tolist()
        tenant = run[0].tenant
        table = self.table.tenant_table(tenant)
        by_identity = self._by_identity.setdefault(tenant, {})
        plan: list[tuple[Series, Cell, float, float, int, float]] = []
        for position, b, repeats in zip(positions, batch_of, repeat_counts, strict=True):
            batch = run[b]
            sample = batch.samples[position - starts[b]]
            key, kind, value, weight, ts = sample
            if kind != KIND_COUNTER or ts is not None:
                return False
            known = by_identity.get(id(key))
            if known is not None and (known.key is key or known.key == key):
                series = known
            else:
                found = table.get(key)
                if found is None:
                    return False  # a new series: admission (and its limits) is apply()'s
                series = found
                by_identity[id(key)] = found
            cell = series.slice_cell
            part = value * weight
            if (
                series.kind != KIND_COUNTER
                or series.slice_start != slice_start
                or cell is None
                or cell.sketch is not None
                or not (part.is_integer() and weight.is_integer() and -_EXACT_PART < part < _EXACT_PART)
                or not (-_EXACT_SUM < cell.sum < _EXACT_SUM and -_EXACT_SUM < series.total < _EXACT_SUM)
                or not cell.count < _EXACT_SUM
            ):
                return False
            plan.append((series, cell, value, weight, repeats, batch.received_at))
        for series, cell, value, weight, times, received in plan:
            cell.count += weight * times
            cell.sum += value * weight * times
            if value < cell.min:
                cell.min = value
            if value > cell.max:
                cell.max = value
            cell.last = value
            series.total += value * weight * times
            series.last_value = value
            series.last_seen = received
            series.last_timestamp = received
        latest = max(batch.received_at for batch in run)
        if latest > self.now:
            self.now = latest
        self.counters.samples += size
        return True

    def apply_deferred(self, batch: Batch) -> None:
        """apply() for a batch while sketches are deferred (replaying the log): the same state,
        with the work per sample in numpy and C rather than bytecode.

        A batch whose samples are all untimestamped distribution samples of one kind and one
        weight in an open slice is grouped by series (numpy's stable sort of key identities),
        and each series' values join its deferred list at once, series in order of first
        appearance. Per series that is exactly what apply() does sample by sample: a sample
        only touches its own series' cells, admission goes in first-appearance order (and a
        series refused at its first sample is refused at every one), and every sample of the
        batch shares its receive time. Anything else, or too few samples per series to pay
        for the grouping, goes through apply()."""
        samples = batch.samples
        n = len(samples)
        deferred = self._deferred
        if deferred is None or n < GROUP_MIN_SAMPLES:
            self.apply(batch)
            return
        kinds = set(map(itemgetter(1), samples))
        weights = set(map(itemgetter(3), samples))
        if (
            len(kinds) != 1
            or len(weights) != 1
            or not kinds <= _DISTRIBUTIONS
            or set(map(itemgetter(4), samples)) != {None}
        ):
            self.apply(batch)
            return
        received = batch.received_at
        slice_len = self.level_seconds[0]
        slice_start = int(received // slice_len) * slice_len
        if slice_start < self.rolled_until[0]:
            self.apply(batch)
            return
        keys = list(map(itemgetter(0), samples))
        ids = np.fromiter(map(id, keys), dtype=np.int64, count=n)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        if len(starts) * GROUP_MIN_REPEATS > n:
            self.apply(batch)
            return
        raw_values = list(map(itemgetter(2), samples))
        if set(map(type, raw_values)) != {float}:
            self.apply(batch)
            return
        (kind,), (weight,) = kinds, weights
        values = np.array(raw_values, dtype=np.float64)[order].tolist()
        positions = order.tolist()
        bounds = [*starts.tolist(), n]
        firsts = order[starts]
        tenant = batch.tenant
        table = self.table.tenant_table(tenant)
        by_identity = self._identity_index(tenant, table)
        applied = 0
        groups = np.argsort(firsts, kind="stable").tolist()
        group_keys = [keys[positions[bounds[group]]] for group in groups]
        if len(set(group_keys)) != len(group_keys):
            # Equal keys that are different objects (a parser cache started over): one
            # series in two groups, whose samples must interleave as they came.
            self.apply(batch)
            return
        if received > self.now:
            self.now = received
        for group, key in zip(groups, group_keys, strict=True):
            start, end = bounds[group], bounds[group + 1]
            series = _series_of(by_identity, table, key)
            while series is None or series.slice_start != slice_start or series.kind != kind:
                # A new series, a new slice or a type mismatch: the general way, sample by
                # sample, until the series' open slice is this batch's (or the group ends).
                applied += self._apply_one(tenant, table, samples[positions[start]], received)
                start += 1
                if start == end:
                    break
                series = table.get(key)
            if start == end:
                continue
            assert series is not None
            cell = series.slice_cell
            assert cell is not None and cell.sketch is not None
            applied += end - start
            held = deferred.get(id(cell))
            if held is None or held.weight != weight:
                self._defer(cell, series, values[start], weight)
                start += 1
                held = deferred[id(cell)]
            held.values.extend(values[start:end])
            series.last_seen = received
            series.last_timestamp = received
        self.counters.samples += applied

    def apply_columns(self, tenant: str, received: list[float], columns: StatsdColumns) -> None:
        """apply_deferred() of consecutive payloads parsed into columns (replaying the log),
        `received[p]` the receive time of payload p: the same state as apply() of each
        payload's samples in turn (`columns.samples(p)`), without a tuple per sample.

        Every template is a distribution kind and one (key, kind, weight); with no two
        templates of one key, each series takes one kind and weight here, so its values go to
        its deferred list at once, series in order of first appearance (what apply() does
        sample by sample, as apply_deferred explains). The payloads must share one open slice:
        then a series' last payload sets its last_seen, as it would one by one."""
        deferred = self._deferred
        keys = columns.keys
        slice_len = self.level_seconds[0]
        slice_start = int(min(received) // slice_len) * slice_len
        if (
            deferred is None
            or slice_start < self.rolled_until[0]
            or int(max(received) // slice_len) * slice_len != slice_start
            or len(keys) * GROUP_MIN_REPEATS > len(columns.groups)
            or len(set(keys)) != len(keys)
        ):
            for part, at in enumerate(received):
                self.apply_deferred(Batch(tenant, columns.samples(part), at, PAYLOAD_STATSD))
            return
        latest = max(received)
        if latest > self.now:
            self.now = latest
        values = columns.values[columns.order]
        if columns.parts is None:
            last_at = [received[0]] * len(keys)
        else:
            # A series' last payload is the one of its last line.
            parts = columns.parts[columns.order]
            last_at = np.array(received)[parts[np.array(columns.group_ends) - 1]].tolist()
        table = self.table.tenant_table(tenant)
        by_identity = self._identity_index(tenant, table)
        applied = 0
        for key, kind, weight, start, end, seen in zip(
            keys, columns.kinds, columns.weights, columns.group_starts, columns.group_ends, last_at, strict=True
        ):
            series = _series_of(by_identity, table, key)
            while series is None or series.slice_start != slice_start or series.kind != kind:
                # As in apply_deferred: the general way until the series' open slice is this one.
                at = received[0] if columns.parts is None else received[parts[start]]
                applied += self._apply_one(tenant, table, (key, kind, float(values[start]), weight, None), at)
                start += 1
                if start == end:
                    break
                series = table.get(key)
            if start == end:
                continue
            assert series is not None
            cell = series.slice_cell
            assert cell is not None and cell.sketch is not None
            applied += end - start
            held = deferred.get(id(cell))
            if held is None or held.weight != weight:
                self._defer(cell, series, float(values[start]), weight)
                start += 1
                held = deferred[id(cell)]
            if end > start:
                held.arrays.append((len(held.values), values[start:end]))
            series.last_seen = seen
            series.last_timestamp = seen
        self.counters.samples += applied

    def apply_frame(self, frame: Frame) -> int:
        """Apply a worker's pre-aggregated frame (collectord/ingest/frame.py): the state apply()
        leaves after the frame's samples one by one, up to the grouping of float sums (integer
        values end bit for bit the same). Each entry updates its series' open slice once; a new
        series, a closed slice or a type mismatch takes `_apply_entry`. Raw samples go through
        apply(). Returns how many samples the frame held that were applied."""
        received = frame.received_at
        if received > self.now:
            self.now = received
        slice_len = self.level_seconds[0]
        slice_start = int(received // slice_len) * slice_len
        if slice_start < self.rolled_until[0]:
            slice_start = -2  # that slice is already closed: every entry takes the slow path
        tenant = frame.tenant
        table = self.table.tenant_table(tenant)
        by_identity = self._identity_index(tenant, table)
        keys = frame.keys
        applied = 0

        def find(sid: int) -> tuple[SeriesKey, Series | None, Cell | None]:
            """An entry's key, its series, and the series' open slice if it is the frame's."""
            key = keys[sid]
            series = _series_of(by_identity, table, key)
            cell = None if series is None or series.slice_start != slice_start else series.slice_cell
            return key, series, cell

        for sid, n, count, total, lo, hi, last in frame.counters:
            key, series, cell = find(sid)
            if series is None or cell is None or series.kind != KIND_COUNTER:
                part = Cell()
                part.count, part.sum, part.min, part.max, part.last = count, total, lo, hi, last
                applied += self._apply_entry(tenant, table, key, KIND_COUNTER, n, part, total, received)
                continue
            cell.count += count
            cell.sum += total
            if lo < cell.min:
                cell.min = lo
            if hi > cell.max:
                cell.max = hi
            cell.last = last
            series.total += total
            series.last_value = last
            series.last_seen = received
            series.last_timestamp = received
            applied += n
        for sid, n, total, lo, hi, last, gauge_total in frame.gauges:
            key, series, cell = find(sid)
            if series is None or cell is None or series.kind != KIND_GAUGE:
                part = Cell()
                part.count, part.sum, part.min, part.max, part.last = float(n), total, lo, hi, last
                applied += self._apply_entry(tenant, table, key, KIND_GAUGE, n, part, 0.0, received)
                continue
            cell.count += n
            cell.sum += total
            if lo < cell.min:
                cell.min = lo
            if hi > cell.max:
                cell.max = hi
            cell.last = last
            series.total += gauge_total
            series.last_value = last
            series.last_seen = received
            series.last_timestamp = received
            applied += n
        deferred = self._deferred
        for sid, kind, weight, count, total, squares, lo, hi, values in frame.dists:
            key, series, cell = find(sid)
            if series is None or cell is None or series.kind != kind or cell.sketch is None:
                part = Cell.for_distribution()
                part.count, part.sum, part.sum_squares = count, total, squares
                part.min, part.max, part.last = lo, hi, values[-1]
                assert part.sketch is not None
                part.sketch.add_many(values, weight)
                applied += self._apply_entry(tenant, table, key, kind, len(values), part, 0.0, received)
                continue
            if deferred:
                self._settle_deferred(cell)  # replaying: values held for this cell go first
            cell.count += count
            cell.sum += total
            cell.sum_squares += squares
            if lo < cell.min:
                cell.min = lo
            if hi > cell.max:
                cell.max = hi
            cell.last = series.last_value = values[-1]
            cell.sketch.add_list(values, weight)
            series.total += total
            series.last_seen = received
            series.last_timestamp = received
            applied += len(values)
        for sid, n, members in frame.sets:
            key, series, cell = find(sid)
            if series is None or cell is None or series.kind != KIND_SET or cell.members is None:
                part = Cell.for_set()
                assert part.members is not None
                part.members.update(members)
                applied += self._apply_entry(tenant, table, key, KIND_SET, n, part, 0.0, received)
                continue
            cell.members.update(members)
            series.last_seen = received
            series.last_timestamp = received
            applied += n
        self.counters.samples += applied
        if frame.raw:
            before = self.counters.samples
            self.apply(Batch(tenant, frame.raw, received))
            applied += self.counters.samples - before
        return applied

    def _apply_entry(
        self,
        tenant: str,
        table: dict[SeriesKey, Series],
        key: SeriesKey,
        kind: int,
        n: int,
        part: Cell,
        total: float,
        received: float,
    ) -> int:
        """_apply_one for a frame entry of `n` samples merged into `part` (untimestamped):
        admission, type check, then the part merged into every frontier cell."""
        series = table.get(key)
        if series is None:
            admitted = self.table.admit(tenant, key, kind, received)
            if isinstance(admitted, str):
                # apply() would have tried (and counted) each sample.
                self.table.rejected_by_metric[(tenant, key[0])] += n - 1
                self.counters.rejected[admitted] = self.counters.rejected.get(admitted, 0) + n
                return 0
            series = admitted
        elif series.kind != kind:
            self.counters.rejected["type_mismatch"] = self.counters.rejected.get("type_mismatch", 0) + n
            return 0
        for cell in self._frontier_cells(series, received):
            if self._deferred:
                self._settle_deferred(cell)
            cell.merge(part)
        if kind == KIND_COUNTER:
            series.total += total
        if kind != KIND_SET and (received >= series.last_timestamp or math.isnan(series.last_value)):
            series.last_value = part.last
        series.last_seen = max(series.last_seen, received)
        series.last_timestamp = max(series.last_timestamp, received)
        return n

    def defer_sketches(self, on: bool) -> None:
        """While on (replaying a log), distribution samples of an open slice wait in a list
        and are folded in bulk (the sketch by numpy) when a period closes or deferral ends:
        the same cell as one sample at a time (sums accumulate in the same order), at a
        fraction of the cost. Live ingest never defers: every read would have to settle."""
        if not on:
            self._settle_deferred()
        self._deferred = {} if on else None

    def _defer(self, cell: Cell, series: Series, value: float, weight: float) -> None:
        assert self._deferred is not None
        held = self._deferred.get(id(cell))
        if held is not None:
            _fold(held)
        self._deferred[id(cell)] = _Deferred(cell, series, weight, [value], [])

    def _settle_deferred(self, cell: Cell | None = None) -> None:
        """Fold waiting samples into their cells: all of them, or one cell's."""
        deferred = self._deferred
        if not deferred:
            return
        if cell is not None:
            held = deferred.pop(id(cell), None)
            if held is not None:
                _fold(held)
            return
        for held in deferred.values():
            _fold(held)
        deferred.clear()

    def _identity_index(self, tenant: str, table: dict[SeriesKey, Series]) -> dict[int, Series]:
        """The tenant's series by key object identity, started over when it outgrows the
        tenant's table: entries of key objects a parser has let go (its caches started over)
        pile up otherwise."""
        by_identity = self._by_identity.get(tenant)
        if by_identity is None or len(by_identity) > len(table) + IDENTITY_SLACK:
            by_identity = self._by_identity[tenant] = {}
        return by_identity

    def _apply_one(self, tenant: str, table: dict[tuple[str, Tags], Series], sample: Sample, received: float) -> int:
        key, kind, value, weight, ts = sample
        when = received if ts is None else ts
        if when < received - self.settings.late_allowance:
            self._reject("late")
            return 0
        if when > received + FUTURE_TOLERANCE:
            self._reject("future_timestamp")
            return 0
        series = table.get(key)
        base_kind = KIND_GAUGE if kind == KIND_GAUGE_DELTA else kind
        if series is None:
            admitted = self.table.admit(tenant, key, base_kind, received)
            if isinstance(admitted, str):
                self._reject(admitted)
                return 0
            series = admitted
        elif series.kind != base_kind:
            self._reject("type_mismatch")
            return 0
        if kind == KIND_GAUGE_DELTA:
            value = series.last_value + value  # type: ignore[operator]
            weight = 1.0
        for cell in self._frontier_cells(series, when):
            if self._deferred:
                self._settle_deferred(cell)  # keep the order in which samples reach the cell
            if kind == KIND_SET:
                cell.add_member(value)  # type: ignore[arg-type]
            else:
                cell.observe(value, weight)  # type: ignore[arg-type]
        if kind != KIND_SET:
            fvalue: float = value  # type: ignore[assignment]
            if kind == KIND_COUNTER:
                series.total += fvalue * weight
            if when >= series.last_timestamp or math.isnan(series.last_value):
                series.last_value = fvalue
        series.last_seen = max(series.last_seen, received)
        series.last_timestamp = max(series.last_timestamp, when)
        return 1

    def _frontier_cells(self, series: Series, when: float) -> list[Cell]:
        """The cells a sample at `when` must be added to so every level sees it exactly once:
        the open slice if its period is not rolled yet; otherwise the 1m cell, plus each
        coarser cell whose finer period has already been rolled into it."""
        slice_len = self.level_seconds[0]
        slice_start = int(when // slice_len) * slice_len
        if slice_start >= self.rolled_until[0]:
            return [self._slice_cell(series, slice_start)]
        earliest = self.touched.get(series)
        if earliest is None or when < earliest:
            self.touched[series] = when
        cells = []
        targets = [series, self._totals_for(series)]
        if self._jobs:
            for target in targets:
                self._settle_series(target)
        for level in range(1, LEVEL_COUNT):
            start = align(when, self.level_seconds[level])
            for target in targets:
                cells.append(self._cell(target, level, start))
            if level + 1 >= LEVEL_COUNT or start >= self.rolled_until[level]:
                break
        return cells

    def _slice_cell(self, series: Series, start: int) -> Cell:
        cell = series.levels[0].get(start)
        if cell is None:
            start = self._period(start)
            cell = series.writable(0)[start] = series.new_cell()
            self._pending[0][series] = None
        if start >= series.slice_start:
            series.slice_start = start
            series.slice_cell = cell
        return cell

    def _cell(self, series: Series, level: int, start: int) -> Cell:
        cell = series.levels[level].get(start)
        if cell is None:
            cell = self._install(series, level, start, series.new_cell())
        return cell

    def _install(self, series: Series, level: int, start: int, cell: Cell) -> Cell:
        """Make `cell` the series' level-`level` cell of the period at `start` (it has none)."""
        start = self._period(start)
        series.writable(level)[start] = cell
        if level + 1 < LEVEL_COUNT:
            self._pending[level][series] = None
            for job in self._jobs:
                # A queued roll-up of this level must roll the new cell too.
                if job.level == level and start < job.boundary and series not in job.done:
                    job.order.append(series)
        return cell

    def _period(self, start: int) -> int:
        """One int object per period start, shared by every series' cell dict (32 bytes each
        otherwise, per cell); forgotten once retention has passed it."""
        shared = self._periods.setdefault(start, start)
        if len(self._periods) > MAX_SHARED_PERIODS:
            self._periods.clear()
            self._periods[start] = start
        return shared

    def _reject(self, reason: str) -> None:
        rejected = self.counters.rejected
        rejected[reason] = rejected.get(reason, 0) + 1

    # ------------------------------------------------------------------ time

    def advance(self, now: float) -> list[FlushRecord]:
        """Close every period that ended by `now`: returns the flush view of the closed
        slices, rolls them up, then rolls up coarser levels (or queues those roll-ups, with
        `background_rolls`), prunes and expires."""
        self.now = max(self.now, now)
        self._settle_deferred()
        view: list[FlushRecord] = []
        if align(self.now, self.level_seconds[0]) <= self.rolled_until[0]:
            return view  # no slice closed: nothing coarser can have closed either
        for level in range(LEVEL_COUNT - 1):
            # Slices roll into their minute as each closes (the flush view is theirs); a coarser
            # level's cells roll up only once the period above them has closed, so the open 5m,
            # 1h and 1d windows are no cells at all (reads merge their finer cells) and a
            # series holds one cell per level fewer: about 330 bytes each.
            boundary = align(self.now, self.level_seconds[level if level == 0 else level + 1])
            old = self.rolled_until[level]
            if boundary <= old:
                continue
            if level == 0:
                self._roll_slices(old, boundary, view)
            else:
                pending = self._pending[level]
                self._pending[level] = {}
                if self.background_rolls:
                    # A level's previous roll-up (and those queued before it) must be done
                    # before its next one starts.
                    while any(job.level == level for job in self._jobs):
                        self._run_job(self._jobs[0], math.inf)
                    self._jobs.append(_RollJob(level, old, boundary, list(pending)))
                else:
                    for series in pending:
                        self._roll_series(series, level, old, boundary)
            self.rolled_until[level] = boundary
        if self.settings.emit_idle_gauges:
            view.extend(self._idle_gauges(view))
        if self.now - self._last_housekeeping >= 60.0:
            self._last_housekeeping = self.now
            if self.background_rolls:
                self._to_prune = self.table.all_series()  # after the queued roll-ups (roll_some)
            else:
                self.prune()
        return view

    def _roll_slices(self, old: int, boundary: int, view: list[FlushRecord]) -> None:
        """Merge the slices in [old, boundary) into their 1m cells and their metrics' 1m cells
        (in pending order: the order of float sums repeats exactly on replay), drop them and
        list them in the flush view."""
        minute = self.level_seconds[1]
        pending = self._pending[0]
        still_pending: dict[Series, None] = {}
        # A metric's slices are merged into its name-level cell at once, in the same order.
        to_totals: dict[int, tuple[Cell, list[Cell]]] = {}
        for series in pending:
            cells = series.levels[0]
            if len(cells) == 1:
                only = next(iter(cells))
                starts = [only] if old <= only < boundary else []
            else:
                starts = sorted(s for s in cells if old <= s < boundary)
            if starts:
                totals = self._totals_for(series)
                minutes = series.levels[1]
                for i, start in enumerate(starts):
                    cell = cells.pop(start)
                    upper_start = start - start % minute
                    upper = minutes.get(upper_start)
                    if upper is not None:
                        upper.merge(cell)
                    elif i + 1 == len(starts) or starts[i + 1] - upper_start >= minute:
                        # A minute's first slice becomes its minute: no second cell while the
                        # view holds the slice (the roll's peak memory), nothing to merge. Not
                        # when the next slice rolled here is of the same minute: it would change
                        # this one before the view and the name's totals have read it.
                        self._install(series, 1, upper_start, cell)
                        minutes = series.levels[1]
                        if cell.sketch is not None:
                            cell.sketch.pack()
                    else:
                        self._cell(series, 1, upper_start).merge(cell)
                        minutes = series.levels[1]
                    total_cell = self._cell(totals, 1, upper_start)
                    held = to_totals.get(id(total_cell))
                    if held is None:
                        to_totals[id(total_cell)] = (total_cell, [cell])
                    else:
                        held[1].append(cell)
                    view.append(FlushRecord(series, start, cell))
            if series.slice_start < boundary:
                series.slice_cell = None
                series.slice_start = -1
            if cells:
                still_pending[series] = None
            else:
                series.release(0)
        for total_cell, parts in to_totals.values():
            total_cell.merge_all(parts)
        self._pending[0] = still_pending

    def _roll_series(self, series: Series, level: int, old: int, boundary: int) -> None:
        """Merge one series' level-`level` cells in [old, boundary) into their coarser cells
        (each series' own: the order between series does not matter)."""
        length = self.level_seconds[level]
        upper_length = self.level_seconds[level + 1]
        cells = series.levels[level]
        if cells:
            for start in range(old, boundary, length):
                cell = cells.get(start)
                if cell is not None:
                    self._cell(series, level + 1, start - start % upper_length).merge(cell)
            # Cells of periods from the boundary on (a coarse level rolls up only when the
            # period above closes; finer cells of the next period may be there already).
            newer = range(boundary, align(self.now + FUTURE_TOLERANCE, length) + length, length)
            if any(s in cells for s in newer):
                self._pending[level][series] = None

    # ------------------------------------------------------------------ queued roll-ups

    @property
    def rolling(self) -> bool:
        """Whether queued coarse roll-ups or a queued prune remain (see roll_some)."""
        return bool(self._jobs) or self._to_prune is not None

    def roll_some(self, count: int) -> bool:
        """Roll up to `count` series of the queued coarse roll-ups, then prune up to what is
        left of `count` series (pruning after every roll-up queued before it: a cell is
        never dropped before it is merged upwards); True while some work remains."""
        left: float = count
        while self._jobs and left > 0:
            left = self._run_job(self._jobs[0], left)
        to_prune = self._to_prune
        if to_prune is not None and not self._jobs:
            end = min(self._pruned + max(int(left), 0), len(to_prune))
            for series in islice(to_prune, self._pruned, end):
                self._prune_series(series)
            self._pruned = end
            if end == len(to_prune):
                self._prune_totals()
                self._to_prune, self._pruned = None, 0
        return self.rolling

    def settle_rolls(self) -> None:
        """Finish every queued roll-up and prune (before a checkpoint or a purge)."""
        while self.roll_some(1 << 30):
            pass

    def _run_job(self, job: _RollJob, count: float) -> float:
        """Roll up to `count` of the job's series; drops the job when done; returns what is
        left of `count`."""
        order, done = job.order, job.done
        while count > 0 and job.position < len(order):
            series = order[job.position]
            job.position += 1
            if series not in done:
                done.add(series)
                self._roll_series(series, job.level, job.old, job.boundary)
                count -= 1
        if job.position >= len(order):
            self._jobs.remove(job)
        return count

    def _settle_series(self, series: Series) -> None:
        """Roll one series in every queued roll-up now, in order (a late sample is about to
        land in its closed windows)."""
        for job in self._jobs:
            if series not in job.done:
                job.done.add(series)
                self._roll_series(series, job.level, job.old, job.boundary)

    def _rolled_for(self, series: Series, level: int) -> int:
        """Where `series`' level-`level` cells stop having been merged upwards."""
        for job in self._jobs:
            if job.level == level and series not in job.done:
                return job.old
        return self.rolled_until[level]

    def start_at(self, now: float) -> None:
        """Move an empty aggregator's clock back to `now` (replaying a log from its start):
        otherwise every replayed sample would look late and take the slow path."""
        if self.table.count or self.name_totals:
            raise ValueError("only an empty aggregator can move its clock")
        self.now = now
        self._last_housekeeping = now
        self.rolled_until = [align(now, length) for length in self.level_seconds]

    def take_touched(self) -> dict[Series, float]:
        touched, self.touched = self.touched, {}
        return touched

    def slice_series(self) -> Iterable[Series]:
        """Series holding open slices: every series that took a sample since the last flush."""
        return self._pending[0].keys()

    def pending_order(self) -> list[list[Series]]:
        return [list(level) for level in self._pending]

    def restore_pending_order(self, order: list[list[Series]]) -> None:
        """Put the pending series back in the order they had (what rebuild_pending found
        stays; the saved order goes first)."""
        for level, saved in enumerate(order):
            found = self._pending[level]
            ordered = {series: None for series in saved if series in found}
            ordered.update(found)
            self._pending[level] = ordered

    def rebuild_pending(self) -> None:
        """Recompute which series hold cells not yet rolled up (after loading a checkpoint)."""
        self._pending = [{} for _ in range(LEVEL_COUNT)]
        everything = [*self.table.all_series(), *self.name_totals.values()]
        for level in range(LEVEL_COUNT - 1):
            boundary = self.rolled_until[level]
            for series in everything:
                if any(start >= boundary for start in series.levels[level]):
                    self._pending[level][series] = None
        for series in everything:
            cells = series.levels[0]
            if cells:
                newest = max(cells)
                series.slice_start, series.slice_cell = newest, cells[newest]
        self._by_identity.clear()

    def _totals_for(self, series: Series) -> Series:
        key = (series.tenant, series.name)
        totals = self.name_totals.get(key)
        if totals is None or totals.kind != series.kind:
            if totals is not None:
                # One name sent with two types (in different tag sets): the newest type's
                # aggregate replaces the old, which must not linger awaiting roll-up.
                for pending in self._pending:
                    pending.pop(totals, None)
            totals = self.name_totals[key] = Series(series.tenant, series.name, (), series.kind, self.now)
        return totals

    def _idle_gauges(self, view: list[FlushRecord]) -> list[FlushRecord]:
        """Gauges keep their value between samples; Etsy statsd re-sends them every flush."""
        if not self.table.gauges:
            return []
        flushed = {id(record.series) for record in view}
        start = self.rolled_until[0] - self.level_seconds[0]
        out = []
        for series in self.table.gauges:
            if id(series) not in flushed:
                cell = Cell()
                cell.last = series.last_value
                out.append(FlushRecord(series, start, cell))
        return out

    def prune(self) -> None:
        """Drop windows past their retention, series idle past their expiry, and empty
        name-level aggregates."""
        for series in self.table.all_series():
            self._prune_series(series)
        self._prune_totals()

    def _prune_series(self, series: Series) -> None:
        self._prune_levels(series, self.settings.retention)
        if series.last_seen < self.now - self.settings.series_idle_expiry:
            self._by_identity.clear()
            self.table.remove(series)
            for pending in self._pending:
                pending.pop(series, None)

    def _prune_totals(self) -> None:
        retention = self.settings.retention
        for key, totals in list(self.name_totals.items()):
            self._prune_levels(totals, retention)
            if key not in self.table.by_name and not any(totals.levels):
                del self.name_totals[key]
                for pending in self._pending:
                    pending.pop(totals, None)

    def _prune_levels(self, series: Series, retention: tuple[float, ...]) -> None:
        for level in range(1, LEVEL_COUNT):
            cells = series.levels[level]
            # Never a cell not yet rolled up (a retention shorter than the period above).
            cutoff = min(self.now - retention[level - 1] - self.level_seconds[level], self.rolled_until[level])
            # Cells are inserted in time order (late ones are still recent), so the stale
            # ones are at the front.
            stale = []
            for start in cells:
                if start >= cutoff:
                    break
                stale.append(start)
            for start in stale:
                del cells[start]

    # ------------------------------------------------------------------ reads

    def read(self, series: Series, level: int, start: int) -> list[Cell]:
        """The cells whose merge is the series' window at `level` starting at `start`."""
        parts = []
        cell = series.levels[level].get(start)
        if cell is not None:
            parts.append(cell)
        # Nothing can exist much past now, so never walk the future part of a long period.
        end = min(start + self.level_seconds[level], int(self.now + 2 * FUTURE_TOLERANCE))
        jobs = self._jobs
        for finer in range(level - 1, -1, -1):
            length = self.level_seconds[finer]
            lo = max(start, self._rolled_for(series, finer) if jobs and finer else self.rolled_until[finer])
            if lo >= end:
                continue
            cells = series.levels[finer]
            if not cells:
                continue
            for period in range(lo, end, length):
                found = cells.get(period)
                if found is not None:
                    parts.append(found)
        return parts

    def read_name_totals(self, tenant: str, name: str, level: int, start: int) -> list[Cell]:
        """A metric's window over all its series: the name-level aggregate for what has
        been rolled up, plus the open slices of every series for what has not."""
        parts: list[Cell] = []
        totals = self.name_totals.get((tenant, name))
        if totals is not None:
            parts.extend(self.read(totals, level, start))
        end = min(start + self.level_seconds[level], int(self.now + 2 * FUTURE_TOLERANCE))
        lo = max(start, self.rolled_until[0])
        if lo < end:
            slice_len = self.level_seconds[0]
            for series in self.table.by_name.get((tenant, name), {}).values():
                slices = series.levels[0]
                if not slices:
                    continue
                for period in range(lo, end, slice_len):
                    found = slices.get(period)
                    if found is not None:
                        parts.append(found)
        return parts

    def metric_type_of(self, tenant: str, name: str) -> MetricType | None:
        """A metric's type: its live series', else its name-level aggregate's (series expired)."""
        named = self.table.by_name.get((tenant, name))
        if named:
            return next(iter(named.values())).type
        totals = self.name_totals.get((tenant, name))
        return totals.type if totals is not None else None

    def matching_series(self, tenant: str, name: str, tag_filter: Iterable[tuple[str, str]]) -> list[Series]:
        wanted = tuple(tag_filter)
        named = self.table.by_name.get((tenant, name))
        if not named:
            return []
        if not wanted:
            return list(named.values())
        out = []
        for tags, series in named.items():
            held = dict(tags)
            if all(held.get(k) == v for k, v in wanted):
                out.append(series)
        return out

    def memory_bytes(self) -> int:
        return sum(s.nbytes() for s in self.table.all_series()) + sum(t.nbytes() for t in self.name_totals.values())
