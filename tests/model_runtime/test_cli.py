"""The ``hubserve`` command, run through its installed entry point as users run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_runtime import LocalStore

from .conftest import S3Target, make_bundle


def hubserve_exe() -> str:
    exe = Path(sys.executable).with_name("hubserve")
    found = str(exe) if exe.exists() else shutil.which("hubserve")
    assert found, "the hubserve console script is not installed"
    return found


def run(
    *args: str, env: dict[str, str] | None = None, ok: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [hubserve_exe(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        input=stdin,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_and_version() -> None:
    out = run("--help").stdout
    for verb in ("package", "push", "pull", "list", "show", "delete", "tag", "gc"):
        assert verb in out
    assert run("--version").stdout.startswith("hubserve, version ")


def test_package_push_list_show_pull_delete(service_dir: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    packaged = json.loads(
        run(
            "package",
            str(service_dir),
            "-o",
            str(tmp_path / "dist"),
            "--label",
            "stage=dev",
            "--json",
        ).stdout
    )
    archive = Path(packaged["archive"])
    version = packaged["manifest"]["version"]
    assert archive.is_file() and packaged["manifest"]["labels"] == {"stage": "dev"}

    pushed = run("push", str(archive), "--store", store, "--tag", "prod")
    assert f"pushed alice/echo:{version}" in pushed.stdout

    assert "alice  echo" in run("list", "--store", store).stdout
    versions = json.loads(run("list", "echo", "--store", store, "--json").stdout)
    assert [(v["version"], v["tags"]) for v in versions] == [(version, ["latest", "prod"])]

    shown = run("show", "echo:prod", "--store", store).stdout
    assert f"alice/echo:{version}" in shown and "api shift: json -> json" in shown

    out_dir = tmp_path / "pulled"
    run("pull", "alice/echo", "--store", store, "-o", str(out_dir))
    assert (out_dir / "service.py").is_file() and (out_dir / "bundle.json").is_file()
    pulled_archive = tmp_path / "copy.tar.gz"
    run("pull", "echo:prod", "--store", store, "--archive", "-o", str(pulled_archive))
    assert pulled_archive.read_bytes() == archive.read_bytes()

    run("tag", f"echo:{version}", "stable", "--store", store)
    assert json.loads(run("list", "echo", "--store", store, "--json").stdout)[0]["tags"] == [
        "latest",
        "prod",
        "stable",
    ]
    run("tag", "echo", "stable", "--delete", "--store", store)

    run("delete", f"echo:{version}", "--store", store)
    assert "no versions of alice/echo" in run("list", "echo", "--store", store).stdout


def test_push_packages_sources_directly(service_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    record = json.loads(
        run("push", str(service_dir), "--store", str(store), "--owner", "bob", "--json").stdout
    )
    assert record["owner"] == "bob" and record["name"] == "echo"
    assert LocalStore(store).stat("bob/echo").version == record["version"]
    assert not list(Path.cwd().glob("echo-*.tar.gz"))  # no stray archive left behind


def test_store_from_environment_and_uris(service_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = {"HUBSERVE_STORE": str(store)}
    record = json.loads(run("push", str(service_dir), "--json", env=env).stdout)
    uri = f"file://{store}/alice/echo:{record['version']}"
    assert json.loads(run("show", uri, "--json").stdout)["version"] == record["version"]


def test_delete_whole_model_asks_first(service_dir: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    run("push", str(service_dir), "--store", store)
    refused = run("delete", "echo", "--store", store, ok=False, stdin="n\n")
    assert refused.returncode == 1 and "Aborted" in refused.stderr
    run("delete", "echo", "--store", store, stdin="y\n")
    assert "no models" in run("list", "--store", store).stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "alice/missing"], "model alice/missing not found"),
        (["show", "Bad Name"], "invalid model name"),
        (["push", "/nonexistent/dir"], "neither a service directory"),
        (["pull", "echo:nosuchtag"], "not found"),
        (["list", "--store", "ftp://host/x"], "unsupported store"),
        (["tag", "echo", "latest"], "managed by the store"),
        (["show", "echo", "--store", "s3://models"], "needs an S3 endpoint"),
    ],
)
def test_errors_are_one_clean_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = run(
        *args, ok=False, env={"HUBSERVE_STORE": str(tmp_path / "store"), "HUBSERVE_S3_ENDPOINT": ""}
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_bad_usage_exits_2() -> None:
    proc = run("push", ok=False)
    assert proc.returncode == 2 and "Missing argument" in proc.stderr


@pytest.mark.s3
def test_s3_store_through_the_cli(s3: S3Target, tmp_path: Path) -> None:
    built = make_bundle(tmp_path)
    env = {
        "HUBSERVE_S3_ENDPOINT": ("https://" if s3.secure else "http://") + s3.endpoint,
        "HUBSERVE_S3_ACCESS_KEY": s3.access_key,
        "HUBSERVE_S3_SECRET_KEY": s3.secret_key,
    }
    bucket = f"s3://cli-{os.getpid()}"
    pushed = run("push", str(built.archive), "--store", bucket, env=env)
    assert "pushed alice/adder:" in pushed.stdout
    pulled = json.loads(run("pull", f"{bucket}/alice/adder:latest", "--json", env=env).stdout)
    assert Path(pulled["path"], "bundle.json").is_file()

    denied = run(
        "list", "--store", bucket, ok=False, env={**env, "HUBSERVE_S3_SECRET_KEY": "wrong-secret"}
    )
    assert denied.returncode == 1 and "refused our credentials" in denied.stderr
    assert "wrong-secret" not in denied.stderr
