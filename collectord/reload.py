"""SIGHUP: re-read the config file and apply, while running, everything that can change live.

An invalid file is refused with one error line and the daemon keeps running on the config it
has. Otherwise the keys in `LIVE` are applied (listeners by binding the new socket before the
old one closes, so no packet or connection is dropped), the keys that need a restart keep their
running value and are named in a warning, and then `Pipeline.reload_hooks` run with (old, new):
sinks and APIs register there to pick up their own settings. Reloads never overlap.

Samples logged before a change of limits or parser settings and replayed after a crash are
parsed with the config read at that start, as for every restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from collectord.config import Config, ConfigError, load_config, split_host_port
from collectord.logs import setup_logging
from collectord.model import MetricType
from collectord.pipeline import aggregation_settings
from collectord.protocols.line import LineParser
from collectord.protocols.statsd import StatsdParser
from collectord.ring import PAYLOAD_LINE, PAYLOAD_STATSD
from collectord.sources.tcp import TcpSettings, TcpSource
from collectord.sources.udp import PacketParser, open_udp, open_unix_datagram

if TYPE_CHECKING:
    from collectord.daemon import Daemon

log = logging.getLogger("collectord.reload")

# What a reload applies, and how ("section.*": the whole section). Every other key keeps its
# running value until a restart. docs/configuration.md lists both (a test compares them).
# A sink that applies its own keys in a reload hook adds them here.
LIVE: dict[str, str] = {
    "listen.*": "the new socket is bound before the old one closes; open TCP connections stay",
    "ingest.tenant": "for samples read after the reload",
    "ingest.udp_receive_buffer": "set on the open sockets",
    "ingest.max_datagram": "from the next datagram",
    "ingest.tcp_max_line": "from the next read",
    "ingest.tcp_idle_timeout": "at the next idle sweep",
    "ingest.tcp_max_connections": "for the next connection",
    "ingest.worker_ship_interval": "workers are restarted with it (they ship what they hold first)",
    "ingest.container_id": "parsers are rebuilt",
    "ingest.line_precision": "parsers are rebuilt",
    "ingest.line_types": "parsers are rebuilt",
    "limits.*": "parsers are rebuilt; series limits apply to the next new series",
    "aggregate.late_allowance": "from the next sample",
    "aggregate.series_idle_expiry": "at the next flush",
    "aggregate.retention_1m": "at the next flush",
    "aggregate.retention_5m": "at the next flush",
    "aggregate.retention_1h": "at the next flush",
    "aggregate.retention_1d": "at the next flush",
    "aggregate.emit_idle_gauges": "at the next flush",
    "storage.checkpoint_interval": "at the next tick",
    "storage.stop_timeout": "at the next stop",
    "storage.sink_drain_timeout": "at the next stop",
    "auth.*": "from the next request (tokens, write rate limits; the limiter's buckets carry over)",
    "log.*": "from the next line",
}

PARSER_KEYS = ("limits.", "ingest.container_id", "ingest.line_precision", "ingest.line_types")
# How long a moved UDP listener's old socket stays open so it hands over what is queued in it.
DATAGRAM_HANDOVER = 0.1

_DATAGRAM_KINDS = {"statsd_udp": PAYLOAD_STATSD, "statsd_unix": PAYLOAD_STATSD, "line_udp": PAYLOAD_LINE}
_STREAM_KINDS = {"statsd_tcp": PAYLOAD_STATSD, "line_tcp": PAYLOAD_LINE}


def is_live(key: str) -> bool:
    """True when a reload applies the dotted key ("ingest.tenant") without a restart."""
    return key in LIVE or f"{key.split('.', 1)[0]}.*" in LIVE


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs, in file order."""
    changed = []
    for section in msgspec.structs.fields(Config):
        before, after = getattr(old, section.name), getattr(new, section.name)
        if before == after:
            continue
        for field in msgspec.structs.fields(type(before)):
            if getattr(before, field.name) != getattr(after, field.name):
                changed.append(f"{section.name}.{field.name}")
    return changed


def _with(config: Config, key: str, value: Any) -> Config:
    section, name = key.split(".", 1)
    table = msgspec.structs.replace(getattr(config, section), **{name: value})
    return msgspec.structs.replace(config, **{section: table})


def merge(running: Config, loaded: Config) -> tuple[Config, list[str]]:
    """`loaded` with every key that needs a restart kept at its running value, and those keys."""
    held = [key for key in changed_keys(running, loaded) if not is_live(key)]
    merged = loaded
    for key in held:
        section, name = key.split(".", 1)
        merged = _with(merged, key, getattr(getattr(running, section), name))
    return merged, held


def build_parsers(config: Config, statsd: StatsdParser, line: LineParser) -> tuple[StatsdParser, LineParser]:
    """Fresh parsers for `config` (empty caches: a cached line must not skip new limits),
    counting into the running parsers' stats."""
    ingest = config.ingest
    types = {name: MetricType(kind.upper()) for name, kind in ingest.line_types.items()}
    return (
        StatsdParser(config.limits, container_id=ingest.container_id, stats=statsd.stats),
        LineParser(config.limits, precision=ingest.line_precision, types=types, stats=line.stats),
    )


class Reloader:
    """Runs reloads for one daemon, one at a time, never before its start-up has finished."""

    def __init__(self, daemon: Daemon, path: str | os.PathLike[str] | None) -> None:
        self.daemon = daemon
        self.path = None if path is None else os.fspath(path)
        self.started = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    def request(self) -> None:
        """The SIGHUP handler: schedule a reload."""
        task = asyncio.get_running_loop().create_task(self._when_started())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _when_started(self) -> bool:
        await self.started.wait()
        if self.daemon.stopping.is_set():
            return False
        return await self.reload()

    async def reload(self) -> bool:
        """Re-read and apply the config; False (and the running config kept) when it is invalid."""
        async with self._lock:
            daemon = self.daemon
            daemon.notifier.reloading()
            try:
                return await self._reload()
            finally:
                daemon.notifier.ready(daemon.status_line())

    async def _reload(self) -> bool:
        daemon = self.daemon
        pipeline = daemon.pipeline
        stats = pipeline.self_metrics.reloads
        running = daemon.config
        try:
            loaded = load_config(self.path)
        except ConfigError as err:
            stats.failed += 1
            where = f"{err.source}: " if err.source else ""
            log.error(
                "reload refused: invalid config; still running on the previous one",
                extra={"error": f"{where}{err}", "file": self.path or "(defaults)"},
            )
            return False
        new, held = merge(running, loaded)
        new = await self._listeners(running, new)
        changed = changed_keys(running, new)
        if any(key.startswith(PARSER_KEYS) for key in changed):
            pipeline.statsd_parser, pipeline.line_parser = build_parsers(
                new, pipeline.statsd_parser, pipeline.line_parser
            )
            pipeline.aggregator.table.limits = new.limits
        self._sources(new, resize="ingest.udp_receive_buffer" in changed)
        if any(key.startswith("aggregate.") for key in changed):
            interval = pipeline.aggregator.settings.flush_interval
            pipeline.aggregator.settings = dataclasses.replace(aggregation_settings(new), flush_interval=interval)
        daemon.config = pipeline.config = new
        for hook in list(pipeline.reload_hooks):
            try:
                result = hook(running, new)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("reload hook failed", extra={"hook": getattr(hook, "__qualname__", repr(hook))})
        stats.succeeded += 1
        stats.last_success = time.time()
        fields: dict[str, object] = {"changed": " ".join(changed) or "nothing", "file": self.path or "(defaults)"}
        if held:
            fields["restart_needed"] = " ".join(held)
            log.warning("config reloaded; some changes wait for a restart", extra=fields)
        else:
            log.info("config reloaded", extra=fields)
        # Last, so the line above still goes out under the settings the reload began with.
        if running.log != new.log:
            setup_logging(new.log.level, new.log.format)
        return True

    # ------------------------------------------------------------------ listeners

    async def _listeners(self, running: Config, new: Config) -> Config:
        """Move every listener whose address changed; one that cannot bind keeps its old address."""
        for key in ("statsd_udp", "line_udp", "statsd_unix", "statsd_tcp", "line_tcp", "http"):
            before, after = getattr(running.listen, key), getattr(new.listen, key)
            if before == after:
                continue
            pool = self.daemon.pool
            if pool is not None and (key == "statsd_udp" or (key == "statsd_tcp" and pool.owns_tcp)):
                continue  # the workers' sockets: their reload hook binds the new address
            try:
                if key in _DATAGRAM_KINDS:
                    await self._move_datagram(key, before, after, new)
                elif key in _STREAM_KINDS:
                    await self._move_stream(key, after, new)
                else:
                    await self._move_http(after)
            except OSError as error:
                log.error(
                    "cannot listen on the new address; keeping the old one",
                    extra={"source": key, "address": after, "error": str(error)},
                )
                new = _with(new, f"listen.{key}", before)
        return new

    def _parser(self, key: str) -> PacketParser:
        p = self.daemon.pipeline
        kind = _DATAGRAM_KINDS.get(key, _STREAM_KINDS.get(key))
        return p.line_parser if kind == PAYLOAD_LINE else p.statsd_parser

    async def _move_datagram(self, key: str, before: str, after: str, config: Config) -> None:
        daemon, p, ingest = self.daemon, self.daemon.pipeline, config.ingest
        old = next((s for s in daemon.datagram_sources if s.name == key), None)
        if after:
            args = (self._parser(key), p.ring, ingest.tenant, ingest.udp_receive_buffer, p.counters_for(key))
            if key == "statsd_unix":
                fresh = await open_unix_datagram(key, after, *args, ingest.max_datagram)
            else:
                fresh = await open_udp(key, after, *args, ingest.max_datagram, _DATAGRAM_KINDS[key])
            daemon.datagram_sources.append(fresh)
        if old is not None:
            await asyncio.sleep(DATAGRAM_HANDOVER)
            old.close()
            daemon.datagram_sources.remove(old)
            if key == "statsd_unix" and Path(before).is_socket():
                Path(before).unlink()
        log.info("listener moved", extra={"source": key, "from": before or "(off)", "to": after or "(off)"})

    async def _move_stream(self, key: str, after: str, config: Config) -> None:
        daemon, p = self.daemon, self.daemon.pipeline
        source = next((s for s in daemon.tcp_sources if s.name == key), None)
        if source is not None and after:
            await source.rebind(after)
        elif source is not None:
            await source.close()
            daemon.tcp_sources.remove(source)
        else:
            stats = p.line_stats if _STREAM_KINDS[key] == PAYLOAD_LINE else p.statsd_stats
            fresh = TcpSource(
                key,
                self._parser(key),
                stats,
                p.ring,
                config.ingest.tenant,
                _tcp_settings(config),
                p.counters_for(key),
                _STREAM_KINDS[key],
            )
            await fresh.start(after)
            daemon.tcp_sources.append(fresh)

    async def _move_http(self, after: str) -> None:
        runner = self.daemon.runner
        if runner is None:
            raise OSError("the HTTP port was off at start; turning it on needs a restart")
        old_sites = list(runner.sites)
        if after:
            host, port = split_host_port(after)
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        for site in old_sites:
            await site.stop()
        log.info("listening", extra={"source": "http", "address": after or "(off)"})

    def _sources(self, config: Config, *, resize: bool) -> None:
        """Hand the (possibly new) parsers and settings to every open listener."""
        ingest = config.ingest
        for datagram in self.daemon.datagram_sources:
            datagram.update(self._parser(datagram.name), ingest.tenant, ingest.max_datagram)
            if resize:
                datagram.resize_receive_buffer(ingest.udp_receive_buffer)
        settings = _tcp_settings(config)
        for stream in self.daemon.tcp_sources:
            stream.parser = self._parser(stream.name)
            stream.tenant = ingest.tenant
            stream.settings = settings


def _tcp_settings(config: Config) -> TcpSettings:
    ingest = config.ingest
    return TcpSettings(ingest.tcp_max_line, ingest.tcp_idle_timeout, ingest.tcp_max_connections)
