"""statsd_columns gives exactly the samples StatsdParser.parse gives, or declines (None)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collectord.limits import Limits
from collectord.model import KIND_HISTOGRAM, KIND_SUMMARY, Sample
from collectord.protocols.statsd import StatsdParser
from collectord.protocols.statsd_columns import MIN_LINES, parse_columns


def _exact(samples: list[Sample]) -> list[tuple[object, ...]]:
    """Samples with each float value spelled out bit for bit (-0.0 is not 0.0 here)."""
    return [
        (key, kind, value.hex() if isinstance(value, float) else value, weight, ts)
        for key, kind, value, weight, ts in samples
    ]


def _plain(payloads: list[bytes]) -> list[list[Sample]]:
    parser = StatsdParser(Limits())
    out = []
    for payload in payloads:
        samples: list[Sample] = []
        parser.parse(payload, samples)
        out.append(samples)
    return out


def _check(payloads: list[bytes], parser: StatsdParser | None = None) -> bool:
    """Columns equal plain parsing, payload by payload; True when the columns were given."""
    columns = parse_columns(parser or StatsdParser(Limits()), payloads)
    if columns is None:
        return False
    expected = _plain(payloads)
    for part, samples in enumerate(expected):
        assert _exact(columns.samples(part)) == _exact(samples), part
    assert len(columns.groups) == sum(map(len, expected))
    # Every template's lines, in line order, at its part of `order`.
    for group, (start, end) in enumerate(zip(columns.group_starts, columns.group_ends, strict=True)):
        lines = columns.order[start:end].tolist()
        assert lines == sorted(lines)
        assert all(columns.groups[line] == group for line in lines)
    return True


def _timers(count: int, value: str = "{i}", shape: str = "app.lat.{s}:{v}|ms") -> bytes:
    return "\n".join(shape.format(s=i % 7, v=value.format(i=i)) for i in range(count)).encode()


VALUES = [
    "0",
    "-0",
    "+0",
    "-0.0",
    "0.000",
    "7",
    "+7",
    "-7",
    "007",
    "1.5",
    "-1.25",
    ".5",
    "5.",
    "-.5",
    "123456789012345",
    "-999999999999999",
    "12345678.9012345",
    "0.00000000000001",
    "9.99999999999999",
]


@pytest.mark.parametrize("value", VALUES)
def test_values_convert_as_float_does(value: str) -> None:
    assert _check([_timers(MIN_LINES, value)])


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (_timers(MIN_LINES - 1), "too few lines"),
        (_timers(MIN_LINES, "1e3"), "exponent"),
        (_timers(MIN_LINES, "1234567890123456"), "16 digits"),
        (_timers(MIN_LINES, "1_0"), "underscore"),
        (_timers(MIN_LINES, " 1"), "space"),
        (_timers(MIN_LINES, "nan"), "nan"),
        (_timers(MIN_LINES, "1:2"), "multi-value"),
        (_timers(MIN_LINES, "1.2.3"), "two points"),
        (_timers(MIN_LINES, "--1"), "two signs"),
        (_timers(MIN_LINES, "{i}", "app.c.{s}:{v}|c"), "counter"),
        (_timers(MIN_LINES, "{i}", "app.g.{s}:{v}|g"), "gauge"),
        (_timers(MIN_LINES, "{i}", "app.s.{s}:{v}|s"), "set"),
        (_timers(MIN_LINES, "{i}", "app.t.{s}:{v}|ms|T1700000000"), "timestamp"),
        (_timers(MIN_LINES, "{i}", "bad name!{s}:{v}|zz"), "bad type"),
        (_timers(MIN_LINES) + b"\n\n" + _timers(3), "empty line"),
        (_timers(MIN_LINES) + b"\nnot a metric", "line without '|'"),
        (_timers(MIN_LINES) + b"\na|b:1|ms", "'|' before ':'"),
        (_timers(MIN_LINES) + b"\n_e{1,1}:a|b", "event"),
        (_timers(MIN_LINES, "{i}", "x" * 300 + ".{s}:{v}|ms"), "long line"),
    ],
)
def test_declines_what_needs_the_parser(payload: bytes, why: str) -> None:
    assert parse_columns(StatsdParser(Limits()), [payload]) is None, why


def test_shapes_it_takes() -> None:
    assert _check([_timers(100)])
    assert _check([_timers(100) + b"\n"])  # a final newline
    assert _check([_timers(100, "{i}", "app.d.{s}:{v}|d|@0.25|#env:prod,host:h{s}")])
    assert _check([_timers(100, "{i}", "app.{s},host=h{s}:{v}|h\r")])  # Influx tags, CRLF
    assert _check([_timers(40), _timers(40) + b"\n", _timers(30, "{i}.5")])  # joined payloads
    # Two templates of one series (ms and h) are two groups; the aggregator keeps them apart.
    columns = parse_columns(StatsdParser(Limits()), [_timers(70) + b"\n" + _timers(70, "{i}", "app.lat.{s}:{v}|h")])
    assert columns is not None and len(columns.keys) == 14 and len(set(columns.keys)) == 7
    assert set(columns.kinds) == {KIND_HISTOGRAM}
    summary = parse_columns(StatsdParser(Limits()), [_timers(70, "{i}", "a.{s}:{v}|d")])
    assert summary is not None and summary.kinds == [KIND_SUMMARY] * 7


def test_a_hash_clash_declines_rather_than_merges() -> None:
    parser = StatsdParser(Limits())
    payload = _timers(100)
    from collectord.protocols import statsd_columns

    saved = statsd_columns._MIX.copy()
    statsd_columns._MIX[:] = 0  # every template hashes alike: only the comparison tells them apart
    try:
        assert parse_columns(parser, [payload]) is None
    finally:
        statsd_columns._MIX[:] = saved
    assert _check([payload], parser)


NAMES = st.sampled_from(["a", "lat.x", "lat.y", "b-c", "x y", "é", "0bad", "", "a\x00", "lat.x,h=1", "q;k=v"])
TAILS = st.sampled_from(
    [
        "ms",
        "h",
        "d",
        "c",
        "g",
        "s",
        "ms|@0.5",
        "ms|@0",
        "h|#env:prod,host:a",
        "ms|#a|#b",
        "d|c:abc",
        "ms|T17",
        "ms\r",
        "ms ",
        "",
        "zz",
        "ms|@2",
    ]
)
VALUE_TEXT = st.one_of(
    st.integers(-(10**16), 10**16).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str),
    st.sampled_from([*VALUES, "", "1e5", "1:2", " 1", "1_0", "+-1", ".", "-", "1.", "0x10", "١"]),
)
LINE = st.builds(lambda n, v, t: f"{n}:{v}|{t}" if t else f"{n}:{v}", NAMES, VALUE_TEXT, TAILS)
CLEAN_LINE = st.builds(
    lambda series, v: f"{series[0]}:{v}|{series[1]}",
    st.sampled_from(
        [("lat.a", "ms"), ("lat.b", "h"), ("dog", "d|@0.5"), ("lat.a,host=h1", "ms"), ("lat.c", "ms|#env:prod")]
    ),
    st.one_of(st.integers(-(10**14), 10**14).map(str), st.sampled_from(VALUES)),
)


def _payloads(lines: st.SearchStrategy[str]) -> st.SearchStrategy[list[bytes]]:
    payload = st.lists(lines, min_size=1, max_size=90).map(lambda ls: "\n".join(ls).encode())
    return st.lists(st.one_of(payload, payload.map(lambda p: p + b"\n")), min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(_payloads(LINE))
def test_hostile_input_is_parsed_exactly_or_declined(payloads: list[bytes]) -> None:
    _check(payloads)


@settings(max_examples=200, deadline=None)
@given(_payloads(CLEAN_LINE), st.lists(LINE, max_size=2))
def test_clean_timers_take_the_columns(payloads: list[bytes], odd: list[str]) -> None:
    lines = sum(payload.count(b"\n") + (not payload.endswith(b"\n")) for payload in payloads)
    if odd:
        payloads = [*payloads[:-1], payloads[-1].rstrip(b"\n") + b"\n" + "\n".join(odd).encode()]
    took = _check(payloads)
    if not odd and lines >= MIN_LINES:
        assert took


@settings(max_examples=200, deadline=None)
@given(_payloads(st.one_of(*[CLEAN_LINE] * 30, LINE)))
def test_mostly_clean_input_is_parsed_exactly_or_declined(payloads: list[bytes]) -> None:
    _check(payloads)
