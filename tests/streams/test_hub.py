from __future__ import annotations

import asyncio

import pytest

from collectord.model import KIND_COUNTER, KIND_GAUGE
from collectord.ring import Batch
from collectord.streams.hub import Event, StreamHub, TooManyStreams


def batch(tenant: str, *samples: tuple[str, tuple[tuple[str, str], ...], float]) -> Batch:
    return Batch(tenant, [((name, tags), KIND_COUNTER, value, 1.0, None) for name, tags, value in samples], 1000.0)


async def test_followers_get_only_their_metrics_tags_and_tenant() -> None:
    hub = StreamHub()
    assert not hub.active
    sub = hub.subscribe("acme", ["api.hits"], [("host", "a")])
    assert hub.active
    hub.publish_batch(batch("acme", ("api.hits", (("host", "a"),), 1.0), ("api.hits", (("host", "b"),), 2.0)))
    hub.publish_batch(batch("other", ("api.hits", (("host", "a"),), 3.0)))
    hub.publish_batch(batch("acme", ("db.hits", (("host", "a"),), 4.0)))
    events, dropped = await sub.next(0.1)
    assert [e["value"] for e in events] == [1.0]
    assert events[0] == {
        "name": "api.hits",
        "type": "COUNTER",
        "value": 1.0,
        "tags": {"host": "a"},
        "timestamp": "1970-01-01T00:16:40.000Z",
    }
    assert dropped == 0


async def test_a_slow_follower_loses_its_oldest_events_and_is_told_how_many() -> None:
    hub = StreamHub(max_queue=3)
    sub = hub.subscribe("t", ["m"])
    for value in range(10):
        hub.publish_batch(batch("t", ("m", (), float(value))))
    events, dropped = await sub.next(0.1)
    assert [e["value"] for e in events] == [7.0, 8.0, 9.0]
    assert dropped == 7
    events, dropped = await sub.next(0.01)
    assert (events, dropped) == ([], 0)


async def test_next_wakes_as_soon_as_an_event_arrives() -> None:
    hub = StreamHub()
    sub = hub.subscribe("t", ["m"])
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, hub.publish_batch, batch("t", ("m", (), 5.0)))
    began = loop.time()
    events, _ = await sub.next(5.0)
    assert [e["value"] for e in events] == [5.0]
    assert loop.time() - began < 1.0


def test_streams_per_tenant_are_limited_and_unsubscribing_frees_a_place() -> None:
    hub = StreamHub(max_per_tenant=2)
    first = hub.subscribe("t", ["m"])
    hub.subscribe("t", ["m", "n"])
    with pytest.raises(TooManyStreams):
        hub.subscribe("t", ["m"])
    hub.subscribe("other", ["m"])  # another tenant has its own allowance
    hub.unsubscribe(first)
    hub.subscribe("t", ["m"])
    assert hub.stream_count() == 3


def test_interest_from_other_hosts_forwards_local_samples_and_nothing_else() -> None:
    hub = StreamHub()
    forwarded: list[tuple[str, list[Event]]] = []
    hub.forwarders.append(lambda tenant, events: forwarded.append((tenant, events)))
    hub.publish_batch(batch("t", ("m", (), 1.0)))
    assert forwarded == [] and not hub.active
    hub.set_remote_interest({("t", "m"): 1})
    assert hub.active
    hub.publish_batch(batch("t", ("m", (), 2.0), ("n", (), 3.0)))
    assert [(t, [e["value"] for e in events]) for t, events in forwarded] == [("t", [2.0])]


async def test_remote_events_reach_local_followers() -> None:
    hub = StreamHub()
    changes: list[int] = []
    hub.interest_listeners.append(lambda: changes.append(len(hub.local_interest())))
    sub = hub.subscribe("t", ["m"])
    assert changes == [1]
    event = {"name": "m", "type": "GAUGE", "value": 1.5, "tags": {}, "timestamp": "x"}
    hub.deliver_remote("t", [event, {**event, "name": "other"}])
    hub.deliver_remote("u", [event])
    events, _ = await sub.next(0.1)
    assert events == [event]
    hub.unsubscribe(sub)
    assert changes == [1, 0] and not hub.active


def test_gauge_samples_carry_their_type() -> None:
    hub = StreamHub()
    seen: list[Event] = []
    hub.forwarders.append(lambda tenant, events: seen.extend(events))
    hub.set_remote_interest({("t", "g"): 1})
    hub.publish_batch(Batch("t", [(("g", ()), KIND_GAUGE, 7.0, 1.0, 2000.0)], 1000.0))
    assert seen[0]["type"] == "GAUGE" and seen[0]["timestamp"].startswith("1970-01-01T00:33:20")
