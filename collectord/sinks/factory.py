"""The sinks a config asks for, built before recovery so they get their high-water marks back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from collectord.redis.sink import RedisSink
from collectord.sinks.base import Sink

if TYPE_CHECKING:
    from collectord.pipeline import Pipeline


def build_sinks(pipeline: Pipeline) -> list[Sink]:
    """One sink per configured backend; none with the embedded default."""
    sinks: list[Sink] = []
    if pipeline.config.redis.url:
        sinks.append(RedisSink(pipeline))
    return sinks
