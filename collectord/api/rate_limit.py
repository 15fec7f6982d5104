"""Token buckets per bearer token for the write endpoints."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from collectord.api.errors import ApiError


class TokenBucket:
    """`rate` writes per second on average, at most `burst` at once."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst if burst > 0 else max(1, math.ceil(rate)))
        self.level = self.burst
        self.updated = now

    def take(self, now: float) -> float:
        """Take one write; 0.0 when allowed, else the seconds until one is."""
        self.level = min(self.burst, self.level + (now - self.updated) * self.rate)
        self.updated = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate


class WriteLimiter:
    """One bucket per token (keyed by its hash), created on its first write."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, TokenBucket] = {}
        self.refused = 0

    def check(self, key: str, rate: float, burst: int) -> None:
        """Raises a 429 (with Retry-After) when the token has no write left right now."""
        if rate <= 0:
            return
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(rate, burst, now)
        wait = bucket.take(now)
        if wait > 0:
            self.refused += 1
            retry_after = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                details={"rate": rate, "burst": bucket.burst, "retryAfter": retry_after},
                headers={"Retry-After": str(retry_after)},
                rate=rate,
                seconds=retry_after,
            )
