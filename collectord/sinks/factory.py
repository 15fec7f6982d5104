"""The sinks a config asks for, built before recovery so they get their high-water marks back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collectord.redis.sink import RedisSink
from collectord.sinks.base import Sink
from collectord.sinks.influx import InfluxSink
from collectord.sinks.postgres.sink import PostgresSink

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline


def build_sinks(pipeline: Pipeline) -> list[Sink]:
    """One sink per configured backend; none with the embedded default."""
    config = pipeline.config
    sinks: list[Sink] = []
    if config.influx.url:
        sinks.append(InfluxSink(config, config.storage.resolve_data_dir() / "spool" / "influx"))
    if config.postgres.dsn:
        sinks.append(PostgresSink(pipeline))
    if config.redis.url:
        sinks.append(RedisSink(pipeline))
    return sinks
