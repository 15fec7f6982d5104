"""collectord/config.py: loading, validation messages, environment overrides, rendering."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collectord.aggregation.windows import VALID_FLUSH_INTERVALS
from collectord.config import (
    Config,
    ConfigError,
    Instance,
    Storage,
    Token,
    default_config,
    describe_keys,
    format_duration,
    format_size,
    is_loopback,
    load_config,
    parse_duration,
    parse_size,
    render_config,
    split_host_port,
)
from collectord.limits import Limits

ROOT = Path(__file__).resolve().parent.parent
HEX = "ab" * 32
TOKEN = f'[[auth.tokens]]\nsha256 = "{HEX}"\ntenant = "acme"\nrole = "admin"\n'


def load_text(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> Config:
    path = tmp_path / "collectord.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ or {})


def load_error(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text, environ)
    return caught.value


# --- good configs -----------------------------------------------------------------------------

GOOD: list[tuple[str, Callable[[Config], Any], Any]] = [
    ("", lambda c: c, default_config()),
    ('[listen]\nstatsd_udp = "0.0.0.0:9125"', lambda c: c.listen.statsd_udp, "0.0.0.0:9125"),
    ('[listen]\nstatsd_udp = ""', lambda c: c.listen.statsd_udp, ""),
    ('[listen]\nline_udp = "[::1]:8089"', lambda c: c.listen.line_udp, "[::1]:8089"),
    ('[listen]\nline_udp = "[::]:0"', lambda c: c.listen.line_udp, "[::]:0"),
    ('[listen]\nline_tcp = "localhost:65535"', lambda c: c.listen.line_tcp, "localhost:65535"),
    ('[listen]\nhttp = "[::1]:8127"', lambda c: c.listen.http, "[::1]:8127"),
    ('[listen]\nhttp = "localhost:8127"', lambda c: c.listen.http, "localhost:8127"),
    ('[listen]\nhttp = "127.0.0.2:8127"', lambda c: c.listen.http, "127.0.0.2:8127"),
    ('[listen]\nhttp = ""', lambda c: c.listen.http, ""),
    (f'[listen]\nhttp = "0.0.0.0:8127"\n{TOKEN}', lambda c: c.listen.http, "0.0.0.0:8127"),
    ('[listen]\nstatsd_unix = "/run/dsd.sock"', lambda c: c.listen.statsd_unix, "/run/dsd.sock"),
    # Two listeners on port 0 each get their own ephemeral port.
    (
        '[listen]\nstatsd_tcp = "127.0.0.1:0"\nline_tcp = "127.0.0.1:0"',
        lambda c: c.listen.line_tcp,
        "127.0.0.1:0",
    ),
    ('[ingest]\ntenant = "acme_1-x"', lambda c: c.ingest.tenant, "acme_1-x"),
    ('[ingest]\nudp_receive_buffer = "512KiB"', lambda c: c.ingest.udp_receive_buffer, 512 << 10),
    ("[ingest]\nudp_receive_buffer = 4096", lambda c: c.ingest.udp_receive_buffer, 4096),
    ('[ingest]\ntcp_max_line = "1MiB"', lambda c: c.ingest.tcp_max_line, 1 << 20),
    ('[ingest]\ntcp_idle_timeout = "5m"', lambda c: c.ingest.tcp_idle_timeout, 300.0),
    ("[ingest]\ntcp_idle_timeout = 0", lambda c: c.ingest.tcp_idle_timeout, 0.0),
    ("[ingest]\nring_capacity = 16", lambda c: c.ingest.ring_capacity, 16),
    ('[ingest]\ncontainer_id = "drop"', lambda c: c.ingest.container_id, "drop"),
    ('[ingest]\nline_precision = "ms"', lambda c: c.ingest.line_precision, "ms"),
    (
        '[ingest]\nline_types = { "http.requests" = "COUNTER", "rt" = "HISTOGRAM" }',
        lambda c: c.ingest.line_types,
        {"http.requests": "COUNTER", "rt": "HISTOGRAM"},
    ),
    ("[limits]\nmax_series = 10", lambda c: c.limits, Limits(max_series=10)),
    ('[aggregate]\nflush_interval = "1m"', lambda c: c.aggregate.flush_interval, 60.0),
    ("[aggregate]\nflush_interval = 5", lambda c: c.aggregate.flush_interval, 5.0),
    ('[aggregate]\nlate_allowance = "1h30m"', lambda c: c.aggregate.late_allowance, 5400.0),
    ('[aggregate]\nlate_allowance = "0s"', lambda c: c.aggregate.late_allowance, 0.0),
    ("[aggregate]\nseries_idle_expiry = 0.5", lambda c: c.aggregate.series_idle_expiry, 0.5),
    ('[aggregate]\nretention_1d = "365d"', lambda c: c.aggregate.retention_1d, 365 * 86400.0),
    ("[aggregate]\nemit_idle_gauges = false", lambda c: c.aggregate.emit_idle_gauges, False),
    ('[storage]\ndata_dir = "/var/lib/x"', lambda c: c.storage.data_dir, "/var/lib/x"),
    ('[instance]\nname = "web-1.eu"', lambda c: c.instance.name, "web-1.eu"),
    (
        '[postgres]\ndsn = "postgresql://u:p@db/metrics"',
        lambda c: c.postgres.dsn,
        "postgresql://u:p@db/metrics",
    ),
    ('[postgres]\ndsn = "host=db dbname=m"', lambda c: c.postgres.dsn, "host=db dbname=m"),
    (
        '[influx]\nurl = "http://i:8086"\norg = "o"\nbucket = "b"\ntoken = "t"',
        lambda c: (c.influx.url, c.influx.org, c.influx.bucket, c.influx.token),
        ("http://i:8086", "o", "b", "t"),
    ),
    ('[redis]\nurl = "redis://:pw@r:6379/0"', lambda c: c.redis.url, "redis://:pw@r:6379/0"),
    ('[redis]\nurl = "unix:///run/redis.sock"', lambda c: c.redis.url, "unix:///run/redis.sock"),
    (TOKEN, lambda c: c.auth.tokens, [Token(sha256=HEX, tenant="acme", role="admin")]),
    # Upper-case hex is accepted and kept lower-case, as hashlib writes it.
    (TOKEN.replace(HEX, HEX.upper()), lambda c: c.auth.tokens[0].sha256, HEX),
    (
        '[log]\nlevel = "debug"\nformat = "json"',
        lambda c: (c.log.level, c.log.format),
        ("debug", "json"),
    ),
]


@pytest.mark.parametrize(("text", "get", "expected"), GOOD)
def test_good_config(tmp_path: Path, text: str, get: Callable[[Config], Any], expected: Any) -> None:
    assert get(load_text(tmp_path, text)) == expected


# --- bad configs: (toml, path in the message, rest of the message) ----------------------------

BAD: list[tuple[str, str, str | None]] = [
    ('[listen]\nstatsd_udp = "8125x"', "listen.statsd_udp", 'expected "host:port", got "8125x"'),
    ('[listen]\nstatsd_udp = "8125"', "listen.statsd_udp", 'expected "host:port", got "8125"'),
    ('[listen]\nstatsd_udp = "h:65536"', "listen.statsd_udp", 'expected "host:port", got'),
    ('[listen]\nstatsd_udp = ":8125"', "listen.statsd_udp", 'expected "host:port", got'),
    ("[listen]\nstatsd_udp = 8125", "listen.statsd_udp", 'expected "host:port", got 8125'),
    ('[listen]\nstatsd_tcp = "::1:8125"', "listen.statsd_tcp", 'expected "host:port"'),
    ('[listen]\nline_udp = "[:::1]:8089"', "listen.line_udp", "is not an IPv6 address"),
    ('[listen]\nline_udp = "300.0.0.1:8089"', "listen.line_udp", "is not an IPv4 address"),
    (
        '[listen]\nline_tcp = "127.0.0.1:8125"',
        "listen.line_tcp",
        "already used by listen.statsd_tcp",
    ),
    ('[listen]\nstatsd_unix = "dsd.sock"', "listen.statsd_unix", "expected an absolute path"),
    (f'[listen]\nstatsd_unix = "/{"x" * 200}"', "listen.statsd_unix", "at most 107 characters"),
    ('[listen]\nhttp = "0.0.0.0:8127"', "listen.http", "not a loopback address"),
    ('[listen]\nhttp = "[::]:8127"', "listen.http", "not a loopback address"),
    ('[listen]\nhttp = "10.1.2.3:8127"', "listen.http", "no [[auth.tokens]]"),
    ('[listen]\nhttp = "example.com:8127"', "listen.http", "not a loopback address"),
    ('[ingest]\ntenant = ""', "ingest.tenant", "expected a tenant name"),
    (f'[ingest]\ntenant = "{"t" * 65}"', "ingest.tenant", "expected a tenant name"),
    ('[ingest]\ntenant = "a.b"', "ingest.tenant", 'got "a.b"'),
    ('[ingest]\nudp_receive_buffer = "32XB"', "ingest.udp_receive_buffer", "expected a size"),
    ('[ingest]\nudp_receive_buffer = "0.3KiB"', "ingest.udp_receive_buffer", 'got "0.3KiB"'),
    ("[ingest]\nudp_receive_buffer = -1", "ingest.udp_receive_buffer", "got -1"),
    ("[ingest]\nudp_receive_buffer = 1.5", "ingest.udp_receive_buffer", "got 1.5"),
    ("[ingest]\nmax_datagram = 70000", "ingest.max_datagram", "from 512 to 65535, got 70000"),
    (
        '[ingest]\nmax_datagram = "9000"',
        "ingest.max_datagram",
        'an integer from 512 to 65535, got "9000"',
    ),
    ("[ingest]\nmax_datagram = true", "ingest.max_datagram", "got true"),
    ('[ingest]\ntcp_max_line = "1KB"', "ingest.tcp_max_line", None),  # ok: 1000 bytes
    ('[ingest]\ntcp_max_line = "8B"', "ingest.tcp_max_line", "a size from 64 to 64MiB"),
    ('[ingest]\ntcp_idle_timeout = "-1s"', "ingest.tcp_idle_timeout", "expected a duration"),
    ("[ingest]\ntcp_max_connections = 0", "ingest.tcp_max_connections", "got 0"),
    ("[ingest]\nring_capacity = 0", "ingest.ring_capacity", "got 0"),
    ('[ingest]\ncontainer_id = "keep"', "ingest.container_id", 'one of "tag", "drop", got "keep"'),
    ('[ingest]\nline_precision = "m"', "ingest.line_precision", 'one of "ns", "us", "ms", "s"'),
    (
        '[ingest]\nline_types = { "cpu.idle" = "SET" }',
        'ingest.line_types."cpu.idle"',
        'expected one of "COUNTER", "GAUGE", "HISTOGRAM", "SUMMARY", got "SET"',
    ),
    ('[ingest]\nline_types = { "9lives" = "GAUGE" }', "ingest.line_types", 'key "9lives"'),
    ("[ingest]\nline_types = 3", "ingest.line_types", "expected a table, got 3"),
    ('[limits]\nmax_series = "many"', "limits.max_series", 'expected an integer, got "many"'),
    ('[aggregate]\nflush_interval = "10"', "aggregate.flush_interval", None),  # ok: seconds
    ('[aggregate]\nflush_interval = "7s"', "aggregate.flush_interval", "divide a minute"),
    ('[aggregate]\nflush_interval = "2m"', "aggregate.flush_interval", 'got "2m"'),
    ('[aggregate]\nflush_interval = "500ms"', "aggregate.flush_interval", 'got "500ms"'),
    ('[aggregate]\nflush_interval = "10x"', "aggregate.flush_interval", "expected a duration"),
    ('[aggregate]\nflush_interval = "10 s"', "aggregate.flush_interval", 'got "10 s"'),
    ("[aggregate]\nflush_interval = true", "aggregate.flush_interval", "got true"),
    ('[aggregate]\nretention_1m = "0s"', "aggregate.retention_1m", "a duration > 0s"),
    (
        '[aggregate]\nemit_idle_gauges = "yes"',
        "aggregate.emit_idle_gauges",
        'true or false, got "yes"',
    ),
    ("[storage]\ndata_dir = 1", "storage.data_dir", "expected a string, got 1"),
    ('[instance]\nname = "web 1"', "instance.name", 'got "web 1"'),
    ('[postgres]\ndsn = "db.example"', "postgres.dsn", "got <hidden>"),
    ('[influx]\nurl = "i:8086"', "influx.url", 'expected an "http://" or "https://" URL'),
    ('[influx]\nurl = "http://i:8086"\nbucket = "b"', "influx.org", "required when influx.url"),
    ('[influx]\nurl = "http://i:8086"\norg = "o"', "influx.bucket", "required when influx.url"),
    ('[redis]\nurl = "http://:secret@r"', "redis.url", "got <hidden>"),
    (TOKEN.replace(HEX, "abc"), "auth.tokens[0].sha256", 'expected 64 hex digits, got "abc"'),
    (TOKEN.replace('"acme"', '"a b"'), "auth.tokens[0].tenant", 'got "a b"'),
    (TOKEN.replace('"admin"', '"root"'), "auth.tokens[0].role", 'got "root"'),
    (TOKEN + TOKEN, "auth.tokens[1].sha256", "duplicate token"),
    (
        '[[auth.tokens]]\ntenant = "a"\nrole = "admin"',
        "auth.tokens[0].sha256",
        "missing required key",
    ),
    ("[auth]\ntokens = 1", "auth.tokens", "expected an array, got 1"),
    ('[log]\nlevel = "trace"', "log.level", 'one of "debug", "info", "warning", "error"'),
    ('[log]\nformat = "text"', "log.format", 'one of "logfmt", "json", got "text"'),
    ("listen = 1", "listen", "expected a table, got 1"),
]


@pytest.mark.parametrize(("text", "path", "message"), BAD)
def test_bad_config(tmp_path: Path, text: str, path: str, message: str | None) -> None:
    if message is None:  # a near miss that is valid, kept beside its invalid neighbours
        load_text(tmp_path, text)
        return
    err = load_error(tmp_path, text)
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    assert message in err.message
    assert "\n" not in str(err)
    assert err.source == str(tmp_path / "collectord.toml")


def test_secrets_are_never_echoed(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[postgres]\ndsn = "hunter2"')
    assert "hunter2" not in str(err)
    err = load_error(tmp_path, "", {"COLLECTORD_AUTH_TOKENS": "hunter2:acme"})
    assert "hunter2" not in str(err)


# --- unknown keys at every depth --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("bogus = 1", "bogus"),
        ("[bogus]\nx = 1", "bogus"),
        ('[listen]\nstatsd_upd = "127.0.0.1:8125"', "listen.statsd_upd"),
        ("[ingest]\nmax_datagrams = 1", "ingest.max_datagrams"),
        ("[limits]\nmax_seriez = 1", "limits.max_seriez"),
        ('[aggregate]\nflush = "10s"', "aggregate.flush"),
        ("[log]\nlevel.x = 1", "log.level"),  # a table where a string belongs
        (TOKEN + "comment = 1\n", "auth.tokens[0].comment"),
        (TOKEN + TOKEN.replace("ab", "cd") + "x = 1\n", "auth.tokens[1].x"),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, path: str) -> None:
    err = load_error(tmp_path, text)
    assert err.path == path
    if not path.startswith("log"):
        assert str(err) == f"{path}: unknown key"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, '[listen]\nstatsd_udp = "127.0.0.1:8125"\nhttp = \n')
    assert "invalid TOML" in str(err)
    assert "line 3" in str(err)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", {})
    (tmp_path / "latin1.toml").write_bytes(b'[instance]\nname = "\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml", {})


# --- environment overrides --------------------------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        '[listen]\nstatsd_udp = "127.0.0.1:9000"\n[aggregate]\nflush_interval = "30s"\n',
        {
            "COLLECTORD_LISTEN_STATSD_UDP": "127.0.0.1:9125",
            "COLLECTORD_POSTGRES_DSN": "postgresql://u@db/m",
            "COLLECTORD_AGGREGATE_FLUSH_INTERVAL": "5s",
            "COLLECTORD_INGEST_UDP_RECEIVE_BUFFER": "8MiB",
            "COLLECTORD_LIMITS_MAX_SERIES": "1000",
            "COLLECTORD_AGGREGATE_EMIT_IDLE_GAUGES": "false",
            "COLLECTORD_INGEST_LINE_TYPES": "http.requests=COUNTER, rt=HISTOGRAM",
            "COLLECTORD_LOG_LEVEL": "debug",
            "PATH": "/usr/bin",  # not ours: ignored
        },
    )
    assert config.listen.statsd_udp == "127.0.0.1:9125"
    assert config.postgres.dsn == "postgresql://u@db/m"
    assert config.aggregate.flush_interval == 5.0
    assert config.ingest.udp_receive_buffer == 8 << 20
    assert config.limits.max_series == 1000
    assert config.aggregate.emit_idle_gauges is False
    assert config.ingest.line_types == {"http.requests": "COUNTER", "rt": "HISTOGRAM"}
    assert config.log.level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("1", True), ("TRUE", True), ("false", False), ("0", False)],
)
def test_environment_bools(text: str, expected: bool) -> None:
    config = load_config(None, {"COLLECTORD_AGGREGATE_EMIT_IDLE_GAUGES": text})
    assert config.aggregate.emit_idle_gauges is expected


def test_environment_without_file_starts_from_defaults() -> None:
    config = load_config(None, {"COLLECTORD_INSTANCE_NAME": "edge-7"})
    assert config == msgspec.structs.replace(default_config(), instance=Instance(name="edge-7"))
    assert load_config(None, {}) == default_config()


@pytest.mark.parametrize(
    ("environ", "path", "message"),
    [
        ({"COLLECTORD_LISTEN_STATSD_UPD": "x"}, "COLLECTORD_LISTEN_STATSD_UPD", "unknown key"),
        ({"COLLECTORD_BOGUS": "x"}, "COLLECTORD_BOGUS", "unknown key"),
        ({"COLLECTORD_LISTEN": "x"}, "COLLECTORD_LISTEN", "unknown key"),
        (
            {"COLLECTORD_INGEST_MAX_DATAGRAM": "lots"},
            "ingest.max_datagram",
            'got "lots" (from COLLECTORD_INGEST_MAX_DATAGRAM)',
        ),
        (
            {"COLLECTORD_AGGREGATE_EMIT_IDLE_GAUGES": "maybe"},
            "aggregate.emit_idle_gauges",
            'got "maybe" (from COLLECTORD_AGGREGATE_EMIT_IDLE_GAUGES)',
        ),
        (
            {"COLLECTORD_AGGREGATE_FLUSH_INTERVAL": "soon"},
            "aggregate.flush_interval",
            'got "soon" (from COLLECTORD_AGGREGATE_FLUSH_INTERVAL)',
        ),
        (
            {"COLLECTORD_LISTEN_HTTP": "0.0.0.0:8127"},
            "listen.http",
            "(from COLLECTORD_LISTEN_HTTP)",
        ),
        ({"COLLECTORD_INGEST_LINE_TYPES": "a.b"}, "COLLECTORD_INGEST_LINE_TYPES", "key=value"),
        ({"COLLECTORD_AUTH_TOKENS": "t:acme"}, "COLLECTORD_AUTH_TOKENS", "entry 1"),
        ({"COLLECTORD_AUTH_TOKENS": "a:b:writer,t:acme:x:y"}, "COLLECTORD_AUTH_TOKENS", "entry 2"),
        (
            {"COLLECTORD_AUTH_TOKENS": "t:acme:root"},
            "auth.tokens[0].role",
            "(from COLLECTORD_AUTH_TOKENS)",
        ),
    ],
)
def test_environment_errors(environ: dict[str, str], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, environ)
    assert caught.value.path == path
    assert message in caught.value.message
    assert caught.value.source is None


def test_environment_tokens_are_hashed_and_replace_the_file(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        f'{TOKEN}[listen]\nhttp = "0.0.0.0:8127"\n',
        {"COLLECTORD_AUTH_TOKENS": " s3cret:acme:writer , other:beta:reader "},
    )
    assert config.auth.tokens == [
        Token(sha256=hashlib.sha256(b"s3cret").hexdigest(), tenant="acme", role="writer"),
        Token(sha256=hashlib.sha256(b"other").hexdigest(), tenant="beta", role="reader"),
    ]
    assert "s3cret" not in repr(config)
    # An empty value clears the tokens, which a non-loopback http bind then refuses.
    err = load_error(tmp_path, '[listen]\nhttp = "0.0.0.0:8127"\n', {"COLLECTORD_AUTH_TOKENS": ""})
    assert err.path == "listen.http"


def test_environment_tokens_allow_a_public_http_bind() -> None:
    config = load_config(
        None,
        {"COLLECTORD_LISTEN_HTTP": "0.0.0.0:8127", "COLLECTORD_AUTH_TOKENS": "t:acme:admin"},
    )
    assert config.listen.http == "0.0.0.0:8127"


def test_every_key_has_an_environment_variable() -> None:
    """Each key's variable, set to the key's default as written in TOML, loads the defaults."""
    for key in describe_keys():
        if "." in key.section or key.default == "none":
            continue  # arrays of tables: set through COLLECTORD_AUTH_TOKENS
        assert key.env == f"COLLECTORD_{key.section}_{key.key}".upper()
        value = tomllib.loads(f"v = {key.default}")["v"]
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, dict):
            text = ",".join(f"{k}={v}" for k, v in value.items())
        else:
            text = str(value)
        assert load_config(None, {key.env: text}) == default_config(), key.env


# --- durations, sizes, addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        ("0.25", 0.25),
        (" 3s ", 3.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "10x", "-1s", "1 h", "1e3", "10sm", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (10.0, "10s"),
        (300.0, "5m"),
        (5400.0, "90m"),
        (21600.0, "6h"),
        (7776000.0, "90d"),
        (0.5, "500ms"),
        (1.5, "1500ms"),
        (1e-4, 1e-4),
    ],
)
def test_format_duration(seconds: float, text: str | float) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_duration_round_trip(seconds: float) -> None:
    text = format_duration(seconds)
    assert (parse_duration(text) if isinstance(text, str) else text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("32MiB", 32 << 20),
        ("1GiB", 1 << 30),
        ("1.5KiB", 1536),
        ("10MB", 10**7),
        ("1kB", 1000),
        ("512", 512),
        ("512B", 512),
        ("8 MiB", 8 << 20),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "1.2B", "-1KiB", "1mib", "1 K"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_round_trip(size: int) -> None:
    text = format_size(size)
    assert (parse_size(text) if isinstance(text, str) else text) == size


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [("127.0.0.1:8125", "127.0.0.1", 8125), ("[::1]:8125", "::1", 8125), ("db:1", "db", 1)],
)
def test_split_host_port(address: str, host: str, port: int) -> None:
    assert split_host_port(address) == (host, port)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_flush_intervals_accepted_are_the_aggregators() -> None:
    for seconds in VALID_FLUSH_INTERVALS:
        config = load_config(None, {"COLLECTORD_AGGREGATE_FLUSH_INTERVAL": f"{seconds}s"})
        assert config.aggregate.flush_interval == seconds


# --- resolvers --------------------------------------------------------------------------------


def test_data_dir_resolution() -> None:
    assert Storage(data_dir="/srv/c").resolve_data_dir({"STATE_DIRECTORY": "/x"}) == Path("/srv/c")
    assert Storage(data_dir="~/c").resolve_data_dir({}) == Path("~/c").expanduser()
    systemd = {"STATE_DIRECTORY": "/var/lib/collectord:/var/lib/other", "HOME": "/h"}
    assert Storage().resolve_data_dir(systemd) == Path("/var/lib/collectord")
    xdg = {"XDG_STATE_HOME": "/h/.state", "HOME": "/h"}
    assert Storage().resolve_data_dir(xdg) == Path("/h/.state/collectord")
    assert Storage().resolve_data_dir({"HOME": "/h"}) == Path("/h/.local/state/collectord")


def test_source_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "box-1")
    assert Instance().source_id() == "box-1"
    assert Instance(name="edge").source_id() == "edge"


# --- rendering --------------------------------------------------------------------------------


def odd_config() -> Config:
    """A config that uses every shape the renderer has to write."""
    return load_config(
        None,
        {
            "COLLECTORD_LISTEN_HTTP": "[::]:8127",
            "COLLECTORD_LISTEN_STATSD_UNIX": "/run/collectord/dsd.sock",
            "COLLECTORD_INGEST_LINE_TYPES": "http.requests=COUNTER,rt=SUMMARY",
            "COLLECTORD_INGEST_UDP_RECEIVE_BUFFER": "1000",
            "COLLECTORD_INGEST_TCP_IDLE_TIMEOUT": "0.0001",
            "COLLECTORD_AGGREGATE_LATE_ALLOWANCE": "1.5",
            "COLLECTORD_AGGREGATE_RETENTION_1H": "1h30m",
            "COLLECTORD_AUTH_TOKENS": "a:acme:writer,b:beta:admin",
            "COLLECTORD_POSTGRES_DSN": 'postgresql://u:"p"@db/m',
            "COLLECTORD_INSTANCE_NAME": "host:1",
        },
    )


@pytest.mark.parametrize("comments", [True, False])
@pytest.mark.parametrize("make", [default_config, odd_config])
def test_render_round_trip(tmp_path: Path, make: Callable[[], Config], comments: bool) -> None:
    config = make()
    text = render_config(config, comments=comments)
    assert load_text(tmp_path, text) == config
    assert ("#" in text) is comments


def test_render_has_a_comment_before_every_key() -> None:
    lines = render_config(default_config()).splitlines()
    keys = 0
    for number, line in enumerate(lines):
        if re.match(r"^(# )?[a-z_0-9]+ = ", line):
            keys += 1
            assert lines[number - 1].startswith("#"), line
    # `tokens` itself has no line: it is written as [[auth.tokens]] tables.
    assert keys == len(describe_keys()) - 1
    assert all(len(line) <= 100 for line in lines)


def test_render_writes_durations_and_sizes_readably() -> None:
    data = tomllib.loads(render_config(default_config()))
    assert data["aggregate"]["flush_interval"] == "10s"
    assert data["aggregate"]["retention_1d"] == "90d"
    assert data["ingest"]["udp_receive_buffer"] == "32MiB"
    assert data["ingest"]["tcp_max_line"] == "64KiB"


def test_shipped_config_is_the_rendered_default() -> None:
    shipped = ROOT / "conf" / "collectord.toml"
    assert shipped.read_text(encoding="utf-8") == render_config(default_config()), (
        "conf/collectord.toml drifted: regenerate it with "
        "`python -m collectord config init --force conf/collectord.toml`"
    )
    assert load_config(shipped, {}) == default_config()


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", doc, flags=re.MULTILINE)
    by_heading = {part.split("\n", 1)[0].strip(): part for part in sections}
    for key in describe_keys():
        heading = f"`[[{key.section}]]`" if "." in key.section else f"`[{key.section}]`"
        assert heading in by_heading, f"docs/configuration.md has no section {heading}"
        row = f"| `{key.key}` |"
        rows = [line for line in by_heading[heading].splitlines() if line.startswith(row)]
        assert rows, f"docs/configuration.md: {key.section}.{key.key} is not documented"
        assert f"`{key.default}`" in rows[0] or key.default in ("none", "required"), (
            f"docs/configuration.md: default of {key.section}.{key.key} should be {key.default}"
        )


def test_every_key_has_a_description() -> None:
    for key in describe_keys():
        assert key.description, f"{key.section}.{key.key} has no description"
