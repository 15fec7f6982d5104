"""`GET /openapi.json`: OpenAPI 3.1, its schemas generated from the Structs the handlers use.

Bodies come from collectord/api/schemas.py through `msgspec.json.schema_components`; the query
parameters carry the limits collectord/api/params.py enforces. tests/integration/
test_openapi.py runs schemathesis against the live daemon to keep both true.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from collectord import __version__
from collectord.api import schemas
from collectord.api.params import LIMIT_RANGE, MAX_GROUP_BY, MAX_METRICS, MAX_TAG_FILTERS
from collectord.api.stream_api import MAX_STREAM_METRICS
from collectord.limits import NAME_PATTERN

REF = "#/components/schemas/{name}"
_STRUCTS: tuple[Any, ...] = (
    schemas.MetricIn,
    schemas.BatchIn,
    schemas.MetricIdOut,
    schemas.BatchOut,
    schemas.ErrorOut,
    schemas.QueryOut,
    schemas.RealtimeOut,
    schemas.SeriesOut,
    schemas.CardinalityOut,
    schemas.HealthOut,
    schemas.StreamEvent,
    schemas.PurgeOut,
)

Json = dict[str, Any]
# `now`, a relative time (-15m), epoch milliseconds or RFC 3339 with a zone.
TIME_PATTERN = (
    r"^(now|-\d+(\.\d+)?(ms|s|m|h|d|w)|\d{1,16}|"
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))$"
)
TAG_FILTER = {"type": "string", "pattern": r"^[^:]{1,50}:[^\n]{0,100}$", "description": "key:value"}


def _ref(struct: type) -> Json:
    return {"$ref": REF.format(name=struct.__name__)}


def _json(struct: type, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _error(description: str) -> Json:
    return _json(schemas.ErrorOut, description)


def _query(name: str, schema: Json, description: str, required: bool = False, many: bool = False) -> Json:
    parameter: Json = {"name": name, "in": "query", "required": required, "description": description}
    parameter["schema"] = schema
    if many:
        parameter["style"], parameter["explode"] = "form", True
    return parameter


def _names(low: int, high: int) -> Json:
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": NAME_PATTERN},
        "minItems": low,
        "maxItems": high,
    }


def _tags() -> Json:
    return _query(
        "tag",
        {"type": "array", "items": TAG_FILTER, "maxItems": MAX_TAG_FILTERS},
        "Tag filter key:value, repeatable; every one must match.",
        many=True,
    )


def _limit(default: int) -> Json:
    low, high = LIMIT_RANGE
    return _query("limit", {"type": "integer", "minimum": low, "maximum": high, "default": default}, "Most rows.")


READ_ERRORS: Json = {
    "400": _error("A parameter is invalid; the error names it."),
    "401": _error("Missing or unknown token."),
    "403": _error("The token's role may not read."),
}
WRITE_ERRORS: Json = {
    "400": _error("The body is not valid; the error names the field or line."),
    "401": _error("Missing or unknown token."),
    "403": _error("The token's role may not write."),
    "413": _error("The body is larger than 4 MiB."),
    "429": {
        **_error("The token's write rate limit is used up; see Retry-After."),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}},
    },
    "503": _error("The data directory cannot take writes; nothing was kept."),
}
LINE_BODY: Json = {
    "required": False,
    "description": "InfluxDB line protocol, one point per line; gzip with Content-Encoding: gzip. "
    "An empty body writes nothing (204).",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _line_write(summary: str, precisions: list[str], extra: list[Json]) -> Json:
    return {
        "summary": summary,
        "tags": ["write"],
        "parameters": [
            _query("precision", {"type": "string", "enum": precisions}, "Unit of the line timestamps."),
            *extra,
        ],
        "requestBody": LINE_BODY,
        "responses": {"204": {"description": "Every line was kept."}, **WRITE_ERRORS},
    }


def paths() -> Json:
    query_params = [
        _query("metric", _names(1, MAX_METRICS), "Metric name, repeatable.", required=True, many=True),
        _query("start", {"type": "string", "pattern": TIME_PATTERN, "default": "-1h"}, "Start of the range."),
        _query("end", {"type": "string", "pattern": TIME_PATTERN, "default": "now"}, "End of the range (after start)."),
        _query("granularity", {"type": "string", "enum": ["1m", "5m", "1h", "1d"]}, "Period length."),
        _query(
            "aggregation",
            {"type": "string", "enum": ["AVG", "SUM", "MIN", "MAX", "COUNT", "P50", "P90", "P95", "P99"]},
            "Which field `value` carries (default AVG).",
        ),
        _tags(),
        _query(
            "group_by",
            {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": MAX_GROUP_BY},
            "Tag key to group by, repeatable.",
            many=True,
        ),
        _limit(1000),
        _query("format", {"type": "string", "enum": ["json", "csv"]}, "json (default) or a CSV report."),
        _query("locale", {"type": "string", "enum": ["en", "pl"]}, "Number format and unit names of the CSV."),
    ]
    return {
        "/api/v1/metrics": {
            "delete": {
                "summary": "Purge the tenant's metrics older than a time (admin only).",
                "tags": ["admin"],
                "parameters": [
                    _query(
                        "metric", _names(1, MAX_METRICS), "Metric name, repeatable; none = every metric.", many=True
                    ),
                    _query("older_than", {"type": "string", "pattern": TIME_PATTERN}, "Purge before this.", True),
                ],
                "responses": {
                    "200": _json(schemas.PurgeOut, "Rows (or in-memory windows) deleted."),
                    **READ_ERRORS,
                    "403": _error("Only the admin role may purge."),
                    "503": _error("PostgreSQL is configured but cannot be reached; nothing was purged."),
                },
            },
            "post": {
                "summary": "Record one metric (the seed's MetricSchema).",
                "tags": ["write"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(schemas.MetricIn)}}},
                "responses": {"201": _json(schemas.MetricIdOut, "Kept durably."), **WRITE_ERRORS},
            },
        },
        "/api/v1/metrics/batch": {
            "post": {
                "summary": "Record 1..500 metrics; valid items are kept, invalid ones named.",
                "tags": ["write"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "metrics": {
                                        "type": "array",
                                        # Each item is checked alone: one that is not a
                                        # MetricIn is answered in `failed`, not refused.
                                        "items": {
                                            "anyOf": [_ref(schemas.MetricIn), {}],
                                            "description": "A MetricIn; an invalid one comes back in failed.",
                                        },
                                        "minItems": 1,
                                        "maxItems": schemas.MAX_BATCH,
                                    }
                                },
                                "required": ["metrics"],
                                "additionalProperties": False,
                            }
                        }
                    },
                },
                "responses": {"200": _json(schemas.BatchOut, "Valid items kept; failures listed."), **WRITE_ERRORS},
            }
        },
        "/api/v2/write": {
            "post": _line_write(
                "InfluxDB 2 line protocol write.",
                ["ns", "us", "ms", "s"],
                [
                    _query("org", {"type": "string"}, "Accepted and ignored."),
                    _query("bucket", {"type": "string"}, "Accepted and ignored."),
                ],
            )
        },
        "/write": {
            "post": _line_write(
                "InfluxDB 1 line protocol write.",
                ["n", "ns", "u", "us", "ms", "s"],
                [_query("db", {"type": "string"}, "Accepted and ignored.")],
            )
        },
        "/api/v1/query": {
            "get": {
                "summary": "Aggregated periods of 1..10 metrics (the seed's MetricsResponseSchema).",
                "tags": ["read"],
                "parameters": query_params,
                "responses": {
                    "200": {
                        "description": "Rows, oldest first; text/csv with format=csv.",
                        "content": {
                            "application/json": {"schema": _ref(schemas.QueryOut)},
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    **READ_ERRORS,
                },
            }
        },
        "/api/v1/realtime": {
            "get": {
                "summary": "The current value of a metric.",
                "tags": ["read"],
                "parameters": [
                    _query("metric", _names(1, 1), "Metric name.", required=True, many=True),
                    _tags(),
                ],
                "responses": {"200": _json(schemas.RealtimeOut, "The value, or null."), **READ_ERRORS},
            }
        },
        "/api/v1/series": {
            "get": {
                "summary": "Known series of the tenant.",
                "tags": ["read"],
                "parameters": [
                    _query("metric", {"type": "string"}, 'Name prefix ("" = every series).'),
                    _tags(),
                    _limit(1000),
                ],
                "responses": {"200": _json(schemas.SeriesOut, "Series, by name."), **READ_ERRORS},
            }
        },
        "/api/v1/cardinality": {
            "get": {
                "summary": "Metric names ranked by active and by rejected series.",
                "tags": ["read"],
                "parameters": [_limit(20)],
                "responses": {"200": _json(schemas.CardinalityOut, "Rankings."), **READ_ERRORS},
            }
        },
        "/api/v1/stream": {
            "get": {
                "summary": "Server-sent events: one `metric` event per matching sample, heartbeats, `dropped`.",
                "tags": ["stream"],
                "parameters": [
                    _query("metric", _names(1, MAX_STREAM_METRICS), "Metric name, repeatable.", True, True),
                    _tags(),
                ],
                "responses": {
                    "200": {
                        "description": "An endless text/event-stream; `metric` events carry a StreamEvent.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **READ_ERRORS,
                    "429": _error("The tenant has streams.max_per_tenant streams open."),
                },
            }
        },
        "/api/v1/ws": {
            "get": {
                "summary": 'WebSocket; first message {"subscribe": {"metricNames": [...], "tags": {...}}}.',
                "tags": ["stream"],
                "responses": {
                    "101": {"description": "Upgraded; JSON text messages as the SSE stream's events."},
                    **READ_ERRORS,
                    "429": _error("The tenant has streams.max_per_tenant streams open."),
                },
            }
        },
        "/api/v1/stats": {
            "get": {
                "summary": "Ingest counters.",
                "tags": ["operate"],
                "responses": {
                    "200": {
                        "description": "Counters.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus exposition of the daemon's own metrics.",
                "tags": ["operate"],
                "responses": {
                    "200": {
                        "description": "Text format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness.",
                "tags": ["operate"],
                "responses": {"200": _json(schemas.HealthOut, "Serving.")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: listeners bound, ring not full, storage writable; sinks listed.",
                "tags": ["operate"],
                "responses": {
                    "200": _json(schemas.HealthOut, "Ready (sinks may be degraded)."),
                    "503": _json(schemas.HealthOut, "Not ready; the failing check is named."),
                },
            }
        },
        "/": {
            "get": {
                "summary": "The dashboard page.",
                "tags": ["operate"],
                "responses": {
                    "200": {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/dashboard/{name}": {
            "get": {
                "summary": "The dashboard's static files.",
                "tags": ["operate"],
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "The file."},
                    "404": _error("No such file."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This description.",
                "tags": ["operate"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def document() -> Json:
    _, components = msgspec.json.schema_components(_STRUCTS, ref_template=REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "collectord HTTP API",
            "version": __version__,
            "description": "Record, query and stream metrics. Errors: "
            '{"error": {"code", "message", "details"}}; Accept-Language: pl gives Polish messages.',
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {}],
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths(),
    }


class OpenApi:
    def __init__(self) -> None:
        self.body = msgspec.json.encode(document())

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/openapi.json", self.openapi)]

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self.body, content_type="application/json")
