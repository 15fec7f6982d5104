"""The command line: builds the Config and hands it to the daemon; nothing else lives here.

Exit codes (the contract): 0 clean stop, 2 bad config or arguments, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from collectord import __version__
from collectord.config import ConfigError, default_config, load_config, render_config

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collectord",
        description="Metrics collector daemon: StatsD, DogStatsD and InfluxDB line protocol in, aggregates out.",
        epilog="COLLECTORD_<SECTION>_<KEY> environment variables override config keys.",
    )
    parser.add_argument("--version", action="version", version=f"collectord {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon in the foreground")
    run.add_argument("-c", "--config", metavar="FILE", help="TOML config file (default: embedded defaults)")

    config = commands.add_parser("config", help="write or check a config file")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="write the commented default config")
    init.add_argument("file", nargs="?", metavar="FILE", help="where to write it (default: stdout)")
    init.add_argument("-f", "--force", action="store_true", help="overwrite an existing FILE")
    check = actions.add_parser("check", help="validate a config file and the environment")
    check.add_argument("file", metavar="FILE")
    return parser


def _config_error(err: ConfigError) -> int:
    where = f"{err.source}: " if err.source else ""
    print(f"collectord: {where}{err}", file=sys.stderr)
    return EXIT_USAGE


def _run(path: str | None) -> int:
    try:
        config = load_config(path)
    except ConfigError as err:
        return _config_error(err)
    from collectord.daemon import run  # the daemon pulls in uvloop and aiohttp: only for `run`

    return run(config, path)


def _init(path: str | None, *, force: bool) -> int:
    text = render_config(default_config())
    if path is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        # "x" refuses an existing file without a window between checking and writing.
        with open(path, "w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        print(f"collectord: {path} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:
        print(f"collectord: cannot write {path}: {err.strerror}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def _check(path: str) -> int:
    try:
        load_config(path)
    except ConfigError as err:
        return _config_error(err)
    print("ok")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `collectord` console script and `python -m collectord`."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.action == "init":
        return _init(args.file, force=args.force)
    return _check(args.file)
