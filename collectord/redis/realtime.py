"""Realtime values shared by the fleet: what every daemon's series hold now, in Redis.

Written without touching the hot path: every write interval the writer looks at the series
that took samples since the last write (those with open slices, plus those a flush closed or a
late sample touched), compares each with what it last wrote, and sends the differences in one
pipeline. Counters send their increase (HINCRBYFLOAT, so the value is the fleet's total), gauges
and sets their value, histograms and summaries their latest value, also pushed onto a bounded
list. Every key has a TTL renewed at each write.

Reading merges Redis with what this daemon has not written yet, so its own samples are visible
the moment they are parsed, as they are without Redis.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from collectord.aggregation.aggregator import Aggregator
from collectord.aggregation.query import iso
from collectord.aggregation.series import Series
from collectord.model import KIND_COUNTER, KIND_HISTOGRAM, KIND_SUMMARY
from collectord.redis.keys import Keys, tags_id

# What was last written for a series: (counter total, last timestamp, value).
Written = tuple[float, float, float | None]
# Series per script call: a call blocks Redis while it runs, so it stays short.
CHUNK = 2000
_encode = msgspec.json.Encoder().encode

# ARGV: prefix, ttl, now, recent size, then a JSON list of [op, tenant, name, tags id, value,
# time, type], numbers as JSON numbers (shortest round-trip form: exact as doubles). op c is a
# counter (add), g a gauge or set (newest time wins), d a distribution (newest wins, and every
# value goes onto the recent list). Keys are built here from the prefix, so the script needs a
# single Redis (not a cluster).
WRITE_SCRIPT = """
local prefix, ttl, now, keep = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local indexes = {}
for _, r in ipairs(cjson.decode(ARGV[5])) do
  local op, tenant, name, tags, v, t, y = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
  local key = prefix .. ':rt:' .. tenant .. ':' .. name .. ':' .. tags
  if op == 'c' then
    redis.call('HINCRBYFLOAT', key, 'v', v)
    redis.call('HSET', key, 't', t, 'y', y)
  else
    local held = redis.call('HGET', key, 't')
    if (not held) or tonumber(held) <= tonumber(t) then
      redis.call('HSET', key, 'v', v, 't', t, 'y', y)
    end
    if op == 'd' then
      local recent = prefix .. ':rtl:' .. tenant .. ':' .. name .. ':' .. tags
      redis.call('LPUSH', recent, v)
      redis.call('LTRIM', recent, 0, keep - 1)
      redis.call('EXPIRE', recent, ttl)
    end
  end
  redis.call('EXPIRE', key, ttl)
  local index = prefix .. ':rti:' .. tenant .. ':' .. name
  redis.call('ZADD', index, now, tags)
  indexes[index] = true
end
for index in pairs(indexes) do
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (tonumber(now) - ttl))
  redis.call('EXPIRE', index, ttl)
end
return 0
"""


@dataclass
class Pending:
    """The differences found by one scan, kept until Redis has them."""

    series: list[Series] = field(default_factory=list)
    marks: list[Written] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.series)


class RealtimeWriter:
    def __init__(self, keys: Keys, ttl: float, recent_size: int) -> None:
        self.keys = keys
        self.ttl = ttl
        self.recent_size = recent_size
        self.written: dict[Series, Written] = {}
        self.members: dict[Series, str] = {}
        # Series a flush closed or a late sample touched since the last scan, and series whose
        # last write failed: they may no longer hold an open slice, and still need writing.
        self.extra: set[Series] = set()
        self.series_written = 0

    def baseline(self, aggregator: Aggregator) -> None:
        """Count what memory holds at start as written: a restarted daemon does not add its
        recovered counter totals to the fleet's a second time."""
        for series in aggregator.table.all_series():
            self.written[series] = _mark(series)

    def note(self, series: Iterable[Series]) -> None:
        self.extra.update(series)

    def scan(self, aggregator: Aggregator) -> Pending:
        """The series whose realtime value changed since it was last written."""
        pending = Pending()
        written = self.written
        candidates: Iterable[Series] = aggregator.slice_series()
        if self.extra:
            candidates = set(candidates) | self.extra
            self.extra = set()
        for series in candidates:
            mark = _mark(series)
            held = written.get(series)
            if held is None or held[0] != mark[0] or held[1] != mark[1] or not _same(held[2], mark[2]):
                pending.series.append(series)
                pending.marks.append(mark)
        return pending

    def commands(self, pending: Pending, now: float) -> list[tuple[Any, ...]]:
        """The writes for `pending`: one script call per chunk of series, its rows one JSON
        argument (packing one string costs far less than thousands of commands)."""
        rows: list[tuple[str, str, str, str, float, float, str]] = []
        written, members = self.written, self.members
        for series, mark in zip(pending.series, pending.marks, strict=True):
            total, when, value = mark
            if series.kind == KIND_COUNTER:
                held = written.get(series)
                change = total - (held[0] if held is not None else 0.0)
                op = "c"
            else:
                change = math.nan if value is None else value
                op = "d" if series.kind in (KIND_HISTOGRAM, KIND_SUMMARY) else "g"
            if not math.isfinite(change):
                continue
            member = members.get(series)
            if member is None:
                member = members[series] = tags_id(series.tags)
            rows.append((op, series.tenant, series.name, member, change, when, series.type.value))
        head = (self.keys.prefix, math.ceil(self.ttl), repr(now), self.recent_size)
        return [("EVAL", WRITE_SCRIPT, 0, *head, _encode(rows[i : i + CHUNK])) for i in range(0, len(rows), CHUNK)]

    def done(self, pending: Pending) -> None:
        """Redis has `pending`: it becomes what was last written."""
        written = self.written
        for series, mark in zip(pending.series, pending.marks, strict=True):
            written[series] = mark
        self.series_written += len(pending)

    def failed(self, pending: Pending) -> None:
        self.extra.update(pending.series)

    def forget_removed(self, aggregator: Aggregator) -> None:
        """Drop marks of series memory no longer holds (idle expiry)."""
        tenants = aggregator.table.by_tenant
        self.written = {
            series: mark
            for series, mark in self.written.items()
            if tenants.get(series.tenant, {}).get((series.name, series.tags)) is series
        }
        self.members = {series: member for series, member in self.members.items() if series in self.written}

    def unwritten_total(self, series: Series) -> float:
        """A counter's increase not yet in Redis."""
        held = self.written.get(series)
        return series.total - (held[0] if held is not None else 0.0)


def _mark(series: Series) -> Written:
    return (series.total, series.last_timestamp, series.realtime_value())


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


class FleetSeries(msgspec.Struct):
    tags: dict[str, str]
    type: str
    value: float
    timestamp: float
    recent: list[float] = msgspec.field(default_factory=list)


async def read_fleet(
    client: Any, keys: Keys, tenant: str, name: str, tag_filter: list[tuple[str, str]], now: float, ttl: float
) -> dict[str, FleetSeries]:
    """Every series of `name` written by any daemon within `ttl`, by tags id."""
    index = keys.realtime_index(tenant, name)
    members = await client.zrangebyscore(index, now - ttl, "+inf")
    chosen: list[str] = []
    for raw in members:
        member = raw.decode() if isinstance(raw, bytes) else str(raw)
        try:
            tags = msgspec.json.decode(member, type=dict[str, str])
        except msgspec.DecodeError:
            continue
        if all(tags.get(k) == v for k, v in tag_filter):
            chosen.append(member)
    if not chosen:
        return {}
    pipe = client.pipeline(transaction=False)
    for member in chosen:
        pipe.hmget(keys.realtime(tenant, name, member), "v", "t", "y")
        pipe.lrange(keys.recent(tenant, name, member), 0, 9)
    replies = await pipe.execute()
    found: dict[str, FleetSeries] = {}
    for i, member in enumerate(chosen):
        value, when, kind = replies[2 * i]
        if value is None or when is None or kind is None:
            continue  # expired between the index and the read
        recent = [float(v) for v in replies[2 * i + 1]]
        found[member] = FleetSeries(
            msgspec.json.decode(member, type=dict[str, str]), kind.decode(), float(value), float(when), recent
        )
    return found


def merge_local(fleet: dict[str, FleetSeries], local: list[Series], writer: RealtimeWriter) -> None:
    """Add what this daemon holds and has not written yet (it is newer than Redis)."""
    for series in local:
        member = tags_id(series.tags)
        held = fleet.get(member)
        if series.kind == KIND_COUNTER:
            pending = writer.unwritten_total(series)
            if held is None:
                fleet[member] = FleetSeries(dict(series.tags), series.type.value, pending, series.last_timestamp)
            else:
                held.value += pending
                held.timestamp = max(held.timestamp, series.last_timestamp)
            continue
        value = series.realtime_value()
        if value is None:
            continue
        if held is None or series.last_timestamp > held.timestamp:
            recent = held.recent if held is not None else []
            fleet[member] = FleetSeries(dict(series.tags), series.type.value, value, series.last_timestamp, recent)


def realtime_document(name: str, fleet: dict[str, FleetSeries]) -> dict[str, object]:
    """The realtime answer over the fleet: counters add up, otherwise the newest value wins."""
    if not fleet:
        return {"metric": name, "value": None, "type": None, "timestamp": None, "series": 0, "fleet": True}
    newest = max(fleet.values(), key=lambda s: s.timestamp)
    value = sum(s.value for s in fleet.values() if s.type == "COUNTER") if newest.type == "COUNTER" else newest.value
    document: dict[str, object] = {
        "metric": name,
        "value": value if math.isfinite(value) else None,
        "type": newest.type,
        "timestamp": iso(newest.timestamp),
        "series": len(fleet),
        "fleet": True,
    }
    if newest.type in ("HISTOGRAM", "SUMMARY"):
        document["recent"] = newest.recent
    return document
