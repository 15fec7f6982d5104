"""Units of measure: their names in English and Polish, and the unit each metric was written with.

The record API's `unit` is remembered per (tenant, metric name) in `units.json` in the data
directory (rewritten only when a unit changes, which is rare), so reports can name it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from aiohttp import web

log = logging.getLogger("collectord.api")

# Canonical unit -> (English, Polish), as a column of numbers is headed: plural nominative.
UNIT_NAMES: dict[str, tuple[str, str]] = {
    "ns": ("nanoseconds", "nanosekundy"),
    "us": ("microseconds", "mikrosekundy"),
    "ms": ("milliseconds", "milisekundy"),
    "s": ("seconds", "sekundy"),
    "min": ("minutes", "minuty"),
    "h": ("hours", "godziny"),
    "d": ("days", "dni"),
    "bytes": ("bytes", "bajty"),
    "KB": ("kilobytes", "kilobajty"),
    "MB": ("megabytes", "megabajty"),
    "GB": ("gigabytes", "gigabajty"),
    "KiB": ("kibibytes", "kibibajty"),
    "MiB": ("mebibytes", "mebibajty"),
    "GiB": ("gibibytes", "gibibajty"),
    "bits": ("bits", "bity"),
    "bytes/s": ("bytes per second", "bajty na sekundę"),
    "bits/s": ("bits per second", "bity na sekundę"),
    "percent": ("percent", "procent"),
    "requests": ("requests", "żądania"),
    "requests/s": ("requests per second", "żądania na sekundę"),
    "errors": ("errors", "błędy"),
    "items": ("items", "sztuki"),
    "connections": ("connections", "połączenia"),
    "celsius": ("degrees Celsius", "stopnie Celsjusza"),
}

_ALIASES: dict[str, str] = {
    "nanosecond": "ns",
    "nanoseconds": "ns",
    "µs": "us",
    "microsecond": "us",
    "microseconds": "us",
    "millisecond": "ms",
    "milliseconds": "ms",
    "msec": "ms",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "m": "min",
    "minute": "min",
    "minutes": "min",
    "hour": "h",
    "hours": "h",
    "day": "d",
    "days": "d",
    "b": "bytes",
    "byte": "bytes",
    "kb": "KB",
    "kilobytes": "KB",
    "mb": "MB",
    "megabytes": "MB",
    "gb": "GB",
    "gigabytes": "GB",
    "kib": "KiB",
    "mib": "MiB",
    "gib": "GiB",
    "bit": "bits",
    "b/s": "bytes/s",
    "bps": "bits/s",
    "%": "percent",
    "pct": "percent",
    "request": "requests",
    "req": "requests",
    "req/s": "requests/s",
    "rps": "requests/s",
    "error": "errors",
    "item": "items",
    "count": "items",
    "connection": "connections",
    "°c": "celsius",
    "c": "celsius",
}
_CANONICAL = {name.lower(): name for name in UNIT_NAMES}


def canonical_unit(unit: str) -> str | None:
    """The catalogue's key for a unit as clients write it (`ms`, `Milliseconds`, `B`), or None."""
    text = unit.strip()
    if text in UNIT_NAMES:
        return text
    lowered = text.lower()
    return _CANONICAL.get(lowered) or _ALIASES.get(lowered)


def unit_name(unit: str | None, language: str) -> str:
    """The unit's name in `language`; a unit we do not know is shown as written."""
    if not unit:
        return ""
    key = canonical_unit(unit)
    if key is None:
        return unit
    english, polish = UNIT_NAMES[key]
    return polish if language == "pl" else english


class UnitBook:
    """The unit each metric was last written with, per tenant; kept in `path` across restarts."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.units: dict[tuple[str, str], str] = {}
        if path is not None:
            with contextlib.suppress(OSError, ValueError, TypeError):
                for tenant, name, unit in json.loads(path.read_text(encoding="utf-8")):
                    self.units[(str(tenant), str(name))] = str(unit)

    def get(self, tenant: str, name: str) -> str | None:
        return self.units.get((tenant, name))

    def note(self, tenant: str, name: str, unit: str) -> None:
        if self.units.get((tenant, name)) == unit:
            return
        self.units[(tenant, name)] = unit
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        rows = [[tenant, name, unit] for (tenant, name), unit in sorted(self.units.items())]
        temporary = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(rows), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as error:
            # Units are labels: losing one is not worth failing a write for.
            log.warning("cannot save units", extra={"error": str(error)})


UNITS = web.AppKey("units", UnitBook)
