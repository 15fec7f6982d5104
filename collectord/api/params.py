"""Query-string parsing with the seed's limits; every failure is an ApiError naming the limit."""

from __future__ import annotations

import math
import re
from datetime import datetime

from multidict import MultiMapping

from collectord.aggregation.query import AGGREGATIONS
from collectord.aggregation.windows import GRANULARITY_SECONDS
from collectord.api.errors import ApiError
from collectord.limits import NAME_PATTERN

MAX_METRICS = 10
MAX_GROUP_BY = 5
MAX_TAG_FILTERS = 20
LIMIT_RANGE = (1, 10000)
# A query may not ask for more periods than this (a day at 1m is 1,440; a year at 1h 8,760).
MAX_PERIODS = 20_000
LATEST = 253_402_300_799.999  # 9999-12-31T23:59:59.999Z

_NAME = re.compile(NAME_PATTERN)
_RELATIVE = re.compile(r"^-(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def metric_names(params: MultiMapping[str], *, max_count: int = MAX_METRICS) -> list[str]:
    names = [name for value in params.getall("metric", []) for name in value.split(",") if name]
    if not names:
        raise ApiError(400, "missing_metric")
    if len(names) > max_count:
        raise ApiError(400, "too_many_metrics", max=max_count, got=len(names))
    for name in names:
        if len(name) > 255 or not _NAME.match(name):
            raise ApiError(400, "invalid_metric_name", details={"param": "metric"}, name=name)
    return names


def parse_time(param: str, raw: str, now: float) -> float:
    """RFC 3339, epoch milliseconds, `now`, or relative to now such as -1h, -30m, -7d; between
    1970 and the end of year 9999 (what an answer's dates can show)."""
    moment = _moment(param, raw.strip(), now)
    if not 0.0 <= moment <= LATEST:
        raise ApiError(400, "invalid_time", details={"param": param, "reason": "out of range"}, param=param, value=raw)
    return moment


def _moment(param: str, text: str, now: float) -> float:
    if text == "now":
        return now
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    if re.fullmatch(r"\d{1,16}", text):
        return int(text) / 1000.0
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(400, "invalid_time", details={"param": param}, param=param, value=text) from None
    if moment.tzinfo is None:
        raise ApiError(400, "invalid_time", details={"param": param, "reason": "no time zone"}, param=param, value=text)
    return moment.timestamp()


def time_range(params: MultiMapping[str], now: float) -> tuple[float, float]:
    start = parse_time("start", params.get("start", "-1h"), now)
    end = parse_time("end", params.get("end", "now"), now)
    if not (math.isfinite(start) and math.isfinite(end)) or start >= end:
        raise ApiError(400, "invalid_range", details={"start": start, "end": end})
    return start, end


def granularity(params: MultiMapping[str], start: float, end: float) -> str:
    raw = params.get("granularity")
    if raw is None:
        # The finest granularity that keeps the answer within a chart's width.
        for name, seconds in GRANULARITY_SECONDS.items():
            if (end - start) / seconds <= 1440:
                return name
        return "1d"
    if raw not in GRANULARITY_SECONDS:
        raise ApiError(400, "invalid_granularity", details={"param": "granularity"}, value=raw)
    periods = math.ceil((end - start) / GRANULARITY_SECONDS[raw])
    if periods > MAX_PERIODS:
        raise ApiError(
            400, "range_too_long", details={"max": MAX_PERIODS}, periods=periods, granularity=raw, max=MAX_PERIODS
        )
    return raw


def aggregation(params: MultiMapping[str]) -> str:
    raw = params.get("aggregation", "AVG")
    value = raw.upper()
    if value not in AGGREGATIONS:
        raise ApiError(400, "invalid_aggregation", details={"param": "aggregation"}, value=raw)
    return value


def tag_filters(params: MultiMapping[str]) -> list[tuple[str, str]]:
    raws = params.getall("tag", [])
    if len(raws) > MAX_TAG_FILTERS:
        raise ApiError(400, "too_many_tags", max=MAX_TAG_FILTERS, got=len(raws))
    filters: dict[str, str] = {}
    for raw in raws:
        key, sep, value = raw.partition(":")
        if not sep or not key or len(key) > 50 or len(value) > 100:
            raise ApiError(400, "invalid_tag_filter", details={"param": "tag"}, value=raw)
        filters[key] = value
    if len(filters) > MAX_TAG_FILTERS:
        raise ApiError(400, "too_many_tags", max=MAX_TAG_FILTERS, got=len(filters))
    return sorted(filters.items())


def group_by(params: MultiMapping[str]) -> list[str]:
    keys = [key for raw in params.getall("group_by", []) for key in raw.split(",") if key]
    keys = list(dict.fromkeys(keys))
    if len(keys) > MAX_GROUP_BY:
        raise ApiError(400, "too_many_group_by", details={"max": MAX_GROUP_BY}, max=MAX_GROUP_BY, got=len(keys))
    return keys


def limit(params: MultiMapping[str], default: int = 1000, bounds: tuple[int, int] = LIMIT_RANGE) -> int:
    raw = params.get("limit")
    if raw is None:
        return default
    low, high = bounds
    if not re.fullmatch(r"\d{1,6}", raw) or not low <= int(raw) <= high:
        raise ApiError(400, "invalid_limit", details={"param": "limit"}, min=low, max=high, value=raw)
    return int(raw)


def choice(params: MultiMapping[str], name: str, options: tuple[str, ...], code: str) -> str:
    raw = params.get(name, options[0])
    if raw not in options:
        raise ApiError(400, code, details={"param": name}, value=raw)
    return raw
