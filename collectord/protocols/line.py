"""InfluxDB line protocol into Samples: a pure function of the bytes, no sockets.

Grammar: `measurement[,tag=value...] field=value[,field=value...] [timestamp]` with InfluxDB's
escaping; each numeric field becomes one sample named `measurement.field` (a field named `value`
gives just `measurement`). docs/protocols.md lists every rule and rejection reason.

Speed: the series part (measurement and tags, the text before the first space) is cached with
its parsed name and tags, and under it each field key with its finished series key and kind. A
line without backslashes or quotes whose series and field keys are known costs one split, a dict
lookup per field, and a float() per value. Anything else (escapes, string fields, unknown
series, a value outside the common spellings) takes the slow path, which parses with regexes,
validates, and fills the caches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from collectord.limits import Limits
from collectord.model import (
    KIND_GAUGE,
    KIND_OF_TYPE,
    KIND_SET,
    MetricType,
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

__all__ = ["CACHEABLE_SERIES_BYTES", "CACHE_BUDGET", "PRECISIONS", "LineParser", "precision_scale"]

# The caches share one budget so hostile input cannot grow memory: an entry weighs 1, and the
# entries that own tag objects (interned keys, tag sets) 1 more per tag. Past the budget every
# cache is cleared at once.
CACHE_BUDGET = 262_144
# Series parts (measurement and tags) longer than this, and field keys longer than the second,
# are parsed every time rather than cached.
CACHEABLE_SERIES_BYTES = 256
CACHEABLE_FIELD_KEY_BYTES = 128

# Timestamp precision -> (multiplier, divisor) to unix seconds. InfluxDB v2 spells them
# ns/us/ms/s; v1's /write also takes n, u, m (minutes) and h.
PRECISIONS: dict[str, tuple[int, int]] = {
    "ns": (1, 1_000_000_000),
    "n": (1, 1_000_000_000),
    "us": (1, 1_000_000),
    "u": (1, 1_000_000),
    "ms": (1, 1_000),
    "s": (1, 1),
    "m": (60, 1),
    "h": (3_600, 1),
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT64_MAX_DIGITS = str(_INT64_MAX).encode()
_UINT64_MAX = 2**64 - 1
_BOOLS: dict[bytes, float] = {
    b"t": 1.0, b"T": 1.0, b"true": 1.0, b"True": 1.0, b"TRUE": 1.0,
    b"f": 0.0, b"F": 0.0, b"false": 0.0, b"False": 0.0, b"FALSE": 0.0,
}  # fmt: skip
_I, _U, _NINE = ord("i"), ord("u"), ord("9")

# Slow-path tokens. A backslash escapes the next byte wherever escapes apply (InfluxDB's
# scanner does the same), so `\\.` is one unit inside names, keys and values.
_SERIES = re.compile(rb"(?:[^\\ ]|\\.)*", re.DOTALL)
_MEASUREMENT = re.compile(rb"(?:[^\\ ,]|\\.)+", re.DOTALL)
_TAG = re.compile(rb",((?:[^\\ ,=]|\\.)+)=((?:[^\\ ,=]|\\.)+)", re.DOTALL)
_SPACES = re.compile(rb" +")
_FIELD_KEY = re.compile(rb"((?:[^\\ ,=]|\\.)+)=", re.DOTALL)
_STRING = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_BARE_VALUE = re.compile(rb"[^ ,]+")
_TIMESTAMP = re.compile(rb"-?\d{1,19}")
_UNESCAPE_NAME = re.compile(rb"\\([\\ ,=])")
_UNESCAPE_STRING = re.compile(rb'\\([\\"])')
# parse_line's answer for a blank or comment line: not counted, not an error.
_BLANK = ""

# A cached series: (measurement, tags, field key bytes -> (series key, kind)).
_FieldInfo = tuple[SeriesKey, int]
_Series = tuple[str, Tags, dict[bytes, _FieldInfo]]
# One parsed field: (raw key bytes, metric name, kind, value; None for a skipped string).
_Field = tuple[bytes, str, int, float | str | None]


def precision_scale(precision: str) -> tuple[int, int]:
    """(multiplier, divisor) for a precision name; ValueError names the accepted ones."""
    scale = PRECISIONS.get(precision)
    if scale is None:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return scale


class LineParser:
    """Parses InfluxDB line protocol packets into Samples; keeps its own caches and stats."""

    __slots__ = (
        "_cache_weight",
        "_keys",
        "_kinds",
        "_scale",
        "_series",
        "_tag_sets",
        "limits",
        "stats",
    )

    def __init__(
        self,
        limits: Limits,
        *,
        precision: str = "ns",
        types: Mapping[str, MetricType] | None = None,
        stats: ParseStats | None = None,
    ) -> None:
        self.limits = limits
        self.stats = stats if stats is not None else ParseStats()
        self._scale = precision_scale(precision)
        self._kinds: dict[str, int] = {
            name: KIND_OF_TYPE[MetricType(metric_type)] for name, metric_type in (types or {}).items()
        }
        self._series: dict[bytes, _Series] = {}
        self._cache_weight = 0
        self._keys: dict[SeriesKey, SeriesKey] = {}
        # Raw tag section (",k=v,k2=v2", still escaped) -> validated Tags.
        self._tag_sets: dict[bytes, Tags] = {}

    def parse(self, packet: bytes, out: list[Sample], *, precision: str | None = None) -> Rejection | None:
        """Append the packet's samples to `out`; return its first rejected line, or None.

        `precision` overrides the parser's default for this packet (HTTP /write passes the
        request's); an unknown precision raises ValueError, the only way parse() raises.
        A bad line is counted in `stats` and does not affect the other lines.
        """
        if type(packet) is not bytes:
            packet = bytes(packet)  # a bytearray or memoryview: the caches need hashable lines
        multiplier, divisor = self._scale if precision is None else precision_scale(precision)
        if 13 in packet:
            # CRLF endings: drop the CR once here so cached lines match with or without it.
            packet = packet.replace(b"\r\n", b"\n")
        lines = packet.split(b"\n")
        series_cache = self._series
        append = out.append
        accepted = 0
        rejected = 0
        first: Rejection | None = None
        # Telegraf stamps a whole batch alike: convert a repeated timestamp once.
        last_raw_ts = b"\n"  # never a timestamp: lines hold no newline
        last_ts: float | None = None
        for line in lines:
            if not line:
                continue
            # The fast path: no escapes (92 is '\\'), no strings (34 is '"'). Testing an int
            # is several times cheaper than testing a one-byte bytes.
            if 92 not in line and 34 not in line:
                parts = line.split(b" ")
                count = len(parts)
                series = series_cache.get(parts[0]) if count == 2 or count == 3 else None
                if series is not None:
                    timestamp: float | None = None
                    if count == 3:
                        raw_ts = parts[2]
                        if raw_ts == last_raw_ts:
                            timestamp = last_ts
                        # 19 digits hold a nanosecond timestamp (compared as bytes against
                        # int64's maximum); signed or longer ones take the slow path.
                        elif raw_ts.isdigit() and (
                            len(raw_ts) < 19 or (len(raw_ts) == 19 and raw_ts <= _INT64_MAX_DIGITS)
                        ):
                            timestamp = last_ts = int(raw_ts) * multiplier / divisor
                            last_raw_ts = raw_ts
                        else:
                            series = None
                if series is not None:
                    known = series[2]
                    mark = len(out)
                    for field in parts[1].split(b","):
                        field_key, _, raw = field.partition(b"=")
                        info = known.get(field_key)
                        if info is None or not raw:
                            break
                        last = raw[-1]
                        if last <= _NINE:
                            # Ends in a digit or '.': a float, as strict as strict_float().
                            if not raw.isdigit() and raw.translate(None, NUMBER_BYTES):
                                break
                            try:
                                value = float(raw)
                            except ValueError:
                                break
                            if value - value != 0.0:
                                break  # overflowed to inf
                        elif last in (_I, _U):
                            body = raw[:-1]
                            # Up to 18 digits always fit int64 and uint64; longer ones, and
                            # negative unsigned, get the exact checks of the slow path.
                            if len(body) <= 18 and (
                                body.isdigit() or (last == _I and body[:1] == b"-" and body[1:].isdigit())
                            ):
                                value = float(body)
                            else:
                                break
                        else:
                            boolean = _BOOLS.get(raw)
                            if boolean is None:
                                break
                            value = boolean
                        append((info[0], info[1], value, 1.0, timestamp))
                    else:
                        accepted += 1
                        continue
                    # Something unusual in a field: drop this line's samples, parse it slowly.
                    del out[mark:]
            reason = self._parse_line(line, out, multiplier, divisor)
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

    def _parse_line(self, line: bytes, out: list[Sample], multiplier: int, divisor: int) -> str | None:
        """The slow path for one line: None if accepted, _BLANK if blank or a comment,
        else the rejection reason. Samples are appended only when the whole line is good."""
        text = line.strip()
        if not text or text[0] == ord("#"):
            return _BLANK
        try:
            if 92 in text or 34 in text:  # a backslash or a quote
                measurement_raw, tag_section, pairs, timestamp_raw = _split_escaped(text)
            else:
                measurement_raw, tag_section, pairs, timestamp_raw = _split_plain(text)
            measurement = sanitize_name(decode(_unescape(measurement_raw)))
            cacheable = len(measurement_raw) + len(tag_section) <= CACHEABLE_SERIES_BYTES
            tags = self._tags(tag_section, cacheable)
            fields: list[_Field] = []
            for key_raw, value_raw in pairs:
                name = self._field_name(measurement, key_raw)
                kind = self._kinds.get(name, KIND_GAUGE)
                fields.append((key_raw, name, kind, _field_value(value_raw, kind)))
            timestamp = _timestamp(timestamp_raw, multiplier, divisor)
        except Invalid as invalid:
            return invalid.reason

        # A repeated field key gives one sample per occurrence, as on the fast path.
        skipped = 0
        for _, name, kind, value in fields:
            if value is None:
                skipped += 1  # a string field: nothing to aggregate
            else:
                key = (name, tags)
                out.append((self._intern(key) if cacheable else key, kind, value, 1.0, timestamp))
        self.stats.fields_skipped += skipped
        self._remember(line, measurement, tags, fields)
        return None

    def _tags(self, section: bytes, cacheable: bool) -> Tags:
        """Validated, sorted tags from the escaped tag section (",k=v,k2=v2"); cached because
        new measurements usually arrive with tag sets already seen."""
        if not section:
            return ()
        tags = self._tag_sets.get(section)
        if tags is None:
            pairs: list[tuple[str, str]] = []
            for key, value in _split_tags(section):
                key, value = _unescape(key), _unescape(value)
                if has_control_chars(key) or has_control_chars(value):
                    raise Invalid("bad_tags")
                pairs.append((decode(key), decode(value)))
            tags = build_tags(pairs, self.limits)
            if cacheable:
                self._make_room(1 + len(tags))
                self._tag_sets[section] = tags
        return tags

    def _field_name(self, measurement: str, key_raw: bytes) -> str:
        """`measurement.field` (just `measurement` for a field named `value`), validated."""
        key = decode(_unescape(key_raw))
        if key == "value":
            name = measurement
        else:
            field = sanitize_name(key)
            name = f"{measurement}.{field}" if field and measurement else ""
        reason = check_name(name, self.limits)
        if reason is not None:
            raise Invalid(reason)
        return name

    def _intern(self, key: SeriesKey) -> SeriesKey:
        interned = self._keys.get(key)
        if interned is None:
            self._make_room(1 + len(key[1]))
            self._keys[key] = interned = key
        return interned

    def _make_room(self, weight: int) -> None:
        """Account for a cache entry about to be added; clear every cache past the budget."""
        self._cache_weight += weight
        if self._cache_weight > CACHE_BUDGET:
            self._series.clear()
            self._keys.clear()
            self._tag_sets.clear()
            self._cache_weight = weight

    def _remember(self, line: bytes, measurement: str, tags: Tags, fields: list[_Field]) -> None:
        """Cache the series and its numeric fields, keyed as the fast path will look them up.
        Only lines the fast path splits exactly as the slow path does qualify: no escapes, no
        quotes, no surrounding whitespace, single spaces."""
        if 92 in line or 34 in line or line != line.strip():
            return
        parts = line.split(b" ")
        # An empty part (a run of spaces) would make the fast path split the line differently.
        if not 2 <= len(parts) <= 3 or not all(parts) or len(parts[0]) > CACHEABLE_SERIES_BYTES:
            return
        cached = self._series.get(parts[0])
        known = cached[2] if cached is not None else {}
        # A SET keeps the value's text, which the fast path does not produce.
        new = [
            (key_raw, (name, tags), kind)
            for key_raw, name, kind, _ in fields
            if kind != KIND_SET and key_raw not in known and len(key_raw) <= CACHEABLE_FIELD_KEY_BYTES
        ]
        if cached is not None and not new:
            return
        # Room for everything first, so that no clearing happens halfway through.
        self._make_room(1 + len(new) * (2 + len(tags)))
        series = self._series.setdefault(parts[0], (measurement, tags, known))
        for key_raw, key, kind in new:
            series[2][key_raw] = (self._keys.setdefault(key, key), kind)


_Split = tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes | None]


def _split_plain(text: bytes) -> _Split:
    """Split a stripped line that holds no backslash and no quote into measurement, tag
    section, (field key, value) pairs and timestamp. Agrees with _split_escaped on such lines
    (a property test checks it); raises Invalid when the line's shape is wrong."""
    series, _, rest = text.partition(b" ")
    measurement, comma, tags = series.partition(b",")
    if not measurement:
        raise Invalid("bad_name")
    fields_part, _, timestamp = rest.lstrip(b" ").partition(b" ")
    if not fields_part:
        raise Invalid("missing_fields")
    pairs: list[tuple[bytes, bytes]] = []
    for field in fields_part.split(b","):
        key, eq, value = field.partition(b"=")
        if not key or not eq:
            raise Invalid("bad_field")
        if not value:
            raise Invalid("bad_value")
        pairs.append((key, value))
    return measurement, comma + tags, pairs, timestamp.lstrip(b" ") or None


def _split_escaped(text: bytes) -> _Split:
    """_split_plain for lines with escapes or string fields: a backslash escapes the byte after
    it, and a quoted string may hold spaces, commas and equals signs."""
    series_end = _SERIES.match(text).end()  # type: ignore[union-attr]  # `*` always matches
    series = text[:series_end]
    match = _MEASUREMENT.match(series)
    if match is None:
        raise Invalid("bad_name")
    measurement = match.group()
    tags = series[match.end() :]
    match = _SPACES.match(text, series_end)
    if match is None or match.end() == len(text):
        # No field set (a lone backslash at the very end, escaping nothing, lands here too).
        raise Invalid("missing_fields")
    at = match.end()
    end = len(text)
    pairs: list[tuple[bytes, bytes]] = []
    while True:
        match = _FIELD_KEY.match(text, at)
        if match is None:
            raise Invalid("bad_field")
        key = match.group(1)
        at = match.end()
        quoted = text[at : at + 1] == b'"'
        match = (_STRING if quoted else _BARE_VALUE).match(text, at)
        if match is None:
            # An unterminated string, or nothing after '='.
            raise Invalid("bad_field" if quoted else "bad_value")
        pairs.append((key, match.group()))
        at = match.end()
        if at == end:
            return measurement, tags, pairs, None
        if text[at] == ord(","):
            at += 1
        elif text[at] == ord(" "):
            return measurement, tags, pairs, text[at:].lstrip(b" ")
        else:
            raise Invalid("bad_field")  # such as text right after a closing quote


def _split_tags(section: bytes) -> list[tuple[bytes, bytes]]:
    """The still-escaped (key, value) pairs of a tag section ",k=v,k2=v2". Keys and values
    must be non-empty and an '=' inside either must be escaped, as InfluxDB requires."""
    pairs: list[tuple[bytes, bytes]] = []
    if 92 in section:
        at = 0
        while at < len(section):
            match = _TAG.match(section, at)
            if match is None:
                raise Invalid("bad_tags")
            pairs.append((match.group(1), match.group(2)))
            at = match.end()
        return pairs
    for item in section[1:].split(b","):
        key, _, value = item.partition(b"=")
        if not key or not value or 61 in value:  # 61 is '='
            raise Invalid("bad_tags")
        pairs.append((key, value))
    return pairs


def _unescape(raw: bytes) -> bytes:
    return _UNESCAPE_NAME.sub(rb"\1", raw) if 92 in raw else raw


def _field_value(raw: bytes, kind: int) -> float | str | None:
    """A field's sample value: a float; for a SET-typed field its text; None for a string
    field that is not a SET (skipped)."""
    if raw[:1] == b'"':
        if kind != KIND_SET:
            return None
        return decode(_UNESCAPE_STRING.sub(rb"\1", raw[1:-1]))
    number = _number(raw)
    if kind != KIND_SET:
        return number
    # A SET member from a number or boolean is its text as written, minus an i/u suffix.
    return (raw[:-1] if raw[-1:] in (b"i", b"u") else raw).decode("ascii")


def _number(raw: bytes) -> float:
    """A non-string field value: float, integer (`i`), unsigned (`u`) or boolean."""
    boolean = _BOOLS.get(raw)
    if boolean is not None:
        return boolean
    last = raw[-1:]
    if last in (b"i", b"u"):
        body = raw[:-1]
        digits = body[1:] if body[:1] == b"-" and last == b"i" else body
        if not digits.isdigit():
            raise Invalid("bad_value")
        number = int(body)
        low, high = (_INT64_MIN, _INT64_MAX) if last == b"i" else (0, _UINT64_MAX)
        if not low <= number <= high:
            raise Invalid("bad_value")
        return float(number)
    value = strict_float(raw)
    if value is None:
        raise Invalid("bad_value")
    return value


def _timestamp(raw: bytes | None, multiplier: int, divisor: int) -> float | None:
    if raw is None:
        return None
    if _TIMESTAMP.fullmatch(raw) is None:
        raise Invalid("bad_timestamp")
    number = int(raw)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise Invalid("bad_timestamp")
    return number * multiplier / divisor
