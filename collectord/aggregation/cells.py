"""A Cell is what one series accumulated during one period, for every type.

Every field merges exactly: counts and sums add, min and max combine, sketches merge bucket by
bucket and sets unite. That is what lets slices roll up into minutes, minutes into hours, series
into groups and, later, hosts into a fleet, without ever averaging a percentile.

Weights: a sample with sample rate r stands for w = 1/r events, so count += w and sum += v*w
(`x:2|c|@0.1` gives count 10 and sum 20). min and max are over the values as sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from collectord.aggregation.sketch import Sketch, quantiles_many, summaries_many

PERCENTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)


class Cell:
    """Counts, sums, extremes and, for distributions, a sketch; for sets, the members."""

    __slots__ = ("_percentiles", "count", "last", "max", "members", "min", "sketch", "sum", "sum_squares")

    def __init__(self, sketch: Sketch | None = None, members: set[str] | None = None) -> None:
        self.count = 0.0
        self.sum = 0.0
        # Weighted sum of squares, kept for distributions only (the flush view's stddev).
        self.sum_squares = 0.0
        self.min = math.inf
        self.max = -math.inf
        # The newest value seen, for gauges (the flush view's gauge value).
        self.last = math.nan
        self.sketch = sketch
        self.members = members
        # (count when computed, p50..p99): closed windows are read far more often than they
        # change, and every change raises count (weights are > 0), which invalidates it.
        self._percentiles: tuple[float, list[float | None]] | None = None

    @classmethod
    def for_distribution(cls) -> Cell:
        return cls(sketch=Sketch())

    @classmethod
    def for_set(cls) -> Cell:
        return cls(members=set())

    def empty_like(self) -> Cell:
        """A fresh cell of the same shape."""
        if self.sketch is not None:
            return Cell.for_distribution()
        if self.members is not None:
            return Cell.for_set()
        return Cell()

    def observe(self, value: float, weight: float) -> None:
        """One numeric sample (counter increment, gauge value or distribution value)."""
        self.count += weight
        self.sum += value * weight
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.last = value
        if self.sketch is not None:
            self.sketch.add(value, weight)
            self.sum_squares += value * value * weight

    def add_member(self, member: str) -> None:
        assert self.members is not None
        self.members.add(member)

    def merge(self, other: Cell) -> None:
        """Fold `other` into this cell; `other` is treated as the newer one for `last`."""
        self._fold_scalars(other)
        if other.sketch is not None:
            if self.sketch is None:
                self.sketch = Sketch()
            self.sketch.merge(other.sketch)
        if other.members is not None:
            if self.members is None:
                self.members = set()
            self.members |= other.members

    def merge_all(self, parts: Sequence[Cell]) -> None:
        """Fold many cells in at once (in order); sketches merge in one numpy pass."""
        sketches = []
        for part in parts:
            self._fold_scalars(part)
            if part.sketch is not None:
                sketches.append(part.sketch)
            if part.members is not None:
                if self.members is None:
                    self.members = set()
                self.members |= part.members
        if sketches:
            if self.sketch is None:
                self.sketch = Sketch()
            self.sketch.merge_many(sketches)

    def _fold_scalars(self, other: Cell) -> None:
        """count, sum, sum of squares, min, max and last of `other` into this cell."""
        # Into a fresh cell (a roll-up's first part) the other's float objects are shared, not
        # copied: 24 bytes each per retained cell. Exact: these sums start at +0.0 and only
        # ever add, so they are never -0.0, and 0.0 + x is x.
        if self.count:
            self.count += other.count
        else:
            self.count = other.count
        if self.sum:
            self.sum += other.sum
        else:
            self.sum = other.sum
        if other.sum_squares:  # zero but for distributions: no new 0.0 per cell
            self.sum_squares += other.sum_squares
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        if not math.isnan(other.last):
            self.last = other.last

    @property
    def is_empty(self) -> bool:
        if self.members is not None:
            return not self.members
        return self.count == 0

    def distinct(self) -> int:
        return len(self.members) if self.members is not None else 0

    def percentiles(self) -> list[float | None]:
        """p50, p90, p95, p99 clamped to the exact extremes (the sketch's bucket midpoints
        can stray past them by up to the relative error)."""
        if self.sketch is None or self.count <= 0:
            return [None] * len(PERCENTILES)
        cached = self._percentiles
        if cached is not None and cached[0] == self.count:
            return cached[1]
        out: list[float | None] = []
        for estimate in self.sketch.quantiles(PERCENTILES):
            if estimate is not None:
                estimate = min(max(estimate, self.min), self.max)
            out.append(estimate)
        self._percentiles = (self.count, out)
        return out

    def stddev(self) -> float | None:
        """Population standard deviation of a distribution's values (weighted)."""
        if self.sketch is None or self.count <= 0:
            return None
        mean = self.sum / self.count
        return math.sqrt(max(self.sum_squares / self.count - mean * mean, 0.0))

    def nbytes(self) -> int:
        """Memory held, for the bytes-per-series accounting."""
        size = 112  # the object with its nine slots
        if self.sketch is not None:
            size += self.sketch.nbytes()
        if self.members is not None:
            size += 216 + sum(49 + len(m) for m in self.members)
        return size


def prepare_percentiles(cells: Sequence[Cell]) -> None:
    """Compute and cache `percentiles()` for many cells at once (the same values: the sketches'
    ranks are searched together, see `quantiles_many`); a writer encoding thousands of
    distribution windows calls this before reading them one by one."""
    todo = [
        cell
        for cell in cells
        if cell.sketch is not None
        and cell.count > 0
        and (cell._percentiles is None or cell._percentiles[0] != cell.count)
    ]
    if not todo:
        return
    estimates = quantiles_many([cell.sketch for cell in todo], PERCENTILES)  # type: ignore[misc]
    for cell, found in zip(todo, estimates, strict=True):
        low, high = cell.min, cell.max
        cell._percentiles = (cell.count, [None if e is None else min(max(e, low), high) for e in found])


def encode_distributions(cells: Sequence[Cell]) -> list[bytes]:
    """Each cell's sketch encoding (`Sketch.to_bytes`), its percentiles computed and cached on
    the way as `prepare_percentiles` does: one pass over the sketches serves both (a compact
    sketch's buckets are found once, see `summaries_many`). Every cell holds a sketch."""
    sketches: list[Sketch] = [cell.sketch for cell in cells]  # type: ignore[misc]
    estimates, encoded = summaries_many(sketches, PERCENTILES)
    for cell, found in zip(cells, estimates, strict=True):
        if cell.count > 0:
            low, high = cell.min, cell.max
            cell._percentiles = (cell.count, [None if e is None else min(max(e, low), high) for e in found])
    return encoded
