"""Structured logs to stderr (logfmt or JSON) for journald; extras become fields.

Two guards sit on the handler, so no caller can forget them:
- repeats are rate-limited: at most `burst` records per message key (the `key` extra, else the
  logger and message) per `period`; the next record let through carries `suppressed=<n>`;
- secrets are redacted: passwords in URLs and DSNs, bearer tokens, Authorization headers and
  `token=`/`password=` fields, in the message, in every field and in tracebacks.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

REDACTED = "***"
# Fields whose whole value is a secret.
SECRET_FIELDS = frozenset({"token", "password", "passwd", "secret", "authorization", "api_key", "apikey"})

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s]*:)[^@\s/]*@")
_AUTH_HEADER = re.compile(
    r"(?i)(?P<head>\bauthorization\b[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',;]+"
)
_BEARER = re.compile(r"(?i)(?P<head>\b(?:bearer|token)\s+)[A-Za-z0-9._~+/=-]{8,}")
_KEY_VALUE = re.compile(
    r"(?i)(?P<head>\b(?:password|passwd|pwd|sslpassword|token|secret|api_?key|access_token)"
    r"[\"']?\s*[=:]\s*)(?:'[^']+'|\"[^\"]+\"|[^\s&,;\"']+)"
)


def redact(text: str) -> str:
    """`text` with every password, token and Authorization value replaced by ***."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", text)
    text = _AUTH_HEADER.sub(rf"\g<head>{REDACTED}", text)
    text = _BEARER.sub(rf"\g<head>{REDACTED}", text)
    return _KEY_VALUE.sub(rf"\g<head>{REDACTED}", text)


def _clean(key: str, value: object) -> object:
    if key.lower() in SECRET_FIELDS and value not in ("", None):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact(str(value))


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": redact(record.getMessage()),
    }
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_") and key != "key":
            fields[key] = _clean(key, value)
    if record.exc_info:
        fields["error"] = redact(logging.Formatter().formatException(record.exc_info))
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in _fields(record).items():
            text = str(value)
            if not text or any(c in text for c in ' ="\n\t'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


@dataclass
class _Window:
    started: float
    passed: int = 0
    suppressed: int = 0


class RepeatLimiter(logging.Filter):
    """Lets at most `burst` records per message key through per `period` seconds.

    The key is the record's `key` extra when given (e.g. "rejected:statsd:bad_value"), else the
    logger name and the unformatted message. The first record let through after a suppression
    carries `suppressed`, the number held back since the previous one.
    """

    def __init__(self, burst: int = 10, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.clock = clock
        self.windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "key", None) or f"{record.name}:{record.msg}"
        now = self.clock()
        window = self.windows.get(key)
        if window is None or now - window.started >= self.period:
            held = window.suppressed if window is not None else 0
            window = self.windows[key] = _Window(now)
            if len(self.windows) > 10_000:
                self._forget_old(now)
            if held:
                record.suppressed = held
        if window.passed >= self.burst:
            window.suppressed += 1
            self.suppressed_total += 1
            return False
        window.passed += 1
        return True

    def _forget_old(self, now: float) -> None:
        """Keys come from code, not input, but a bound keeps a bug from growing memory."""
        for key in [k for k, w in self.windows.items() if now - w.started >= self.period]:
            del self.windows[key]


_limiter = RepeatLimiter()


def repeat_limiter() -> RepeatLimiter:
    """The limiter on the daemon's handler (its `suppressed_total` is a self-metric)."""
    return _limiter


def setup_logging(level: str, fmt: str) -> None:
    """(Re)configure the root logger: one stderr handler, the chosen format, the guards.
    Called again on reload; the limiter's windows carry over."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(_limiter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
