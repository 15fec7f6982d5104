"""Tests for collectord/protocols/statsd.py.

One table (line -> samples or rejection reason) built from the peers' documented behaviour
(Etsy statsd docs, Datadog's DogStatsD datagram format, statsd_exporter's README) plus
collectord's own rules, then hypothesis properties and hostile inputs.
"""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from collectord.limits import NAME_PATTERN, Limits
from collectord.model import (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SET,
    KIND_SUMMARY,
    Sample,
)
from collectord.protocols import statsd
from collectord.protocols.parse_stats import ParseStats
from collectord.protocols.statsd import StatsdParser

LIMITS = Limits()
C, G, D, H, SUM, SET = (
    KIND_COUNTER,
    KIND_GAUGE,
    KIND_GAUGE_DELTA,
    KIND_HISTOGRAM,
    KIND_SUMMARY,
    KIND_SET,
)
CONTAINER = "83c0a99c0a54c0c187f461c7980e9b57f3f6a8b0c918c8d93df19a9de6f3fe1d"


def s(
    name: str,
    kind: int,
    value: float | str,
    weight: float = 1.0,
    ts: float | None = None,
    **tags: str,
) -> Sample:
    return ((name, tuple(sorted(tags.items()))), kind, value, weight, ts)


def tagged(name: str, kind: int, value: float | str, tags: dict[str, str]) -> Sample:
    return ((name, tuple(sorted(tags.items()))), kind, value, 1.0, None)


def parse(line: bytes, parser: StatsdParser | None = None) -> tuple[list[Sample], str | None]:
    parser = parser or StatsdParser(LIMITS)
    out: list[Sample] = []
    rejection = parser.parse(line, out)
    return out, None if rejection is None else rejection.reason


ACCEPTED: list[tuple[bytes, list[Sample]]] = [
    # Etsy statsd, docs/metric_types.md
    (b"gorets:1|c", [s("gorets", C, 1.0)]),
    (b"gorets:1|c|@0.1", [s("gorets", C, 1.0, 10.0)]),
    (b"glork:320|ms", [s("glork", H, 320.0)]),
    (b"glork:320|ms|@0.1", [s("glork", H, 320.0, 10.0)]),
    (b"gaugor:333|g", [s("gaugor", G, 333.0)]),
    (b"gaugor:-10|g", [s("gaugor", D, -10.0)]),
    (b"gaugor:+4|g", [s("gaugor", D, 4.0)]),
    (b"gaugor:+0|g", [s("gaugor", D, 0.0)]),
    (b"uniques:765|s", [s("uniques", SET, "765")]),
    # Etsy's key sanitising: whitespace runs -> "_", "/" -> "-", other odd characters dropped
    (b"my key/with$odd:1|c", [s("my_key-withodd", C, 1.0)]),
    (b"a\tb:1|c", [s("a_b", C, 1.0)]),
    (b"x\x00y:1|c", [s("xy", C, 1.0)]),
    # DogStatsD datagram format and its examples
    (b"page.views:1|c", [s("page.views", C, 1.0)]),
    (b"fuel.level:0.5|g", [s("fuel.level", G, 0.5)]),
    (b"song.length:240|h|@0.5", [s("song.length", H, 240.0, 2.0)]),
    (b"users.uniques:1234|s", [s("users.uniques", SET, "1234")]),
    (b"users.online:1|c|#country:china", [s("users.online", C, 1.0, country="china")]),
    (
        b"users.online:1|c|@0.5|#country:china",
        [s("users.online", C, 1.0, 2.0, country="china")],
    ),
    (b"latency:12.5|d", [s("latency", SUM, 12.5)]),
    (b"latency:12.5|d|@0.25", [s("latency", SUM, 12.5, 4.0)]),
    # DogStatsD 1.1: several values share type, rate and tags
    (
        b"song.length:240:234|h|@0.5",
        [s("song.length", H, 240.0, 2.0), s("song.length", H, 234.0, 2.0)],
    ),
    (b"x:1:2:3|c", [s("x", C, 1.0), s("x", C, 2.0), s("x", C, 3.0)]),
    (b"g:1:-2:+3|g", [s("g", G, 1.0), s("g", D, -2.0), s("g", D, 3.0)]),
    # DogStatsD timestamps and container ids
    (b"page.views:15|c|#env:dev|T1656581400", [s("page.views", C, 15.0, ts=1656581400.0, env="dev")]),
    (b"x:1|c|T1656581400.25", [s("x", C, 1.0, ts=1656581400.25)]),
    (
        b"page.views:1|c|#env:dev|c:" + CONTAINER.encode(),
        [s("page.views", C, 1.0, env="dev", container_id=CONTAINER)],
    ),
    (b"x:1|c|c:", [s("x", C, 1.0)]),
    # Unknown sections are ignored (forward compatibility, as the Datadog agent does)
    (b"x:1|c|e:it-false,cn-app|card:high|zz", [s("x", C, 1.0)]),
    (b"x:1|c||#a:b", [s("x", C, 1.0, a="b")]),
    # Tag forms (statsd_exporter README): DogStatsD, InfluxDB, Graphite
    (
        b"metric.name:0|c|#tagName:val,tag2Name:val2",
        [s("metric.name", C, 0.0, tagName="val", tag2Name="val2")],
    ),
    (
        b"metric.name,tagName=val,tag2Name=val2:0|c",
        [s("metric.name", C, 0.0, tagName="val", tag2Name="val2")],
    ),
    (
        b"metric.name;tagName=val;tag2Name=val2:0|c",
        [s("metric.name", C, 0.0, tagName="val", tag2Name="val2")],
    ),
    (b"m,a=:1|c", [s("m", C, 1.0, a="")]),
    (b"m,,a=1,:1|c", [s("m", C, 1.0, a="1")]),
    (b"m,a=b=c:1|c", [s("m", C, 1.0, a="b=c")]),
    # DogStatsD tag details: bare tags, values with ':', empty entries, several sections
    (b"x:1|c|#env", [s("x", C, 1.0, env="")]),
    (b"x:1|c|#url:http://h:8080/p", [s("x", C, 1.0, url="http://h:8080/p")]),
    (b"x:1|c|#a,,b:2,", [s("x", C, 1.0, a="", b="2")]),
    (b"x:1|c|#", [s("x", C, 1.0)]),
    (b"x:1|c|#a:1|#b:2", [s("x", C, 1.0, a="1", b="2")]),
    (b"x:1|c|#a:1,a:2", [s("x", C, 1.0, a="2")]),  # duplicate key: last wins
    (b"x:1|c|#b:1,a:2", [s("x", C, 1.0, a="2", b="1")]),  # sorted by key
    (b"x:1|c|#a b:c d", [s("x", C, 1.0, **{"a b": "c d"})]),
    ("x:1|c|#miasto:Łódź".encode(), [s("x", C, 1.0, miasto="Łódź")]),
    (b"x:1|c|#container_id:mine|c:theirs", [s("x", C, 1.0, container_id="theirs")]),
    # Values: finite decimal floats, signs, exponents
    (b"x:-1|c", [s("x", C, -1.0)]),
    (b"x:+5|c", [s("x", C, 5.0)]),
    (b"x:1e3|ms", [s("x", H, 1000.0)]),
    (b"x:.5|ms", [s("x", H, 0.5)]),
    (b"x:0|c", [s("x", C, 0.0)]),
    # Rates: 0 < r <= 1; ignored by gauges and sets
    (b"x:1|c|@1", [s("x", C, 1.0)]),
    (b"x:1|g|@0.5", [s("x", G, 1.0)]),
    (b"x:a|s|@0.5", [s("x", SET, "a")]),
    (b"x:1|c|@0.5|@0.25", [s("x", C, 1.0, 4.0)]),  # repeated section: last wins
    # Sets: the member is the text after the first ':', colons included
    (b"users:alice|s", [s("users", SET, "alice")]),
    (b"users:a:b|s", [s("users", SET, "a:b")]),
    ("users:żółw|s".encode(), [s("users", SET, "żółw")]),
    # Whitespace around a line, CRLF endings
    (b"  x:1|c  ", [s("x", C, 1.0)]),
    (b"x:1|c\r", [s("x", C, 1.0)]),
    # Limits at their edges
    (b"a" * 255 + b":1|c", [s("a" * 255, C, 1.0)]),
    (b"a" * 255 + b"$:1|c", [s("a" * 255, C, 1.0)]),  # sanitised first, then measured
    (
        b"x:1|c|#" + b",".join(b"k%d:v" % i for i in range(20)),
        [tagged("x", C, 1.0, {f"k{i}": "v" for i in range(20)})],
    ),
    (b"x:1|c|#" + b"k" * 50 + b":" + b"v" * 100, [tagged("x", C, 1.0, {"k" * 50: "v" * 100})]),
    (b"x:1|c|#k:" + "ż".encode() * 100, [tagged("x", C, 1.0, {"k": "ż" * 100})]),
]

REJECTED: list[tuple[bytes, str]] = [
    (b"x", "missing_value"),
    (b"x|c", "missing_value"),
    (b"x:|c", "missing_value"),
    (b"users:|s", "missing_value"),
    (b"x:1", "missing_type"),
    (b"x:1|", "missing_type"),
    (b":", "missing_type"),
    (b"x:1|x", "bad_type"),
    (b"x:1|C", "bad_type"),
    (b"x:1|c ms", "bad_type"),
    (b"x:1|timer", "bad_type"),
    (b":1|c", "bad_name"),
    (b"9lives:1|c", "bad_name"),
    (b"_x:1|c", "bad_name"),
    (b"$$$:1|c", "bad_name"),
    (b"a" * 256 + b":1|c", "name_too_long"),
    (b"\xff:1|c", "non_utf8"),
    (b"x:1|c|#\xff:1", "non_utf8"),
    (b"x:1|c|#k:\xc3", "non_utf8"),
    (b"m,k=\xff:1|c", "non_utf8"),
    (b"x:\xff|s", "non_utf8"),
    (b"x:nan|g", "bad_value"),
    (b"x:NaN|g", "bad_value"),
    (b"x:inf|c", "bad_value"),
    (b"x:-Infinity|ms", "bad_value"),
    (b"x:1e999|ms", "bad_value"),
    (b"x:1_000|c", "bad_value"),
    (b"x: 1|c", "bad_value"),
    (b"x:1 |c", "bad_value"),
    (b"x:0x10|c", "bad_value"),
    (b"x:one|c", "bad_value"),
    (b"x:1::2|ms", "bad_value"),
    (b"x:1:|ms", "bad_value"),
    (b"x:1:nan|ms", "bad_value"),
    (b"x:a\x00b|s", "bad_value"),
    (b"x:" + b"m" * 257 + b"|s", "value_too_long"),
    (b"x:1|c|@0", "bad_sample_rate"),
    (b"x:1|c|@1.5", "bad_sample_rate"),
    (b"x:1|c|@-0.5", "bad_sample_rate"),
    (b"x:1|c|@", "bad_sample_rate"),
    (b"x:1|c|@abc", "bad_sample_rate"),
    (b"x:1|c|@nan", "bad_sample_rate"),
    (b"x:1|g|@2", "bad_sample_rate"),  # validated even where ignored
    (b"x:1|c|#:v", "bad_tags"),
    (b"x:1|c|#a:\x00", "bad_tags"),
    (b"x:1|c|#a\tb:1", "bad_tags"),
    (b"m,a:1|c", "bad_tags"),
    (b"m,=v:1|c", "bad_tags"),
    (b"m;a:1|c", "bad_tags"),
    (b"x:1|c|c:a\x01b", "bad_tags"),
    (b"x:1|c|#" + b",".join(b"k%d:v" % i for i in range(21)), "too_many_tags"),
    (
        b"x:1|c|#" + b",".join(b"k%d:v" % i for i in range(20)) + b"|c:abc",
        "too_many_tags",
    ),
    (b"x:1|c|#" + b"k" * 51 + b":v", "tag_key_too_long"),
    (b"x:1|c|#k:" + b"v" * 101, "tag_value_too_long"),
    (b"x:1|c|c:" + b"a" * 101, "tag_value_too_long"),
    (b"m,a=1:1|c|#b:2", "mixed_tag_forms"),
    (b"m;a=1:1|c|#b:2", "mixed_tag_forms"),
    (b"m,a=1;b=2:1|c", "mixed_tag_forms"),
    (b"x:1|c|T", "bad_timestamp"),
    (b"x:1|c|Tabc", "bad_timestamp"),
    (b"x:1|c|T-5", "bad_timestamp"),
    (b"x:1|c|T1e9", "bad_timestamp"),
    (b"x:1|c|T1234567890123", "bad_timestamp"),
    # Lone punctuation and other fragments
    (b"|", "missing_value"),
    (b"#", "missing_value"),
    (b"@", "missing_value"),
    (b"::", "missing_type"),
    (b"||", "missing_value"),
    (b"\x00", "missing_value"),
    (b"\xff\xfe", "missing_value"),
]


@pytest.mark.parametrize(("line", "expected"), ACCEPTED, ids=[repr(c[0][:60]) for c in ACCEPTED])
def test_accepted(line: bytes, expected: list[Sample]) -> None:
    parser = StatsdParser(LIMITS)
    # Three times through one parser: slow path, then whatever the caches answer.
    for _ in range(3):
        samples, reason = parse(line, parser)
        assert reason is None
        assert samples == expected
    assert parser.stats.lines == parser.stats.accepted == 3
    assert parser.stats.rejected == {}


@pytest.mark.parametrize(("line", "reason"), REJECTED, ids=[repr(c[0][:60]) for c in REJECTED])
def test_rejected(line: bytes, reason: str) -> None:
    parser = StatsdParser(LIMITS)
    for _ in range(2):
        samples, got = parse(line, parser)
        assert (got, samples) == (reason, [])
    assert parser.stats.rejected == {reason: 2}
    assert parser.stats.last_rejected == {reason: line[:200]}
    assert parser.stats.lines == 2
    assert parser.stats.accepted == 0


@pytest.mark.parametrize(("line", "reason"), REJECTED, ids=[repr(c[0][:60]) for c in REJECTED])
def test_rejected_after_a_good_line_of_the_same_shape(line: bytes, reason: str) -> None:
    """A warm template cache must not let a bad value through."""
    parser = StatsdParser(LIMITS)
    head, bar, tail = line.partition(b"|")
    name = head.partition(b":")[0]
    parse(name + b":1" + bar + tail, parser)
    parse(name + b":1:2" + bar + tail, parser)
    assert parse(line, parser) == ([], reason)


def test_events_and_service_checks_are_counted_not_parsed() -> None:
    parser = StatsdParser(LIMITS)
    packet = (
        b"_e{21,36}:An exception occurred|Cannot parse CSV file from 10.0.0.17|t:warning"
        b"|#err_type:bad_file\n"
        b"_sc|Redis connection|2|#env:dev|m:Redis connection timed out after 10s\n"
        b"_e{garbage\n"
        b"x:1|c\n"
    )
    out: list[Sample] = []
    assert parser.parse(packet, out) is None
    assert out == [s("x", C, 1.0)]
    stats = parser.stats
    assert (stats.lines, stats.accepted, stats.events, stats.service_checks) == (4, 4, 2, 1)


def test_container_id_can_be_dropped() -> None:
    parser = StatsdParser(LIMITS, container_id="drop")
    assert parse(b"x:1|c|#a:b|c:abc", parser) == ([s("x", C, 1.0, a="b")], None)
    assert parse(b"x:1|c|c:abc", parser) == ([s("x", C, 1.0)], None)
    with pytest.raises(ValueError, match="container_id"):
        StatsdParser(LIMITS, container_id="keep")  # type: ignore[arg-type]


def test_limits_come_from_the_config() -> None:
    parser = StatsdParser(Limits(max_name_length=5, max_tags=1, max_tag_key_length=2))
    assert parse(b"abcdef:1|c", parser)[1] == "name_too_long"
    assert parse(b"x:1|c|#a:1,b:2", parser)[1] == "too_many_tags"
    assert parse(b"x:1|c|#abc:1", parser)[1] == "tag_key_too_long"
    assert parse(b"abcde:1|c|#ab:1", parser)[1] is None


def test_packet_lines_counting_and_first_rejection() -> None:
    parser = StatsdParser(LIMITS)
    packet = b"a:1|c\n\nbad\r\n  \nb:2|ms|@0.5\nx:nan|g\nc:3|g\n"
    out: list[Sample] = []
    rejection = parser.parse(packet, out)
    assert out == [s("a", C, 1.0), s("b", H, 2.0, 2.0), s("c", G, 3.0)]
    assert rejection is not None
    assert (rejection.line_no, rejection.reason, rejection.line) == (3, "missing_value", b"bad\r")
    stats = parser.stats
    assert (stats.lines, stats.accepted) == (5, 3)
    assert stats.rejected == {"missing_value": 1, "bad_value": 1}
    assert stats.last_rejected == {"missing_value": b"bad\r", "bad_value": b"x:nan|g"}


def test_rejection_line_number_with_repeated_lines() -> None:
    out: list[Sample] = []
    rejection = StatsdParser(LIMITS).parse(b"a:1|c\na:1|c\n\nx\nx\n", out)
    assert rejection is not None
    assert rejection.line_no == 4
    assert len(out) == 2


def test_rejected_line_is_truncated_to_200_bytes() -> None:
    parser = StatsdParser(LIMITS)
    line = b"x:1|c|@" + b"9" * 500
    rejection = parser.parse(line, [])
    assert rejection is not None
    assert rejection.line == line[:200]
    assert parser.stats.last_rejected["bad_sample_rate"] == line[:200]


def test_bytearray_and_memoryview_packets() -> None:
    parser = StatsdParser(LIMITS)
    for packet in (bytearray(b"x:1|c\ny:2|ms"), memoryview(b"x:1|c\ny:2|ms")):
        out: list[Sample] = []
        assert parser.parse(packet, out) is None  # type: ignore[arg-type]
        assert out == [s("x", C, 1.0), s("y", H, 2.0)]


def test_trailing_newline_adds_no_line() -> None:
    parser = StatsdParser(LIMITS)
    parser.parse(b"x:1|c\n", [])
    parser.parse(b"x:1|c\r\n", [])
    parser.parse(b"", [])
    parser.parse(b"\n\n\r\n", [])
    assert parser.stats.lines == 2


def test_shared_stats_object() -> None:
    stats = ParseStats()
    first, second = StatsdParser(LIMITS, stats=stats), StatsdParser(LIMITS, stats=stats)
    first.parse(b"x:1|c", [])
    second.parse(b"bad", [])
    assert first.stats is stats
    assert (stats.lines, stats.accepted, stats.rejected) == (2, 1, {"missing_value": 1})


def test_stats_merge_into() -> None:
    one, total = ParseStats(), ParseStats()
    StatsdParser(LIMITS, stats=one).parse(b"x:1|c\nbad\n_e{1,1}:a|b", [])
    one.merge_into(total)
    one.merge_into(total)
    assert (total.lines, total.accepted, total.events) == (6, 4, 2)
    assert total.rejected == {"missing_value": 2}
    assert total.last_rejected == {"missing_value": b"bad"}


# --- the caches ---------------------------------------------------------------------------


def test_repeated_line_hands_out_the_same_tuple() -> None:
    out: list[Sample] = []
    StatsdParser(LIMITS).parse(b"x:1|c|#a:b\nx:1|c|#a:b", out)
    assert out[0] is out[1]


def test_template_path_shares_the_key_and_reads_the_new_value() -> None:
    parser = StatsdParser(LIMITS)
    out: list[Sample] = []
    parser.parse(b"t:1|ms|@0.5|#a:b\nt:2.5|ms|@0.5|#a:b\nt:-3|ms|@0.5|#a:b", out)
    assert [sample[2] for sample in out] == [1.0, 2.5, -3.0]
    assert out[0][0] is out[1][0] is out[2][0]
    assert {sample[3] for sample in out} == {2.0}


def test_gauge_sign_is_read_per_line_on_the_template_path() -> None:
    out: list[Sample] = []
    StatsdParser(LIMITS).parse(b"g:1|g\ng:+2|g\ng:-3|g\ng:4|g", out)
    assert [(sample[1], sample[2]) for sample in out] == [(G, 1.0), (D, 2.0), (D, -3.0), (G, 4.0)]


def test_equal_keys_are_interned_across_templates() -> None:
    out: list[Sample] = []
    StatsdParser(LIMITS).parse(b"x:1|c\nx:1|c|@0.5\nx,:2|c\nx:3|c|#", out)
    assert len({id(sample[0]) for sample in out}) == 1


def test_timestamped_lines_stay_out_of_the_caches() -> None:
    parser = StatsdParser(LIMITS)
    packet = b"\n".join(b"x:1|c|T%d" % (1_700_000_000 + i) for i in range(100))
    out: list[Sample] = []
    parser.parse(packet, out)
    assert [sample[4] for sample in out] == [1_700_000_000.0 + i for i in range(100)]
    assert parser._lines == {} and parser._templates == {}


def test_a_line_whose_bar_comes_before_its_colon_teaches_no_template() -> None:
    parser = StatsdParser(LIMITS)
    assert parse(b"a|b:1|c", parser) == ([s("ab", C, 1.0)], None)
    # Same (name, tail) split as the line above, but this one reads name "a", type "b:1".
    assert parse(b"a:5|b:1|c", parser) == ([], "bad_type")


def test_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statsd, "CACHE_BUDGET", 200)
    parser = StatsdParser(LIMITS)
    for i in range(1000):
        tags = b",".join(b"k%d:%d" % (j, i) for j in range(i % 21))
        parser.parse(b"n%d:1|c|#%s\nn%d:2|c|#%s" % (i, tags, i, tags), [])
        caches = (parser._lines, parser._templates, parser._keys, parser._tag_sets)
        assert sum(len(cache) for cache in caches) <= parser._cache_weight <= 200
    assert parser._lines and parser._templates and parser._keys


def test_long_lines_are_never_cached() -> None:
    parser = StatsdParser(LIMITS)
    line = b"x:1|c|#k:" + b"v" * 100 + b",k2:" + b"w" * 100 + b",k3:" + b"z" * 100
    for _ in range(2):
        assert parse(line, parser)[1] is None
    assert not (parser._lines or parser._templates or parser._keys or parser._tag_sets)
    assert parser._cache_weight == 0


# --- properties ---------------------------------------------------------------------------

_NAME_RE = re.compile(NAME_PATTERN)
KINDS = {C, G, D, H, SUM, SET}


def assert_sample_is_valid(sample: Sample, limits: Limits = LIMITS) -> None:
    (name, tags), kind, value, weight, timestamp = sample
    assert _NAME_RE.fullmatch(name) and len(name) <= limits.max_name_length
    assert list(tags) == sorted(tags) and len({k for k, _ in tags}) == len(tags)
    assert len(tags) <= limits.max_tags
    for key, tag_value in tags:
        assert key and len(key) <= limits.max_tag_key_length
        assert len(tag_value) <= limits.max_tag_value_length
    assert kind in KINDS
    if kind == SET:
        assert isinstance(value, str)
    else:
        assert isinstance(value, float) and math.isfinite(value)
    assert weight >= 1.0 and math.isfinite(weight)
    assert timestamp is None or (isinstance(timestamp, float) and timestamp >= 0)


def non_blank_lines(packet: bytes) -> int:
    return sum(1 for line in packet.split(b"\n") if line.strip())


INTERESTING = [
    b":",
    b"|",
    b"#",
    b"@",
    b",",
    b";",
    b"=",
    b"\n",
    b"\r",
    b"\x00",
    b"c",
    b"ms",
    b"g",
    b"s",
    b"1",
    b"-",
    b"+",
    b".",
    b"T",
    b"_e{",
    b"_sc|",
    b"\xff",
    b" ",
    b"x",
]
fragments = st.lists(st.sampled_from(INTERESTING) | st.binary(max_size=8), max_size=40).map(b"".join)


@settings(max_examples=400)
@given(st.binary(max_size=300) | fragments)
def test_any_bytes_never_raise_and_keep_the_counts(packet: bytes) -> None:
    parser = StatsdParser(LIMITS)
    results = []
    for _ in range(2):  # the second pass runs against warm caches
        out: list[Sample] = []
        rejection = parser.parse(packet, out)
        for sample in out:
            assert_sample_is_valid(sample)
        results.append((out, rejection))
    assert results[0] == results[1]
    stats = parser.stats
    assert (results[0][1] is None) == (not stats.rejected)
    assert stats.lines == 2 * non_blank_lines(packet)
    assert stats.lines == stats.accepted + sum(stats.rejected.values())


# Generated valid lines: (line text, the samples it must give).
name_text = st.from_regex(r"[a-zA-Z][a-zA-Z0-9._-]{0,30}", fullmatch=True)
tag_text = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_-./żółć日本"),
    min_size=1,
    max_size=12,
)
numbers = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
)


@st.composite
def valid_lines(draw: st.DrawFn) -> tuple[str, list[Sample]]:
    name = draw(name_text)
    metric_type = draw(st.sampled_from(["c", "g", "ms", "h", "d", "s"]))
    form = draw(st.sampled_from(["none", "dog", "influx", "graphite"]))
    pairs = draw(st.lists(st.tuples(tag_text, tag_text), max_size=6))
    container = draw(st.none() | st.from_regex(r"[0-9a-f]{1,64}", fullmatch=True))
    rate = draw(st.none() | st.floats(min_value=1e-6, max_value=1.0).map(repr))
    timestamp = draw(st.none() | st.integers(1, 4_000_000_000))

    text = name
    if form == "influx" and pairs:
        text += "".join(f",{k}={v}" for k, v in pairs)
    elif form == "graphite" and pairs:
        text += "".join(f";{k}={v}" for k, v in pairs)
    if metric_type == "s":
        values = [draw(tag_text)]
        text += ":" + values[0]
    else:
        values = draw(st.lists(numbers, min_size=1, max_size=3))
        text += ":" + ":".join(values)
    text += "|" + metric_type
    if rate is not None:
        text += "|@" + rate
    if form == "dog" and pairs:
        text += "|#" + ",".join(f"{k}:{v}" for k, v in pairs)
    if timestamp is not None:
        text += f"|T{timestamp}"
    if container is not None:
        text += f"|c:{container}"

    tags = dict(pairs) if form != "none" else {}
    if container is not None:
        tags["container_id"] = container
    key = (name, tuple(sorted(tags.items())))
    kind = {"c": C, "g": G, "ms": H, "h": H, "d": SUM, "s": SET}[metric_type]
    weight = 1.0 / float(rate) if rate is not None and kind in (C, H, SUM) else 1.0
    ts = float(timestamp) if timestamp is not None else None
    samples: list[Sample] = []
    for value in values:
        if kind == SET:
            samples.append((key, SET, value, 1.0, ts))
        else:
            sample_kind = D if kind == G and value[0] in "+-" else kind
            samples.append((key, sample_kind, float(value), weight, ts))
    return text, samples


@settings(max_examples=300)
@given(valid_lines())
def test_valid_lines_parse_to_what_made_them(case: tuple[str, list[Sample]]) -> None:
    text, expected = case
    parser = StatsdParser(LIMITS)
    for _ in range(2):
        assert parse(text.encode(), parser) == (expected, None)


@settings(max_examples=200)
@given(st.lists(valid_lines(), min_size=1, max_size=10), st.data())
def test_warm_caches_give_what_a_fresh_parser_gives(cases: list[tuple[str, list[Sample]]], data: st.DataObject) -> None:
    warm = StatsdParser(LIMITS)
    for text, _ in cases:
        warm.parse(text.encode(), [])
    # Same lines with new values: the template path must agree with the slow path.
    for text, expected in cases:
        head, _, tail = text.partition("|")
        name = head.partition(":")[0]
        if expected[0][1] == SET:
            continue
        value = data.draw(numbers)
        line = f"{name}:{value}|{tail}".encode()
        assert parse(line, warm) == parse(line, StatsdParser(LIMITS))


# Pieces of lines that share names and tails but differ in values, spacing and sections.
SHAPE_PIECES = [
    ["x", " x", "x ", "x,a=1", "x;a=1", "a", "a|b", "_e{", "9", ""],
    [":", "::", ""],
    ["1", "-1", "+2", "1:2", "", "nan", "a", " 1", "1_0", "1e3", "a:b"],
    ["|c", "|g", "|ms", "|s", "|c|@0.5", "|c|#a:b", "|c|T5", "|c ", "|c\r", "|b:1|c", ""],
    ["", "|#a:b", "|c:id", "|@2", "|T", "|zz"],
]
similar_lines = st.tuples(*(st.sampled_from(pieces) for pieces in SHAPE_PIECES)).map(
    lambda parts: "".join(parts).encode()
)


def test_caches_learnt_from_any_line_never_change_another() -> None:
    """Every combination of the pieces, read once to fill the caches, then read again: each
    must parse exactly as a fresh parser (the slow path) reads it."""
    lines = ["".join(parts).encode() for parts in itertools.product(*SHAPE_PIECES)]
    warm = StatsdParser(LIMITS)
    for line in lines:
        warm.parse(line, [])
    for line in lines:
        assert parse(line, warm) == parse(line, StatsdParser(LIMITS)), line


@settings(max_examples=300)
@given(st.lists(similar_lines, min_size=1, max_size=30))
def test_warm_caches_agree_on_lines_of_one_shape(lines: list[bytes]) -> None:
    """The same, in random orders: what is learnt first must not matter either."""
    warm = StatsdParser(LIMITS)
    for line in lines:
        assert parse(line, warm) == parse(line, StatsdParser(LIMITS))


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
    parser = StatsdParser(LIMITS)
    out: list[Sample] = []
    rejection = parser.parse(packet, out)
    assert out == expected
    assert rejection is not None and rejection.line_no == at + 1
    assert parser.stats.accepted == len(good)


# --- hostile input ------------------------------------------------------------------------


def test_hostile_packets() -> None:
    parser = StatsdParser(LIMITS)
    hostile = [
        b"x" * 65_536,
        b"x:" + b"1" * 65_000 + b"|c",  # overflows to inf
        b"x:" + b"1:" * 30_000 + b"1|ms",
        b"x:1|c|#" + b"k:v," * 16_000,  # one tag, repeated: last wins
        b"x:1|c|#" + b",".join(b"k%d:v" % i for i in range(8_000)),
        b"x:1|c|#" + b"a" * 65_000,
        b"a" * 65_000 + b":1|c",
        b"m," + b"k=v," * 16_000 + b":1|c",
        b"\x00" * 65_536,
        b"\xff" * 65_536,
        b":|#@" * 16_000,
        b"\n" * 65_536,
        b"x:1|c|" + b"|" * 65_000,
        b"x:1|c\n" * 10_922,  # a 64 KiB datagram of good lines
        bytes(range(256)) * 256,
    ]
    for packet in hostile:
        out: list[Sample] = []
        parser.parse(packet, out)
        for sample in out[:100]:
            assert_sample_is_valid(sample)
    stats = parser.stats
    assert stats.lines == stats.accepted + sum(stats.rejected.values())
    assert stats.accepted >= 10_922
    assert "too_many_tags" in stats.rejected and "name_too_long" in stats.rejected


def test_truncated_lines() -> None:
    line = b"page.views:1:2|c|@0.5|#env:dev,host:a|T1656581400|c:abc"
    parser = StatsdParser(LIMITS)
    for end in range(len(line) + 1):
        out: list[Sample] = []
        parser.parse(line[:end], out)
        for sample in out:
            assert_sample_is_valid(sample)
    stats = parser.stats
    assert stats.lines == len(line)  # every non-empty prefix is one line
    assert stats.lines == stats.accepted + sum(stats.rejected.values())
