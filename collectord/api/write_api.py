"""Write endpoints: the record API (JSON) and InfluxDB line protocol over HTTP.

Every write is acknowledged only once its samples are in the write-ahead log (per the fsync
policy); when the log cannot take writes the answer is 503 and nothing is kept.
"""

from __future__ import annotations

import time
import uuid

import msgspec
from aiohttp import web

from collectord.api.auth import Authenticator
from collectord.api.errors import ApiError, json_response
from collectord.api.messages import language_of, message
from collectord.api.schemas import MAX_BATCH, BatchIn
from collectord.api.units import UnitBook
from collectord.api.validation import FieldError, decode_metric
from collectord.audit import METRIC_RECORDED, METRICS_BATCH_RECORDED, audit
from collectord.model import Sample
from collectord.pipeline import Pipeline
from collectord.protocols.line import PRECISIONS
from collectord.ring import PAYLOAD_SAMPLES, Batch
from collectord.storage.journal import JournalUnavailable

# InfluxDB v1 names precisions n/u/ms/s; v2 ns/us/ms/s.
V1_PRECISION = {"n": "ns", "ns": "ns", "u": "us", "us": "us", "ms": "ms", "s": "s"}


class WriteApi:
    def __init__(self, pipeline: Pipeline, auth: Authenticator, units: UnitBook) -> None:
        self.pipeline = pipeline
        self.auth = auth
        self.units = units
        self.late_allowance = float(pipeline.config.aggregate.late_allowance)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/api/v1/metrics", self.record),
            web.post("/api/v1/metrics/batch", self.record_batch),
            web.post("/api/v2/write", self.write_v2),
            web.post("/write", self.write_v1),
        ]

    def _keep(self, tenant: str, samples: list[Sample], received: float | None = None) -> None:
        if not samples:
            return
        at = time.time() if received is None else received
        try:
            self.pipeline.write_acknowledged(Batch(tenant, samples, at, PAYLOAD_SAMPLES))
        except JournalUnavailable as error:
            raise ApiError(503, "storage_unavailable", details={"reason": str(error)}) from error

    async def record(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "write")
        body = await request.read()
        received = time.time()
        try:
            metric, sample = decode_metric(body, received, self.late_allowance)
        except FieldError as error:
            reason = error.reason(language_of(request.headers.get("Accept-Language")))
            details = {"field": error.field, "reason": reason}
            raise ApiError(400, "invalid_metric", details=details, reason=reason) from None
        self._keep(principal.tenant, [sample], received)
        if metric.unit:
            self.units.note(principal.tenant, metric.name, metric.unit)
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
        """Valid items are kept and answered in `successful`; each invalid one in `failed`
        with its index, id and the field it failed on. A body that is not a batch keeps nothing."""
        principal = self.auth.require(request, "write")
        language = language_of(request.headers.get("Accept-Language"))
        body = await request.read()
        received = time.time()
        try:
            batch = msgspec.json.decode(body, type=BatchIn)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            reason = message(batch_problem(error), language, {"max": MAX_BATCH})
            raise ApiError(
                400, "invalid_batch", details={"reason": reason, "detail": str(error)}, reason=reason
            ) from None
        successful: list[str] = []
        failed: list[dict[str, object]] = []
        samples: list[Sample] = []
        units: list[tuple[str, str]] = []
        for index, raw in enumerate(batch.metrics):
            try:
                metric, sample = decode_metric(raw, received, self.late_allowance)
            except FieldError as error:
                failed.append(
                    {"index": index, "id": _raw_id(raw), "field": error.field, "error": error.reason(language)}
                )
                continue
            samples.append(sample)
            successful.append(str(metric.id or uuid.uuid4()))
            if metric.unit:
                units.append((metric.name, metric.unit))
        self._keep(principal.tenant, samples, received)
        for name, unit in units:
            self.units.note(principal.tenant, name, unit)
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


def batch_problem(error: msgspec.DecodeError) -> str:
    """The catalogue code for why a body is not a batch at all."""
    if not isinstance(error, msgspec.ValidationError):
        return "body_not_json"
    if "length" in str(error) and "$.metrics" in str(error):
        return "batch_size"
    return "batch_shape"


def _raw_id(raw: msgspec.Raw) -> object:
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    return item.get("id") if isinstance(item, dict) else None
