"""``hubserve env build | list | gc`` and ``hubserve serve --env``, offline: the bundle needs a
package of a wheelhouse written by the test (``wheelhouse.py``), which this environment lacks.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import httpx
import pytest

from model_runtime import PackagingWarning, build_bundle

from .runtime.test_serve import Server
from .test_cli import run
from .wheelhouse import Dist, build_wheelhouse

SERVICE = """\
from model_runtime import api


@api(input="json", output="json")
def version(_):
    import hubserve_clitest

    return hubserve_clitest.VERSION
"""


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    source = tmp_path / "needs-extra"
    source.mkdir()
    (source / "service.py").write_text(SERVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackagingWarning)  # not installed here, on purpose
        built = build_bundle(
            source, output_dir=tmp_path / "dist", requirements=["hubserve-clitest==2.5"]
        )
    return built.archive


@pytest.fixture
def policy(tmp_path: Path) -> list[str]:
    wheels = build_wheelhouse(tmp_path / "wheels", [Dist("hubserve-clitest", "2.5")])
    return ["--env-root", str(tmp_path / "envs"), "--find-links", str(wheels), "--no-index"]


def test_env_build_list_serve_gc(archive: Path, policy: list[str], tmp_path: Path) -> None:
    built = run("env", "build", str(archive), *policy, "--json")
    first = json.loads(built.stdout)
    assert first["kind"] == "overlay"
    assert first["built"] is True
    assert first["packages"] == {"hubserve-clitest": "2.5"}
    assert "installing 1 package(s): hubserve-clitest" in built.stderr
    again = json.loads(run("env", "build", str(archive), *policy, "--json").stdout)
    assert (again["key"], again["built"]) == (first["key"], False)

    listed = json.loads(run("env", "list", "--env-root", str(tmp_path / "envs"), "--json").stdout)
    assert [e["key"] for e in listed] == [first["key"]]

    server = Server(archive, tmp_path, *policy)  # --env auto: reuses the environment
    try:
        server.wait_ready()
        assert httpx.post(f"{server.url}/version", json={}).json() == "2.5"
    finally:
        assert server.stop() == 0
    assert "installing" not in server.log.read_text()

    removed = run("env", "gc", "--env-root", str(tmp_path / "envs"))
    assert removed.stdout.split() == ["removed", first["key"]]


def test_env_failures_are_one_line(archive: Path, policy: list[str], tmp_path: Path) -> None:
    denied = run("env", "build", str(archive), *policy, "--deny", "hubserve-clitest", ok=False)
    assert denied.returncode == 1
    assert denied.stderr.strip() == "Error: hubserve-clitest is denied by the hub's policy"
    empty = build_wheelhouse(tmp_path / "empty", [])
    missing = run(
        "env",
        "build",
        str(archive),
        "--env-root",
        str(tmp_path / "envs"),
        "--find-links",
        str(empty),
        "--no-index",
        ok=False,
    )
    assert missing.returncode == 1
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: unresolvable: hubserve-clitest")
    assert not list((tmp_path / "envs" / "envs").glob("*"))


def test_serve_without_environment_fails_at_import(archive: Path, tmp_path: Path) -> None:
    """``--env none`` is the runtime's environment as it is: the call fails, clearly."""
    server = Server(archive, tmp_path, "--env", "none")
    try:
        server.wait_ready()
        answer = httpx.post(f"{server.url}/version", json={})
    finally:
        server.stop()
    assert answer.status_code == 500
    assert "No module named 'hubserve_clitest'" in answer.text
