"""A decoded metric as a sample, and why one is not: the field it failed on and a catalogue code.

msgspec does the checking the Structs declare; its message only tells us which field failed,
and the reason a client reads comes from the catalogue (English or Polish), one per field.
"""

from __future__ import annotations

import os
import re

import msgspec

from collectord.aggregation.aggregator import FUTURE_TOLERANCE
from collectord.api.messages import message
from collectord.api.schemas import MetricIn
from collectord.limits import NAME_PATTERN
from collectord.model import KIND_OF_TYPE, MetricType, Sample

_NAME = re.compile(NAME_PATTERN)
_FIELD_AT = re.compile(r"`\$\.([A-Za-z_]+)")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
FIELDS = frozenset(MetricIn.__struct_fields__)
_KIND_OF_NAME = {kind.value: KIND_OF_TYPE[kind] for kind in MetricType}


class FieldError(ValueError):
    """One metric's problem: `field` (None when the item is not an object) and a catalogue code."""

    def __init__(self, field: str | None, code: str, detail: str = "", **params: object) -> None:
        super().__init__(detail or code)
        self.field = field
        self.code = code
        self.detail = detail
        self.params = {"field": field, **params}

    def reason(self, language: str) -> str:
        return message(self.code, language, self.params)


def field_error(error: msgspec.ValidationError | msgspec.DecodeError) -> FieldError:
    text = str(error)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        return FieldError(None, "body_not_json", text)
    if missing := _MISSING.search(text):
        return FieldError(missing.group(1), "field_missing", text)
    if unknown := _UNKNOWN.search(text):
        return FieldError(unknown.group(1), "field_unknown", text)
    at = _FIELD_AT.search(text)
    if at is None or at.group(1) not in FIELDS:
        return FieldError(None, "metric_not_object", text)
    return FieldError(at.group(1), f"field_{at.group(1)}", text)


def to_sample(metric: MetricIn, received: float, late_allowance: float) -> Sample:
    """A validated metric as a sample, or FieldError for what the Struct cannot declare."""
    if not _NAME.fullmatch(metric.name):
        # `$` in the declared pattern also matches before a final newline.
        raise FieldError("name", "field_name", "trailing newline")
    value = metric.value
    if value - value != 0.0:  # inf or nan, without a call
        raise FieldError("value", "field_value", "not finite")
    stamp = metric.timestamp
    when: float | None = None
    if stamp is not None:
        when = stamp / 1000.0 if type(stamp) is int else stamp.timestamp()  # type: ignore[union-attr]
        if not received - late_allowance <= when <= received + FUTURE_TOLERANCE:
            raise FieldError(
                "timestamp", "timestamp_outside_window", "outside window", late=late_allowance, future=FUTURE_TOLERANCE
            )
    tags = metric.tags
    key = tuple(sorted(tags.items())) if tags else ()
    return ((metric.name, key), _KIND_OF_NAME[metric.type], value, 1.0, when)


def decode_metric(raw: bytes, received: float, late_allowance: float) -> tuple[MetricIn, Sample]:
    try:
        metric = msgspec.json.decode(raw, type=MetricIn)
    except (msgspec.ValidationError, msgspec.DecodeError) as error:
        raise field_error(error) from None
    return metric, to_sample(metric, received, late_allowance)


def new_ids(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as strings; ~10x cheaper than str(uuid.uuid4()) each."""
    raw = bytearray(os.urandom(16 * count))
    for start in range(0, 16 * count, 16):
        raw[start + 6] = raw[start + 6] & 0x0F | 0x40
        raw[start + 8] = raw[start + 8] & 0x3F | 0x80
    t = raw.hex()
    return [
        f"{t[k : k + 8]}-{t[k + 8 : k + 12]}-{t[k + 12 : k + 16]}-{t[k + 16 : k + 20]}-{t[k + 20 : k + 32]}"
        for k in range(0, 32 * count, 32)
    ]
