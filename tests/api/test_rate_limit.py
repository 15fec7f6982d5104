"""The write token bucket: burst, refill, Retry-After, per token."""

from __future__ import annotations

import pytest

from collectord.api.errors import ApiError
from collectord.api.rate_limit import TokenBucket, WriteLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)
    # A long pause refills only up to the burst.
    assert [bucket.take(100.0) for _ in range(4)][-1] > 0


def test_burst_defaults_to_one_seconds_worth() -> None:
    assert TokenBucket(rate=10.0, burst=0, now=0.0).burst == 10
    assert TokenBucket(rate=0.2, burst=0, now=0.0).burst == 1


def test_limiter_refuses_with_retry_after_per_token() -> None:
    clock = Clock()
    limiter = WriteLimiter(clock)
    limiter.check("a", 0.5, 1)
    with pytest.raises(ApiError) as refused:
        limiter.check("a", 0.5, 1)
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.headers == {"Retry-After": "2"}
    limiter.check("b", 0.5, 1)  # another token has its own bucket
    clock.now += 2.0
    limiter.check("a", 0.5, 1)
    assert limiter.refused == 1


def test_zero_rate_is_unlimited() -> None:
    limiter = WriteLimiter(Clock())
    for _ in range(1000):
        limiter.check("a", 0.0, 0)
