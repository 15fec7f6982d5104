"""StatsD and DogStatsD lines into Samples: a pure function of the bytes, no sockets.

Grammar: `<name>:<value>[:<value>...]|<type>[|@<rate>][|#<tags>][|T<unix_ts>][|c:<container>]`,
one metric per line, many lines per packet. Tags may also come Influx-style (`name,k=v:1|c`) or
Graphite-style (`name;k=v:1|c`). docs/protocols.md lists every rule and rejection reason.

Speed comes from two bounded caches, because real traffic repeats itself:

- line cache: whole raw line -> the finished Sample. `x:1|c` sent a million times is one dict
  lookup and hands out the very same tuple each time.
- template cache: the line with its value cut out, as the pair (name, `type|@rate|#tags...`)
  -> the interned series key, kind and weight, so a timer with a fresh value costs two
  partition() calls, one float() and one tuple.

Only the slow path (a miss in both) splits sections, decodes, sanitises and validates; it is
also the only place that raises (names.Invalid), and it fills the caches on success.
"""

from __future__ import annotations

import re
import sys
from typing import Literal

from collectord.limits import Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    Sample,
    SeriesKey,
    Tags,
)
from collectord.protocols.names import (
    NUMBER_BYTES,
    Invalid,
    build_tags,
    check_name,
    decode,
    has_control_chars,
    sanitize_name,
    strict_float,
)
from collectord.protocols.parse_stats import EXAMPLE_BYTES, ParseStats, Rejection

__all__ = ["CACHEABLE_LINE_BYTES", "CACHE_BUDGET", "MAX_SET_MEMBER_BYTES", "StatsdParser"]

# The caches share one budget so hostile input cannot grow memory: an entry weighs 1, and the
# entries that own tag objects (interned keys, tag sets) 1 more per tag. Past the budget every
# cache is cleared at once. About 43k series with 3 tags fit (30 MB); the worst case, unique
# untagged names, peaks near 50 MB, and many-tag lines weigh more so they cannot do worse.
CACHE_BUDGET = 262_144
# Nothing from a longer line is cached: it is parsed every time (no real client sends them).
CACHEABLE_LINE_BYTES = 256
# The value cache keeps integer values of at most this many digits: bounded by construction
# (11,110 digit strings), so it never needs clearing.
VALUE_CACHE_DIGITS = 4
# A set member is stored as-is by aggregation; bound it like a tag value, with some room.
MAX_SET_MEMBER_BYTES = 256

_TYPES: dict[bytes, int] = {
    b"c": KIND_COUNTER,
    b"g": KIND_GAUGE,
    b"ms": KIND_HISTOGRAM,
    b"h": KIND_HISTOGRAM,
    b"d": KIND_SUMMARY,
    b"s": KIND_SET,
}
# Kinds a sample rate scales; gauges and sets ignore it (a gauge is a value, not an event count).
_RATED = frozenset({KIND_COUNTER, KIND_HISTOGRAM, KIND_SUMMARY})
_PLUS, _MINUS = ord("+"), ord("-")
_TIMESTAMP = re.compile(rb"\d{1,12}(?:\.\d{1,9})?")
# parse_line's answer for a line that holds only whitespace: not counted, not an error.
_BLANK = ""

# What the template cache holds: series key, kind (KIND_GAUGE for every gauge: the sign of each
# value decides between gauge and delta) and weight.
_Template = tuple[SeriesKey, int, float]
_NO_TEMPLATES: dict[bytes, _Template] = {}
_Value = float | str


class StatsdParser:
    """Parses StatsD/DogStatsD packets into Samples; keeps its own caches and ParseStats."""

    __slots__ = (
        "_cache_weight",
        "_keys",
        "_lines",
        "_tag_sets",
        "_templates",
        "_values",
        "_with_container",
        "limits",
        "stats",
    )

    def __init__(
        self,
        limits: Limits,
        *,
        container_id: Literal["tag", "drop"] = "tag",
        stats: ParseStats | None = None,
    ) -> None:
        if container_id not in ("tag", "drop"):
            raise ValueError(f"container_id must be 'tag' or 'drop', not {container_id!r}")
        self.limits = limits
        self.stats = stats if stats is not None else ParseStats()
        self._with_container = container_id == "tag"
        self._cache_weight = 0
        self._lines: dict[bytes, Sample] = {}
        # Keyed by the tail first, then the name: two lookups cost less than building and
        # hashing a (name, tail) tuple per line, and most names share a handful of tails.
        self._templates: dict[bytes, dict[bytes, _Template]] = {}
        # Short integer values' bytes -> their float, for the template path: float() is the
        # dearest step of a timer line, and integer milliseconds repeat.
        self._values: dict[bytes, float] = {}
        self._keys: dict[SeriesKey, SeriesKey] = {}
        # (separator, name tags, |# sections, container) raw bytes -> validated Tags.
        self._tag_sets: dict[tuple[bytes, bytes, tuple[bytes, ...], bytes | None], Tags] = {}

    def parse(self, packet: bytes, out: list[Sample]) -> Rejection | None:
        """Append the packet's samples to `out`; return its first rejected line, or None.

        Never raises. A bad line is counted in `stats` and does not affect the other lines.
        """
        if type(packet) is not bytes:
            packet = bytes(packet)  # a bytearray or memoryview: the caches need hashable lines
        lines = packet.split(b"\n")
        if not lines[-1]:
            lines.pop()  # the final newline's empty line: blank, neither counted nor parsed
        line_cache = self._lines
        templates = self._templates
        values = self._values
        append = out.append
        accepted = 0
        rejected = 0
        first: Rejection | None = None
        for line in lines:
            sample = line_cache.get(line)
            if sample is not None:
                append(sample)
                accepted += 1
                continue
            # partition() is cheaper than find() plus slicing, and yields the template parts.
            head, _, tail = line.partition(b"|")
            name, _, raw = head.partition(b":")
            by_name = templates.get(tail)
            template = by_name.get(name) if by_name is not None else None
            if template is not None:
                value: float | None
                if raw.isdigit():
                    # The common integer value: float() cannot fail. Short ones repeat (integer
                    # milliseconds), and a dict lookup costs a fraction of float().
                    if len(raw) <= VALUE_CACHE_DIGITS:
                        value = values.get(raw)
                        if value is None:
                            value = values[raw] = float(raw)
                    else:
                        value = float(raw)
                        if value - value != 0.0:
                            value = None  # so long that it overflows to inf
                else:
                    try:
                        value = float(raw)
                    except ValueError:
                        value = None  # multi-value or malformed: the slow path tells which
                    # value - value != 0.0 catches nan and inf; translate() the other bytes
                    # float() accepts ("1_0", " 1").
                    if value is not None and (value - value != 0.0 or raw.translate(None, NUMBER_BYTES)):
                        value = None
                if value is not None:
                    kind = template[1]
                    if kind == KIND_GAUGE and (raw[0] == _PLUS or raw[0] == _MINUS):
                        kind = KIND_GAUGE_DELTA
                    append((template[0], kind, value, template[2], None))
                    accepted += 1
                    continue
            reason = self._parse_line(line, out)
            if reason is None:
                accepted += 1
            elif reason:
                rejected += 1
                self.stats.reject(reason, line)
                if first is None:
                    # An identical earlier line would have been rejected first, so the first
                    # occurrence of these bytes is this line.
                    first = Rejection(lines.index(line) + 1, reason, line[:EXAMPLE_BYTES])
        stats = self.stats
        stats.lines += accepted + rejected
        stats.accepted += accepted
        return first

    def parse_repeated(self, packet: bytes, out: list[Sample]) -> bool:
        """parse() for a packet whose every line is in the line cache (a TCP read of lines
        sent before: counters, repeated values): their cached samples appended and counted in
        C (one dict lookup per line by map(), no bytecode per line). False, with nothing
        appended or counted, when a line is not cached; the caller then calls parse()."""
        if type(packet) is not bytes:
            return False  # a bytearray's lines could not be looked up: parse() copies it
        line_cache = self._lines
        lines = packet.split(b"\n")
        if not lines[-1]:
            lines.pop()
        if not lines or lines[0] not in line_cache:
            return False  # the usual miss (timers, new series) costs one lookup
        samples = list(map(line_cache.get, lines))
        if not all(samples):  # a None: a line not cached (samples are non-empty tuples)
            return False
        out.extend(samples)  # type: ignore[arg-type]
        stats = self.stats
        stats.lines += len(samples)
        stats.accepted += len(samples)
        return True

    def templates(self, pairs: list[tuple[bytes, bytes]]) -> list[_Template | None]:
        """The cached template of each (name, tail) pair, None where none is cached."""
        templates = self._templates
        return [templates.get(tail, _NO_TEMPLATES).get(name) for name, tail in pairs]

    def template(self, name: bytes, tail: bytes, line: bytes) -> _Template | None:
        """What the fast path knows of lines reading `name:<value>|tail`: (key, kind, weight),
        learnt from `line` (one such line) when not yet cached; None when it cannot be learnt
        (the line is invalid, timestamped, a set, or too long to cache). For bulk parsers
        (statsd_columns) that must give exactly what parse() gives line by line."""
        found = self._templates.get(tail, _NO_TEMPLATES).get(name)
        if found is None:
            self.parse(line, [])
            found = self._templates.get(tail, _NO_TEMPLATES).get(name)
        return found

    def _parse_line(self, line: bytes, out: list[Sample]) -> str | None:
        """The slow path for one line: None if accepted, _BLANK if blank, else the reason."""
        text = line.strip()
        if not text:
            return _BLANK
        if text.startswith(b"_e{"):
            self.stats.events += 1
            return None
        if text.startswith(b"_sc|"):
            self.stats.service_checks += 1
            return None
        cacheable = len(line) <= CACHEABLE_LINE_BYTES
        try:
            samples, template = self._parse_metric(text, cacheable)
        except Invalid as invalid:
            return invalid.reason
        out.extend(samples)
        if template is not None and cacheable:
            self._remember(line, template, samples)
        return None

    def _parse_metric(self, text: bytes, cacheable: bool) -> tuple[list[Sample], _Template | None]:
        """Parse a stripped metric line; the template comes back only when it may be cached."""
        colon = text.find(b":")
        if colon < 0:
            raise Invalid("missing_value")
        name_part = text[:colon]
        sections = text[colon + 1 :].split(b"|")
        if len(sections) < 2 or not sections[1]:
            raise Invalid("missing_type")
        kind = _TYPES.get(sections[1])
        if kind is None:
            raise Invalid("bad_type")
        value_part = sections[0]
        if not value_part:
            raise Invalid("missing_value")

        rate_raw: bytes | None = None
        timestamp_raw: bytes | None = None
        dog_tags: list[bytes] = []
        container: bytes | None = None
        for section in sections[2:]:
            lead = section[:1]
            if lead == b"@":
                rate_raw = section[1:]
            elif lead == b"#":
                dog_tags.append(section[1:])
            elif lead == b"T":
                timestamp_raw = section[1:]
            elif section.startswith(b"c:"):
                container = section[2:]
            # Anything else is a field from a newer DogStatsD version: ignored, as the Datadog
            # agent does, so that upgraded clients keep working.

        controls = has_control_chars(text)
        key = self._series_key(name_part, dog_tags, container, controls, cacheable)

        values: list[tuple[int, _Value]] = []
        if kind == KIND_SET:
            # The member is everything after the first ':', colons included (no multi-value).
            if len(value_part) > MAX_SET_MEMBER_BYTES:
                raise Invalid("value_too_long")
            if controls and has_control_chars(value_part):
                raise Invalid("bad_value")
            values.append((KIND_SET, decode(value_part)))
        else:
            for raw in value_part.split(b":"):
                value = strict_float(raw)
                if value is None:
                    raise Invalid("bad_value")
                if kind == KIND_GAUGE and (raw[0] == _PLUS or raw[0] == _MINUS):
                    values.append((KIND_GAUGE_DELTA, value))
                else:
                    values.append((kind, value))

        weight = 1.0
        if rate_raw is not None:
            rate = strict_float(rate_raw)
            if rate is None or not 0.0 < rate <= 1.0:
                raise Invalid("bad_sample_rate")
            if kind in _RATED:
                weight = 1.0 / rate

        timestamp: float | None = None
        if timestamp_raw is not None:
            if _TIMESTAMP.fullmatch(timestamp_raw) is None:
                raise Invalid("bad_timestamp")
            timestamp = float(timestamp_raw)

        samples: list[Sample] = [(key, sample_kind, value, weight, timestamp) for sample_kind, value in values]
        # Timestamped lines differ on every send: caching them would only evict useful entries.
        template = (key, kind, weight) if timestamp is None else None
        return samples, template

    def _series_key(
        self,
        name_part: bytes,
        dog_tags: list[bytes],
        container: bytes | None,
        controls: bool,
        cacheable: bool,
    ) -> SeriesKey:
        """Name and tags of a line (in whichever tag form it uses) as an interned SeriesKey.

        `controls` says the line holds an ASCII control character somewhere; only then are
        the tag parts searched for one (the name may hold them: sanitising removes them).
        `cacheable` false keeps this line's tags and key out of the caches.
        """
        influx = 44 in name_part  # ','
        graphite = 59 in name_part  # ';'  (ints: much cheaper than one-byte bytes)
        if (influx and graphite) or ((influx or graphite) and dog_tags):
            raise Invalid("mixed_tag_forms")
        separator = b"," if influx else b";"
        name_raw, _, name_tags = name_part.partition(separator)

        # Interned: the hosts under one name, and the keys made again after the caches start
        # over, share the string the series already holds (about 65 bytes a series).
        name = sys.intern(sanitize_name(decode(name_raw)))
        reason = check_name(name, self.limits)
        if reason is not None:
            raise Invalid(reason)

        container = container if self._with_container else None
        if not (name_tags or dog_tags or container):
            tags: Tags = ()
        else:
            # New names often arrive with tags already seen (the same host, env, ...).
            raw = (separator, name_tags, tuple(dog_tags), container)
            cached = self._tag_sets.get(raw)
            if cached is None:
                cached = self._parse_tags(name_tags, separator, dog_tags, container, controls)
                if cacheable:
                    self._make_room(1 + len(cached))
                    self._tag_sets[raw] = cached
            tags = cached

        key = (name, tags)
        interned = self._keys.get(key)
        if interned is None:
            if not cacheable:
                return key
            self._make_room(1 + len(tags))
            self._keys[key] = interned = key
        return interned

    def _parse_tags(
        self,
        name_tags: bytes,
        separator: bytes,
        dog_tags: list[bytes],
        container: bytes | None,
        controls: bool,
    ) -> Tags:
        """Validated, sorted tags from the Influx/Graphite part of the name, the `|#` sections
        and the container id."""
        if controls and (
            has_control_chars(name_tags)
            or any(has_control_chars(section) for section in dog_tags)
            or (container is not None and has_control_chars(container))
        ):
            raise Invalid("bad_tags")
        pairs: list[tuple[str, str]] = []
        if name_tags:
            for item in decode(name_tags).split(separator.decode()):
                if item:  # a stray separator ("name,,k=v") carries nothing
                    tag_key, eq, tag_value = item.partition("=")
                    if not eq:
                        raise Invalid("bad_tags")
                    pairs.append((tag_key, tag_value))
        for section in dog_tags:
            for item in decode(section).split(","):
                if item:
                    # A bare DogStatsD tag ("|#env") has the value "".
                    tag_key, _, tag_value = item.partition(":")
                    pairs.append((tag_key, tag_value))
        if container:
            pairs.append(("container_id", decode(container)))
        return build_tags(pairs, self.limits)

    def _remember(self, line: bytes, template: _Template, samples: list[Sample]) -> None:
        """Cache what a successful slow parse learnt, keyed the way the fast path looks it up:
        by the raw line (surrounding whitespace and CR included) and by (name, the text after
        the first '|')."""
        head, _, tail = line.partition(b"|")
        name, colon, _ = head.partition(b":")
        # Only when the line really reads name:value|tail: a line whose first '|' comes before
        # its ':' ("a|b:1|c") would otherwise teach a template that means something else.
        # Sets never use the template path: their value is a string member, not a float.
        if colon and template[1] != KIND_SET:
            # A new tail's dict of its own weighs like two more entries.
            self._make_room(1 if tail in self._templates else 3)
            self._templates.setdefault(tail, {})[name] = template
        if len(samples) == 1:
            self._make_room(1)
            self._lines[line] = samples[0]

    def _make_room(self, weight: int) -> None:
        """Account for a cache entry about to be added; clear every cache past the budget."""
        self._cache_weight += weight
        if self._cache_weight > CACHE_BUDGET:
            self._lines.clear()
            self._templates.clear()
            self._keys.clear()
            self._tag_sets.clear()
            self._cache_weight = weight
