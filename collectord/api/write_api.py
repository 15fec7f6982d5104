"""Write endpoints: the record API (JSON) and InfluxDB line protocol over HTTP.

Every write is acknowledged only once its samples are in the write-ahead log (per the fsync
policy); when the log cannot take writes the answer is 503 and nothing is kept.
"""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from collectord.api.auth import Authenticator
from collectord.api.errors import ApiError, json_response
from collectord.api.messages import language_of, message
from collectord.api.schemas import MAX_BATCH, BatchIn, MetricIn, ValidBatchIn
from collectord.api.units import UnitBook
from collectord.api.validation import FieldError, decode_metric, new_ids, to_sample
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
        metric_id = str(metric.id) if metric.id is not None else new_ids(1)[0]
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
        items = self._batch_items(body, received, language)
        successful: list[str] = []
        failed: list[dict[str, object]] = []
        samples: list[Sample] = []
        units: list[tuple[str, str]] = []
        missing_ids = 0
        for index, (item, given_id) in enumerate(items):
            if isinstance(item, FieldError):
                failed.append({"index": index, "id": given_id, "field": item.field, "error": item.reason(language)})
                continue
            metric, sample = item
            samples.append(sample)
            successful.append(str(metric.id) if metric.id is not None else "")
            missing_ids += metric.id is None
            if metric.unit:
                units.append((metric.name, metric.unit))
        if missing_ids:
            fresh = iter(new_ids(missing_ids))
            successful = [given or next(fresh) for given in successful]
        self._keep(principal.tenant, samples, received)
        for name, unit in units:
            self.units.note(principal.tenant, name, unit)
        counts = {"successCount": len(successful), "failCount": len(failed)}
        audit(self.pipeline, principal.tenant, principal.role, METRICS_BATCH_RECORDED, counts)
        return json_response({"successful": successful, "failed": failed})

    def _batch_items(
        self, body: bytes, received: float, language: str
    ) -> list[tuple[tuple[MetricIn, Sample] | FieldError, object]]:
        """Each item decoded (or why not) with the id it gave. The common case, every item a
        MetricIn, is decoded in one pass; otherwise item by item, to name each failure."""
        late = self.late_allowance
        try:
            whole = msgspec.json.decode(body, type=ValidBatchIn).metrics
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            items: list[tuple[tuple[MetricIn, Sample] | FieldError, object]] = []
            for metric in whole:
                given = str(metric.id) if metric.id is not None else None
                try:
                    items.append(((metric, to_sample(metric, received, late)), given))
                except FieldError as error:
                    items.append((error, given))
            return items
        try:
            batch = msgspec.json.decode(body, type=BatchIn)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            reason = message(batch_problem(error), language, {"max": MAX_BATCH})
            details = {"reason": reason, "detail": str(error)}
            raise ApiError(400, "invalid_batch", details=details, reason=reason) from None
        items = []
        for raw in batch.metrics:
            try:
                items.append((decode_metric(raw, received, late), None))
            except FieldError as error:
                items.append((error, _raw_id(raw)))
        return items

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
