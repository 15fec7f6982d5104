"""Times in query strings: every accepted form, and nothing an answer's dates cannot show."""

from __future__ import annotations

import pytest

from collectord.api.errors import ApiError
from collectord.api.params import parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("now", NOW),
        ("-1h", NOW - 3600),
        ("-1.5m", NOW - 90),
        ("1700000000000", 1_700_000_000.0),
        ("2026-11-27T18:00:00Z", 1_795_802_400.0),
        ("2026-11-27T19:00:00+01:00", 1_795_802_400.0),
        ("0", 0.0),
        ("9999-12-31T23:59:59Z", 253_402_300_799.0),
    ],
)
def test_accepted(raw: str, seconds: float) -> None:
    assert parse_time("start", raw, NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "raw",
    ["8999195484992541", "-100000w", "2026-11-27T18:00:00", "yesterday", "", "9999-12-31T23:59:59-05:00", "1e9"],
)
def test_refused(raw: str) -> None:
    with pytest.raises(ApiError) as refused:
        parse_time("older_than", raw, NOW)
    assert refused.value.status == 400 and refused.value.code == "invalid_time"
