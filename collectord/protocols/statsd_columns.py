"""StatsD payloads of distribution lines as columns, for the log's replay.

`StatsdParser.parse` spends about a microsecond of bytecode on a timer line: a timer's value
differs on every line, so only the template cache helps. Replay reads payloads of thousands
of lines (TCP reads; consecutive payloads of one slice are joined), so here the work per line
runs in numpy instead: lines are cut at their first ':' and first '|'; the name before the
':' and the tail after the '|' (the template) are read as 8-byte words, hashed and sorted, so
equal templates form groups, and each line is compared word for word with its group's first
line (a hash collision sends the payload to the parser, it never merges two templates); the
values are converted all at once. Work per *template* (a dict lookup in the parser's cache)
is in C too.

The answer is exactly what `parse` gives, as columns (per line: its template's index and its
value), or None when the payload holds anything else, and the caller parses it the usual way:
a line without ':' before its first '|', a value other than `[+-]digits[.digits]` with at most
15 digits (those convert exactly: an integer below 2**53 divided by a power of ten is the
correctly rounded decimal, as float() gives), a template the parser's cache does not have and
cannot learn from the line (invalid, timestamped, a set, too long), a template that is not a
histogram or summary, a blank line, or fewer than MIN_LINES lines (numpy's fixed cost per call
would outweigh the saving).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from collectord.model import KIND_HISTOGRAM, KIND_SUMMARY, Sample, SeriesKey
from collectord.protocols.statsd import CACHEABLE_LINE_BYTES, StatsdParser

__all__ = ["MIN_LINES", "StatsdColumns", "parse_columns"]

MIN_LINES = 64
# Digits of a value converted here; more (or an exponent, inf, ...) goes to the parser.
MAX_DIGITS = 15
_POW10_INT = 10 ** np.arange(MAX_DIGITS + 1, dtype=np.int64)
_POW10_FLOAT = _POW10_INT.astype(np.float64)  # exact: 10**15 < 2**53
_NEWLINE, _COLON, _PIPE, _DOT, _MINUS, _PLUS, _ZERO = b"\n:|.-+0"
_DISTRIBUTIONS = frozenset({KIND_HISTOGRAM, KIND_SUMMARY})
_DISTRIBUTION_TYPES = frozenset({b"ms", b"h", b"d"})
# Odd multipliers for the template hash, one per word (fixed: replay must be deterministic);
# a line is at most CACHEABLE_LINE_BYTES long, so its name and tail at most 32 words each.
_MAX_WORDS = 64
_MIX = np.random.default_rng(0x5EED).integers(1, 1 << 63, size=_MAX_WORDS, dtype=np.uint64)
_MIX = _MIX * np.uint64(2) + np.uint64(1)
_MIX_NAME = np.uint64(0x9E3779B97F4A7C15)
# Keeps the first n bytes (little-endian) of a word.
_KEEP = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_EIGHTS = np.arange(_MAX_WORDS, dtype=np.intp) * 8
_LOW16 = np.uint64(0xFFFF)
_SHIFTS = (np.uint64(16), np.uint64(32), np.uint64(48))


def _leads_with_distribution(payload: bytes) -> bool:
    """Whether the payload's first line has a distribution's type (ms, h, d): a cheap look
    that keeps payloads of other types from the numpy work (the rest is checked there)."""
    line = payload[: payload.find(b"\n")] if b"\n" in payload else payload
    return line.partition(b"|")[2].partition(b"|")[0].rstrip(b"\r") in _DISTRIBUTION_TYPES


def _first_per_line(
    positions: npt.NDArray[np.intp], line_no: npt.NDArray[np.int32], lines: int
) -> npt.NDArray[np.intp] | None:
    """The first of `positions` (ascending) in each line, or None when a line has none."""
    if len(positions) < lines:
        return None
    at = line_no[positions]
    first = np.empty(len(positions), dtype=np.bool_)
    first[0] = True
    np.not_equal(at[1:], at[:-1], out=first[1:])
    found = positions[first]
    return found if len(found) == lines else None


def _stable_sort(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
    """The stable order of `keys` by their top 48 bits (a product's low bits depend only on
    its factors' low bits: the top ones mix every byte): three passes of numpy's radix sort
    (16-bit keys), several times faster than sorting 64-bit keys."""
    order = np.argsort(((keys >> _SHIFTS[0]) & _LOW16).astype(np.uint16), kind="stable")
    for shift in _SHIFTS[1:]:
        order = order[np.argsort(((keys[order] >> shift) & _LOW16).astype(np.uint16), kind="stable")]
    return order


def _words(
    words_at: npt.NDArray[np.uint64], starts: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp]
) -> npt.NDArray[np.uint64]:
    """Bytes starts[i]:starts[i] + lengths[i] as rows of 8-byte words, zero-filled."""
    steps = _EIGHTS[: -(-int(lengths.max()) // 8)]
    words: npt.NDArray[np.uint64] = words_at[starts[:, None] + steps]
    words &= _KEEP[np.clip(lengths[:, None] - steps, 0, 8)]
    return words


class StatsdColumns(NamedTuple):
    """The samples of the payloads, by template. Line i is the sample
    (keys[g], kinds[g], values[i], weights[g], None) with g = groups[i]; templates are numbered
    in order of first appearance. `order` lists the lines grouped by template, each template's
    in line order, template g's at `order[group_starts[g]:group_ends[g]]`."""

    keys: list[SeriesKey]
    kinds: list[int]
    weights: list[float]
    groups: npt.NDArray[np.intp]
    values: npt.NDArray[np.float64]
    order: npt.NDArray[np.intp]
    group_starts: list[int]
    group_ends: list[int]
    parts: npt.NDArray[np.intp] | None  # per line, its payload's index (None: one payload)

    def samples(self, part: int = 0) -> list[Sample]:
        """The Sample tuples parse() would have appended for payload `part`, in line order."""
        groups, values = self.groups, self.values
        if self.parts is not None:
            mine = self.parts == part
            groups, values = groups[mine], values[mine]
        return list(
            zip(
                map(self.keys.__getitem__, groups.tolist()),
                map(self.kinds.__getitem__, groups.tolist()),
                values.tolist(),
                map(self.weights.__getitem__, groups.tolist()),
                repeat(None),
                strict=False,
            )
        )


def parse_columns(parser: StatsdParser, payloads: Sequence[bytes]) -> StatsdColumns | None:
    """The payloads' samples as columns, exactly as `parser.parse` of each, one after the
    other, would give them (`parts` says which payload each line came from); None when one
    needs the parser (see the module's docstring). Teaches `parser` the templates it lacks,
    as parse() would; its counters are not touched otherwise."""
    if not all(map(_leads_with_distribution, payloads)):
        return None  # counters, gauges, sets: no numpy work spent on them
    if len(payloads) == 1:
        payload = payloads[0]
    else:
        # One newline between payloads: a payload's own final newline would make an empty line.
        payload = b"\n".join(part[:-1] if part.endswith(b"\n") else part for part in payloads)
    arr = np.frombuffer(payload, dtype=np.uint8)
    size = len(arr)
    newline = arr == _NEWLINE
    newlines = np.flatnonzero(newline)
    if len(newlines) + 1 < MIN_LINES:
        return None
    starts = np.empty(len(newlines) + 1, dtype=np.intp)
    starts[0] = 0
    starts[1:] = newlines + 1
    ends = np.empty_like(starts)
    ends[:-1] = newlines
    ends[-1] = size
    if ends[-1] == starts[-1]:  # a final newline: parse() skips the empty line after it
        starts, ends = starts[:-1], ends[:-1]
    if not (ends > starts).all():
        return None  # an empty line inside: rare, the parser skips it
    lines = len(starts)
    # Every byte's line number: a line's first '|' and first ':' are where it changes.
    line_no = np.cumsum(newline, dtype=np.int32)
    pipe = _first_per_line(np.flatnonzero(arr == _PIPE), line_no, lines)
    colon = _first_per_line(np.flatnonzero(arr == _COLON), line_no, lines)
    if pipe is None or colon is None or not (colon < pipe).all() or (ends - starts).max() > CACHEABLE_LINE_BYTES:
        return None

    # The value bytes of every line, one after the other.
    vstart = colon + 1
    vlen = pipe - vstart
    if vlen.min() < 1 or vlen.max() > MAX_DIGITS + 2:
        return None
    offsets = np.cumsum(vlen) - vlen  # where each line's value starts among them
    total = int(offsets[-1] + vlen[-1])
    index = np.repeat(vstart - offsets, vlen) + np.arange(total)
    raw = arr[index]
    digit = (raw - _ZERO) < 10  # uint8 arithmetic wraps: one comparison
    dot = raw == _DOT
    lead = arr[vstart]
    negative = lead == _MINUS
    signed = negative | (lead == _PLUS)
    allowed = digit | dot
    allowed[offsets] |= signed
    if not allowed.all():
        return None
    # Sums per line by bincount (one pass; reduceat pays per line). Integer values (no point,
    # no sign: the usual milliseconds) skip what only points and signs need.
    line_of = np.repeat(np.arange(lines), vlen)
    points = bool(dot.any())
    plain = not points and not signed.any()
    if points:
        dots = np.bincount(line_of, weights=dot, minlength=lines).astype(np.intp)
        if dots.max() > 1:
            return None
        digits = vlen - dots - signed
    else:
        digits = vlen - signed
    if digits.min() < 1 or digits.max() > MAX_DIGITS:
        return None
    # Mantissa: each digit times ten to the number of digits after it in its value (sums of
    # integers below 2**53: exact in float64).
    seen = np.cumsum(digit)
    before = seen[offsets] - digit[offsets]  # digits of the values before this one
    after = (digits + before)[line_of] - seen
    if not plain:
        after[~digit] = 0
    place = (raw - _ZERO) * _POW10_FLOAT[after]
    if not plain:
        place[~digit] = 0.0
    values: npt.NDArray[np.float64] = np.bincount(line_of, weights=place, minlength=lines).astype(
        np.float64, copy=False
    )
    if points:
        # Digits after the point: everything after it is a digit (checked above).
        position = np.arange(1, total + 1) - offsets[line_of]
        dot_at = np.bincount(line_of, weights=np.where(dot, position, 0), minlength=lines).astype(np.intp)
        values /= _POW10_FLOAT[np.where(dot_at > 0, vlen - dot_at, 0)]
    np.negative(values, out=values, where=negative)  # "-0" is -0.0, as float() gives

    # Templates: a line's name and tail (after the first '|') as 8-byte words, hashed to
    # group equal ones, then compared with their group's first line, so a hash collision can
    # only send the payload to the parser, never merge two templates.
    # Padded so that every word a line's span can reach exists (spans end by `size`).
    padded = payload + bytes(_MAX_WORDS * 8)
    words_at = np.ndarray((size + _MAX_WORDS * 8 - 7,), dtype="<u8", buffer=padded, strides=(1,))
    name_len = colon - starts
    tail_start = pipe + 1
    tail_len = ends - tail_start
    words = np.concatenate((_words(words_at, starts, name_len), _words(words_at, tail_start, tail_len)), axis=1)
    hashes = words @ _MIX[: words.shape[1]]
    hashes += name_len.astype(np.uint64) * _MIX_NAME
    hashes += tail_len.astype(np.uint64)
    order = _stable_sort(hashes)
    ordered = hashes[order] >> _SHIFTS[0]
    head = np.empty(lines, dtype=np.bool_)
    head[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=head[1:])
    heads = np.flatnonzero(head)
    firsts = order[heads]  # each run's first line (the sort is stable)
    run = np.cumsum(head) - 1
    representative = np.empty(lines, dtype=np.intp)
    representative[order] = firsts[run]
    if not (
        (words == words[representative]).all()
        and (name_len == name_len[representative]).all()
        and (tail_len == tail_len[representative]).all()
    ):
        return None
    # Templates in order of first appearance, each with its part of `order`.
    appearance = np.argsort(firsts, kind="stable")
    limits = np.append(heads, lines)
    group_starts = limits[:-1][appearance].tolist()
    group_ends = limits[1:][appearance].tolist()
    rank = np.empty(len(heads), dtype=np.intp)
    rank[appearance] = np.arange(len(heads))
    groups = np.empty(lines, dtype=np.intp)
    groups[order] = rank[run]
    # One template lookup per group (not per line); the parser learns a missing one from its line.
    leaders = firsts[appearance]
    cut = np.stack((starts[leaders], colon[leaders], tail_start[leaders], ends[leaders])).tolist()
    pairs = list(
        zip(
            map(payload.__getitem__, map(slice, cut[0], cut[1])),
            map(payload.__getitem__, map(slice, cut[2], cut[3])),
            strict=True,
        )
    )
    templates = parser.templates(pairs)
    if None in templates:
        for i, found in enumerate(templates):
            if found is None:
                templates[i] = parser.template(*pairs[i], payload[cut[0][i] : cut[3][i]])
        if None in templates:
            return None
    keys, kinds, weights = (list(column) for column in zip(*templates, strict=True))
    if not _DISTRIBUTIONS.issuperset(kinds):
        return None
    parts = None
    if len(payloads) > 1:
        # Where each payload starts in the joined bytes: its length, its newline (cut or added).
        bounds = np.cumsum([len(part) + (not part.endswith(b"\n")) for part in payloads])
        parts = np.searchsorted(bounds, starts, side="right")
    return StatsdColumns(keys, kinds, weights, groups, values, order, group_starts, group_ends, parts)
