"""Every example config in conf/ passes `collectord config check`, with no environment
(secrets come from it in production) and with the secrets set the way the examples say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collectord.config import load_config
from collectord.logs import redact

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "conf").glob("*.toml"))
SECRETS = {
    "COLLECTORD_POSTGRES_DSN": "postgresql://collectord:s3cret@pg.metrics.internal:5432/metrics",
    "COLLECTORD_INFLUX_TOKEN": "influx-s3cret",
    "COLLECTORD_REDIS_URL": "rediss://:s3cret@redis.metrics.internal:6380/0",
    "COLLECTORD_AUTH_TOKENS": "reader-token:web:reader,admin-token:web:admin",
}


def test_there_are_examples() -> None:
    assert {path.name for path in EXAMPLES} >= {"collectord.toml", "sidecar-central.toml"}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
@pytest.mark.parametrize("secrets", [False, True], ids=["without-env", "with-env"])
def test_example_passes_config_check(example: Path, secrets: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTORD_")}
    if secrets:
        env.update(SECRETS)
    result = subprocess.run(
        [sys.executable, "-m", "collectord", "config", "check", str(example)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    assert "s3cret" not in result.stderr


def test_sidecar_example_takes_its_secrets_from_the_environment() -> None:
    config = load_config(ROOT / "conf" / "sidecar-central.toml", SECRETS)
    assert config.postgres.dsn == SECRETS["COLLECTORD_POSTGRES_DSN"]
    assert config.influx.token == SECRETS["COLLECTORD_INFLUX_TOKEN"]
    assert config.redis.url == SECRETS["COLLECTORD_REDIS_URL"]
    assert [token.role for token in config.auth.tokens] == ["reader", "admin"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_examples_hold_no_secret(example: Path) -> None:
    for line in example.read_text(encoding="utf-8").splitlines():
        if not line.lstrip().startswith("#"):
            assert redact(line) == line, line
