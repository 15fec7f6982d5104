"""Tests for collectord/protocols/line.py.

One table (line -> samples or rejection reason) built from InfluxDB's line protocol reference
(syntax, data types, quoting and escaping, comments) plus collectord's own rules, then
hypothesis properties and hostile inputs.
"""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from collectord.limits import Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    MetricType,
    Sample,
)
from collectord.protocols import line as line_module
from collectord.protocols.line import LineParser
from collectord.protocols.names import Invalid
from tests.protocols.test_statsd import assert_sample_is_valid

LIMITS = Limits()
G = KIND_GAUGE
TS = 1465839830100400200


def s(name: str, value: float | str, ts: float | None = None, kind: int = G, **tags: str) -> Sample:
    return ((name, tuple(sorted(tags.items()))), kind, value, 1.0, ts)


def parse(
    line: bytes, parser: LineParser | None = None, precision: str | None = None
) -> tuple[list[Sample], str | None]:
    parser = parser or LineParser(LIMITS)
    out: list[Sample] = []
    rejection = parser.parse(line, out, precision=precision)
    return out, None if rejection is None else rejection.reason


ACCEPTED: list[tuple[bytes, list[Sample]]] = [
    # InfluxDB line protocol reference: elements and data types
    (
        b"weather,location=us-midwest temperature=82 1465839830100400200",
        [s("weather.temperature", 82.0, TS / 10**9, location="us-midwest")],
    ),
    (b"weather,location=us-midwest temperature=82i", [s("weather.temperature", 82.0, location="us-midwest")]),
    (b"weather temperature=82u", [s("weather.temperature", 82.0)]),
    (b"weather temperature=-1.5e3", [s("weather.temperature", -1500.0)]),
    (b"weather temperature=1E-2", [s("weather.temperature", 0.01)]),
    (b"weather temperature=-82i", [s("weather.temperature", -82.0)]),
    (b"m f=9223372036854775807i", [s("m.f", 9223372036854775807.0)]),
    (b"m f=-9223372036854775808i", [s("m.f", -9223372036854775808.0)]),
    (b"m f=18446744073709551615u", [s("m.f", 18446744073709551615.0)]),
    (b"m f=1234567890123456789i", [s("m.f", 1234567890123456789.0)]),
    *[(b"m ok=" + word, [s("m.ok", 1.0)]) for word in (b"t", b"T", b"true", b"True", b"TRUE")],
    *[(b"m ok=" + word, [s("m.ok", 0.0)]) for word in (b"f", b"F", b"false", b"False", b"FALSE")],
    # Several fields, one sample each, in order; a field named "value" gives the measurement
    (
        b"cpu,host=a usage=1.5,idle=2i,ok=true",
        [s("cpu.usage", 1.5, host="a"), s("cpu.idle", 2.0, host="a"), s("cpu.ok", 1.0, host="a")],
    ),
    (b"load value=0.5", [s("load", 0.5)]),
    (b"load value=0.5,peak=2", [s("load", 0.5), s("load.peak", 2.0)]),
    (b"m f=1,f=2", [s("m.f", 1.0), s("m.f", 2.0)]),  # repeated key: one sample each
    # String fields are skipped (and counted in fields_skipped)
    (b'myMeasurement,tag1=value1,tag2=value2 fieldKey="fieldValue" 1556813561098000000', []),
    (b'm s="x",n=1', [s("m.n", 1.0)]),
    (b'm s="a \\"b\\", c=d e",n=2 1000000000', [s("m.n", 2.0, 1.0)]),
    (b'm s="back\\\\slash",n=3', [s("m.n", 3.0)]),
    (b'm s=""', []),
    (b'm s="\xff",n=4', [s("m.n", 4.0)]),  # a skipped string is not decoded
    # Escaping: measurement \, and \space; tag keys, values and field keys also \=
    (
        b"my\\ measurement,tag\\ key=tag\\ value field\\ key=1",
        [s("my_measurement.field_key", 1.0, **{"tag key": "tag value"})],
    ),
    (b"m,t=a\\,b\\=c\\ d f=1", [s("m.f", 1.0, t="a,b=c d")]),
    (b"m\\,x f=1", [s("mx.f", 1.0)]),
    (b"m,t=a\\\\b f=1", [s("m.f", 1.0, t="a\\b")]),
    (b"m,t=a\\b f=1", [s("m.f", 1.0, t="a\\b")]),  # a backslash before anything else stays
    (b'm,t="quoted" f=1', [s("m.f", 1.0, t='"quoted"')]),
    (b"m,t=x\\=y\\,z f\\=g=1", [s("m.fg", 1.0, t="x=y,z")]),
    # Tags: sorted, UTF-8, limits at their edges
    (b"m,b=1,a=2 f=1", [s("m.f", 1.0, a="2", b="1")]),
    ("m,miasto=Łódź f=1".encode(), [s("m.f", 1.0, miasto="Łódź")]),
    (b"m,a=1,a=2 f=1", [s("m.f", 1.0, a="2")]),
    (
        b"m," + b",".join(b"k%02d=v" % i for i in range(20)) + b" f=1",
        [(("m.f", tuple((f"k{i:02d}", "v") for i in range(20))), G, 1.0, 1.0, None)],
    ),
    # Names are sanitised like StatsD names
    (b"cpu/load,host=a usage\\ pct=1", [s("cpu-load.usage_pct", 1.0, host="a")]),
    # Whitespace: leading spaces, runs of spaces between sections, CRLF
    (b"  m f=1", [s("m.f", 1.0)]),
    (b"m  f=1   1000000000", [s("m.f", 1.0, 1.0)]),
    (b"m f=1 1000000000\r", [s("m.f", 1.0, 1.0)]),
    # Timestamps: nanoseconds by default, int64, negative allowed (before 1970)
    (b"m f=1 0", [s("m.f", 1.0, 0.0)]),
    (b"m f=1 -1000000000", [s("m.f", 1.0, -1.0)]),
    (b"m f=1 9223372036854775807", [s("m.f", 1.0, 9223372036854775807 / 10**9)]),
]

REJECTED: list[tuple[bytes, str]] = [
    (b"m", "missing_fields"),
    (b"m,t=v", "missing_fields"),
    (b"m\\", "missing_fields"),
    (b"m,t=v\\", "missing_fields"),
    (b",t=v f=1", "bad_name"),
    (b"9m f=1", "bad_name"),
    (b"m @=1", "bad_name"),
    (b"@ f=1", "bad_name"),
    (b"@ value=1", "bad_name"),
    (b"m" * 250 + b" field=1", "name_too_long"),
    (b"m f", "bad_field"),
    (b"m =1", "bad_field"),
    (b"m f=1,", "bad_field"),
    (b"m f=1,,g=2", "bad_field"),
    (b'm f="abc', "bad_field"),
    (b'm f="a"x', "bad_field"),
    (b'm f="a" ,g=1', "bad_timestamp"),
    (b"m f=", "bad_value"),
    (b"m f=,g=1", "bad_value"),
    (b"m f=abc", "bad_value"),
    (b"m f=nan", "bad_value"),
    (b"m f=NaN", "bad_value"),
    (b"m f=inf", "bad_value"),
    (b"m f=-Inf", "bad_value"),
    (b"m f=1_0", "bad_value"),
    (b"m f=1e999", "bad_value"),
    (b"m f=1x", "bad_value"),
    (b"m f=1-", "bad_value"),
    (b"m f=1.2.3", "bad_value"),
    (b"m f=tRUE", "bad_value"),
    (b"m f=yes", "bad_value"),
    (b"m f=1.5i", "bad_value"),
    (b"m f=+1i", "bad_value"),
    (b"m f=i", "bad_value"),
    (b"m f=9223372036854775808i", "bad_value"),
    (b"m f=-9223372036854775809i", "bad_value"),
    (b"m f=18446744073709551616u", "bad_value"),
    (b"m f=-1u", "bad_value"),
    (b"m f=1=2", "bad_value"),
    (b"m f=1,g=oops", "bad_value"),  # one bad field rejects the whole line
    (b"m f=1 abc", "bad_timestamp"),
    (b"m f=1 1.5", "bad_timestamp"),
    (b"m f=1 1e9", "bad_timestamp"),
    (b"m f=1 1 2", "bad_timestamp"),
    (b"m f=1 9223372036854775808", "bad_timestamp"),
    (b"m f=1 -9223372036854775809", "bad_timestamp"),
    (b"m f=1 " + b"1" * 30, "bad_timestamp"),
    (b"m,t= f=1", "bad_tags"),
    (b"m,=v f=1", "bad_tags"),
    (b"m,t f=1", "bad_tags"),
    (b"m,t=a=b f=1", "bad_tags"),
    (b"m, f=1", "bad_tags"),
    (b"m,t=v, f=1", "bad_tags"),
    (b"m,,t=v f=1", "bad_tags"),
    (b"m,t=a\\ b,=x f=1", "bad_tags"),
    (b"m,t=\\ f=1", "missing_fields"),  # the space is escaped: all one series
    (b"m,t=a\x00b f=1", "bad_tags"),
    (b"m,t=a\x7f f=1", "bad_tags"),
    (b"m,t=\\\x01 f=1", "bad_tags"),
    (b"m," + b",".join(b"k%02d=v" % i for i in range(21)) + b" f=1", "too_many_tags"),
    (b"m," + b"k" * 51 + b"=v f=1", "tag_key_too_long"),
    (b"m,k=" + b"v" * 101 + b" f=1", "tag_value_too_long"),
    (b"m,t=\xff f=1", "non_utf8"),
    (b"\xff f=1", "non_utf8"),
    (b"m \xff=1", "non_utf8"),
]


@pytest.mark.parametrize(("line", "expected"), ACCEPTED, ids=[repr(c[0][:60]) for c in ACCEPTED])
def test_accepted(line: bytes, expected: list[Sample]) -> None:
    parser = LineParser(LIMITS)
    for _ in range(3):  # slow path first, then the caches
        assert parse(line, parser) == (expected, None)
    assert parser.stats.lines == parser.stats.accepted == 3
    assert parser.stats.rejected == {}


@pytest.mark.parametrize(("line", "reason"), REJECTED, ids=[repr(c[0][:60]) for c in REJECTED])
def test_rejected(line: bytes, reason: str) -> None:
    parser = LineParser(LIMITS)
    for _ in range(2):
        assert parse(line, parser) == ([], reason)
    assert parser.stats.rejected == {reason: 2}
    assert parser.stats.last_rejected == {reason: line[:200]}
    assert (parser.stats.lines, parser.stats.accepted) == (2, 0)


@pytest.mark.parametrize(("line", "reason"), REJECTED, ids=[repr(c[0][:60]) for c in REJECTED])
def test_rejected_after_good_lines_of_the_same_series(line: bytes, reason: str) -> None:
    """Warm caches must not let a bad field or timestamp through."""
    parser = LineParser(LIMITS)
    series, _, rest = line.partition(b" ")
    keys = [field.partition(b"=")[0] for field in rest.split(b" ")[0].split(b",")]
    parse(series + b" " + b",".join(key + b"=1" for key in keys if key), parser)
    parse(series + b" " + b",".join(key + b"=1" for key in keys if key) + b" 5", parser)
    assert parse(line, parser) == ([], reason)


def test_bytearray_and_memoryview_packets() -> None:
    parser = LineParser(LIMITS)
    for packet in (bytearray(b"m f=1\nn g=2i"), memoryview(b"m f=1\nn g=2i")):
        out: list[Sample] = []
        assert parser.parse(packet, out) is None  # type: ignore[arg-type]
        assert out == [s("m.f", 1.0), s("n.g", 2.0)]


def test_string_fields_are_counted_as_skipped() -> None:
    parser = LineParser(LIMITS)
    parser.parse(b'm a="x",b="y"\nm a="x",n=1\nm n=2', [])
    stats = parser.stats
    assert (stats.lines, stats.accepted, stats.fields_skipped) == (3, 3, 3)


def test_comments_and_blank_lines_are_not_counted() -> None:
    parser = LineParser(LIMITS)
    out: list[Sample] = []
    rejection = parser.parse(b"# a comment\n  # indented comment\n\n   \n#m f=1\nm f=1\n", out)
    assert rejection is None
    assert out == [s("m.f", 1.0)]
    assert (parser.stats.lines, parser.stats.accepted) == (1, 1)


@pytest.mark.parametrize(
    ("precision", "raw", "seconds"),
    [
        ("ns", b"1700000000123456789", 1700000000123456789 / 10**9),
        ("n", b"1700000000123456789", 1700000000123456789 / 10**9),
        ("us", b"1700000000123456", 1700000000.123456),
        ("u", b"1700000000123456", 1700000000.123456),
        ("ms", b"1700000000123", 1700000000.123),
        ("s", b"1700000000", 1700000000.0),
        ("m", b"28333333", 28333333 * 60.0),
        ("h", b"472222", 472222 * 3600.0),
    ],
)
def test_precision(precision: str, raw: bytes, seconds: float) -> None:
    default = LineParser(LIMITS, precision=precision)
    per_call = LineParser(LIMITS)
    for _ in range(2):
        assert parse(b"m f=1 " + raw, default) == ([s("m.f", 1.0, seconds)], None)
        assert parse(b"m f=1 " + raw, per_call, precision) == ([s("m.f", 1.0, seconds)], None)
    # The per-call precision does not stick.
    assert parse(b"m f=1 1000000000", per_call) == ([s("m.f", 1.0, 1.0)], None)


def test_unknown_precision_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        LineParser(LIMITS, precision="weeks")
    with pytest.raises(ValueError, match="unknown precision"):
        LineParser(LIMITS).parse(b"m f=1", [], precision="d")


def test_types_map_metric_names_to_kinds() -> None:
    parser = LineParser(
        LIMITS,
        types={
            "http.requests": MetricType.COUNTER,
            "http.latency": MetricType.HISTOGRAM,
            "http.size": MetricType.SUMMARY,
            "http": MetricType.COUNTER,
            "logins.user": MetricType.SET,
            "logins.id": MetricType.SET,
        },
    )
    for _ in range(2):
        assert parse(b"http,h=a requests=3i,latency=12.5,size=100u,other=1,value=7", parser) == (
            [
                s("http.requests", 3.0, kind=KIND_COUNTER, h="a"),
                s("http.latency", 12.5, kind=KIND_HISTOGRAM, h="a"),
                s("http.size", 100.0, kind=KIND_SUMMARY, h="a"),
                s("http.other", 1.0, h="a"),
                s("http", 7.0, kind=KIND_COUNTER, h="a"),
            ],
            None,
        )
        # SET-typed fields keep their text: a string's content, a number as written.
        assert parse(b'logins user="al\\"ice",id=42i,n=1', parser) == (
            [
                s("logins.user", 'al"ice', kind=KIND_SET),
                s("logins.id", "42", kind=KIND_SET),
                s("logins.n", 1.0),
            ],
            None,
        )
    assert parser.stats.fields_skipped == 0
    assert parse(b'logins user="\xff"', parser) == ([], "non_utf8")


def test_first_rejection_and_line_numbers() -> None:
    parser = LineParser(LIMITS)
    out: list[Sample] = []
    packet = b"# comment\nm f=1\r\n\nm f=oops\r\nm,t= f=1\nn g=2\n"
    rejection = parser.parse(packet, out)
    assert out == [s("m.f", 1.0), s("n.g", 2.0)]
    assert rejection is not None
    assert (rejection.line_no, rejection.reason, rejection.line) == (4, "bad_value", b"m f=oops")
    assert parser.stats.rejected == {"bad_value": 1, "bad_tags": 1}
    assert (parser.stats.lines, parser.stats.accepted) == (4, 2)


def test_repeated_timestamps_and_caches() -> None:
    parser = LineParser(LIMITS)
    out: list[Sample] = []
    packet = b"\n".join(b"cpu,h=a u=%d,i=2i 1700000000000000000" % i for i in range(5))
    parser.parse(packet, out)
    assert [sample[2] for sample in out[::2]] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert {sample[4] for sample in out} == {1700000000.0}
    assert len({id(sample[0]) for sample in out[::2]}) == 1


def test_whitespace_variants_teach_the_caches_nothing_wrong() -> None:
    parser = LineParser(LIMITS)
    assert parse(b" m f=1", parser) == ([s("m.f", 1.0)], None)
    assert parse(b"m  f=1", parser) == ([s("m.f", 1.0)], None)
    # Split on single spaces, both lines above begin with an empty or odd series part.
    assert parse(b" f=1 5", parser) == ([], "bad_field")
    assert parse(b"m  f=2", parser) == ([s("m.f", 2.0)], None)


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(line_module, "CACHE_BUDGET", 200)
    parser = LineParser(LIMITS)
    for i in range(1000):
        tags = b"".join(b",k%d=%d" % (j, i) for j in range(i % 21))
        parser.parse(b"m%d%s f=1,g=2 5\nm%d%s f=3,h=4" % (i, tags, i, tags), [])
        fields = sum(len(series[2]) for series in parser._series.values())
        entries = len(parser._series) + fields + len(parser._keys) + len(parser._tag_sets)
        assert entries <= parser._cache_weight <= 200
    assert parser._series and parser._keys


def test_long_series_are_never_cached() -> None:
    parser = LineParser(LIMITS)
    line = b"m,k=" + b"v" * 100 + b",k2=" + b"w" * 100 + b",k3=" + b"z" * 100 + b" f=1"
    for _ in range(2):
        assert parse(line, parser)[1] is None
    assert not (parser._series or parser._keys or parser._tag_sets)
    # A long field key is not cached either; its series is.
    assert parse(b"m " + b"f" * 200 + b"=1,g=2", parser)[1] is None
    assert list(parser._series[b"m"][2]) == [b"g"]


# --- properties ---------------------------------------------------------------------------


def counted_lines(packet: bytes) -> int:
    stripped = (line.strip() for line in packet.split(b"\n"))
    return sum(1 for line in stripped if line and not line.startswith(b"#"))


INTERESTING = [
    b" ",
    b",",
    b"=",
    b"\\",
    b'"',
    b"\n",
    b"\r",
    b"#",
    b"\x00",
    b"m",
    b"f",
    b"t",
    b"1",
    b"1i",
    b"1u",
    b"-",
    b".",
    b"e",
    b"true",
    b"\xff",
    b"123456789",
]
fragments = st.lists(st.sampled_from(INTERESTING) | st.binary(max_size=6), max_size=40).map(b"".join)


@settings(max_examples=400)
@given(st.binary(max_size=300) | fragments)
def test_any_bytes_never_raise_and_keep_the_counts(packet: bytes) -> None:
    parser = LineParser(LIMITS)
    results = []
    for _ in range(2):
        out: list[Sample] = []
        rejection = parser.parse(packet, out)
        for sample in out:
            assert_sample_is_valid(sample)
        results.append((out, rejection))
    assert results[0] == results[1]
    stats = parser.stats
    assert stats.lines == 2 * counted_lines(packet)
    assert stats.lines == stats.accepted + sum(stats.rejected.values())


@settings(max_examples=400)
@given(
    st.lists(
        st.sampled_from([b" ", b",", b"=", b"m", b"f", b"t", b"1", b"1i", b"x", b"-", b"\xff"])
        | st.binary(max_size=4).map(lambda raw: raw.replace(b"\\", b"").replace(b'"', b"")),
        max_size=30,
    ).map(b"".join)
)
def test_plain_and_escaped_splitters_agree(raw: bytes) -> None:
    text = raw.replace(b"\n", b"").strip()
    assume(text)

    def split(splitter: object) -> object:
        try:
            return splitter(text)  # type: ignore[operator]
        except Invalid as invalid:
            return invalid.reason

    assert split(line_module._split_plain) == split(line_module._split_escaped)


# Pieces of lines that share series and field keys but differ in spacing, values, timestamps.
SHAPE_PIECES = [
    ["m", "m,t=a", " m", "\tm", "m,t=a\\ b", "m,t=", ",t=a", "f=1", "m\\", ""],
    [" ", "  ", "\t", ""],
    ["f=1", "f=2i", "f=-3i", "f=4u", "f=t", "f=x", "f=", "f=1,g=2", 'f="s"', "f=1e9", "g=1,f=2"],
    ["", " 5", "  6", " -7", " 1e3", " 99999999999999999999", " ", "\r"],
]
similar_lines = st.tuples(*(st.sampled_from(pieces) for pieces in SHAPE_PIECES)).map(
    lambda parts: "".join(parts).encode()
)


def test_caches_learnt_from_any_line_never_change_another() -> None:
    """Every combination of the pieces, read once to fill the caches, then read again: each
    must parse exactly as a fresh parser (the slow path) reads it."""
    lines = ["".join(parts).encode() for parts in itertools.product(*SHAPE_PIECES)]
    warm = LineParser(LIMITS)
    for line in lines:
        warm.parse(line, [])
    for line in lines:
        assert parse(line, warm) == parse(line, LineParser(LIMITS)), line


@settings(max_examples=300)
@given(st.lists(similar_lines, min_size=1, max_size=30))
def test_warm_caches_give_what_a_fresh_parser_gives(lines: list[bytes]) -> None:
    """The same, in random orders: what is learnt first must not matter either."""
    warm = LineParser(LIMITS)
    for line in lines:
        assert parse(line, warm) == parse(line, LineParser(LIMITS))


def escape(text: str, specials: str) -> str:
    return re.sub("([" + re.escape(specials) + "])", r"\\\1", text)


name_text = st.from_regex(r"[a-zA-Z][a-zA-Z0-9._-]{0,20}", fullmatch=True)
tag_text = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-./ ,=żółć日本"),
    min_size=1,
    max_size=12,
)


@st.composite
def field_values(draw: st.DrawFn) -> tuple[str, float | None]:
    kind = draw(st.sampled_from(["float", "int", "uint", "bool", "string"]))
    if kind == "float":
        value = draw(st.floats(allow_nan=False, allow_infinity=False))
        return repr(value), value
    if kind == "int":
        number = draw(st.integers(-(2**63), 2**63 - 1))
        return f"{number}i", float(number)
    if kind == "uint":
        number = draw(st.integers(0, 2**64 - 1))
        return f"{number}u", float(number)
    if kind == "bool":
        word = draw(st.sampled_from(["t", "T", "true", "True", "TRUE", "f", "F", "false"]))
        return word, 1.0 if word[0] in "tT" else 0.0
    text = draw(st.text(max_size=10).filter(lambda t: "\n" not in t))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"', None


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[str, list[Sample]]:
    measurement = draw(name_text)
    tags = draw(st.dictionaries(tag_text, tag_text, max_size=5))
    fields = draw(st.lists(st.tuples(name_text, field_values()), min_size=1, max_size=4))
    timestamp = draw(st.none() | st.integers(-(2**63), 2**63 - 1))
    text = measurement + "".join(f",{escape(k, ' ,=')}={escape(v, ' ,=')}" for k, v in tags.items())
    text += " " + ",".join(f"{key}={raw}" for key, (raw, _) in fields)
    if timestamp is not None:
        text += f" {timestamp}"
    key_tags = tuple(sorted(tags.items()))
    ts = timestamp / 10**9 if timestamp is not None else None
    samples: list[Sample] = []
    for key, (_, value) in fields:
        if value is not None:
            name = measurement if key == "value" else f"{measurement}.{key}"
            samples.append(((name, key_tags), G, value, 1.0, ts))
    return text, samples


@settings(max_examples=300)
@given(valid_lines())
def test_valid_lines_parse_to_what_made_them(case: tuple[str, list[Sample]]) -> None:
    text, expected = case
    parser = LineParser(LIMITS)
    for _ in range(2):
        assert parse(text.encode(), parser) == (expected, None)


@settings(max_examples=100)
@given(st.lists(valid_lines(), min_size=1, max_size=8), st.binary(max_size=60), st.data())
def test_a_bad_line_does_not_touch_its_neighbours(
    cases: list[tuple[str, list[Sample]]], bad: bytes, data: st.DataObject
) -> None:
    bad = bad.replace(b"\n", b"")
    alone, reason = parse(bad)
    assume(reason is not None and not alone)
    good = [text.encode() for text, _ in cases]
    expected = [sample for _, samples in cases for sample in samples]
    at = data.draw(st.integers(0, len(good)))
    packet = b"\n".join([*good[:at], bad, *good[at:]])
    parser = LineParser(LIMITS)
    out: list[Sample] = []
    rejection = parser.parse(packet, out)
    assert out == expected
    assert rejection is not None and rejection.line_no == at + 1
    assert parser.stats.accepted == len(good)


# --- hostile input ------------------------------------------------------------------------


def test_hostile_packets() -> None:
    parser = LineParser(LIMITS)
    hostile = [
        b"m" * 65_536,
        b"m " + b"f=1," * 16_000 + b"g=2",
        b"m," + b",".join(b"k%d=v" % i for i in range(6_000)) + b" f=1",
        b'm f="' + b"x" * 65_000,
        b'm f="' + b'\\"' * 30_000 + b'"',
        b"m f=1 " + b"9" * 65_000,
        b"\\" * 65_536,
        b'"' * 65_536,
        b"\x00" * 65_536,
        b"\xff" * 65_536,
        b" " * 65_536,
        b"#" * 65_536,
        b"m,t=v f=1 1700000000000000000\n" * 2_200,
        bytes(range(256)) * 256,
    ]
    for packet in hostile:
        out: list[Sample] = []
        parser.parse(packet, out)
        for sample in out[:100]:
            assert_sample_is_valid(sample)
    stats = parser.stats
    assert stats.lines == stats.accepted + sum(stats.rejected.values())
    assert stats.accepted >= 2_201
    assert "too_many_tags" in stats.rejected


def test_truncated_lines() -> None:
    line = b'cpu\\ x,host=a\\,b,dc=1 usage=1.5,s="a b",n=3i,ok=t 1700000000000000000'
    parser = LineParser(LIMITS)
    for end in range(len(line) + 1):
        out: list[Sample] = []
        parser.parse(line[:end], out)
        for sample in out:
            assert_sample_is_valid(sample)
    stats = parser.stats
    assert stats.lines == len(line)
    assert stats.lines == stats.accepted + sum(stats.rejected.values())
