"""The local backend's sandbox against a hostile model, on the live hub.

An ordinary hub user deploys ``services/hostile.py`` (its APIs try to escape) next to a
bystander deployment of the same bundle; every attempt must fail with the error a normal
program gets (file not found, read-only file system, no such process, no space left), and
the bystander keeps serving through all of it. The same hub runs every other live suite
sandboxed (auth matrix, faults, soak, environments), so this module only holds what a
well-behaved model never tries.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_runtime import build_bundle
from tests.hub_service.test_faults_processes import service_pid, state_files
from tests.live_hub import SANDBOX_TMP_BYTES, Hub

HOSTILE = Path(__file__).with_name("services") / "hostile.py"
MEMORY_LIMIT = "600Mi"


class User:
    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.headers = {"Authorization": f"token {hub.create_token(name)[0]}"}

    def call(self, deployment: str, api: str, body: object, timeout: float = 60) -> httpx.Response:
        return httpx.post(
            f"{self.hub.url}/services/hubserve/d/{self.name}/{deployment}/{api}",
            json=body,
            headers=self.headers,
            timeout=timeout,
        )

    def status(self, deployment: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.hub.service_url}/api/deployments/{self.name}/{deployment}",
            headers=self.headers,
            timeout=10,
        )
        assert response.status_code == 200, response.text
        return dict(response.json()["status"])

    def wait(self, deployment: str, ready: bool = True, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(deployment)
            if (status["phase"] == "ready") == ready and (ready or status["message"]):
                return status
            time.sleep(0.3)
        raise AssertionError(f"{deployment}: {self.status(deployment)}")


@pytest.fixture(scope="module")
def mallory(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[User]:
    """An ordinary user with ``hostile`` (memory limited) and ``bystander`` deployed."""
    user = User(hub, hub.create_user("mallory"))
    archive = build_bundle(f"{HOSTILE}:service", output_dir=tmp_path_factory.mktemp("hostile"))
    pushed = httpx.post(
        f"{hub.service_url}/api/models",
        content=archive.archive.read_bytes(),
        headers={**user.headers, "Content-Type": "application/gzip"},
        timeout=60,
    )
    assert pushed.status_code == 201, pushed.text
    for name, body in (
        ("hostile", {"resources": {"memory": MEMORY_LIMIT}}),
        ("bystander", {}),
    ):
        created = httpx.post(
            f"{hub.service_url}/api/deployments",
            json={"model": "hostile", "name": name, **body},
            headers=user.headers,
            timeout=30,
        )
        assert created.status_code == 201, created.text
    for name in ("hostile", "bystander"):
        user.wait(name)
    yield user
    for name in ("hostile", "bystander"):
        httpx.delete(
            f"{hub.service_url}/api/deployments/{user.name}/{name}",
            headers=user.headers,
            timeout=30,
        )


def _denied(report: dict[str, Any], key: str, error: str) -> None:
    assert report[key].startswith(f"denied: {error}"), (key, report[key])


def test_hostile_model_cannot_escape(hub: Hub, mallory: User) -> None:
    service = service_pid(hub)
    zygote = next(
        pid
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if b"zygote" in _cmdline(pid) and str(hub.root).encode() in _cmdline(pid)
    )
    records = state_files(hub).values()
    bystander = next(int(r["pid"]) for r in records if r["deployment"].endswith("/bystander"))
    data = hub.root / "service"
    own_bundle = _bundle_of(hub, mallory, "hostile")
    targets = {
        "pids": [service, zygote, bystander, hub.pid],
        "read": [
            str(data / "hubserve.sqlite"),  # the service's database
            str(hub.root / "jupyterhub_config.py"),  # the hub's config: its admin token
            str(hub.root / "jupyterhub_cookie_secret"),
            "/etc/shadow",
            "/root/.bash_history",
        ],
        "list": [
            str(data / "local" / "replicas"),  # state files
            str(data / "local" / "logs"),  # every deployment's logs
            str(own_bundle.parent),  # the bundle cache: only its own bundle is there
            str(hub.root / "store"),  # every user's bundles
            "/home",
            "/root",
        ],
        "write": [str(own_bundle / "evil.py"), "/etc/evil", "/usr/local/evil", "/dev/shm/../evil"],
    }
    response = mallory.call("hostile", "escape", targets)
    assert response.status_code == 200, response.text
    report = response.json()

    # Not root, not the service's user; no capabilities, none to regain.
    assert report["uid"] not in (0, os.getuid()) and report["gid"] != 0
    status = report["status"]
    for capabilities in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[capabilities], 16) == 0, status
    assert status["NoNewPrivs"] == "1"
    # Its own processes only: no environment to read, nothing to signal or trace.
    assert report["pid"] == 1 and report["processes"] == [1], report["processes"]
    for pid in targets["pids"]:
        _denied(report, f"environ {pid}", "FileNotFoundError")
        _denied(report, f"signal {pid}", "ProcessLookupError")
        _denied(report, f"memory {pid}", "FileNotFoundError")
    for path in targets["read"]:
        _denied(report, f"read {path}", "")
    for path in targets["read"][:3]:
        _denied(report, f"read {path}", "FileNotFoundError")
    assert report[f"list {own_bundle.parent}"] == f"allowed: {[own_bundle.name]!r}"
    for path in targets["list"]:
        if path != str(own_bundle.parent):
            assert report[f"list {path}"] in ("allowed: []", f"allowed: {['.pyenv']!r}") or (
                report[f"list {path}"].startswith("denied: FileNotFoundError")
            ), (path, report[f"list {path}"])
    for path in targets["write"]:
        _denied(report, f"write {path}", "OSError: [Errno 30] Read-only file system")
    assert report["write /tmp"] == "allowed: 5"
    _denied(report, "device", "PermissionError")
    _denied(report, "setuid", "PermissionError")
    for call in ("user namespace", "mount", "keyring"):  # the seccomp filter's
        assert report[call] == "Operation not permitted", (call, report[call])
    for pid in (service, zygote, bystander, hub.pid):
        os.kill(pid, 0)  # all still there


def test_fork_bomb_stops_at_the_task_limit(mallory: User) -> None:
    response = mallory.call("hostile", "bomb", {})
    assert response.status_code == 200, response.text
    result = response.json()
    assert 3000 < result["started"] < 4096, result
    assert "can't start new thread" in result["error"], result
    assert mallory.call("bystander", "escape", {}).status_code == 200


def test_private_tmp_fills_up_alone(mallory: User) -> None:
    assert mallory.call("bystander", "escape", {}).json()["write /tmp"] == "allowed: 5"
    response = mallory.call("hostile", "fill_tmp", {})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["error"] == "No space left on device", result
    assert SANDBOX_TMP_BYTES - (2 << 20) <= result["written"] <= SANDBOX_TMP_BYTES, result
    # The bystander's /tmp is its own: it still writes, and sees none of hostile's files.
    report = mallory.call("bystander", "escape", {}).json()
    assert report["write /tmp"] == "allowed: 5"
    assert "fill" not in report["other /tmp"]


def test_memory_hog_dies_alone_and_is_restarted(mallory: User) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the connection may die with the replica
        mallory.call("hostile", "hog", {}, timeout=60)
    status = mallory.wait("hostile", ready=False)
    assert status["message"] == "out of memory (limit 600 MiB)", status
    assert mallory.call("bystander", "escape", {}).status_code == 200
    mallory.wait("hostile")  # restarted, with backoff, like any crash


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _bundle_of(hub: Hub, user: User, deployment: str) -> Path:
    """The unpacked bundle the deployment's replicas serve (in the service's cache)."""
    described = httpx.get(
        f"{hub.service_url}/api/deployments/{user.name}/{deployment}",
        headers=user.headers,
        timeout=10,
    ).json()
    bundle = hub.root / "service/local/cache/bundles" / user.name / "hostile"
    bundle /= described["version"]
    assert (bundle / "bundle.json").is_file(), json.dumps(described)
    return bundle
