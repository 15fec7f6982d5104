"""collectord/logs.py: redaction of secrets, the repeat limiter, both formats."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from collectord.logs import JsonFormatter, LogfmtFormatter, RepeatLimiter, redact, setup_logging

REDACT = [
    ("postgresql://collector:s3cr3t@db.internal:5432/metrics", "postgresql://collector:***@db.internal:5432/metrics"),
    ("postgres://u:p%40ss@h/db?sslmode=require", "postgres://u:***@h/db?sslmode=require"),
    ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
    ("rediss://default:hunter2@cache:6380", "rediss://default:***@cache:6380"),
    ("connect to http://user:pw@influx:8086 failed", "connect to http://user:***@influx:8086 failed"),
    ("host=db user=c password=s3cr3t dbname=m", "host=db user=c password=*** dbname=m"),
    ("host=db password='two words' dbname=m", "host=db password=*** dbname=m"),
    ("Authorization: Bearer abcdef123456", "Authorization: ***"),
    ("authorization=Token influx-token-xyz", "authorization=***"),
    ('{"Authorization": "Basic dXNlcjpwYXNz"}', '{"Authorization": "***"}'),
    ("sent Bearer eyJhbGciOiJIUzI1NiJ9.e30.x to the API", "sent Bearer *** to the API"),
    ("GET /api/v2/write?org=o&token=abc123&bucket=b", "GET /api/v2/write?org=o&token=***&bucket=b"),
    ("token=abc123 tenant=acme", "token=*** tenant=acme"),
    ('api_key: "k-123"', "api_key: ***"),
    # Nothing secret: unchanged.
    ("postgresql://collector@db.internal:5432/metrics", "postgresql://collector@db.internal:5432/metrics"),
    ("http://127.0.0.1:8127/api/v1/query", "http://127.0.0.1:8127/api/v1/query"),
    ("listening on 127.0.0.1:8125", "listening on 127.0.0.1:8125"),
    ("tokens reloaded: 3", "tokens reloaded: 3"),
    ('token = ""', 'token = ""'),
    # A tag named token in a rejected line's example may well hold one: it is hidden too.
    ("bad line api.requests:1|c|#token:x", "bad line api.requests:1|c|#token:***"),
]


@pytest.mark.parametrize(("text", "expected"), REDACT)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("collectord.test", logging.WARNING, __file__, 1, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def test_formatters_redact_messages_fields_and_tracebacks() -> None:
    try:
        raise ConnectionError("cannot reach redis://:hunter2@cache:6379")
    except ConnectionError:
        exc_info = sys.exc_info()
    rec = record("sink failed for postgresql://c:s3cr3t@db/m", dsn="postgresql://c:s3cr3t@db/m", token="plain")
    rec.exc_info = exc_info
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        line = formatter.format(rec)
        assert "s3cr3t" not in line and "hunter2" not in line and "plain" not in line, line
        assert "***" in line
    fields = json.loads(JsonFormatter().format(rec))
    assert fields["token"] == "***"
    assert fields["dsn"] == "postgresql://c:***@db/m"


def test_logfmt_quotes_values_with_spaces() -> None:
    line = LogfmtFormatter().format(record("rejected lines", example="a b", count=3))
    assert 'msg="rejected lines"' in line and 'example="a b"' in line and "count=3" in line


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limiter_lets_a_burst_through_per_key_then_counts_what_it_held() -> None:
    clock = FakeClock()
    limiter = RepeatLimiter(burst=3, period=60.0, clock=clock)
    passed = [limiter.filter(record("disk full")) for _ in range(10)]
    assert passed == [True] * 3 + [False] * 7
    # Another message has its own budget; so has an explicit key.
    assert limiter.filter(record("other"))
    assert limiter.filter(record("disk full", key="rejected:statsd:bad_value"))
    clock.now += 59.0
    assert not limiter.filter(record("disk full"))
    clock.now += 1.0
    after = record("disk full")
    assert limiter.filter(after)
    assert after.__dict__["suppressed"] == 8
    assert limiter.suppressed_total == 8
    # A fresh window with nothing held back says nothing about suppression.
    clock.now += 60.0
    quiet = record("disk full")
    assert limiter.filter(quiet) and "suppressed" not in quiet.__dict__


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    saved = sys.stderr
    sys.stderr = stream
    try:
        setup_logging("info", "json")
        yield stream
    finally:
        sys.stderr = saved
        setup_logging("info", "logfmt")


def test_setup_logging_installs_the_guards(captured: io.StringIO) -> None:
    log = logging.getLogger("collectord.test.guards")
    for _ in range(50):
        log.warning("same thing again", extra={"url": "redis://:pw@h:6379"})
    log.debug("below the level")
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert 1 <= len(lines) <= 10
    assert all(line["url"] == "redis://:***@h:6379" for line in lines)
    assert all(line["level"] == "warning" for line in lines)
