"""The daemon's one typed Config: TOML file, then `COLLECTORD_<SECTION>_<KEY>` overrides.

Every section is a msgspec Struct whose constraints and descriptions sit next to each key;
the loader, the error messages, `config init` and docs/configuration.md all read them from here.
Durations ("500ms", "10s", "5m", "1h", "2d" or seconds) become float seconds and sizes
("64KiB", "32MiB", "1GiB" or bytes) become int bytes before msgspec validates the rest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import textwrap
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args, get_origin

import msgspec
import tomli_w
from msgspec import Meta

from collectord.aggregation.windows import VALID_FLUSH_INTERVALS
from collectord.limits import NAME_PATTERN, Limits
from collectord.model import DEFAULT_TENANT

__all__ = [
    "Aggregate",
    "Auth",
    "Config",
    "ConfigError",
    "Influx",
    "Ingest",
    "Instance",
    "KeyDoc",
    "Listen",
    "Log",
    "Postgres",
    "Redis",
    "Storage",
    "Token",
    "default_config",
    "describe_keys",
    "format_duration",
    "format_size",
    "is_loopback",
    "load_config",
    "parse_duration",
    "parse_size",
    "render_config",
    "split_host_port",
]

ENV_PREFIX = "COLLECTORD_"


class ConfigError(Exception):
    """A config file or override that cannot be used; `str(e)` is "<key path>: <what is wrong>".

    `path` is the key's dotted path (or the environment variable's name when no key matches);
    `source` is the config file the bad value came from, None for defaults and the environment.
    """

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        super().__init__(f"{path}: {message}" if path else message)


# --- durations and sizes ---------------------------------------------------------------------

_DURATION_UNITS: dict[str, int] = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "TiB": 1 << 40,
    "KB": 1000,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)?")


def parse_duration(text: str) -> float:
    """Seconds in "500ms", "10s", "5m", "1h", "2d", "1h30m" or a plain number of seconds."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    for number, unit in _DURATION_PART.findall(text):
        # Milliseconds divide rather than multiply by 0.001 so "250ms" is exactly 0.25.
        total += float(number) / 1000 if unit == "ms" else float(number) * _DURATION_UNITS[unit]
    return total


def format_duration(seconds: float) -> str | float:
    """The shortest exact duration string for `seconds` ("10s", "6h", "250ms"), else the number."""
    if seconds == 0:
        return "0s"
    for unit, factor in _DURATION_UNITS.items():
        count = round(seconds / factor)
        if count > 0 and count * factor == seconds:
            return f"{count}{unit}"
    millis = round(seconds * 1000)
    if millis > 0 and millis / 1000 == seconds:
        return f"{millis}ms"
    return float(seconds)


def parse_size(text: str) -> int:
    """Bytes in "64KiB", "32MiB", "1GiB", "10MB" (SI) or a plain number of bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    factor = _SIZE_UNITS[unit or "B"]
    if "." not in number:
        return int(number) * factor
    value = float(number) * factor
    if not value.is_integer():
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def format_size(size: int) -> str | int:
    """The largest exact binary unit for `size` ("32MiB", "64KiB"), else plain bytes."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        factor = _SIZE_UNITS[unit]
        if size > 0 and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


# --- field types ------------------------------------------------------------------------------
# `extra` on a Meta carries what msgspec itself does not use: "kind" (duration/size, converted
# from strings before validation), "type" (the name used in docs), "expected" (the phrase used in
# error messages instead of a regex) and "secret" (never echoed in an error).

Duration = Annotated[float, Meta(extra={"kind": "duration", "type": "duration"})]
Size = Annotated[int, Meta(extra={"kind": "size", "type": "size"})]

_PORT = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"
_HOST = r"(?:\[[0-9A-Fa-f:.]+(?:%[0-9A-Za-z._-]+)?\]|[0-9A-Za-z](?:[0-9A-Za-z.-]*[0-9A-Za-z])?)"
ADDRESS_PATTERN = rf"^(?:{_HOST}:{_PORT})?$"
Address = Annotated[str, Meta(pattern=ADDRESS_PATTERN, extra={"type": "address", "expected": '"host:port"'})]

TENANT_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
TenantName = Annotated[
    str,
    Meta(
        pattern=TENANT_PATTERN,
        extra={"expected": "a tenant name (1 to 64 of a-z, A-Z, 0-9, _, -)"},
    ),
]
MetricName = Annotated[
    str,
    Meta(
        pattern=NAME_PATTERN,
        max_length=255,
        extra={"expected": "a metric name (a letter, then letters, digits, '.', '_', '-')"},
    ),
]
LineType = Literal["COUNTER", "GAUGE", "HISTOGRAM", "SUMMARY"]
Secret = Annotated[str, Meta(extra={"secret": True})]


class Listen(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Listener addresses: "host:port" ("[::1]:8125" for IPv6); "" disables a listener."""

    statsd_udp: Annotated[Address, Meta(description="StatsD / DogStatsD over UDP.")] = "127.0.0.1:8125"
    statsd_tcp: Annotated[Address, Meta(description="StatsD / DogStatsD over TCP, one line per '\\n'.")] = (
        "127.0.0.1:8125"
    )
    line_udp: Annotated[Address, Meta(description="InfluxDB line protocol over UDP.")] = "127.0.0.1:8089"
    line_tcp: Annotated[Address, Meta(description="InfluxDB line protocol over TCP.")] = "127.0.0.1:8089"
    http: Annotated[
        Address,
        Meta(
            description="HTTP side port: query and record API, streams, /metrics, dashboard. "
            "A non-loopback address is refused unless [[auth.tokens]] are configured."
        ),
    ] = "127.0.0.1:8127"
    statsd_unix: Annotated[
        str,
        Meta(
            pattern=r"^(?:/.*)?$",
            max_length=107,
            description='StatsD / DogStatsD over a Unix datagram socket at this absolute path; "" disables.',
            extra={"type": "path", "expected": 'an absolute path of at most 107 characters or ""'},
        ),
    ] = ""


class Ingest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """How the StatsD and line-protocol listeners read, parse and hand on samples."""

    tenant: Annotated[
        TenantName,
        Meta(description="Tenant that the StatsD and line-protocol listeners write into."),
    ] = DEFAULT_TENANT
    udp_receive_buffer: Annotated[
        Size,
        Meta(
            ge=0,
            le=1 << 31,
            description="Receive buffer (SO_RCVBUF) asked for on UDP sockets; the kernel caps it "
            "at net.core.rmem_max. 0 keeps the system default.",
        ),
    ] = 32 << 20
    max_datagram: Annotated[
        int,
        Meta(
            ge=512,
            le=65535,
            description="Largest UDP datagram accepted, in bytes; larger ones are dropped whole and counted.",
        ),
    ] = 65535
    tcp_max_line: Annotated[
        Size,
        Meta(
            ge=64,
            le=64 << 20,
            description="Longest line accepted over TCP; a longer one is dropped and counted.",
        ),
    ] = 64 << 10
    tcp_idle_timeout: Annotated[
        Duration,
        Meta(
            ge=0,
            description="A TCP connection that sends nothing for this long is closed; 0 never closes.",
        ),
    ] = 300.0
    tcp_max_connections: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Open connections per TCP listener; more are refused and counted.",
        ),
    ] = 1024
    ring_capacity: Annotated[
        int,
        Meta(
            ge=1,
            le=1 << 30,
            description="Samples the ring holds between the parsers and aggregation; "
            "when it is full new samples are dropped and counted.",
        ),
    ] = 2_000_000
    workers: Annotated[
        int,
        Meta(
            ge=0,
            le=64,
            description="Worker processes that receive, parse and pre-aggregate the StatsD UDP and "
            "TCP listeners (the owner logs and applies what they ship); 0 does everything in the "
            "daemon's own process. Needs a restart to change.",
        ),
    ] = 0
    worker_ship_interval: Annotated[
        Duration,
        Meta(
            gt=0,
            le=1.0,
            description="How long a worker pre-aggregates before shipping to the owner: what a "
            "worker killed with SIGKILL can lose (the daemon's own exposure window comes on top).",
        ),
    ] = 0.025
    worker_tcp: Annotated[
        bool,
        Meta(
            description="With workers: they also take the StatsD TCP listener's connections. false keeps "
            "TCP in the daemon's own process, which already counts repeated lines per drain and was "
            "faster on a 2-core host (benchmarks/README.md). Needs a restart to change.",
        ),
    ] = False
    container_id: Annotated[
        Literal["tag", "drop"],
        Meta(description='DogStatsD "|c:<container-id>": "tag" keeps it as the container_id tag, "drop" ignores it.'),
    ] = "tag"
    line_precision: Annotated[
        Literal["ns", "us", "ms", "s"],
        Meta(
            description="Unit of line-protocol timestamps arriving over UDP and TCP "
            "(HTTP writes say theirs with ?precision=)."
        ),
    ] = "ns"
    line_types: Annotated[
        dict[MetricName, LineType],
        Meta(
            description="Metric type per line-protocol metric name (measurement.field), e.g. "
            '{ "http.requests" = "COUNTER" }; fields not listed are GAUGE.'
        ),
    ] = msgspec.field(default_factory=dict)


class Aggregate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Aggregation windows (1m, 5m, 1h, 1d): when they flush and how long they are kept."""

    flush_interval: Annotated[
        Duration,
        Meta(
            ge=1,
            le=60,
            description="How often aggregates are flushed to storage and the configured sinks; "
            "whole seconds that divide a minute (1s, 2s, 3s, 4s, 5s, 6s, 10s, 12s, 15s, 20s, "
            "30s, 1m).",
        ),
    ] = 10.0
    late_allowance: Annotated[
        Duration,
        Meta(
            ge=0,
            description="How far in the past a timestamped sample may be and still count; "
            "older samples are dropped and counted.",
        ),
    ] = 300.0
    series_idle_expiry: Annotated[
        Duration,
        Meta(
            gt=0,
            description="A series with no samples for this long is forgotten together with its "
            "in-memory windows, freeing its place under limits.max_series.",
        ),
    ] = 86400.0
    retention_1m: Annotated[Duration, Meta(gt=0, description="How long 1-minute aggregates are kept.")] = 6 * 3600.0
    retention_5m: Annotated[Duration, Meta(gt=0, description="How long 5-minute aggregates are kept.")] = 2 * 86400.0
    retention_1h: Annotated[Duration, Meta(gt=0, description="How long 1-hour aggregates are kept.")] = 14 * 86400.0
    retention_1d: Annotated[Duration, Meta(gt=0, description="How long 1-day aggregates are kept.")] = 90 * 86400.0
    emit_idle_gauges: Annotated[
        bool,
        Meta(
            description="Re-emit a gauge's last value at each flush even with no new samples "
            "(Etsy statsd's default); false drops idle gauges from the flush."
        ),
    ] = True


class Storage(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The embedded store: write-ahead log and checkpoints on local disk."""

    data_dir: Annotated[
        str,
        Meta(
            description='Directory for the WAL and checkpoints; "" = $STATE_DIRECTORY when set '
            "(systemd StateDirectory=), else $XDG_STATE_HOME/collectord or "
            "~/.local/state/collectord.",
            extra={"type": "path"},
        ),
    ] = ""
    wal: Annotated[
        bool,
        Meta(
            description="Append every accepted batch to the write-ahead log before it changes memory, "
            "so a crash or kill -9 loses nothing acknowledged; false keeps everything in memory only.",
        ),
    ] = True
    fsync: Annotated[
        Literal["never", "interval", "always"],
        Meta(
            description="When the log is forced to disk: never (the OS decides), interval (every "
            "fsync_interval), always (before every HTTP acknowledgement and every batch). Bounds "
            "what a power failure can lose; kill -9 loses nothing written under any policy.",
        ),
    ] = "interval"
    fsync_interval: Annotated[
        Duration, Meta(gt=0, description='How often the log is fsynced with fsync = "interval".')
    ] = 1.0
    segment_size: Annotated[Size, Meta(ge=1 << 20, description="Log segments rotate at this size.")] = 64 << 20
    checkpoint_interval: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How often the whole aggregation state is written to a checkpoint (and the "
            "log before it deleted); also written at every clean stop.",
        ),
    ] = 60.0
    stop_timeout: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How long a clean stop may take to drain and flush before it exits anyway "
            "(nothing accepted is lost: it is in the log).",
        ),
    ] = 30.0
    sink_drain_timeout: Annotated[
        Duration,
        Meta(
            gt=0,
            description="Part of a clean stop spent letting sinks write what they hold; what is left "
            "is written after the next start (sinks resume from their checkpointed high-water mark).",
        ),
    ] = 10.0

    def resolve_data_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """The directory to use: `data_dir`, else systemd's, else the XDG state directory."""
        env = os.environ if environ is None else environ
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        # systemd passes a colon-separated list when StateDirectory= names several.
        state = env.get("STATE_DIRECTORY", "").split(":")[0]
        if state:
            return Path(state)
        xdg = env.get("XDG_STATE_HOME", "")
        if os.path.isabs(xdg):
            return Path(xdg) / "collectord"
        home = env.get("HOME") or str(Path.home())
        return Path(home) / ".local" / "state" / "collectord"


class Instance(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Who this daemon is among the hosts that write to the same backends."""

    name: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9._:-]{0,255}$",
            description='This daemon\'s source id in stored aggregates; "" = the host name.',
            extra={"expected": "up to 255 of a-z, A-Z, 0-9, '.', '_', ':', '-'"},
        ),
    ] = ""

    def source_id(self) -> str:
        """The effective source id: `name`, or the host name when it is empty."""
        return self.name or socket.gethostname()


class Postgres(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """PostgreSQL sink for flushed aggregates."""

    dsn: Annotated[
        Secret,
        Meta(
            pattern=r"^(?:|postgres(?:ql)?://.*|.*=.*)$",
            description='Connection string, "postgresql://user@host:5432/db" or "host=... '
            'dbname=..."; "" disables. Pass secrets as COLLECTORD_POSTGRES_DSN.',
            extra={"expected": 'a "postgresql://..." URL, "key=value ..." DSN or ""'},
        ),
    ] = ""
    pool_size: Annotated[
        int, Meta(ge=1, le=64, description="Connections in the pool (writer, queries, maintenance).")
    ] = 4
    connect_timeout: Annotated[
        Duration, Meta(gt=0, description="How long one connection attempt may take before it counts as a failure.")
    ] = 5.0
    query_timeout: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How long /api/v1/query waits for PostgreSQL before answering from memory alone "
            "(metadata says so).",
        ),
    ] = 5.0
    write_timeout: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How long one write (a COPY, an upsert) may take before the connection counts as "
            "broken and the write is retried.",
        ),
    ] = 60.0
    raw_protocols: Annotated[
        str,
        Meta(
            pattern=r"^(?:(?:api|line|statsd)(?:,(?:api|line|statsd))*)?$",
            description='Comma-separated: whose samples are also stored raw in the metrics table: "api" '
            '(record API and HTTP line protocol), "line" (line protocol listeners), "statsd" (StatsD '
            'listeners, aggregated only by default); "" stores no raw points.',
            extra={"expected": 'a comma-separated list of api, line, statsd (or "")'},
        ),
    ] = "api,line"
    raw_retention: Annotated[
        Duration, Meta(gt=0, description="Raw points older than this are dropped, a daily partition at a time.")
    ] = 30 * 86400.0
    partitions_ahead: Annotated[
        int, Meta(ge=1, le=60, description="Daily partitions of the raw metrics table created ahead of today.")
    ] = 3
    retention_1m: Annotated[
        Duration, Meta(ge=0, description="How long 1-minute aggregates are kept in PostgreSQL; 0 = forever.")
    ] = 14 * 86400.0
    retention_5m: Annotated[
        Duration, Meta(ge=0, description="How long 5-minute aggregates are kept in PostgreSQL; 0 = forever.")
    ] = 90 * 86400.0
    retention_1h: Annotated[
        Duration, Meta(ge=0, description="How long 1-hour aggregates are kept in PostgreSQL; 0 = forever.")
    ] = 730 * 86400.0
    retention_1d: Annotated[
        Duration, Meta(ge=0, description="How long 1-day aggregates are kept in PostgreSQL; 0 = forever.")
    ] = 0.0
    maintenance_interval: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How often partitions are created ahead and retention applied (one daemon of the "
            "fleet at a time, under an advisory lock).",
        ),
    ] = 3600.0
    spool_max_batches: Annotated[
        int,
        Meta(
            ge=1,
            description="Raw batches and audit events held (and checkpointed) while PostgreSQL is away; "
            "beyond it the oldest are dropped and counted.",
        ),
    ] = 100_000


class Influx(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """InfluxDB v2 sink for flushed aggregates."""

    url: Annotated[
        str,
        Meta(
            pattern=r"^(?:|https?://.+)$",
            description='Base URL such as "http://127.0.0.1:8086"; "" disables.',
            extra={"expected": 'an "http://" or "https://" URL or ""'},
        ),
    ] = ""
    token: Annotated[Secret, Meta(description="API token; pass it as COLLECTORD_INFLUX_TOKEN.")] = ""
    org: Annotated[str, Meta(description="Organization; required when url is set.")] = ""
    bucket: Annotated[str, Meta(description="Bucket; required when url is set.")] = ""
    precision: Annotated[
        Literal["s", "ms", "us", "ns"],
        Meta(description="Timestamp precision of the points written (each point is stamped with its slice's start)."),
    ] = "s"
    batch_size: Annotated[
        int,
        Meta(ge=1, le=1_000_000, description="Lines (points) per write request, gzip-compressed."),
    ] = 5000
    timeout: Annotated[Duration, Meta(gt=0, description="Time allowed for one write request.")] = 10.0
    spool_max_bytes: Annotated[
        Size,
        Meta(
            ge=1 << 16,
            description="Disk the spool of unsent flushes may use (data_dir/spool/influx); when a "
            "new flush would pass it, the oldest unsent flushes are dropped, logged and counted.",
        ),
    ] = 256 << 20
    retry_max: Annotated[
        Duration,
        Meta(gt=0, description="Longest wait between retries while the server is away or failing (5xx, 429)."),
    ] = 30.0
    auth_retry: Annotated[
        Duration,
        Meta(
            gt=0,
            description="Wait between retries after 401, 403 or 404 (token, org or bucket wrong): "
            "the spool is kept until the server accepts it.",
        ),
    ] = 60.0


class Redis(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Redis for realtime values, the query cache and cross-host streaming."""

    url: Annotated[
        Secret,
        Meta(
            pattern=r"^(?:|rediss?://.+|unix://.+)$",
            description='"redis://[:password@]host:6379/0", "rediss://..." or '
            '"unix:///path"; "" disables. Pass passwords as COLLECTORD_REDIS_URL.',
            extra={"expected": 'a "redis://", "rediss://" or "unix://" URL or ""'},
        ),
    ] = ""
    key_prefix: Annotated[
        str,
        Meta(
            pattern=r"^[A-Za-z0-9._-]{1,64}$",
            description="Prefix of every key and channel; daemons that share realtime values, the "
            "query cache and streams use the same prefix.",
            extra={"expected": "1 to 64 of a-z, A-Z, 0-9, '.', '_', '-'"},
        ),
    ] = "collectord"
    timeout: Annotated[
        Duration,
        Meta(
            gt=0,
            le=10,
            description="The longest a query or realtime request waits for Redis before it answers "
            "from memory instead.",
        ),
    ] = 0.25
    write_interval: Annotated[
        Duration,
        Meta(
            ge=0.05,
            le=5,
            description="How often realtime values are written, one pipeline per interval (lengthened "
            "automatically when scanning the active series takes long); stream events do not wait for it.",
        ),
    ] = 0.5
    realtime_ttl: Annotated[
        Duration,
        Meta(
            gt=0,
            description="A realtime key not written for this long expires (a counter's fleet total "
            "then starts again from 0).",
        ),
    ] = 86400.0
    recent_size: Annotated[
        int,
        Meta(ge=1, le=10000, description="Latest values kept per histogram/summary series (one per write interval)."),
    ] = 100
    cache_ttl: Annotated[
        Duration,
        Meta(gt=0, description="How long a cached answer over closed periods is kept."),
    ] = 60.0
    cache_ttl_old: Annotated[
        Duration,
        Meta(
            gt=0,
            description="How long a cached answer is kept when its range ended more than an hour ago "
            "(never past the moment its oldest window leaves memory).",
        ),
    ] = 600.0
    interest_ttl: Annotated[
        Duration,
        Meta(
            ge=1,
            le=300,
            description="How long a daemon's announcement of the streams its clients follow lives "
            "unless renewed (renewed at a third of it): a daemon that dies stops receiving "
            "forwarded samples after this.",
        ),
    ] = 10.0


class Token(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One bearer token of the HTTP API, known only by its SHA-256."""

    sha256: Annotated[
        str,
        Meta(
            pattern=r"^[0-9a-fA-F]{64}$",
            description="Hex SHA-256 of the token (printf %s TOKEN | sha256sum); the token itself is never stored.",
            extra={"expected": "64 hex digits"},
        ),
    ]
    tenant: Annotated[TenantName, Meta(description="Tenant the token reads and writes.")]
    role: Annotated[
        Literal["writer", "reader", "admin"],
        Meta(description="writer records, reader queries and streams, admin does both and deletes."),
    ]
    write_rate: Annotated[
        float,
        Meta(ge=0, description="This token's write requests per second (token bucket); 0 = auth.write_rate."),
    ] = 0.0
    write_burst: Annotated[
        int,
        Meta(ge=0, description="This token's bucket size (writes allowed at once); 0 = auth.write_burst."),
    ] = 0

    def __post_init__(self) -> None:
        # Stored lower-case so a lookup by hashlib's hexdigest() always matches.
        self.sha256 = self.sha256.lower()


class Auth(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Bearer tokens of the HTTP API."""

    tokens: Annotated[
        list[Token],
        Meta(
            description="Tokens, each mapped to one tenant and role. None = no auth, allowed only "
            "while listen.http is a loopback address. COLLECTORD_AUTH_TOKENS="
            '"token:tenant:role,..." replaces them with plain tokens, hashed at load.',
            extra={"type": "array of tables"},
        ),
    ] = msgspec.field(default_factory=list)
    write_rate: Annotated[
        float,
        Meta(
            ge=0,
            description="Write requests per second each token may make (record, batch and line "
            "protocol endpoints; a token bucket); beyond it a 429 with Retry-After. 0 = unlimited. "
            "With no tokens configured it applies to all writes together.",
        ),
    ] = 0.0
    write_burst: Annotated[
        int,
        Meta(ge=0, description="Writes a token may make at once before write_rate applies; 0 = one second's worth."),
    ] = 0


class Streams(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Live streams (SSE and WebSocket) of samples as they arrive."""

    queue_size: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Events held per stream client; when a slow client lets it overflow, the "
            "oldest are dropped and a `dropped` event says how many.",
        ),
    ] = 1000
    max_per_tenant: Annotated[
        int,
        Meta(ge=1, le=100_000, description="Streams one tenant may hold open at once; beyond it a new one is a 429."),
    ] = 100
    heartbeat_interval: Annotated[
        Duration,
        Meta(
            gt=0,
            le=300,
            description="A quiet stream sends a heartbeat this often, so clients and proxies see it is alive.",
        ),
    ] = 5.0


class Log(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The daemon's own log, written to stderr."""

    level: Annotated[Literal["debug", "info", "warning", "error"], Meta(description="Lowest level written.")] = "info"
    format: Annotated[Literal["logfmt", "json"], Meta(description="logfmt for people, json for collectors.")] = "logfmt"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything the daemon is told; built once by the CLI and passed to `run`."""

    listen: Listen = msgspec.field(default_factory=Listen)
    ingest: Ingest = msgspec.field(default_factory=Ingest)
    limits: Limits = msgspec.field(default_factory=Limits)
    aggregate: Aggregate = msgspec.field(default_factory=Aggregate)
    storage: Storage = msgspec.field(default_factory=Storage)
    instance: Instance = msgspec.field(default_factory=Instance)
    postgres: Postgres = msgspec.field(default_factory=Postgres)
    influx: Influx = msgspec.field(default_factory=Influx)
    redis: Redis = msgspec.field(default_factory=Redis)
    auth: Auth = msgspec.field(default_factory=Auth)
    streams: Streams = msgspec.field(default_factory=Streams)
    log: Log = msgspec.field(default_factory=Log)


# limits.py is shared with the protocols and carries no Meta; its keys are described here.
_LIMITS_DESCRIPTIONS: dict[str, str] = {
    "max_name_length": "Longest metric name accepted.",
    "max_tags": "Most tags on one metric.",
    "max_tag_key_length": "Longest tag key.",
    "max_tag_value_length": "Longest tag value.",
    "max_tag_values_per_key": "Distinct values one tag key may take per metric name; beyond it "
    "samples are rejected and counted.",
    "max_series": "Active series per daemon; new series beyond it are rejected and counted.",
}

_SECTION_STRUCTS: dict[str, type[msgspec.Struct]] = {f.name: f.type for f in msgspec.structs.fields(Config)}


# --- addresses --------------------------------------------------------------------------------


def split_host_port(address: str) -> tuple[str, int]:
    """("127.0.0.1", 8125) from "127.0.0.1:8125", ("::1", 8125) from "[::1]:8125"."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _address_problem(address: str) -> str | None:
    """Why an address that matches ADDRESS_PATTERN still names no valid host, if it does not."""
    if not address:
        return None
    host, _ = split_host_port(address)
    if address.startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{host!r} is not an IPv6 address"
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f"{host!r} is not an IPv4 address"
    return None


# --- type walking -----------------------------------------------------------------------------


def _unwrap(tp: Any) -> tuple[Any, dict[str, Any], str]:
    """The type under Annotated, its merged Meta.extra and its description."""
    extra: dict[str, Any] = {}
    description = ""
    if get_origin(tp) is Annotated:
        args = get_args(tp)
        tp = args[0]
        for meta in args[1:]:
            if isinstance(meta, Meta):
                extra.update(meta.extra or {})
                description = meta.description or description
    return tp, extra, description


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _struct_fields(cls: Any) -> dict[str, msgspec.structs.FieldInfo]:
    return {f.encode_name: f for f in msgspec.structs.fields(cls)}


def _child_type(tp: Any, segment: str | int) -> Any:
    """The type of `segment` inside a value of type `tp`, or None if it has no such child."""
    bare, _, _ = _unwrap(tp)
    if _is_struct(bare):
        field = _struct_fields(bare).get(str(segment))
        return None if field is None else field.type
    origin, args = get_origin(bare), get_args(bare)
    if origin is list and isinstance(segment, int):
        return args[0]
    if origin is dict:
        return args[1]
    return None


def _type_at(segments: list[str | int]) -> Any:
    tp: Any = Config
    for segment in segments:
        tp = _child_type(tp, segment)
        if tp is None:
            return None
    return tp


def _value_at(data: Any, segments: list[str | int]) -> Any:
    for segment in segments:
        in_table = isinstance(data, dict) and segment in data
        in_array = isinstance(data, list) and isinstance(segment, int) and segment < len(data)
        if not (in_table or in_array):
            return None
        data = data[segment]
    return data


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(segments: list[str | int]) -> str:
    out = ""
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        else:
            key = segment if _BARE_KEY.fullmatch(segment) else json.dumps(segment)
            out += f".{key}" if out else key
    return out


def _show(value: Any) -> str:
    """A value as it would be written in TOML, for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _bounds(info: Any, fmt: Any) -> str:
    ge = info.ge if info.gt is None else None
    if ge is not None and info.le is not None:
        return f" from {fmt(ge)} to {fmt(info.le)}"
    parts = []
    for op, bound in ((">", info.gt), (">=", ge), ("<", info.lt), ("<=", info.le)):
        if bound is not None:
            parts.append(f"{op} {fmt(bound)}")
    return " " + " and ".join(parts) if parts else ""


def _expected(tp: Any) -> str:
    """What a value of type `tp` must look like, in words."""
    bare, extra, _ = _unwrap(tp)
    if "expected" in extra:
        return str(extra["expected"])
    info = msgspec.inspect.type_info(tp)
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    kind = extra.get("kind")
    if kind == "duration":
        bounds = _bounds(info, format_duration)
        return f'a duration{bounds} ("500ms", "10s", "5m", "1h", "2d" or seconds)'
    if kind == "size":
        bounds = _bounds(info, format_size)
        return f'a size{bounds} ("64KiB", "32MiB", "1GiB" or bytes)'
    if isinstance(info, msgspec.inspect.IntType):
        return "an integer" + _bounds(info, str)
    if isinstance(info, msgspec.inspect.FloatType):
        return "a number" + _bounds(info, str)
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if get_origin(bare) is Literal:
        return "one of " + ", ".join(_show(v) for v in get_args(bare))
    if isinstance(info, msgspec.inspect.StrType):
        return "a string" + (f" matching {info.pattern}" if info.pattern else "")
    if isinstance(info, msgspec.inspect.ListType):
        return "an array"
    if isinstance(info, msgspec.inspect.DictType | msgspec.inspect.StructType):
        return "a table"
    return str(bare)


def _type_name(tp: Any) -> str:
    """A short name of `tp` for the docs."""
    bare, extra, _ = _unwrap(tp)
    if "type" in extra:
        return str(extra["type"])
    origin, args = get_origin(bare), get_args(bare)
    if origin is Literal:
        return " | ".join(_show(v) for v in args)
    if origin is dict:
        return f"table of {_type_name(args[0])} = {_type_name(args[1])}"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(bare, str(bare))


# --- loading ----------------------------------------------------------------------------------

_MSGSPEC_WHERE = re.compile(r" - at (`key` in )?`\$([^`]*)`$")
_MSGSPEC_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")


def _msgspec_segments(path: str) -> list[str | int]:
    segments: list[str | int] = []
    for name, index in _MSGSPEC_SEGMENT.findall(path):
        if name:
            segments.append(name)
        elif index == "...":
            segments.append(index)
        else:
            segments.append(int(index))
    return segments


class _Loader:
    """One load: the merged raw data, where each override came from, and the errors they make."""

    def __init__(self, source: str | None) -> None:
        self.source = source
        self.env_sources: dict[tuple[str | int, ...], str] = {}
        self.raw: dict[str, Any] = {}

    def error(self, segments: list[str | int], message: str) -> ConfigError:
        for end in range(len(segments), 0, -1):
            variable = self.env_sources.get(tuple(segments[:end]))
            if variable is not None:
                return ConfigError(_dotted(segments), f"{message} (from {variable})")
        return ConfigError(_dotted(segments), message, source=self.source)

    def mismatch(self, segments: list[str | int], tp: Any, value: Any) -> ConfigError:
        _, extra, _ = _unwrap(tp)
        shown = "<hidden>" if extra.get("secret") else _show(value)
        return self.error(segments, f"expected {_expected(tp)}, got {shown}")

    def apply_env(self, data: dict[str, Any], environ: Mapping[str, str]) -> None:
        """Write `COLLECTORD_<SECTION>_<KEY>` values over the file's (in place)."""
        keys = {
            f"{ENV_PREFIX}{section}_{key}".upper(): (section, key)
            for section, cls in _SECTION_STRUCTS.items()
            for key in _struct_fields(cls)
        }
        for variable in sorted(environ):
            if not variable.startswith(ENV_PREFIX):
                continue
            if variable not in keys:
                raise ConfigError(variable, "unknown key")
            section, key = keys[variable]
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                continue  # the file's own value for the section is reported by validation
            field_type = _struct_fields(_SECTION_STRUCTS[section])[key].type
            table[key] = self._env_value(variable, field_type, environ[variable])
            self.env_sources[(section, key)] = variable

    def _env_value(self, variable: str, tp: Any, text: str) -> Any:
        """The environment's text as the field's type; left as text where that fails."""
        bare, extra, _ = _unwrap(tp)
        origin, args = get_origin(bare), get_args(bare)
        if "kind" in extra or bare is str or origin is Literal:
            return text
        if bare is bool:
            return {"true": True, "1": True, "false": False, "0": False}.get(text.lower(), text)
        if bare is int or bare is float:
            try:
                return bare(text.strip())
            except ValueError:
                return text
        if origin is dict:
            return self._env_table(variable, text)
        if origin is list and args[0] is Token:
            return self._env_tokens(variable, text)
        raise ConfigError(variable, "this key cannot be set from the environment")

    @staticmethod
    def _env_table(variable: str, text: str) -> dict[str, str]:
        table: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(variable, f'expected "key=value,...", got {_show(item)}')
            table[key.strip()] = value.strip()
        return table

    @staticmethod
    def _env_tokens(variable: str, text: str) -> list[dict[str, str]]:
        tokens = []
        for number, item in enumerate(filter(None, (p.strip() for p in text.split(","))), 1):
            token, tenant, role = ([*item.split(":"), "", ""])[:3]
            if not token or not tenant or not role or item.count(":") != 2:
                # The entry holds a secret: say which one, never what it is.
                raise ConfigError(variable, f'entry {number}: expected "token:tenant:role"')
            digest = hashlib.sha256(token.encode()).hexdigest()
            tokens.append({"sha256": digest, "tenant": tenant, "role": role})
        return tokens

    def prepare(self, tp: Any, value: Any, segments: list[str | int]) -> Any:
        """A copy of `value` with duration and size strings turned into numbers."""
        bare, extra, _ = _unwrap(tp)
        kind = extra.get("kind")
        if kind is not None and isinstance(value, str):
            try:
                return parse_duration(value) if kind == "duration" else parse_size(value)
            except ValueError:
                raise self.mismatch(segments, tp, value) from None
        if isinstance(value, dict) and (_is_struct(bare) or get_origin(bare) is dict):
            out = {}
            for key, item in value.items():
                child = _child_type(bare, key)
                out[key] = item if child is None else self.prepare(child, item, [*segments, key])
            return out
        if isinstance(value, list) and get_origin(bare) is list:
            item_type = get_args(bare)[0]
            return [self.prepare(item_type, v, [*segments, i]) for i, v in enumerate(value)]
        return value

    def translate(self, err: msgspec.ValidationError, raw: Any, prepared: Any) -> ConfigError:
        """A ConfigError with the key path and the expected value for msgspec's error."""
        text = str(err)
        where = _MSGSPEC_WHERE.search(text)
        detail = text[: where.start()] if where else text
        segments = _msgspec_segments(where.group(2)) if where else []
        quoted = re.match(r"Object (contains unknown|missing required) field `([^`]*)`", detail)
        if quoted:
            segments.append(quoted.group(2))
            missing = quoted.group(1) == "missing required"
            return self.error(segments, "missing required key" if missing else "unknown key")
        if where and (where.group(1) or "..." in segments):
            return self._dict_entry_error(segments, raw, prepared, key=bool(where.group(1)))
        tp = _type_at(segments)
        if tp is None:
            return self.error(segments, detail[:1].lower() + detail[1:])
        return self.mismatch(segments, tp, _value_at(raw, segments))

    def _dict_entry_error(self, segments: list[str | int], raw: Any, prepared: Any, *, key: bool) -> ConfigError:
        """msgspec names no entry of a dict; find the first bad one."""
        table_segments = segments[: segments.index("...")] if "..." in segments else segments
        table_type = _unwrap(_type_at(table_segments))[0]
        key_type, value_type = get_args(table_type)
        for name, value in (_value_at(prepared, table_segments) or {}).items():
            try:
                msgspec.convert(name, key_type)
            except msgspec.ValidationError:
                return self.error(table_segments, f"key {_show(name)}: expected {_expected(key_type)}")
            if key:
                continue
            try:
                msgspec.convert(value, value_type)
            except msgspec.ValidationError:
                entry = [*table_segments, name]
                return self.mismatch(entry, value_type, _value_at(raw, entry))
        return self.error(table_segments, f"expected {_expected(table_type)}")

    def check(self, config: Config) -> None:
        """Rules that join several keys, or need more than a pattern."""
        used: dict[tuple[str, str], str] = {}
        for key, transport in (
            ("statsd_udp", "udp"),
            ("line_udp", "udp"),
            ("statsd_tcp", "tcp"),
            ("line_tcp", "tcp"),
            ("http", "tcp"),
        ):
            address = getattr(config.listen, key)
            problem = _address_problem(address)
            if problem:
                msg = f'expected "host:port", got {_show(address)} ({problem})'
                raise self.error(["listen", key], msg)
            if address and split_host_port(address)[1] != 0:
                other = used.setdefault((transport, address), key)
                if other != key:
                    raise self.error(["listen", key], f"{_show(address)} is already used by listen.{other}")
        interval = config.aggregate.flush_interval
        if interval not in VALID_FLUSH_INTERVALS:
            # The 1m windows are built from whole flush slices, so a slice must tile a minute.
            raw = _value_at(self.raw, ["aggregate", "flush_interval"])
            allowed = ", ".join(str(format_duration(s)) for s in VALID_FLUSH_INTERVALS)
            raise self.error(
                ["aggregate", "flush_interval"],
                f"expected whole seconds that divide a minute ({allowed}), got {_show(raw)}",
            )
        http = config.listen.http
        if http and not config.auth.tokens and not is_loopback(split_host_port(http)[0]):
            raise self.error(
                ["listen", "http"],
                f"{_show(http)} is not a loopback address and no [[auth.tokens]] are "
                "configured; add tokens or bind 127.0.0.1",
            )
        seen: set[str] = set()
        for index, token in enumerate(config.auth.tokens):
            if token.sha256 in seen:
                raise self.error(["auth", "tokens", index, "sha256"], "duplicate token")
            seen.add(token.sha256)
        if config.influx.url:
            for key in ("org", "bucket"):
                if not getattr(config.influx, key):
                    raise self.error(["influx", key], "required when influx.url is set")


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            return tomllib.load(file)
    except OSError as err:
        raise ConfigError("", f"cannot read {source}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError("", f"invalid TOML: {err}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("", "invalid TOML: not UTF-8", source=source) from None


def load_config(path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None) -> Config:
    """The Config from the TOML file at `path` (None: the defaults), then the environment's
    `COLLECTORD_<SECTION>_<KEY>` overrides (`environ`, default os.environ).

    Raises ConfigError naming the first unknown key or bad value.
    """
    loader = _Loader(None if path is None else os.fspath(path))
    raw = loader.raw = {} if path is None else _read_toml(path)
    loader.apply_env(raw, os.environ if environ is None else environ)
    prepared = loader.prepare(Config, raw, [])
    try:
        config = msgspec.convert(prepared, Config)
    except msgspec.ValidationError as err:
        raise loader.translate(err, raw, prepared) from None
    loader.check(config)
    return config


def default_config() -> Config:
    """The embedded defaults: every listener on 127.0.0.1, no backends, no auth."""
    return Config()


# --- rendering --------------------------------------------------------------------------------


class KeyDoc(NamedTuple):
    """One documented key: where it lives, its type, its default as TOML and what it means."""

    section: str
    key: str
    type: str
    default: str
    description: str
    env: str | None


def _description(cls: Any, field: msgspec.structs.FieldInfo) -> str:
    description = _unwrap(field.type)[2]
    if not description and cls is Limits:
        description = _LIMITS_DESCRIPTIONS.get(field.name, "")
    return description


def _toml_key(key: str) -> str:
    return tomli_w.dumps({key: 0})[: -len(" = 0\n")]


def _toml_value(tp: Any, value: Any) -> str:
    bare, extra, _ = _unwrap(tp)
    kind = extra.get("kind")
    if kind == "duration":
        value = format_duration(value)
    elif kind == "size":
        value = format_size(value)
    elif isinstance(value, dict):
        item_type = get_args(bare)[1]
        pairs = [f"{_toml_key(k)} = {_toml_value(item_type, v)}" for k, v in value.items()]
        return "{ " + ", ".join(pairs) + " }" if pairs else "{}"
    return tomli_w.dumps({"v": value})[len("v = ") :].rstrip("\n")


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, width=96)]


def _struct_list_type(tp: Any) -> Any:
    """The Struct of a `list[Struct]` field (an array of tables), else None."""
    bare = _unwrap(tp)[0]
    if get_origin(bare) is list and _is_struct(get_args(bare)[0]):
        return get_args(bare)[0]
    return None


_HEADER = (
    "collectord configuration (TOML). Every key is shown; a key left out takes its default. "
    "COLLECTORD_<SECTION>_<KEY> in the environment overrides a key, e.g. "
    "COLLECTORD_POSTGRES_DSN or COLLECTORD_AGGREGATE_FLUSH_INTERVAL=5s. "
    'Durations: "500ms", "10s", "5m", "1h", "2d" or seconds; '
    'sizes: "64KiB", "32MiB", "1GiB" or bytes. Reference: docs/configuration.md.'
)


def render_config(config: Config, *, comments: bool = True) -> str:
    """`config` as TOML that load_config() reads back to an equal Config; with `comments`,
    each section and key is preceded by its description."""
    lines: list[str] = _comment(_HEADER) if comments else []
    for section, cls in _SECTION_STRUCTS.items():
        table = getattr(config, section)
        if lines:
            lines.append("")
        if comments and cls.__doc__:
            lines += _comment(cls.__doc__.strip().splitlines()[0])
        lines.append(f"[{section}]")
        arrays: list[tuple[str, msgspec.structs.FieldInfo, Any]] = []
        for field in msgspec.structs.fields(cls):
            value = getattr(table, field.name)
            item_cls = _struct_list_type(field.type)
            if item_cls is not None:
                arrays.append((field.encode_name, field, item_cls))
                continue
            if comments:
                lines += _comment(_description(cls, field))
            lines.append(f"{_toml_key(field.encode_name)} = {_toml_value(field.type, value)}")
        for key, field, item_cls in arrays:
            items = getattr(table, field.name)
            header = f"[[{section}.{_toml_key(key)}]]"
            if comments:
                lines += ["", *_comment(_description(cls, field))]
            if not items and comments:
                # An example to uncomment: a bare `tokens = []` would clash with [[auth.tokens]].
                lines.append(f"# {header}")
                for item_field in msgspec.structs.fields(item_cls):
                    lines += [f"# {line}" for line in _comment(_description(item_cls, item_field))]
                    lines.append(f"# {_toml_key(item_field.encode_name)} = {_example(item_field)}")
            for number, item in enumerate(items):
                lines.append(header)
                for item_field in msgspec.structs.fields(item_cls):
                    if comments and number == 0:
                        lines += _comment(_description(item_cls, item_field))
                    value = _toml_value(item_field.type, getattr(item, item_field.name))
                    lines.append(f"{_toml_key(item_field.encode_name)} = {value}")
    return "\n".join(lines) + "\n"


def _example(field: msgspec.structs.FieldInfo) -> str:
    """A plausible value, as TOML, for a commented-out example key."""
    if field.name == "sha256":
        return '"<hex sha256 of the token>"'
    if field.default is not msgspec.NODEFAULT:
        return _toml_value(field.type, field.default)
    bare = _unwrap(field.type)[0]
    value = get_args(bare)[0] if get_origin(bare) is Literal else DEFAULT_TENANT
    return _toml_value(field.type, value)


def describe_keys() -> list[KeyDoc]:
    """Every key of the Config, in file order, as documented in docs/configuration.md."""
    defaults = default_config()
    docs: list[KeyDoc] = []
    nested: list[KeyDoc] = []
    for section, cls in _SECTION_STRUCTS.items():
        table = getattr(defaults, section)
        for field in msgspec.structs.fields(cls):
            env = f"{ENV_PREFIX}{section}_{field.encode_name}".upper()
            item_cls = _struct_list_type(field.type)
            value = getattr(table, field.name)
            default = "none" if item_cls is not None else _toml_value(field.type, value)
            docs.append(
                KeyDoc(
                    section,
                    field.encode_name,
                    _type_name(field.type),
                    default,
                    _description(cls, field),
                    env,
                )
            )
            if item_cls is None:
                continue
            for item_field in msgspec.structs.fields(item_cls):
                nested.append(
                    KeyDoc(
                        f"{section}.{field.encode_name}",
                        item_field.encode_name,
                        _type_name(item_field.type),
                        "required",
                        _description(item_cls, item_field),
                        None,
                    )
                )
    return docs + nested
