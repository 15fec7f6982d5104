"""Ingest counters as JSON (`/api/v1/stats`), as Prometheus text (`/metrics`), and health."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collectord.api.errors import json_response
from collectord.api.self_metrics import SelfMetricsCollector
from collectord.pipeline import Pipeline
from collectord.protocols.parse_stats import ParseStats

KernelDrops = Callable[[], dict[str, int | None]]


class WorkersView(Protocol):
    """What /api/v1/stats shows of the worker processes (collectord/ingest/pool.py)."""

    def document(self) -> dict[str, object]: ...


def _protocol_stats(stats: ParseStats) -> dict[str, object]:
    return {
        "lines": stats.lines,
        "accepted": stats.accepted,
        "rejected": sum(stats.rejected.values()),
        "badLines": dict(stats.rejected),
        "events": stats.events,
        "serviceChecks": stats.service_checks,
        "fieldsSkipped": stats.fields_skipped,
    }


def stats_document(pipeline: Pipeline, kernel_drops: KernelDrops) -> dict[str, object]:
    """One document with everything a sysadmin asks when numbers look wrong."""
    drops = kernel_drops()
    protocols = {"statsd": pipeline.statsd_stats, "line": pipeline.line_stats}
    bad: dict[str, int] = {}
    for stats in protocols.values():
        for reason, count in stats.rejected.items():
            bad[reason] = bad.get(reason, 0) + count
    sources = {
        name: {
            "packets": c.packets,
            "bytes": c.bytes,
            "droppedSamples": c.dropped_samples,
            "kernelDrops": drops.get(name),
            "connectionsOpen": c.connections_open,
            "connectionsTotal": c.connections_total,
            "connectionsRefused": c.connections_refused,
            "idleClosed": c.idle_closed,
            "linesTooLong": c.lines_too_long,
            "backpressurePauses": c.paused,
            "oversizedDatagrams": c.oversized,
        }
        for name, c in pipeline.sources.items()
    }
    aggregator = pipeline.aggregator
    ring = pipeline.ring
    flush = pipeline.flush
    return {
        "uptimeSeconds": round(pipeline.clock.now() - pipeline.started_at, 3),
        "packets": sum(c.packets for c in pipeline.sources.values()),
        "lines": sum(s.lines for s in protocols.values()),
        "accepted": sum(s.accepted for s in protocols.values()),
        "rejected": sum(bad.values()),
        "badLines": bad,
        "dropped": ring.dropped_samples,
        "kernelDrops": sum(d for d in drops.values() if d is not None),
        "protocols": {name: _protocol_stats(stats) for name, stats in protocols.items()},
        "sources": sources,
        "ring": {
            "capacity": ring.capacity,
            "fill": ring.fill,
            "fillRatio": ring.fill / ring.capacity,
            "highWater": ring.high_water,
            "droppedSamples": ring.dropped_samples,
            "droppedBatches": ring.dropped_batches,
        },
        "tcpConnections": sum(c.connections_open for c in pipeline.sources.values()),
        "aggregation": {
            "samples": aggregator.counters.samples,
            "rejectedSamples": dict(aggregator.counters.rejected),
            "series": aggregator.table.count,
            "maxSeries": aggregator.table.limits.max_series,
        },
        "wal": pipeline.journal.stats() if pipeline.journal is not None else None,
        "sinks": {sink.name: sink.status().document() for sink in pipeline.sinks},
        "streams": {"clients": pipeline.hub.stream_count()},
        "flush": {
            "interval": aggregator.settings.flush_interval,
            "flushes": flush.flushes,
            "lastRecords": flush.last_records,
            "lastDurationMs": round(flush.last_duration_s * 1000.0, 3),
        },
    }


class PipelineCollector(Collector):
    """Reads the pipeline's counters at scrape time: the hot path pays nothing for /metrics."""

    def __init__(self, pipeline: Pipeline, kernel_drops: KernelDrops) -> None:
        self.pipeline = pipeline
        self.kernel_drops = kernel_drops

    def collect(self) -> Iterator[Metric]:
        p = self.pipeline
        packets = CounterMetricFamily("collectord_packets", "Datagrams or TCP reads received", labels=["source"])
        received = CounterMetricFamily("collectord_bytes_received", "Bytes received", labels=["source"])
        dropped = CounterMetricFamily(
            "collectord_source_dropped_samples", "Samples dropped because the ring was full", labels=["source"]
        )
        kernel = GaugeMetricFamily(
            "collectord_kernel_receive_drops", "The kernel's receive-buffer drops for the socket", labels=["source"]
        )
        connections = GaugeMetricFamily("collectord_tcp_connections", "Open TCP connections", labels=["source"])
        drops = self.kernel_drops()
        for name, c in p.sources.items():
            packets.add_metric([name], c.packets)
            received.add_metric([name], c.bytes)
            dropped.add_metric([name], c.dropped_samples)
            connections.add_metric([name], c.connections_open)
            if drops.get(name) is not None:
                kernel.add_metric([name], float(drops[name] or 0))
        yield from (packets, received, dropped, kernel, connections)
        lines = CounterMetricFamily("collectord_lines", "Lines parsed", labels=["protocol"])
        accepted = CounterMetricFamily("collectord_lines_accepted", "Lines accepted", labels=["protocol"])
        bad = CounterMetricFamily("collectord_bad_lines", "Lines rejected, by reason", labels=["protocol", "reason"])
        for protocol, stats in (("statsd", p.statsd_stats), ("line", p.line_stats)):
            lines.add_metric([protocol], stats.lines)
            accepted.add_metric([protocol], stats.accepted)
            for reason, count in stats.rejected.items():
                bad.add_metric([protocol, reason], count)
        yield from (lines, accepted, bad)
        ring = p.ring
        yield GaugeMetricFamily("collectord_ring_fill", "Samples queued in the ring", value=ring.fill)
        yield GaugeMetricFamily("collectord_ring_capacity", "Ring capacity in samples", value=ring.capacity)
        yield CounterMetricFamily(
            "collectord_ring_dropped_samples", "Samples the full ring turned away", value=ring.dropped_samples
        )
        aggregator = p.aggregator
        yield CounterMetricFamily(
            "collectord_samples_aggregated", "Samples applied to windows", value=aggregator.counters.samples
        )
        rejected = CounterMetricFamily(
            "collectord_samples_rejected", "Samples turned away by aggregation, by reason", labels=["reason"]
        )
        for reason, count in aggregator.counters.rejected.items():
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily("collectord_series", "Series held in memory", value=aggregator.table.count)
        yield CounterMetricFamily("collectord_flushes", "Flush cycles completed", value=p.flush.flushes)
        yield GaugeMetricFamily(
            "collectord_flush_last_duration_seconds", "Duration of the last flush cycle", value=p.flush.last_duration_s
        )
        yield from _sink_metrics(p)


def _sink_metrics(p: Pipeline) -> Iterator[Metric]:
    connected = GaugeMetricFamily("collectord_sink_connected", "1 when the sink's backend answers", labels=["sink"])
    lag = GaugeMetricFamily(
        "collectord_sink_lag_seconds", "How far the sink's writes trail its flushes", labels=["sink"]
    )
    queued = GaugeMetricFamily("collectord_sink_queued", "Items waiting to be written", labels=["sink"])
    written = CounterMetricFamily("collectord_sink_written", "Items written", labels=["sink"])
    errors = CounterMetricFamily("collectord_sink_errors", "Failed writes", labels=["sink"])
    retries = CounterMetricFamily("collectord_sink_retries", "Retried writes", labels=["sink"])
    dropped = CounterMetricFamily("collectord_sink_dropped", "Items given up (spool full or refused)", labels=["sink"])
    for sink in p.sinks:
        status = sink.status()
        connected.add_metric([sink.name], 1.0 if status.connected else 0.0)
        lag.add_metric([sink.name], status.lag_seconds)
        queued.add_metric([sink.name], status.queued)
        written.add_metric([sink.name], status.written)
        errors.add_metric([sink.name], status.errors)
        retries.add_metric([sink.name], status.retries)
        dropped.add_metric([sink.name], status.dropped)
    yield from (connected, lag, queued, written, errors, retries, dropped)
    yield GaugeMetricFamily(
        "collectord_stream_clients", "SSE and WebSocket clients connected", value=p.hub.stream_count()
    )


class StatsApi:
    def __init__(self, pipeline: Pipeline, kernel_drops: KernelDrops) -> None:
        self.pipeline = pipeline
        self.kernel_drops = kernel_drops
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(PipelineCollector(pipeline, kernel_drops))
        self.registry.register(SelfMetricsCollector(pipeline))
        ProcessCollector(registry=self.registry)
        self.ready = False
        self.workers: WorkersView | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/api/v1/stats", self.stats),
            web.get("/metrics", self.metrics),
        ]

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        ring = self.pipeline.ring
        journal = self.pipeline.journal
        checks = {"listeners": self.ready, "ring": not ring.full, "storage": journal is None or journal.healthy}
        ok = all(checks.values())
        # A sink whose backend is away does not make the daemon unready: it spools and catches
        # up. It shows as degraded, with its lag, so an operator sees it.
        sinks = {}
        for sink in self.pipeline.sinks:
            status = sink.status()
            sinks[sink.name] = {"connected": status.connected, "lagSeconds": round(status.lag_seconds, 3)}
        degraded = [name for name, s in sinks.items() if not s["connected"]]
        body: dict[str, object] = {"status": "ready" if ok else "not ready", "checks": checks, "sinks": sinks}
        if degraded:
            body["degraded"] = degraded
        return json_response(body, status=200 if ok else 503)

    async def stats(self, request: web.Request) -> web.StreamResponse:
        self.pipeline.catch_up()
        document = stats_document(self.pipeline, self.kernel_drops)
        document["workers"] = self.workers.document() if self.workers is not None else {"configured": 0}
        return json_response(document)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        self.pipeline.catch_up()
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )
