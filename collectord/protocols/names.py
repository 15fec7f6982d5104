"""The validation rules every parser shares: Etsy-style name sanitising, the seed's name and
tag limits, and the strict number syntax.

Usable by the HTTP API too (it validates names without sanitising them). Everything here runs on
a parser's cache miss only, so it favours clarity over speed; the hot path never calls in here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from collectord.limits import NAME_PATTERN, Limits
from collectord.model import Tags

__all__ = [
    "NUMBER_BYTES",
    "Invalid",
    "build_tags",
    "check_name",
    "decode",
    "has_control_chars",
    "sanitize_name",
    "strict_float",
    "valid_name",
]


class Invalid(Exception):
    """A line (or one part of it) breaks a rule; `reason` is the short snake_case counter name.

    Raised only on a parser's slow path (cache miss), never for a line the caches know.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_NAME_RE = re.compile(NAME_PATTERN)
# Etsy statsd's three steps: whitespace runs become "_", "/" becomes "-", and then every
# character outside [a-zA-Z0-9_.-] is dropped. `\s` is Unicode-aware like JavaScript's.
_WHITESPACE_RUN = re.compile(r"\s+")
_NOT_NAME_CHAR = re.compile(r"[^a-zA-Z0-9_.\-]")
_ALREADY_CLEAN = re.compile(r"[a-zA-Z0-9_.\-]*")
# What a plain decimal number may contain; float() alone also takes "1_000", " 1", "nan", "inf".
NUMBER_BYTES = b"0123456789.eE+-"
# ASCII control characters: PostgreSQL text rejects NUL and the rest make unreadable tags.
# The table maps each control byte to 0 and every other byte to 1: translate() plus one `in`
# is several times faster than a regex search.
_CONTROL_TABLE = bytes(0 if byte < 0x20 or byte == 0x7F else 1 for byte in range(256))


def sanitize_name(name: str) -> str:
    """Rewrite a StatsD name the way Etsy statsd does before it is validated."""
    if _ALREADY_CLEAN.fullmatch(name):
        return name
    name = _WHITESPACE_RUN.sub("_", name).replace("/", "-")
    return _NOT_NAME_CHAR.sub("", name)


def valid_name(name: str) -> bool:
    """True when `name` matches the seed's NAME_PATTERN (length is checked separately)."""
    return _NAME_RE.fullmatch(name) is not None


def check_name(name: str, limits: Limits) -> str | None:
    """The reason `name` is not an acceptable metric name, or None when it is."""
    if len(name) > limits.max_name_length:
        return "name_too_long"
    if _NAME_RE.fullmatch(name) is None:
        return "bad_name"
    return None


def build_tags(pairs: Iterable[tuple[str, str]], limits: Limits) -> Tags:
    """Validate tags and return them as a Tags tuple sorted by key; a repeated key: last wins.

    Keys must be non-empty; values may be empty. Raises Invalid with the first broken rule.
    """
    max_key = limits.max_tag_key_length
    max_value = limits.max_tag_value_length
    tags: dict[str, str] = {}
    for key, value in pairs:
        if not key:
            raise Invalid("bad_tags")
        if len(key) > max_key:
            raise Invalid("tag_key_too_long")
        if len(value) > max_value:
            raise Invalid("tag_value_too_long")
        tags[key] = value
    if len(tags) > limits.max_tags:
        raise Invalid("too_many_tags")
    return tuple(sorted(tags.items()))


def has_control_chars(raw: bytes) -> bool:
    """True when `raw` holds an ASCII control character (NUL, tab, CR, DEL, ...)."""
    return 0 in raw.translate(_CONTROL_TABLE)


def decode(raw: bytes) -> str:
    """UTF-8 decode, raising Invalid("non_utf8") instead of UnicodeDecodeError."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("non_utf8") from None


def strict_float(raw: bytes) -> float | None:
    """A finite float written as plain decimal (sign, digits, point, exponent), else None.

    Stricter than float(): no underscores, no surrounding whitespace, no nan/inf, and a value
    that overflows to infinity (such as 1e999) is refused too.
    """
    if not raw or raw.translate(None, NUMBER_BYTES):
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    # inf - inf is nan, which is unequal to everything: one comparison rejects both.
    return value if value - value == 0.0 else None
