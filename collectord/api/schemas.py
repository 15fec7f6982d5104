"""Bodies crossing the HTTP boundary, declared once as msgspec Structs (the seed's zod schemas).

The handlers decode with them and `/openapi.json` is generated from them, so the description
and the validation cannot drift apart.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from collectord.limits import NAME_PATTERN

MAX_BATCH = 500
MAX_TAGS = 20
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

MetricName = Annotated[
    str,
    Meta(min_length=1, max_length=255, pattern=NAME_PATTERN, description="Letters, digits, '.', '_', '-'"),
]
TagKey = Annotated[str, Meta(min_length=1, max_length=50)]
TagValue = Annotated[str, Meta(max_length=100)]
Tags = Annotated[dict[TagKey, TagValue], Meta(max_length=MAX_TAGS, description="At most 20 tags")]
MetricTypeName = Literal["COUNTER", "GAUGE", "HISTOGRAM", "SUMMARY"]
AggregationName = Literal["AVG", "SUM", "MIN", "MAX", "COUNT", "P50", "P90", "P95", "P99"]


class MetricIn(msgspec.Struct, forbid_unknown_fields=True):
    """The seed's MetricSchema."""

    name: MetricName
    value: float
    type: MetricTypeName
    tags: Tags = msgspec.field(default_factory=dict)
    timestamp: (
        Annotated[datetime, Meta(tz=True, description="RFC 3339 with a time zone")]
        | Annotated[int, Meta(ge=0, le=MAX_EPOCH_MS, description="epoch milliseconds")]
        | None
    ) = None
    unit: Annotated[str, Meta(max_length=50)] | None = None
    aggregationType: AggregationName | None = None
    id: uuid.UUID | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """The seed's BatchMetricsSchema; items are validated one by one (see MetricIn)."""

    metrics: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_BATCH)]
