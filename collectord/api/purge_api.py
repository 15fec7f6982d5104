"""DELETE /api/v1/metrics: an admin purges the tenant's metrics older than a time."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from collectord.aggregation.query import iso
from collectord.api import params
from collectord.api.auth import Authenticator
from collectord.api.errors import ApiError, json_response
from collectord.audit import METRICS_PURGED, audit
from collectord.pipeline import Pipeline
from collectord.redis.hooks import purged as redis_purged
from collectord.sinks.postgres.fleet import postgres_sink
from collectord.sinks.postgres.purge import purge_stored
from collectord.storage.journal import JournalUnavailable


class PurgeApi:
    def __init__(self, pipeline: Pipeline, auth: Authenticator) -> None:
        self.pipeline = pipeline
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [web.delete("/api/v1/metrics", self.purge)]

    async def purge(self, request: web.Request) -> web.StreamResponse:
        """deletedCount: rows deleted in PostgreSQL (raw points and aggregate rows of every
        source) when it is configured, otherwise in-memory windows."""
        principal = self.auth.require(request, "admin")
        args = request.query
        names = params.metric_names(args) if "metric" in args else []
        raw = args.get("older_than")
        if raw is None:
            raise ApiError(400, "missing_older_than", details={"param": "older_than"})
        older_than = params.parse_time("older_than", raw, self.pipeline.clock.now())
        sink = postgres_sink(self.pipeline)
        deleted = 0
        if sink is not None:
            if sink.pool is None or sink.disabled_reason is not None:
                raise ApiError(503, "postgres_unavailable")
            try:
                async with sink.pool.acquire(timeout=sink.settings.query_timeout) as conn:
                    deleted = await purge_stored(conn, principal.tenant, names, older_than)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                raise ApiError(503, "postgres_unavailable", details={"reason": str(error)}) from error
        try:
            in_memory = self.pipeline.purge(principal.tenant, names, older_than)
        except JournalUnavailable as error:
            raise ApiError(503, "storage_unavailable", details={"reason": str(error)}) from error
        redis_purged(self.pipeline, principal.tenant)  # cached answers may hold what was deleted
        if sink is None:
            deleted = in_memory
        data = {"metricNames": names or None, "olderThan": iso(older_than), "deletedCount": deleted}
        audit(self.pipeline, principal.tenant, principal.role, METRICS_PURGED, data)
        return json_response({"deletedCount": deleted})
