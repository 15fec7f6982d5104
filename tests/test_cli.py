"""collectord/cli.py and `python -m collectord`, driven as a user would: in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from collectord import __version__
from collectord.config import default_config, load_config, render_config

ROOT = Path(__file__).resolve().parent.parent


def collectord(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m collectord ARGS` with no COLLECTORD_* variables unless `env` adds some."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTORD_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "collectord", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environ,
        timeout=60,
    )


def test_version() -> None:
    result = collectord("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"collectord {__version__}"


@pytest.mark.parametrize("args", [(), ("bogus",), ("config",), ("config", "check"), ("run", "--nope"), ("config", "x")])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    result = collectord(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_init_to_stdout_is_the_rendered_default() -> None:
    result = collectord("config", "init")
    assert result.returncode == 0
    assert result.stdout == render_config(default_config())


def test_init_writes_a_file_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    target = tmp_path / "collectord.toml"
    result = collectord("config", "init", str(target))
    assert result.returncode == 0, result.stderr
    assert load_config(target, {}) == default_config()

    target.write_text("# mine\n", encoding="utf-8")
    result = collectord("config", "init", str(target))
    assert result.returncode == 2
    assert "--force" in result.stderr
    assert target.read_text(encoding="utf-8") == "# mine\n"

    result = collectord("config", "init", "--force", str(target))
    assert result.returncode == 0
    assert target.read_text(encoding="utf-8") == render_config(default_config())


def test_init_into_a_missing_directory_is_a_runtime_failure(tmp_path: Path) -> None:
    result = collectord("config", "init", str(tmp_path / "no" / "such" / "dir.toml"))
    assert result.returncode == 1
    assert "cannot write" in result.stderr


def test_check_accepts_the_shipped_config() -> None:
    result = collectord("config", "check", "conf/collectord.toml")
    assert (result.returncode, result.stdout, result.stderr) == (0, "ok\n", "")


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            '[listen]\nstatsd_udp = "8125x"\n',
            {},
            'listen.statsd_udp: expected "host:port", got "8125x"',
        ),
        ('[listen]\nstatsd_upd = "127.0.0.1:8125"\n', {}, "listen.statsd_upd: unknown key"),
        ('[listen]\nhttp = "0.0.0.0:8127"\n', {}, "listen.http: "),
        ("[listen\n", {}, "line 1"),
        ("", {"COLLECTORD_LISTEN_STATSD_UPD": "x"}, "COLLECTORD_LISTEN_STATSD_UPD: unknown key"),
        (
            "",
            {"COLLECTORD_AGGREGATE_FLUSH_INTERVAL": "7s"},
            "aggregate.flush_interval: expected whole seconds that divide a minute",
        ),
    ],
)
def test_check_reports_the_key_and_exits_2(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = collectord("config", "check", str(path), env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_applies_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "public.toml"
    path.write_text('[listen]\nhttp = "0.0.0.0:8127"\n', encoding="utf-8")
    result = collectord("config", "check", str(path), env={"COLLECTORD_AUTH_TOKENS": "s3cret:acme:admin"})
    assert (result.returncode, result.stdout) == (0, "ok\n")


def test_check_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = collectord("config", "check", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_run_with_a_bad_config_exits_2_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[log]\nlevel = "loud"\n', encoding="utf-8")
    result = collectord("run", "--config", str(path))
    assert result.returncode == 2
    assert "log.level: expected one of" in result.stderr


def ephemeral_listeners(**overrides: str) -> dict[str, str]:
    """Environment that puts every listener on a free loopback port."""
    env = {
        f"COLLECTORD_LISTEN_{name}": "127.0.0.1:0"
        for name in ("STATSD_UDP", "STATSD_TCP", "LINE_UDP", "LINE_TCP", "HTTP")
    }
    env.update(overrides)
    return env


def start_daemon(env: dict[str, str]) -> subprocess.Popen[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTORD_")}
    environ.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "collectord", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environ,
    )


def test_run_stops_cleanly_on_sigterm() -> None:
    daemon = start_daemon(ephemeral_listeners())
    try:
        assert daemon.stderr is not None
        # The daemon logs "ready" once every listener is bound.
        for line in daemon.stderr:
            if "ready" in line:
                break
        else:
            pytest.fail(f"daemon exited with {daemon.wait()} before it was ready")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        for stream in (daemon.stdout, daemon.stderr):
            if stream is not None:
                stream.close()


def test_run_exits_1_when_a_port_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        daemon = start_daemon(ephemeral_listeners(COLLECTORD_LISTEN_LINE_TCP=address))
        try:
            _, stderr = daemon.communicate(timeout=30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 1, stderr
