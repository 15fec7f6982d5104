"""Write endpoints: the record API (JSON) and InfluxDB line protocol over HTTP.

Every write is acknowledged only once its samples are in the write-ahead log (per the fsync
policy); when the log cannot take writes the answer is 503 and nothing is kept.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from aiohttp import web
from msgspec import Meta

from collectord.api.auth import Authenticator
from collectord.api.errors import ApiError, json_response
from collectord.audit import METRIC_RECORDED, METRICS_BATCH_RECORDED, audit
from collectord.limits import NAME_PATTERN
from collectord.model import KIND_OF_TYPE, MetricType, Sample
from collectord.pipeline import Pipeline
from collectord.protocols.line import PRECISIONS
from collectord.ring import PAYLOAD_SAMPLES, Batch
from collectord.storage.journal import JournalUnavailable

MAX_BATCH = 500
TagKey = Annotated[str, Meta(min_length=1, max_length=50)]
TagValue = Annotated[str, Meta(max_length=100)]
# InfluxDB v1 names precisions n/u/ms/s; v2 ns/us/ms/s.
V1_PRECISION = {"n": "ns", "ns": "ns", "u": "us", "us": "us", "ms": "ms", "s": "s"}


class MetricIn(msgspec.Struct, forbid_unknown_fields=True):
    """The seed's MetricSchema, declared once; the handlers and the OpenAPI use it."""

    name: Annotated[str, Meta(min_length=1, max_length=255, pattern=NAME_PATTERN)]
    value: float
    type: Literal["COUNTER", "GAUGE", "HISTOGRAM", "SUMMARY"]
    tags: Annotated[dict[TagKey, TagValue], Meta(max_length=20)] = msgspec.field(default_factory=dict)
    timestamp: str | int | None = None
    unit: Annotated[str, Meta(max_length=50)] | None = None
    aggregationType: Literal["AVG", "SUM", "MIN", "MAX", "COUNT", "P50", "P90", "P95", "P99"] | None = None
    id: uuid.UUID | None = None


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    metrics: Annotated[list[msgspec.Raw], Meta(min_length=1, max_length=MAX_BATCH)]


def _timestamp(raw: str | int | None) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, int):
        return raw / 1000.0
    moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("timestamp needs a time zone")
    return moment.timestamp()


def to_sample(metric: MetricIn) -> Sample:
    """A validated metric as a sample; ValueError names what is wrong."""
    if not math.isfinite(metric.value):
        raise ValueError("Expected a finite number - at `$.value`")
    try:
        when = _timestamp(metric.timestamp)
    except ValueError:
        raise ValueError("Expected RFC 3339 with a zone or epoch milliseconds - at `$.timestamp`") from None
    kind = KIND_OF_TYPE[MetricType(metric.type)]
    return ((metric.name, tuple(sorted(metric.tags.items()))), kind, metric.value, 1.0, when)


class WriteApi:
    def __init__(self, pipeline: Pipeline, auth: Authenticator) -> None:
        self.pipeline = pipeline
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/metrics", self.record),
            web.post("/api/v1/metrics/batch", self.record_batch),
            web.post("/api/v2/write", self.write_v2),
            web.post("/write", self.write_v1),
        ]

    def _keep(self, tenant: str, samples: list[Sample]) -> None:
        if not samples:
            return
        try:
            self.pipeline.write_acknowledged(Batch(tenant, samples, time.time(), PAYLOAD_SAMPLES))
        except JournalUnavailable as error:
            raise ApiError(503, "storage_unavailable", details={"reason": str(error)}) from error

    async def record(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "write")
        body = await request.read()
        try:
            metric = msgspec.json.decode(body, type=MetricIn)
            sample = to_sample(metric)
        except (msgspec.DecodeError, ValueError) as error:
            raise ApiError(400, "invalid_metric", details={"reason": str(error)}, reason=str(error)) from None
        self._keep(principal.tenant, [sample])
        metric_id = str(metric.id or uuid.uuid4())
        audit(
            self.pipeline,
            principal.tenant,
            principal.role,
            METRIC_RECORDED,
            {"metricId": metric_id, "metricName": metric.name},
            metric_id,
        )
        return json_response({"metricId": metric_id}, status=201)

    async def record_batch(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "write")
        body = await request.read()
        try:
            batch = msgspec.json.decode(body, type=BatchIn)
        except (msgspec.DecodeError, ValueError) as error:
            raise ApiError(400, "invalid_batch", details={"reason": str(error)}, reason=str(error)) from None
        successful: list[str] = []
        failed: list[dict[str, object]] = []
        samples: list[Sample] = []
        for index, raw in enumerate(batch.metrics):
            try:
                metric = msgspec.json.decode(raw, type=MetricIn)
                samples.append(to_sample(metric))
                successful.append(str(metric.id or uuid.uuid4()))
            except (msgspec.DecodeError, ValueError) as error:
                failed.append({"index": index, "id": _raw_id(raw), "error": str(error)})
        self._keep(principal.tenant, samples)
        counts = {"successCount": len(successful), "failCount": len(failed)}
        audit(self.pipeline, principal.tenant, principal.role, METRICS_BATCH_RECORDED, counts)
        return json_response({"successful": successful, "failed": failed})

    async def write_v2(self, request: web.Request) -> web.StreamResponse:
        return await self._write_lines(request, request.query.get("precision", "ns"))

    async def write_v1(self, request: web.Request) -> web.StreamResponse:
        raw = request.query.get("precision", "n")
        return await self._write_lines(request, V1_PRECISION.get(raw, raw))

    async def _write_lines(self, request: web.Request, precision: str) -> web.StreamResponse:
        """InfluxDB's semantics: 204 when all lines are good; 400 naming the first bad line,
        with the good lines kept."""
        principal = self.auth.require(request, "write")
        if precision not in PRECISIONS:
            raise ApiError(400, "invalid_precision", details={"param": "precision"}, value=precision)
        body = await request.read()
        samples: list[Sample] = []
        rejection = self.pipeline.line_parser.parse(body, samples, precision=precision)
        self._keep(principal.tenant, samples)
        if rejection is not None:
            line = rejection.line.decode("utf-8", "backslashreplace")
            raise ApiError(
                400,
                "invalid_line",
                details={"line": rejection.line_no, "reason": rejection.reason, "text": line},
                number=rejection.line_no,
                reason=rejection.reason,
            )
        return web.Response(status=204)


def _raw_id(raw: msgspec.Raw) -> object:
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    return item.get("id") if isinstance(item, dict) else None
