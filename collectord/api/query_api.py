"""Read endpoints over the in-memory windows: query, realtime, series, cardinality."""

from __future__ import annotations

import math
import time

from aiohttp import web

from collectord.aggregation.query import Query, iso
from collectord.api import params
from collectord.api.auth import Authenticator
from collectord.api.csv_report import csv_response
from collectord.api.errors import json_response
from collectord.api.messages import language_of
from collectord.api.units import UNITS
from collectord.audit import METRICS_QUERIED, audit, queried
from collectord.pipeline import Pipeline
from collectord.redis.hooks import cached_rows, fleet_realtime
from collectord.sinks.postgres.fleet import fleet_query


class QueryApi:
    def __init__(self, pipeline: Pipeline, auth: Authenticator) -> None:
        self.pipeline = pipeline
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/v1/query", self.query),
            web.get("/api/v1/realtime", self.realtime),
            web.get("/api/v1/series", self.series),
            web.get("/api/v1/cardinality", self.cardinality),
        ]

    async def query(self, request: web.Request) -> web.StreamResponse:
        began = time.perf_counter()
        principal = self.auth.require(request, "read")
        args = request.query
        now = self.pipeline.clock.now()
        names = params.metric_names(args)
        start, end = params.time_range(args, now)
        query = Query(
            tenant=principal.tenant,
            metrics=names,
            start=start,
            end=end,
            granularity=params.granularity(args, start, end),
            aggregation=params.aggregation(args),
            tags=params.tag_filters(args),
            group_by=params.group_by(args),
            limit=params.limit(args),
        )
        output = params.choice(args, "format", ("json", "csv"), "invalid_format")
        locale = params.choice(args, "locale", ("en", "pl"), "invalid_locale") if "locale" in args else None
        self.pipeline.catch_up()
        answered: dict[str, object] = {}

        async def compute() -> list[dict[str, object]]:
            rows, paths = await fleet_query(self.pipeline, query)
            answered.update(paths)
            return rows

        rows, from_cache = await cached_rows(self.pipeline, query, compute)
        audit(self.pipeline, query.tenant, principal.role, METRICS_QUERIED, queried(query, len(rows)))
        if output == "csv":
            units = request.app[UNITS]
            language = locale or language_of(request.headers.get("Accept-Language"))
            return csv_response(rows, language, lambda name: units.get(principal.tenant, name))
        took_ms = (time.perf_counter() - began) * 1000.0
        return json_response(
            {
                "data": rows,
                "metadata": {
                    "totalCount": len(rows),
                    "query": {
                        "metricNames": query.metrics,
                        "startTime": iso(query.start),
                        "endTime": iso(query.end),
                        "granularity": query.granularity,
                        "aggregation": query.aggregation,
                        "tags": dict(query.tags),
                        "groupBy": query.group_by,
                        "limit": query.limit,
                    },
                    "executionTimeMs": round(took_ms, 3),
                    "fromCache": from_cache,
                    "fleet": answered or None,
                },
            }
        )

    async def realtime(self, request: web.Request) -> web.StreamResponse:
        """Counter total, gauge last value, distribution latest sample; merged over every
        series matching the tag filter (counters add, the newest gauge or sample wins)."""
        principal = self.auth.require(request, "read")
        names = params.metric_names(request.query, max_count=1)
        tags = params.tag_filters(request.query)
        self.pipeline.catch_up()
        fleet = await fleet_realtime(self.pipeline, principal.tenant, names[0], tags)
        if fleet is not None:
            return json_response(fleet)
        matching = self.pipeline.aggregator.matching_series(principal.tenant, names[0], tags)
        if not matching:
            return json_response({"metric": names[0], "value": None, "type": None, "timestamp": None, "series": 0})
        newest = max(matching, key=lambda s: s.last_timestamp)
        if newest.is_counter:
            value: float | None = sum(s.total for s in matching)
        else:
            value = newest.realtime_value()
        return json_response(
            {
                "metric": names[0],
                "value": value if value is None or math.isfinite(value) else None,
                "type": newest.type.value,
                "timestamp": iso(newest.last_timestamp),
                "series": len(matching),
            }
        )

    async def series(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "read")
        prefix = request.query.get("metric", "")
        tags = dict(params.tag_filters(request.query))
        limit = params.limit(request.query, default=1000)
        self.pipeline.catch_up()
        table = self.pipeline.aggregator.table.by_tenant.get(principal.tenant, {})
        found = []
        for (name, series_tags), one in table.items():
            if not name.startswith(prefix):
                continue
            held = dict(series_tags)
            if any(held.get(k) != v for k, v in tags.items()):
                continue
            found.append(one)
        found.sort(key=lambda s: (s.name, s.tags))
        return json_response(
            {
                "series": [
                    {
                        "metricName": s.name,
                        "type": s.type.value,
                        "tags": dict(s.tags),
                        "firstSeen": iso(s.first_seen),
                        "lastSeen": iso(s.last_seen),
                    }
                    for s in found[:limit]
                ],
                "totalCount": len(found),
            }
        )

    async def cardinality(self, request: web.Request) -> web.StreamResponse:
        principal = self.auth.require(request, "read")
        limit = params.limit(request.query, default=20)
        self.pipeline.catch_up()
        table = self.pipeline.aggregator.table
        active = sorted(
            ((name, len(series)) for (tenant, name), series in table.by_name.items() if tenant == principal.tenant),
            key=lambda item: (-item[1], item[0]),
        )
        rejected = sorted(
            ((name, count) for (tenant, name), count in table.rejected_by_metric.items() if tenant == principal.tenant),
            key=lambda item: (-item[1], item[0]),
        )
        return json_response(
            {
                "totalSeries": sum(count for _, count in active),
                "maxSeries": table.limits.max_series,
                "byActiveSeries": [
                    {
                        "metricName": name,
                        "series": count,
                        "tagValues": table.distinct_tag_values(principal.tenant, name),
                    }
                    for name, count in active[:limit]
                ],
                "byRejectedSeries": [{"metricName": name, "rejected": count} for name, count in rejected[:limit]],
            }
        )
