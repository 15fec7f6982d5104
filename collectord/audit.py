"""Audit events (the seed's METRIC_RECORDED, METRICS_BATCH_RECORDED, METRICS_QUERIED,
METRICS_PURGED): built by the API, kept on the durable path (the write-ahead log, through
`Pipeline.audit`) and written to the audit_log table in batches by the PostgreSQL sink."""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

from collectord.storage.journal import JournalUnavailable

if TYPE_CHECKING:
    from collectord.aggregation.query import Query
    from collectord.pipeline import Pipeline

log = logging.getLogger("collectord.audit")

METRIC_RECORDED = "METRIC_RECORDED"
METRICS_BATCH_RECORDED = "METRICS_BATCH_RECORDED"
METRICS_QUERIED = "METRICS_QUERIED"
METRICS_PURGED = "METRICS_PURGED"


class AuditEvent(msgspec.Struct, array_like=True):
    """One audit record as logged (JSON in the write-ahead log) and stored in audit_log."""

    id: str
    tenant: str
    user: str | None
    action: str
    entity_type: str
    entity_id: str | None
    metadata: dict[str, Any]
    at: float


def audit(
    pipeline: Pipeline,
    tenant: str,
    user: str | None,
    action: str,
    metadata: dict[str, Any],
    entity_id: str | None = None,
) -> None:
    """Log one event: a log append and commit (microseconds), never a round trip to PostgreSQL.
    If the log cannot take it the request it describes has already been served (reads) or
    logged (writes): the loss is logged, the answer is not withheld."""
    if not pipeline.batch_taps:
        return
    event = AuditEvent(str(uuid.uuid4()), tenant, user, action, "metric", entity_id, metadata, time.time())
    try:
        pipeline.audit(tenant, msgspec.json.encode(event))
    except JournalUnavailable as error:
        log.error("audit event could not be logged", extra={"action": action, "error": str(error)})


def queried(query: Query, result_count: int) -> dict[str, Any]:
    """METRICS_QUERIED's data: the query's parameters and how many rows it answered."""
    from collectord.aggregation.query import iso

    params: dict[str, Any] = {
        "metricNames": query.metrics,
        "startTime": iso(query.start),
        "endTime": iso(query.end),
        "granularity": query.granularity,
        "aggregation": query.aggregation,
        "tags": dict(query.tags),
        "groupBy": query.group_by,
        "limit": query.limit,
    }
    return {"queryParams": params, "resultCount": result_count}
