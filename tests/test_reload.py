"""collectord/reload.py: which keys apply live, the merge that holds restart keys back, the docs
table, and reloads of an in-process daemon (hooks, parsers, limits, refusals)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from collectord.config import Config, default_config, describe_keys, load_config
from collectord.daemon import Daemon
from collectord.reload import LIVE, changed_keys, is_live, merge
from tests.integration.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent


def config_with(**sections: dict[str, object]) -> Config:
    config = default_config()
    for section, values in sections.items():
        config = msgspec.structs.replace(
            config, **{section: msgspec.structs.replace(getattr(config, section), **values)}
        )
    return config


def test_live_entries_name_real_keys() -> None:
    keys = {f"{k.section}.{k.key}" for k in describe_keys() if "." not in k.section}
    sections = {key.split(".")[0] for key in keys}
    for entry in LIVE:
        section, name = entry.split(".", 1)
        assert (name == "*" and section in sections) or entry in keys, entry


@pytest.mark.parametrize(
    ("key", "live"),
    [
        ("listen.http", True),
        ("auth.tokens", True),
        ("log.level", True),
        ("limits.max_series", True),
        ("ingest.tenant", True),
        ("ingest.ring_capacity", False),
        ("aggregate.flush_interval", False),
        ("storage.data_dir", False),
        ("postgres.dsn", False),
    ],
)
def test_is_live(key: str, live: bool) -> None:
    assert is_live(key) is live


def test_merge_keeps_restart_keys_at_their_running_value() -> None:
    running = default_config()
    loaded = config_with(
        aggregate={"flush_interval": 5.0, "late_allowance": 60.0},
        ingest={"ring_capacity": 10, "tenant": "acme"},
        log={"level": "debug"},
    )
    merged, held = merge(running, loaded)
    assert held == ["ingest.ring_capacity", "aggregate.flush_interval"]
    assert merged.aggregate.flush_interval == running.aggregate.flush_interval
    assert merged.ingest.ring_capacity == running.ingest.ring_capacity
    assert (merged.aggregate.late_allowance, merged.ingest.tenant, merged.log.level) == (60.0, "acme", "debug")
    assert changed_keys(running, merged) == ["ingest.tenant", "aggregate.late_allowance", "log.level"]
    assert merge(running, running) == (running, [])


def test_docs_mark_every_key_live_or_restart() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    section = doc.split("## Reloading (SIGHUP)", 1)[1]
    rows = dict(re.findall(r"^\| `([a-z_0-9.]+)` \| (live|restart) \|", section, flags=re.MULTILINE))
    for key in describe_keys():
        if "." in key.section:
            continue
        dotted = f"{key.section}.{key.key}"
        assert dotted in rows, f"docs/configuration.md, Reloading: no row for {dotted}"
        assert rows[dotted] == ("live" if is_live(dotted) else "restart"), dotted


# --- an in-process daemon -------------------------------------------------------------------


def write(path: Path, http: int, data: Path, extra: str = "") -> None:
    path.write_text(
        f"""
[listen]
statsd_udp = ""
statsd_tcp = ""
line_udp = ""
line_tcp = ""
http = "127.0.0.1:{http}"
[storage]
data_dir = "{data}"
wal = false
{extra}
""",
        encoding="utf-8",
    )


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    path = tmp_path / "collectord.toml"
    write(path, free_port(), tmp_path / "data")
    running = Daemon(load_config(path, {}), config_path=str(path))
    await running.start()
    running.reloader.started.set()
    yield running
    await running.stop()


async def test_hooks_get_old_and_new_and_a_failing_one_is_contained(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[tuple[str, str]] = []
    awaited: list[str] = []

    def sync_hook(old: Config, new: Config) -> None:
        seen.append((old.ingest.tenant, new.ingest.tenant))

    async def async_hook(old: Config, new: Config) -> None:
        await asyncio.sleep(0)
        awaited.append(new.ingest.tenant)

    def broken_hook(old: Config, new: Config) -> None:
        raise RuntimeError("sink exploded")

    daemon.pipeline.reload_hooks += [sync_hook, broken_hook, async_hook]
    path = Path(daemon.reloader.path or "")
    write(
        path,
        int(daemon.config.listen.http.rsplit(":", 1)[1]),
        Path(daemon.config.storage.data_dir),
        '[ingest]\ntenant = "acme"',
    )
    with caplog.at_level(logging.INFO):
        assert await daemon.reloader.reload()
    assert seen == [("default", "acme")] and awaited == ["acme"]
    assert daemon.config.ingest.tenant == "acme" and daemon.pipeline.config is daemon.config
    assert any(r.getMessage() == "reload hook failed" for r in caplog.records)
    assert daemon.pipeline.self_metrics.reloads.succeeded == 1


async def test_new_limits_reach_the_parsers_and_the_series_table(daemon: Daemon) -> None:
    parser = daemon.pipeline.statsd_parser
    line = b"lim.x:1|c|#" + b",".join(b"k%d:v" % i for i in range(6))
    out: list[object] = []
    parser.parse(line, out)  # warms the parser's caches with the accepted line
    assert len(out) == 1
    path = Path(daemon.reloader.path or "")
    http = int(daemon.config.listen.http.rsplit(":", 1)[1])
    write(path, http, Path(daemon.config.storage.data_dir), "[limits]\nmax_tags = 5\nmax_series = 7")
    assert await daemon.reloader.reload()
    fresh = daemon.pipeline.statsd_parser
    assert fresh is not parser and fresh.stats is parser.stats
    out.clear()
    fresh.parse(line, out)
    assert out == []
    assert daemon.pipeline.aggregator.table.limits.max_series == 7


async def test_invalid_and_restart_only_changes(daemon: Daemon, caplog: pytest.LogCaptureFixture) -> None:
    path = Path(daemon.reloader.path or "")
    before = daemon.config
    path.write_text("[aggregate]\nflush_interval = 7\n", encoding="utf-8")
    with caplog.at_level(logging.INFO):
        assert not await daemon.reloader.reload()
    assert daemon.config is before
    refused = [r for r in caplog.records if r.getMessage().startswith("reload refused")]
    assert refused and "aggregate.flush_interval" in str(refused[0].__dict__["error"])
    assert daemon.pipeline.self_metrics.reloads.failed == 1
    caplog.clear()
    http = int(before.listen.http.rsplit(":", 1)[1])
    write(path, http, Path(before.storage.data_dir), '[aggregate]\nflush_interval = "5s"\n[log]\nlevel = "info"')
    with caplog.at_level(logging.INFO):
        assert await daemon.reloader.reload()
    assert daemon.config.aggregate.flush_interval == before.aggregate.flush_interval
    warned = [r for r in caplog.records if "wait for a restart" in r.getMessage()]
    assert warned and warned[0].__dict__["restart_needed"] == "aggregate.flush_interval"
