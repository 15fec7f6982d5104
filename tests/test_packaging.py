"""Packaging: the wheel carries every file of the package (SQL migrations, dashboard assets),
and an installed copy, away from this source tree, runs `collectord --version`,
`python -m collectord` and `collectord run`.

The wheel is built with the environment's setuptools and wheel (no build isolation: no network,
a few seconds). A full `pip install .` into an empty venv is the same wheel plus the
dependencies from the index (docs/operations.md).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from collectord import __version__
from tests.integration.daemon import free_port

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "collectord"


def package_files() -> set[str]:
    """Every file under collectord/ a wheel must carry (not caches)."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    # Built from a copy so the build leaves no build/ or *.egg-info in the source tree.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / "collectord", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (built,) = (work / "dist").glob("collectord-*.whl")
    return built


def test_wheel_carries_every_package_file(wheel: Path) -> None:
    assert wheel.name.startswith(f"collectord-{__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"collectord-{__version__}.dist-info/entry_points.txt").decode()
    missing = package_files() - names
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {sorted(missing)}"
    assert "collectord/py.typed" in names
    assert "collectord = collectord.cli:main" in entry_points


def _distribution(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _with_dependencies(names: set[str]) -> set[str]:
    """`names` and every distribution they require, as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_distribution(r) for r in requires if "extra ==" not in r]
    return seen


def test_every_imported_library_is_a_declared_dependency(wheel: Path) -> None:
    """A fresh `pip install` gets only what the wheel declares: an import that is not covered
    fails at run time on a clean machine, never in this shared environment."""
    with zipfile.ZipFile(wheel) as archive:
        meta = archive.read(f"collectord-{__version__}.dist-info/METADATA").decode()
    declared = {
        _distribution(line.split(":", 1)[1].strip())
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    available = _with_dependencies(declared)
    imported: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(imported - set(sys.stdlib_module_names) - {"collectord"}):
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [module])}
        if not dists & available:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return target


def env_for(site: Path) -> dict[str, str]:
    # Only the installed copy on the path (dependencies come from this environment's site-packages).
    return {**os.environ, "PYTHONPATH": str(site)}


def test_installed_copy_answers_version_both_ways(installed: Path, tmp_path: Path) -> None:
    env = env_for(installed)
    where = subprocess.run(
        [sys.executable, "-c", "import collectord; print(collectord.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(installed)), where
    for command in (
        [str(installed / "bin" / "collectord"), "--version"],
        [sys.executable, "-m", "collectord", "--version"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        assert (result.returncode, result.stdout.strip()) == (0, f"collectord {__version__}"), result.stderr


@pytest.fixture
def running(installed: Path, tmp_path: Path) -> Iterator[int]:
    http = free_port()
    config = tmp_path / "collectord.toml"
    config.write_text(
        f'[listen]\nstatsd_udp = ""\nstatsd_tcp = ""\nline_udp = ""\nline_tcp = ""\nhttp = "127.0.0.1:{http}"\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    process = subprocess.Popen(
        [str(installed / "bin" / "collectord"), "run", "--config", str(config)],
        env=env_for(installed),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield http
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr.decode()


def fetch(port: int, path: str) -> tuple[int, str, bytes]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_installed_copy_runs_and_serves_its_assets(running: int) -> None:
    status, _, body = fetch(running, "/healthz")
    assert status == 200 and b"ok" in body
    if any(PACKAGE.rglob("*.html")):
        # The dashboard's page comes out of the installed package, not this source tree.
        status, kind, _ = fetch(running, "/")
        assert status == 200 and kind.startswith("text/html")
