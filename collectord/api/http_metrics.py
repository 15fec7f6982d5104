"""Counts every HTTP request by method, route template and final status, and times it.

Routes are labelled by their template ("/api/v1/query", "/static/{path}"), never by the raw
path, so a scan of random URLs adds one label value ("unmatched"), not one per URL.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from collectord.api.errors import Handler
from collectord.selfmetrics import HttpRequests

UNMATCHED = "unmatched"


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def http_metrics_middleware(requests: HttpRequests) -> Middleware:
    """Outermost middleware: it sees the status the error middleware settled on."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            requests.observe(request.method, route_template(request), status, time.perf_counter() - began)

    return middleware
