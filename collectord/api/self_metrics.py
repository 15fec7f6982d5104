"""/metrics beyond the ingest counters: WAL, flush, HTTP and sink-write durations, reloads,
suppressed log lines and the build. Read at scrape time from plain objects
(collectord/selfmetrics.py); every family is listed in docs/operations.md (a test checks it).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from collectord import __version__
from collectord.logs import repeat_limiter
from collectord.pipeline import Pipeline
from collectord.selfmetrics import DurationHistogram


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: DurationHistogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class SelfMetricsCollector(Collector):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        yield from self._build()
        yield from self._wal()
        yield from self._durations()
        yield from self._http()
        yield from self._sink_writes()
        yield from self._reloads()

    def _build(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("collectord_build_info", "Always 1; the version as a label", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        p = self.pipeline
        yield GaugeMetricFamily(
            "collectord_uptime_seconds", "Seconds since the daemon started", value=p.clock.now() - p.started_at
        )
        yield GaugeMetricFamily("collectord_ring_high_water", "Most samples the ring has held", value=p.ring.high_water)
        yield CounterMetricFamily(
            "collectord_log_messages_suppressed",
            "Log records held back by the repeat limiter",
            value=repeat_limiter().suppressed_total,
        )

    def _wal(self) -> Iterator[Metric]:
        journal = self.pipeline.journal
        if journal is None:
            return
        stats = journal.stats()
        yield GaugeMetricFamily(
            "collectord_wal_healthy", "1 while the data directory takes writes", value=int(stats["healthy"])
        )
        counters = (
            ("collectord_wal_records_appended", "Batches appended to the write-ahead log", "recordsAppended"),
            ("collectord_wal_bytes_written", "Bytes written to the write-ahead log", "bytesWritten"),
            ("collectord_wal_commits", "Write-ahead log commits", "commits"),
            ("collectord_wal_fsyncs", "Write-ahead log fsyncs", "fsyncs"),
            ("collectord_wal_write_errors", "Failed write-ahead log writes", "writeErrors"),
            ("collectord_wal_skipped_batches", "Batches not logged during disk trouble", "skippedBatches"),
            ("collectord_wal_truncated_tails", "Torn or corrupt log tails cut off", "truncatedTails"),
            ("collectord_checkpoints", "Checkpoints written", "checkpoints"),
        )
        for name, text, key in counters:
            yield CounterMetricFamily(name, text, value=stats[key])
        yield GaugeMetricFamily("collectord_wal_segments", "Log segments on disk", value=stats["segments"])
        yield GaugeMetricFamily(
            "collectord_wal_pending_bytes", "Bytes appended but not yet committed", value=stats["pendingBytes"]
        )
        yield GaugeMetricFamily(
            "collectord_checkpoint_last_bytes", "Size of the last checkpoint", value=stats["lastCheckpointBytes"]
        )
        yield GaugeMetricFamily(
            "collectord_checkpoint_last_duration_seconds",
            "How long the last checkpoint took",
            value=stats["lastCheckpointSeconds"],
        )
        yield GaugeMetricFamily(
            "collectord_recovery_duration_seconds",
            "How long start-up recovery took",
            value=stats["recovery"]["seconds"],
        )

    def _durations(self) -> Iterator[Metric]:
        flush = HistogramMetricFamily("collectord_flush_duration_seconds", "Aggregation flush cycles")
        _add_histogram(flush, [], self.pipeline.self_metrics.flush_durations)
        yield flush

    def _http(self) -> Iterator[Metric]:
        http = self.pipeline.self_metrics.http
        requests = CounterMetricFamily(
            "collectord_http_requests",
            "HTTP requests by route template and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in http.counts.items():
            requests.add_metric([method, route, str(status)], count)
        yield requests
        durations = HistogramMetricFamily(
            "collectord_http_request_duration_seconds", "HTTP request durations by route template", labels=["route"]
        )
        for route, histogram in http.durations.items():
            _add_histogram(durations, [route], histogram)
        yield durations

    def _sink_writes(self) -> Iterator[Metric]:
        durations = HistogramMetricFamily(
            "collectord_sink_write_duration_seconds", "Sink write durations", labels=["sink"]
        )
        for sink in self.pipeline.sinks:
            # Optional on a sink: the Sink protocol does not require it.
            histogram = getattr(sink, "write_durations", None)
            if isinstance(histogram, DurationHistogram):
                _add_histogram(durations, [sink.name], histogram)
        yield durations

    def _reloads(self) -> Iterator[Metric]:
        reloads = self.pipeline.self_metrics.reloads
        outcomes = CounterMetricFamily("collectord_config_reloads", "SIGHUP reloads by result", labels=["result"])
        outcomes.add_metric(["success"], reloads.succeeded)
        outcomes.add_metric(["failure"], reloads.failed)
        yield outcomes
        yield GaugeMetricFamily(
            "collectord_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful reload (0: none yet)",
            value=reloads.last_success,
        )
