"""Worker frames: what a worker ships, decoded and applied by the owner, must leave the state
that applying the same samples one by one leaves; the log's copy of a frame replays to the same
state; and no frame, however broken, may make the owner raise anything but BadFrame."""

from __future__ import annotations

import random
from array import array

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collectord.aggregation.aggregator import AggregationSettings, Aggregator
from collectord.ingest.frame import (
    BadFrame,
    FrameBuilder,
    KeyTable,
    ReplayTables,
    WireFrame,
    _column_moments,
    _moments,
    frame_record,
    keys_record,
)
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
)
from collectord.protocols.statsd import StatsdParser
from collectord.protocols.statsd_columns import StatsdColumns, parse_columns
from collectord.ring import Batch
from tests.aggregation.test_apply_many import snapshot as full_snapshot

T0 = 1_800_000_000  # aligned to the minute: T0 - 30 lies in a closed slice, inside late_allowance
FAMILIES = ("counter", "gauge", "histogram", "summary", "set")
KEYS: list[tuple[SeriesKey, str]] = [
    ((f"m.{family}.{i}", (("host", f"h{i % 2}"),)), family) for family in FAMILIES for i in range(3)
]


@st.composite
def sample_for(draw: st.DrawFn, key: SeriesKey, family: str) -> Sample:
    ts = draw(st.sampled_from([None, None, None, float(T0 - 30), float(T0 - 25)]))
    if family == "counter":
        return (key, KIND_COUNTER, float(draw(st.integers(-3, 9))), draw(st.sampled_from([1.0, 0.5, 4.0])), ts)
    if family == "gauge":
        kind = draw(st.sampled_from([KIND_GAUGE, KIND_GAUGE, KIND_GAUGE_DELTA]))
        return (key, kind, float(draw(st.integers(-5, 5))), 1.0, ts)
    if family == "set":
        return (key, KIND_SET, draw(st.sampled_from(["a", "b", "c", "d"])), 1.0, ts)
    kind = KIND_HISTOGRAM if family == "histogram" else KIND_SUMMARY
    return (key, kind, float(draw(st.integers(0, 200))), draw(st.sampled_from([1.0, 1.0, 0.5])), ts)


@st.composite
def intervals(draw: st.DrawFn) -> list[list[Sample]]:
    """Samples of a few ship intervals; about half of them repeated tuples, as the parser's line
    cache hands out for a repeated line."""
    pool: list[Sample] = []
    out: list[list[Sample]] = []
    for _ in range(draw(st.integers(1, 4))):
        frame: list[Sample] = []
        for _ in range(draw(st.integers(0, 60))):
            if len(pool) > 0 and draw(st.booleans()):
                frame.append(draw(st.sampled_from(pool)))
            else:
                key, family = draw(st.sampled_from(KEYS))
                sample = draw(sample_for(key, family))
                pool.append(sample)
                frame.append(sample)
        out.append(frame)
    return out


def snapshot(agg: Aggregator) -> object:
    """Every observable number, except `Series.total` of non-counters: it is a counter's
    realtime value; apply() also sums other kinds into it on its fast path only (so it depends
    on which samples took which path) and nothing reads it for them."""
    for series in agg.table.all_series():
        if series.kind != KIND_COUNTER:
            series.total = 0.0
    return full_snapshot(agg)


def fresh() -> Aggregator:
    return Aggregator(Limits(), AggregationSettings(), T0)


def through_frames(
    frames: list[list[Sample]], followed: frozenset[str] = frozenset()
) -> tuple[Aggregator, list[bytes]]:
    builder, table, agg = FrameBuilder(), KeyTable(), fresh()
    bodies = []
    for i, samples in enumerate(frames):
        body = builder.build("default", T0 + 1.0 + i, samples, followed)
        bodies.append(body)
        frame = table.decode(body)
        assert frame.samples == len(samples)
        agg.apply_frame(frame)
    return agg, bodies


def one_by_one(frames: list[list[Sample]]) -> Aggregator:
    agg = fresh()
    for i, samples in enumerate(frames):
        agg.apply(Batch("default", samples, T0 + 1.0 + i))
    return agg


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals())
def test_frames_leave_the_state_samples_leave(frames: list[list[Sample]]) -> None:
    framed, _ = through_frames(frames)
    assert snapshot(framed) == snapshot(one_by_one(frames))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals(), st.sets(st.sampled_from([key[0] for key, _ in KEYS])))
def test_followed_metrics_pass_through_raw_to_the_same_state(frames: list[list[Sample]], followed: set[str]) -> None:
    builder, table = FrameBuilder(), KeyTable()
    for i, samples in enumerate(frames):
        frame = table.decode(builder.build("default", T0 + 1.0 + i, samples, frozenset(followed)))
        # Every sample of a followed metric is there, in order: one stream event each.
        assert [(s[0], s[1], s[2]) for s in frame.raw if s[0][0] in followed] == [
            (s[0], s[1], s[2]) for s in samples if s[0][0] in followed
        ]
    framed, _ = through_frames(frames, frozenset(followed))
    assert snapshot(framed) == snapshot(one_by_one(frames))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals())
def test_replay_of_logged_frames_gives_the_same_state(frames: list[list[Sample]]) -> None:
    """The log holds frame records (connection id + body), and after a checkpoint the key
    records that re-define the ids: replaying only what follows the checkpoint must work."""
    live, bodies = through_frames(frames)
    replay = fresh()
    tables = ReplayTables()
    for body in bodies:
        replay.apply_frame(tables.decode(frame_record(7, body)))
    assert snapshot(replay) == snapshot(live)
    # From "a checkpoint" after the first frame: its keys come back from a key record.
    if len(bodies) > 1:
        first = KeyTable()
        first.decode(bodies[0])
        restarted = fresh()
        restarted.apply_frame(ReplayTables().decode(frame_record(7, bodies[0])))
        tables = ReplayTables()
        defs = [(sid, key[0], key[1]) for sid, key in enumerate(first.keys)]
        tables.define(keys_record(7, first.epoch or 0, defs))
        for body in bodies[1:]:
            restarted.apply_frame(tables.decode(frame_record(7, body)))
        assert snapshot(restarted) == snapshot(live)


def test_repeated_counter_lines_become_one_entry() -> None:
    line: Sample = (("hits", ()), KIND_COUNTER, 1.0, 1.0, None)
    other: Sample = (("misses", ()), KIND_COUNTER, 2.0, 1.0, None)
    body = FrameBuilder().build("default", T0 + 1.0, [line] * 1000 + [other] * 10, frozenset())
    frame = KeyTable().decode(body)
    assert sorted(frame.counters) == [(0, 1000, 1000.0, 1000.0, 1.0, 1.0, 1.0), (1, 10, 10.0, 20.0, 2.0, 2.0, 2.0)]
    assert frame.samples == 1010
    assert len(body) < 200  # 1,010 lines in two entries


def test_a_new_epoch_starts_a_new_table() -> None:
    builder, table = FrameBuilder(max_keys=3), KeyTable()
    keys = [(f"k{i}", ()) for i in range(10)]
    framed, plain = fresh(), fresh()
    for i in range(10):
        samples: list[Sample] = [(keys[(i + j) % 10], KIND_COUNTER, 1.0, 1.0, None) for j in range(4)]
        framed.apply_frame(table.decode(builder.build("default", T0 + 1.0 + i * 0.1, samples, frozenset())))
        plain.apply(Batch("default", samples, T0 + 1.0 + i * 0.1))
    assert builder.epoch > 0
    assert snapshot(framed) == snapshot(plain)


def wire(**columns: object) -> bytes:
    return msgspec.msgpack.encode(WireFrame(0, T0 + 1.0, "default", [(0, "a", ())], **columns))  # type: ignore[arg-type]


def test_undefined_ids_and_torn_columns_are_refused_before_anything_is_applied() -> None:
    bad = [
        wire(counter_ints=array("q", [5, 1]).tobytes(), counter_floats=array("d", [1.0] * 5).tobytes()),
        wire(counter_ints=array("q", [0, 1]).tobytes(), counter_floats=array("d", [1.0] * 4).tobytes()),
        wire(counter_ints=array("q", [0, 1]).tobytes()[:-3], counter_floats=array("d", [1.0] * 5).tobytes()),
        wire(  # a distribution entry of kind COUNTER
            dist_ints=array("q", [0, KIND_COUNTER, 1]).tobytes(),
            dist_floats=array("d", [1.0] * 6).tobytes(),
            dist_values=array("d", [1.0]).tobytes(),
        ),
        wire(  # values that do not add up to the entries' counts
            dist_ints=array("q", [0, KIND_HISTOGRAM, 2]).tobytes(),
            dist_floats=array("d", [1.0] * 6).tobytes(),
            dist_values=array("d", [1.0]).tobytes(),
        ),
        wire(dist_values=array("d", [1.0]).tobytes()),
        wire(raw=[(0, KIND_SET, 1.0, 1.0, None)]),
        wire(sets=[(3, 1, ["x"])]),
        msgspec.msgpack.encode(WireFrame(0, T0, "default", [(3, "a", ())])),
        msgspec.msgpack.encode(WireFrame(0, T0, "no tenant!", [])),
    ]
    for body in bad:
        with pytest.raises(BadFrame):
            KeyTable().decode(body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_raises_only_bad_frame(data: bytes) -> None:
    table = KeyTable()
    try:
        frame = table.decode(data)
    except BadFrame:
        return
    fresh().apply_frame(frame)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(intervals(), st.integers(0, 2**32), st.integers(1, 8))
def test_mutated_frames_raise_only_bad_frame(frames: list[list[Sample]], seed: int, flips: int) -> None:
    """A valid frame with bytes changed decodes to BadFrame or to something the aggregator
    applies without raising."""
    rng = random.Random(seed)
    builder, table, agg = FrameBuilder(), KeyTable(), fresh()
    for i, samples in enumerate(frames):
        body = bytearray(builder.build("default", T0 + 1.0 + i, samples, frozenset()))
        for _ in range(flips):
            body[rng.randrange(len(body))] = rng.getrandbits(8)
        try:
            frame = table.decode(bytes(body))
        except BadFrame:
            continue
        agg.apply_frame(frame)


# ---------------------------------------------------------------------------- frames from columns

# One type per name (a name sent as two kinds sends the frame to build(): tested below); values
# mostly integers, some with fractions, signs or -0 (their moments take build()'s own loop).
COLUMN_LINES = st.builds(
    "t.{0[0]}:{1}|{0[1]}{2}".format,
    st.sampled_from([("lat", "ms"), ("db", "h"), ("q", "d"), ("api.x", "ms")]),
    st.one_of(st.integers(0, 999).map(str), st.sampled_from(["12.5", "-3", "-0", "0", "0.001", "7.25"])),
    st.sampled_from(["", "", "|@0.5", "|@0.25", "|#a:b", "|#env:prod,a:c", "|@0.5|#a:b"]),
)


@st.composite
def column_intervals(draw: st.DrawFn) -> list[list[bytes]]:
    """Payloads of distribution lines, a few ship intervals of them (enough lines for
    parse_columns, which declines short ones)."""
    return [
        [
            "\n".join(draw(st.lists(COLUMN_LINES, min_size=20, max_size=30))).encode()
            for _ in range(draw(st.integers(4, 6)))
        ]
        for _ in range(draw(st.integers(1, 3)))
    ]


COLUMN_FRAMES = 0


def _columns_or_samples(parser: StatsdParser, payloads: list[bytes]) -> tuple[StatsdColumns | None, list[Sample]]:
    samples: list[Sample] = []
    for payload in payloads:
        StatsdParser(Limits()).parse(payload, samples)
    return parse_columns(parser, payloads), samples


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(column_intervals(), st.booleans())
def test_frames_built_from_columns_leave_the_state_samples_leave(intervals_: list[list[bytes]], split: bool) -> None:
    """build_columns gives the state build() gives for the same samples (bit for bit: moments
    of non-integer values take build()'s own loop), and with integer values the state of
    apply() one sample at a time; a decoded frame holds every sample."""
    parser = StatsdParser(Limits())
    columnar, plain, table, plain_table = FrameBuilder(), FrameBuilder(), KeyTable(), KeyTable()
    by_columns, by_samples = fresh(), fresh()
    every: list[list[Sample]] = []
    global COLUMN_FRAMES
    for i, payloads in enumerate(intervals_):
        # split: two parse_columns calls in one interval (held bytes parsed early)
        half = len(payloads) // 2
        halves = [payloads[:half], payloads[half:]] if split else [payloads]
        chunks = [_columns_or_samples(parser, half) for half in halves]
        samples = [sample for _, part in chunks for sample in part]
        every.append(samples)
        body = None
        if all(columns is not None for columns, _ in chunks):
            body = columnar.build_columns("default", T0 + 1.0 + i, [c for c, _ in chunks if c is not None], frozenset())
        if body is None:
            body = columnar.build("default", T0 + 1.0 + i, samples, frozenset())
        else:
            COLUMN_FRAMES += 1
        frame = table.decode(body)
        assert frame.samples == len(samples)
        by_columns.apply_frame(frame)
        by_samples.apply_frame(plain_table.decode(plain.build("default", T0 + 1.0 + i, samples, frozenset())))
    assert snapshot(by_columns) == snapshot(by_samples)
    if all(float(s[2]).is_integer() for samples in every for s in samples):
        assert snapshot(by_columns) == snapshot(one_by_one(every))


def test_build_columns_declines_followed_metrics_and_a_series_sent_as_two_kinds() -> None:
    parser = StatsdParser(Limits())
    timers = [b"\n".join(b"t.lat:%d|ms" % i for i in range(30))] * 3
    columns = parse_columns(parser, timers)
    assert columns is not None
    assert FrameBuilder().build_columns("default", T0, [columns], frozenset({"t.lat"})) is None
    assert FrameBuilder().build_columns("default", T0, [columns], frozenset({"other"})) is not None
    summaries = parse_columns(parser, [b"\n".join(b"t.lat:%d|d" % i for i in range(30))] * 3)
    assert summaries is not None
    assert FrameBuilder().build_columns("default", T0, [columns, summaries], frozenset()) is None


def test_column_moments_keep_minus_zero_and_fractions_as_the_loop_has_them() -> None:
    """-0.0 and non-integer values take _moments itself; integers take numpy, same floats."""
    for values, counts in (
        ([-0.0, 0.0, 3.0], [2, 1]),
        ([0.1, 0.2, 0.3, 1e-300, 5.0], [3, 2]),
        ([1.0, 2.0, 3.0, 4.0, 1e6], [4, 1]),
        ([float(2**40), float(2**40)], [1, 1]),
    ):
        grouped = np.array(values)
        n = np.array(counts)
        starts = np.cumsum(n) - n
        weights = np.array([1.0, 4.0])
        got = [column.tolist() for column in _column_moments(grouped, n, starts, weights)]
        parts = [values[: counts[0]], values[counts[0] :]]
        expected = [
            list(row) for row in zip(*(_moments(p, w) for p, w in zip(parts, [1.0, 4.0], strict=True)), strict=True)
        ]
        assert [[v.hex() for v in column] for column in got] == [[v.hex() for v in column] for column in expected]
