"""Bodies crossing the HTTP boundary, declared once as msgspec Structs (the seed's zod schemas).

The handlers decode with them and `/openapi.json` is generated from them, so the description
and the validation cannot drift apart.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

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


class MetricIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The seed's MetricSchema."""

    name: MetricName
    value: float
    type: MetricTypeName
    tags: Tags = msgspec.field(default_factory=dict)
    # Also within aggregate.late_allowance in the past and 60 s ahead (checked on arrival).
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


class ValidBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """A batch whose items are all MetricIn: decoded in one pass (the common case)."""

    metrics: Annotated[list[MetricIn], Meta(min_length=1, max_length=MAX_BATCH)]


# ---------------------------------------------------------------------------- answers
# What the handlers answer, for /openapi.json; the schemathesis test holds them to it.
# Unknown fields are allowed: an answer may carry more than is promised here.


class MetricIdOut(msgspec.Struct):
    metricId: str


class FailedItem(msgspec.Struct):
    index: int
    id: Any
    field: str | None
    error: str


class BatchOut(msgspec.Struct):
    successful: list[str]
    failed: list[FailedItem]


class ErrorInfo(msgspec.Struct):
    code: str
    message: str
    details: Any


class ErrorOut(msgspec.Struct):
    """The contract's error shape; `message` follows Accept-Language (en, pl)."""

    error: ErrorInfo


class Row(msgspec.Struct):
    """The seed's AggregatedMetricSchema: one period of one metric (or group)."""

    metricName: str
    periodStart: str
    periodEnd: str
    count: float
    sum: float
    min: float | None
    max: float | None
    avg: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    tags: dict[str, str]
    value: float | None
    type: str | None = None
    rate: float | None = None


class QueryEcho(msgspec.Struct):
    metricNames: list[str]
    startTime: str
    endTime: str
    granularity: str
    aggregation: str
    tags: dict[str, str]
    groupBy: list[str]
    limit: int


class QueryMetadata(msgspec.Struct):
    totalCount: int
    query: QueryEcho
    executionTimeMs: float
    fromCache: bool


class QueryOut(msgspec.Struct):
    """The seed's MetricsResponseSchema."""

    data: list[Row]
    metadata: QueryMetadata


class RealtimeOut(msgspec.Struct):
    metric: str
    value: float | None
    type: str | None
    timestamp: str | None
    series: int


class SeriesInfo(msgspec.Struct):
    metricName: str
    type: str
    tags: dict[str, str]
    firstSeen: str
    lastSeen: str


class SeriesOut(msgspec.Struct):
    series: list[SeriesInfo]
    totalCount: int


class ActiveMetric(msgspec.Struct):
    metricName: str
    series: int
    tagValues: dict[str, int]


class RejectedMetric(msgspec.Struct):
    metricName: str
    rejected: int


class CardinalityOut(msgspec.Struct):
    totalSeries: int
    maxSeries: int
    byActiveSeries: list[ActiveMetric]
    byRejectedSeries: list[RejectedMetric]


class HealthOut(msgspec.Struct):
    status: str


class StreamEvent(msgspec.Struct):
    """One sample as streams deliver it (SSE `metric` event data; WebSocket adds `event`)."""

    name: str
    type: str
    value: float | str
    tags: dict[str, str]
    timestamp: str


class PurgeOut(msgspec.Struct):
    deletedCount: int
