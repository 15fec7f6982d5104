"""The sinks a config asks for, built before recovery so they get their high-water marks back.

Each backend's client library is imported only when it is configured: the embedded default
(and every daemon without that backend) starts without paying for the import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collectord.sinks.base import Sink

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline


def build_sinks(pipeline: Pipeline) -> list[Sink]:
    """One sink per configured backend; none with the embedded default."""
    config = pipeline.config
    sinks: list[Sink] = []
    if config.influx.url:
        from collectord.sinks.influx import InfluxSink

        sinks.append(InfluxSink(config, config.storage.resolve_data_dir() / "spool" / "influx"))
    if config.postgres.dsn:
        from collectord.sinks.postgres.sink import PostgresSink

        sinks.append(PostgresSink(pipeline))
    if config.redis.url:
        from collectord.redis.sink import RedisSink

        sinks.append(RedisSink(pipeline))
    return sinks
