"""In-process pipelines wired to Redis, with a clock the test moves."""

from __future__ import annotations

from pathlib import Path

from collectord.clock import ManualClock
from collectord.config import load_config
from collectord.model import Sample
from collectord.pipeline import Pipeline
from collectord.protocols.statsd import StatsdParser
from collectord.redis.sink import RedisSink
from collectord.ring import PAYLOAD_STATSD, Batch
from tests.redis.conftest import REDIS_URL

START = 1_800_000_000.0  # an hour boundary


def redis_pipeline(
    tmp_path: Path, clock: ManualClock, prefix: str, name: str = "a", **settings: str
) -> tuple[Pipeline, RedisSink]:
    environ = {
        "COLLECTORD_STORAGE_DATA_DIR": str(tmp_path / name),
        "COLLECTORD_STORAGE_WAL": "false",
        "COLLECTORD_REDIS_URL": REDIS_URL,
        "COLLECTORD_REDIS_KEY_PREFIX": prefix,
        "COLLECTORD_INSTANCE_NAME": name,
        **{f"COLLECTORD_{key.upper()}": value for key, value in settings.items()},
    }
    pipeline = Pipeline(load_config(None, environ), clock)
    sink = RedisSink(pipeline)
    pipeline.add_sink(sink)
    pipeline.recover()
    sink.realtime.baseline(pipeline.aggregator)
    return pipeline, sink


def send(pipeline: Pipeline, packet: bytes, tenant: str = "default", received: float | None = None) -> None:
    samples: list[Sample] = []
    StatsdParser(pipeline.config.limits).parse(packet, samples)
    when = pipeline.clock.now() if received is None else received
    pipeline.ring.offer(Batch(tenant, samples, when, PAYLOAD_STATSD, packet))
    pipeline.catch_up()
