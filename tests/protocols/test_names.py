"""Tests for collectord/protocols/names.py: sanitising, name/tag rules, strict numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectord.limits import Limits
from collectord.protocols.names import (
    Invalid,
    build_tags,
    check_name,
    decode,
    has_control_chars,
    sanitize_name,
    strict_float,
    valid_name,
)

LIMITS = Limits()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gorets", "gorets"),
        ("a.b-c_d", "a.b-c_d"),
        # Etsy statsd: whitespace runs become "_", "/" becomes "-", then everything outside
        # [a-zA-Z0-9_.-] is removed.
        ("a b", "a_b"),
        ("a \t b", "a_b"),
        ("api/v1/users", "api-v1-users"),
        ("a$b%c", "abc"),
        ("héllo", "hllo"),
        ("a:b|c@d#e", "abcde"),
        ("a=b,c;d", "abcd"),
        ("  lead", "_lead"),
        ("\x00nul", "nul"),
        ("", ""),
    ],
)
def test_sanitize_name(raw: str, expected: str) -> None:
    assert sanitize_name(raw) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a", None),
        ("a.b_c-d9", None),
        ("A", None),
        ("", "bad_name"),
        ("9lives", "bad_name"),
        ("_x", "bad_name"),
        (".x", "bad_name"),
        ("-x", "bad_name"),
        ("a b", "bad_name"),
        ("a\n", "bad_name"),
        ("a" * 255, None),
        ("a" * 256, "name_too_long"),
    ],
)
def test_check_name(name: str, reason: str | None) -> None:
    assert check_name(name, LIMITS) == reason
    assert valid_name(name) == (reason is None or reason == "name_too_long")


def test_check_name_uses_configured_length() -> None:
    assert check_name("abcd", Limits(max_name_length=3)) == "name_too_long"


def test_build_tags_sorts_and_last_key_wins() -> None:
    assert build_tags([("b", "1"), ("a", "2"), ("b", "3")], LIMITS) == (("a", "2"), ("b", "3"))
    assert build_tags([], LIMITS) == ()


@pytest.mark.parametrize(
    ("pairs", "reason"),
    [
        ([("", "v")], "bad_tags"),
        ([("k" * 51, "v")], "tag_key_too_long"),
        ([("k", "v" * 101)], "tag_value_too_long"),
        ([(f"k{i}", "v") for i in range(21)], "too_many_tags"),
    ],
)
def test_build_tags_rejects(pairs: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(Invalid) as raised:
        build_tags(pairs, LIMITS)
    assert raised.value.reason == reason


def test_build_tags_limits_count_distinct_keys() -> None:
    # 25 pairs over 20 keys: duplicates collapse before the count is checked.
    pairs = [(f"k{i % 20}", "v") for i in range(25)]
    assert len(build_tags(pairs, LIMITS)) == 20
    assert build_tags([("k" * 50, "v" * 100)], LIMITS) == (("k" * 50, "v" * 100),)


def test_decode() -> None:
    assert decode("zażółć".encode()) == "zażółć"
    with pytest.raises(Invalid) as raised:
        decode(b"\xff")
    assert raised.value.reason == "non_utf8"


def test_has_control_chars() -> None:
    assert not has_control_chars(b"plain text \x80\xff")
    for byte in [*range(0x20), 0x7F]:
        assert has_control_chars(b"a" + bytes([byte]) + b"b")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1", 1.0),
        (b"-1", -1.0),
        (b"+1", 1.0),
        (b"1.5", 1.5),
        (b".5", 0.5),
        (b"5.", 5.0),
        (b"1e3", 1000.0),
        (b"1E-3", 0.001),
        (b"-0", -0.0),
        (b"", None),
        (b"1_000", None),  # float() would take it
        (b" 1", None),
        (b"1 ", None),
        (b"\t1", None),
        (b"nan", None),
        (b"inf", None),
        (b"-Infinity", None),
        (b"1e999", None),  # overflows to inf
        (b"0x10", None),
        (b"1.2.3", None),
        (b"--1", None),
        (b"e5", None),
        (b"\xd9\xa1", None),  # Arabic-Indic digit one
    ],
)
def test_strict_float(raw: bytes, expected: float | None) -> None:
    assert strict_float(raw) == expected


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_strict_float_reads_repr(value: float) -> None:
    assert strict_float(repr(value).encode()) == value


@given(st.binary(max_size=30))
def test_strict_float_is_finite_or_none(raw: bytes) -> None:
    value = strict_float(raw)
    assert value is None or math.isfinite(value)
