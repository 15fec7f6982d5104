"""Replaying the log rebuilds exactly the state live ingest built (the journal's promise)."""

from __future__ import annotations

import random
import time
from pathlib import Path

from collectord.aggregation.aggregator import Aggregator
from collectord.aggregation.query import Query, run_query
from collectord.config import load_config
from collectord.model import Sample
from collectord.pipeline import aggregation_settings
from collectord.protocols.statsd import StatsdParser
from collectord.ring import PAYLOAD_STATSD, Batch
from collectord.storage.journal import Journal, decode_samples, encode_samples


def test_replay_equals_live_ingest_for_every_type(tmp_path: Path) -> None:
    config = load_config(None, {"COLLECTORD_STORAGE_DATA_DIR": str(tmp_path)})
    rng = random.Random(8)
    start = time.time() - 1800
    live = Aggregator(config.limits, aggregation_settings(config), start)
    journal = Journal(config)
    journal.wal.open()
    parser = StatsdParser(config.limits)
    shapes = ["lat.%d:%d|ms|@0.5", "hits.%d:%d|c", "temp.%d:%d|g", "users.%d:%d|s", "dist.%d:%d|d"]
    for step in range(3000):
        received = start + step * 0.4
        lines = [rng.choice(shapes) % (rng.randrange(20), rng.randrange(1, 5000)) for _ in range(40)]
        packet = "\n".join(lines).encode()
        samples: list[Sample] = []
        parser.parse(packet, samples)
        live.advance(received)
        live.apply(Batch("default", samples, received))
        journal.wal.append(PAYLOAD_STATSD, "default", received, packet)
        if step % 50 == 0:
            journal.wal.commit()
    journal.wal.commit()
    journal.wal.close()
    replayed = Journal(config).recover(lambda: Aggregator(config.limits, aggregation_settings(config), time.time()))
    end = start + 3000 * 0.4
    live.advance(end)
    replayed.advance(end)
    for name in ("lat.3", "hits.4", "temp.5", "users.6", "dist.7"):
        for granularity in ("1m", "5m", "1h"):
            query = Query("default", [name], start - 3600, end + 3600, granularity, "P99", limit=10000)
            assert run_query(replayed, query) == run_query(live, query), (name, granularity)


def test_sample_payloads_round_trip() -> None:
    samples: list[Sample] = [
        (("a.b", (("k", "v"),)), 0, 1.5, 10.0, None),
        (("s", ()), 5, "member", 1.0, 1_700_000_000.5),
    ]
    assert decode_samples(encode_samples(samples)) == samples
