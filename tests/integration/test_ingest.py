"""The real daemon over real UDP, TCP and HTTP sockets (no external services needed)."""

from __future__ import annotations

import random
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.daemon import RunningDaemon

pytestmark = pytest.mark.integration


def query(daemon: RunningDaemon, **params: str | list[str]) -> dict:  # type: ignore[type-arg]
    status, body = daemon.get("/api/v1/query?" + urllib.parse.urlencode(params, doseq=True))
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def total(daemon: RunningDaemon, metric: str, aggregation: str = "SUM", **extra: str) -> float:
    rows = query(daemon, metric=metric, aggregation=aggregation, start="-1h", granularity="1h", **extra)["data"]
    return float(sum(row["value"] for row in rows))


def test_statsd_over_udp_is_counted_and_queryable(daemon: RunningDaemon) -> None:
    daemon.send_udp(b"api.hits:1|c\napi.hits:2|c|@0.5\napi.temp:21.5|g\napi.lat:10|ms|#endpoint:/users\n")
    daemon.wait_for(lambda: daemon.stats()["accepted"] >= 4)
    assert total(daemon, "api.hits") == 5.0
    status, realtime = daemon.get("/api/v1/realtime?metric=api.temp")
    assert status == 200 and realtime["value"] == 21.5 and realtime["type"] == "GAUGE"
    rows = query(daemon, metric="api.lat", aggregation="P99", group_by="endpoint")["data"]
    assert rows[0]["tags"] == {"endpoint": "/users"}
    assert rows[0]["value"] == pytest.approx(10.0, rel=0.01)


def test_bad_lines_cost_nothing_else_and_are_counted_by_reason(daemon: RunningDaemon) -> None:
    packet = b"ok.one:1|c\n\xff\xfe:1|c\nbad:abc|c\nok.two:1|c\n9lives:1|c\nok.three:1|c"
    daemon.send_udp(packet)
    stats = daemon.wait_for(lambda: (s := daemon.stats())["lines"] >= 6 and s)
    assert stats["accepted"] == 3
    assert stats["rejected"] == 3
    assert stats["lines"] == stats["accepted"] + stats["rejected"]
    assert sum(stats["badLines"].values()) == 3
    for name in ("ok.one", "ok.two", "ok.three"):
        assert total(daemon, name) == 1.0


def test_tcp_reassembles_split_lines_and_counts_the_final_unterminated_line(daemon: RunningDaemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
        conn.sendall(b"split.me:")
        time.sleep(0.05)
        conn.sendall(b"4|c\nsplit.me:1")
        time.sleep(0.05)
        conn.sendall(b"|c\nlast.line:7|c")
    daemon.wait_for(lambda: daemon.stats()["accepted"] >= 3)
    assert total(daemon, "split.me") == 5.0
    assert total(daemon, "last.line") == 7.0


def test_tcp_over_long_line_is_dropped_and_the_connection_goes_on(daemon: RunningDaemon) -> None:
    huge = b"long.line:" + b"1" * (70 * 1024) + b"|c\n"
    with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
        conn.sendall(b"before:1|c\n" + huge + b"after:1|c\n")
    stats = daemon.wait_for(lambda: (s := daemon.stats())["lines"] >= 3 and s)
    assert stats["badLines"].get("line_too_long") == 1
    assert total(daemon, "before") == 1.0
    assert total(daemon, "after") == 1.0


def test_many_concurrent_tcp_clients_lose_nothing(daemon: RunningDaemon) -> None:
    clients, lines_each = 50, 2000

    def send(client: int) -> None:
        body = b"".join(b"tcp.load:1|c|#client:%d\n" % client for _ in range(lines_each))
        with socket.create_connection(("127.0.0.1", daemon.statsd)) as conn:
            for offset in range(0, len(body), 7919):  # odd chunks split lines across writes
                conn.sendall(body[offset : offset + 7919])

    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(send, range(clients)))
    expected = clients * lines_each
    daemon.wait_for(lambda: daemon.stats()["accepted"] >= expected, timeout=30)
    assert total(daemon, "tcp.load") == expected
    rows = query(daemon, metric="tcp.load", aggregation="SUM", granularity="1h", group_by="client")["data"]
    assert len(rows) == clients and all(row["value"] == lines_each for row in rows)


def test_line_protocol_over_udp_and_tcp(daemon: RunningDaemon) -> None:
    daemon.send_udp(b"cpu,host=a usage_idle=90.5,usage_user=3i\n", port=daemon.line)
    with socket.create_connection(("127.0.0.1", daemon.line)) as conn:
        conn.sendall(b'disk,host=a used=10,path="/" \nmem,host=a value=42')
    daemon.wait_for(lambda: daemon.stats()["protocols"]["line"]["accepted"] >= 3)
    assert total(daemon, "cpu.usage_idle", aggregation="MAX") == 90.5
    assert total(daemon, "cpu.usage_user", aggregation="MAX") == 3.0
    assert total(daemon, "mem", aggregation="MAX") == 42.0


def test_hostile_packets_leave_the_daemon_up_and_the_books_balanced(daemon: RunningDaemon) -> None:
    rng = random.Random(1234)
    seeds = [b"a.b:1|c", b"x:1.5|ms|@0.1|#k:v,k2:v2", b"g:-3|g", b"s:u1|s", b"n,k=v:1|c", b"m;k=v:1|h"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(5000):
            if i % 2:
                packet = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
            else:
                packet = bytearray(b"\n".join(rng.choice(seeds) for _ in range(rng.randint(1, 10))))
                for _ in range(rng.randint(0, 5)):
                    packet[rng.randrange(len(packet))] = rng.getrandbits(8)
                packet = bytes(packet)
            sock.sendto(packet, ("127.0.0.1", daemon.statsd))
            if i % 500 == 0:
                time.sleep(0.01)
    time.sleep(0.5)
    stats = daemon.stats()
    assert stats["packets"] > 0
    assert stats["lines"] == stats["accepted"] + stats["rejected"]
    status, _ = daemon.get("/healthz")
    assert status == 200


def test_prometheus_exposition_carries_the_same_counters(daemon: RunningDaemon) -> None:
    daemon.send_udp(b"exp.one:1|c\nnot valid\n")
    daemon.wait_for(lambda: daemon.stats()["lines"] >= 2)
    status, text = daemon.get("/metrics")
    assert status == 200
    assert 'collectord_lines_total{protocol="statsd"} 2.0' in text
    assert 'collectord_bad_lines_total{protocol="statsd",reason=' in text
    assert "process_resident_memory_bytes" in text


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ("", "missing_metric"),
        ("metric=" + "&metric=".join(f"m{i}" for i in range(11)), "too_many_metrics"),
        ("metric=9bad", "invalid_metric_name"),
        ("metric=a&limit=0", "invalid_limit"),
        ("metric=a&limit=10001", "invalid_limit"),
        ("metric=a&granularity=2m", "invalid_granularity"),
        ("metric=a&aggregation=P42", "invalid_aggregation"),
        ("metric=a&start=yesterday", "invalid_time"),
        ("metric=a&start=now&end=-1h", "invalid_range"),
        ("metric=a&tag=novalue", "invalid_tag_filter"),
        ("metric=a" + "".join(f"&group_by=k{i}" for i in range(6)), "too_many_group_by"),
    ],
)
def test_query_rejects_bad_parameters_with_the_limit_named(daemon: RunningDaemon, params: str, code: str) -> None:
    status, body = daemon.get("/api/v1/query?" + params)
    assert status == 400
    assert body["error"]["code"] == code
    status_pl, body_pl = daemon.get("/api/v1/query?" + params, headers={"Accept-Language": "pl-PL,pl;q=0.9"})
    assert status_pl == 400 and body_pl["error"]["message"] != body["error"]["message"]


def test_unknown_route_gets_the_error_shape_in_polish(daemon: RunningDaemon) -> None:
    status, body = daemon.get("/nope", headers={"Accept-Language": "pl"})
    assert status == 404
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"].startswith("Nie znaleziono")


def test_series_and_cardinality_endpoints(daemon: RunningDaemon) -> None:
    daemon.send_udp(b"".join(b"card.hot:1|c|#user:%d\n" % i for i in range(120)))
    daemon.wait_for(lambda: daemon.stats()["lines"] >= 120)
    status, series = daemon.get("/api/v1/series?metric=card.")
    assert status == 200 and series["totalCount"] == 100
    status, card = daemon.get("/api/v1/cardinality")
    assert card["byActiveSeries"][0] == {"metricName": "card.hot", "series": 100, "tagValues": {"user": 100}}
    assert card["byRejectedSeries"][0] == {"metricName": "card.hot", "rejected": 20}
