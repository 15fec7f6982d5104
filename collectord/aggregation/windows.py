"""Window granularities, all aligned to UTC boundaries (unix time is UTC)."""

from __future__ import annotations

GRANULARITY_SECONDS: dict[str, int] = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
GRANULARITIES: tuple[str, ...] = tuple(GRANULARITY_SECONDS)

# Flush intervals must tile a minute exactly so that slices roll up into 1m windows.
VALID_FLUSH_INTERVALS = (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60)


def align(when: float, seconds: int) -> int:
    """Start of the period of length `seconds` that contains `when`."""
    return int(when // seconds) * seconds
