"""The HTTP side port: one aiohttp application, every route scoped by the Authenticator."""

from __future__ import annotations

from aiohttp import web

from collectord.api.auth import Authenticator
from collectord.api.dashboard_api import DashboardApi
from collectord.api.errors import MAX_BODY_KEY, error_middleware
from collectord.api.http_metrics import http_metrics_middleware
from collectord.api.openapi import OpenApi
from collectord.api.purge_api import PurgeApi
from collectord.api.query_api import QueryApi
from collectord.api.stats_api import KernelDrops, StatsApi
from collectord.api.stream_api import STREAM_TASKS, StreamApi
from collectord.api.units import UNITS, UnitBook
from collectord.api.write_api import WriteApi
from collectord.pipeline import Pipeline

MAX_BODY = 4 * 1024 * 1024


def build_app(pipeline: Pipeline, kernel_drops: KernelDrops) -> tuple[web.Application, StatsApi]:
    middlewares = [http_metrics_middleware(pipeline.self_metrics.http), error_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[MAX_BODY_KEY] = MAX_BODY
    storage = pipeline.config.storage
    app[UNITS] = UnitBook(storage.resolve_data_dir() / "units.json" if storage.wal else None)
    auth = Authenticator(pipeline.config)
    pipeline.reload_hooks.append(auth.reload)
    stats = StatsApi(pipeline, kernel_drops)
    app.add_routes(stats.routes())
    app.add_routes(QueryApi(pipeline, auth).routes())
    app.add_routes(WriteApi(pipeline, auth, app[UNITS]).routes())
    app[STREAM_TASKS] = set()
    app.add_routes(StreamApi(pipeline, auth, pipeline.config.streams.heartbeat_interval).routes())
    app.on_shutdown.append(StreamApi.on_shutdown)
    app.add_routes(OpenApi().routes())
    app.add_routes(DashboardApi().routes())
    app.add_routes(PurgeApi(pipeline, auth).routes())
    return app, stats
