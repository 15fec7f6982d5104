"""PostgreSQL's binary COPY format, written directly: rows become bytes in one pass, with the
parts that repeat (a series' tenant, name, type, tags and hash) encoded once and reused.

asyncpg's `copy_records_to_table` encodes every field through a codec; the timestamp and jsonb
codecs are Python functions, called per value, and encoding a large batch holds the event loop
from start to end. Here a batch is encoded in chunks (`COPY_CHUNK_BYTES`) handed to
`copy_to_table` as an async iterable, so the loop gets control back between chunks.

Format: a signature and two zero int32s, then per row an int16 field count and per field an
int32 length (-1 for NULL) and the value in the type's binary form; an int16 -1 ends it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable

import msgspec

from collectord.sinks.postgres.schema import PG_EPOCH

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2
TRAILER = b"\xff\xff"
NULL = b"\xff\xff\xff\xff"
# Encoded chunks handed to the connection at a time (the loop runs between them).
COPY_CHUNK_BYTES = 256 * 1024

_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_F8 = struct.Struct(">id")
_TS = struct.Struct(">iq")
_INT2 = struct.Struct(">ih")
TEXT_OID = 25


def micros(when: float) -> int:
    """A unix time as timestamptz's binary value: microseconds since 2000-01-01."""
    return round((when - PG_EPOCH) * 1_000_000)


def text(value: str) -> bytes:
    data = value.encode()
    return _I32.pack(len(data)) + data


def raw_bytes(value: bytes) -> bytes:
    return _I32.pack(len(value)) + value


def jsonb(json_text: bytes) -> bytes:
    # jsonb's binary form: a version byte, then the JSON text.
    return _I32.pack(len(json_text) + 1) + b"\x01" + json_text


def jsonb_of(value: object) -> bytes:
    return jsonb(msgspec.json.encode(value))


def int2(value: int) -> bytes:
    return _INT2.pack(2, value)


def float8(value: float | None) -> bytes:
    """NULL for None, NaN and infinities (the schema's "no value")."""
    if value is None or not math.isfinite(value):
        return NULL
    return _F8.pack(8, value)


def timestamp(when: float) -> bytes:
    return _TS.pack(8, micros(when))


def field_count(count: int) -> bytes:
    return _I16.pack(count)


def text_array(values: Iterable[str]) -> bytes:
    """A one-dimensional text[] (sets' members)."""
    items = [v.encode() for v in values]
    if not items:
        body = _I32.pack(0) + _I32.pack(0) + _I32.pack(TEXT_OID)
    else:
        header = (_I32.pack(1), _I32.pack(0), _I32.pack(TEXT_OID), _I32.pack(len(items)), _I32.pack(1))
        body = b"".join((*header, *(_I32.pack(len(item)) + item for item in items)))
    return _I32.pack(len(body)) + body
