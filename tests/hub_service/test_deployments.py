"""Deployments and the gateway against a real JupyterHub, through the hub's proxy.

A real torch bundle (``services/scaler.py``: x → FACTOR·x, two versions with different
factors) is uploaded through the registry API, deployed on the local backend (replicas are
real ``hubserve`` runtime processes launched through the zygote), called through the
gateway, scaled, rolled forward and back under load, and its replicas are killed; the last
test kills the service itself and checks that the hub's restart of it adopts the replicas.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from model_runtime import build_bundle

from .conftest import Hub

pytestmark = pytest.mark.slow
SERVICE_SOURCE = Path(__file__).with_name("services") / "scaler.py"
READY_TIMEOUT = 90


@dataclass(frozen=True)
class Version:
    version: str
    factor: float


@dataclass
class Owner:
    name: str
    token: str
    versions: list[Version]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def _build(tmp: Path, factor: float) -> Path:
    source = tmp / f"factor{int(factor)}" / "scaler.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        SERVICE_SOURCE.read_text().replace("FACTOR = 2.0", f"FACTOR = {factor}"), encoding="utf-8"
    )
    return build_bundle(f"{source}:service", output_dir=tmp).archive


@pytest.fixture(scope="module")
def owner(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> Owner:
    """A user with two uploaded versions of the scaler model (factor 2, then factor 3)."""
    tmp = tmp_path_factory.mktemp("scaler")
    name = hub.create_user("owner")
    token, _ = hub.create_token(name)
    versions = []
    for factor in (2.0, 3.0):
        archive = _build(tmp, factor)
        response = httpx.post(
            f"{hub.service_url}/api/models",
            content=archive.read_bytes(),
            headers={**_auth(token), "Content-Type": "application/gzip"},
            timeout=60,
        )
        assert response.status_code == 201, response.text
        versions.append(Version(response.json()["version"], factor))
    return Owner(name, token, versions)


def deployment(hub: Hub, who: Owner, name: str = "scaler") -> dict[str, Any]:
    response = httpx.get(
        f"{hub.service_url}/api/deployments/{who.name}/{name}", headers=who.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_for(hub: Hub, who: Owner, check: Any, what: str, name: str = "scaler") -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT
    info = deployment(hub, who, name)
    while not check(info):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {READY_TIMEOUT} s; last status {info['status']}")
        time.sleep(0.2)
        info = deployment(hub, who, name)
    return info


def settled(replicas: int, version: str | None = None) -> Any:
    """A check: exactly ``replicas`` replicas, all ready (and of ``version``)."""

    def check(info: dict[str, Any]) -> bool:
        status = info["status"]
        rows = status["replicas"]
        return (
            status["phase"] == "ready"
            and len(rows) == replicas
            and all(r["state"] == "ready" for r in rows)
            and (version is None or all(r["version"] == version for r in rows))
        )

    return check


def predict(hub: Hub, token: str, owner: str, x: float, name: str = "scaler") -> httpx.Response:
    return httpx.post(
        f"{hub.url}/services/hubserve/d/{owner}/{name}/scale",
        json=[[x]],
        headers=_auth(token),
        timeout=30,
    )


def replica_pids(hub: Hub, key: str) -> dict[str, int]:
    pids = {}
    for path in (hub.root / "service/local/replicas").glob("*.json"):
        record = json.loads(path.read_text())
        if record["deployment"] == key:
            pids[record["id"]] = int(record["pid"])
    return pids


@pytest.fixture(scope="module")
def deployed(hub: Hub, owner: Owner) -> Iterator[Owner]:
    """The scaler deployed with one replica of version 1; deleted at the end."""
    started = time.monotonic()
    response = httpx.post(
        f"{hub.service_url}/api/deployments",
        json={"model": "scaler", "replicas": 1},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"].endswith(f"/api/deployments/{owner.name}/scaler")
    while predict(hub, owner.token, owner.name, 1.0).status_code != 200:
        assert time.monotonic() - started < READY_TIMEOUT, deployment(hub, owner)["status"]
        time.sleep(0.05)
    print(f"POST /api/deployments -> first prediction: {time.monotonic() - started:.2f} s")
    yield owner
    response = httpx.delete(
        f"{hub.service_url}/api/deployments/{owner.name}/scaler", headers=owner.headers
    )
    assert response.status_code in (204, 404)


# -- the API ----------------------------------------------------------------------------------


def test_created_deployment_describes_itself(hub: Hub, deployed: Owner) -> None:
    info = deployment(hub, deployed)
    assert info["model"] == f"{deployed.name}/scaler"
    assert info["version"] == deployed.versions[-1].version  # "scaler" means latest
    assert info["selector"] == "latest"
    assert info["url"].endswith(f"/services/hubserve/d/{deployed.name}/scaler/")
    assert [a["name"] for a in info["apis"]] == ["scale"]
    assert info["revisions"][0]["number"] == 1
    assert info["access"] == {"users": [], "groups": [], "public": False}


def test_prediction_through_the_gateway(hub: Hub, deployed: Owner) -> None:
    response = predict(hub, deployed.token, deployed.name, 2.5)
    assert response.status_code == 200, response.text
    assert response.json() == [[7.5]]  # version 2: factor 3


def test_oip_and_runtime_routes_pass_through(hub: Hub, deployed: Owner) -> None:
    base = f"{hub.url}/services/hubserve/d/{deployed.name}/scaler"
    assert httpx.get(f"{base}/v2/health/ready", headers=deployed.headers).status_code == 200
    response = httpx.post(
        f"{base}/v2/models/scaler/infer",
        json={
            "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}],
        },
        headers=deployed.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [6.0]


def test_duplicate_deployment_is_409(hub: Hub, deployed: Owner) -> None:
    response = httpx.post(
        f"{hub.service_url}/api/deployments", json={"model": "scaler"}, headers=deployed.headers
    )
    assert response.status_code == 409


def test_bad_requests_are_clear_4xx(hub: Hub, deployed: Owner) -> None:
    url = f"{hub.service_url}/api/deployments"
    cases = [
        ({"model": "no-such-model"}, 404),
        ({"model": "scaler:not-a-tag"}, 404),
        ({"model": "Bad Name!"}, 422),
        ({"model": "scaler", "name": "other", "replicas": 1000}, 422),
        ({"model": "scaler", "name": "other", "batching": {"nope": {"max_batch_size": 4}}}, 422),
        ({"model": "scaler", "name": "other", "surprise": 1}, 422),
    ]
    for body, status in cases:
        response = httpx.post(url, json=body, headers=deployed.headers)
        assert response.status_code == status, (body, response.text)
        assert deployed.token not in response.text


def test_version_in_use_cannot_be_deleted(hub: Hub, deployed: Owner) -> None:
    version = deployment(hub, deployed)["version"]
    response = httpx.delete(
        f"{hub.service_url}/api/models/{deployed.name}/scaler/versions/{version}",
        headers=deployed.headers,
    )
    assert response.status_code == 409
    assert f"{deployed.name}/scaler" in response.text


def test_logs_show_each_replica(hub: Hub, deployed: Owner) -> None:
    response = httpx.get(
        f"{hub.service_url}/api/deployments/{deployed.name}/scaler/logs?tail=50",
        headers=deployed.headers,
    )
    assert response.status_code == 200
    chunks = response.json()
    assert chunks
    assert all(chunk["lines"] for chunk in chunks)
    assert any("start #0" in line for chunk in chunks for line in chunk["lines"])


# -- who may call -----------------------------------------------------------------------------


def test_access_changes_apply_at_once(hub: Hub, deployed: Owner) -> None:
    """A grant given (or taken back) by PATCH holds for the very next call through the gateway.

    Who may call what, for every route and kind of credential, is ``test_auth_matrix.py``.
    """
    other = hub.create_user("other")
    other_token, _ = hub.create_token(other)
    status_url = f"{hub.service_url}/api/deployments/{deployed.name}/scaler"

    def patch_access(access: dict[str, Any]) -> None:
        response = httpx.patch(status_url, json={"access": access}, headers=deployed.headers)
        assert response.status_code == 200, response.text

    assert predict(hub, other_token, deployed.name, 1.0).status_code == 404  # as the API
    try:
        patch_access({"users": [other]})
        assert predict(hub, other_token, deployed.name, 1.0).status_code == 200
        listed = httpx.get(f"{hub.service_url}/api/deployments", headers=_auth(other_token))
        assert f"{deployed.name}/scaler" in {f"{d['owner']}/{d['name']}" for d in listed.json()}
    finally:
        patch_access({})
    assert predict(hub, other_token, deployed.name, 1.0).status_code == 404
    assert httpx.get(status_url, headers=_auth(other_token)).status_code == 404


def test_unknown_deployment_is_404(hub: Hub, deployed: Owner) -> None:
    response = predict(hub, deployed.token, deployed.name, 1.0, name="nothing-here")
    assert response.status_code == 404


def test_runtime_never_sees_the_callers_token(hub: Hub, deployed: Owner) -> None:
    """The runtime refuses calls without the deployment secret: a direct call fails, and the
    gateway's calls carry the secret, not the hub token (the runtime would refuse it)."""
    pids = replica_pids(hub, f"{deployed.name}/scaler")
    assert pids
    for path in (hub.root / "service/local/replicas").glob("*.json"):
        record = json.loads(path.read_text())
        if record["deployment"] == f"{deployed.name}/scaler":
            direct = httpx.post(
                f"http://127.0.0.1:{record['port']}/scale", json=[[1.0]], headers=deployed.headers
            )
            assert direct.status_code in (401, 403)
            environ = Path(f"/proc/{record['pid']}/environ").read_bytes()
            assert b"JUPYTERHUB_API_TOKEN" not in environ
            assert b"HUBSERVE_S3_SECRET_KEY" not in environ


# -- scaling, rolling, crashing ----------------------------------------------------------------


class Load:
    """A client calling the deployment in a loop from a thread; counts the outcomes."""

    def __init__(self, hub: Hub, who: Owner) -> None:
        self.hub, self.who = hub, who
        self.ok = 0
        self.failures: list[str] = []
        self.answers: set[float] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(headers=self.who.headers, timeout=30) as client:
            url = f"{self.hub.url}/services/hubserve/d/{self.who.name}/scaler/scale"
            while not self._stop.is_set():
                try:
                    response = client.post(url, json=[[1.0]])
                except httpx.HTTPError as exc:
                    self.failures.append(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    self.ok += 1
                    self.answers.add(response.json()[0][0])
                else:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)


def test_scale_up_and_down(hub: Hub, deployed: Owner) -> None:
    url = f"{hub.service_url}/api/deployments/{deployed.name}/scaler"
    with Load(hub, deployed) as load:
        response = httpx.patch(url, json={"replicas": 3}, headers=deployed.headers)
        assert response.status_code == 200, response.text
        assert response.json()["generation"] == 1  # scaling starts no new generation
        wait_for(hub, deployed, settled(3), "3 ready replicas")
        time.sleep(0.5)
        response = httpx.patch(url, json={"replicas": 1}, headers=deployed.headers)
        assert response.status_code == 200
        wait_for(hub, deployed, settled(1), "back to 1 replica")
    assert load.failures == []
    assert load.ok > 0


def test_rolling_update_and_rollback_fail_no_request(hub: Hub, deployed: Owner) -> None:
    url = f"{hub.service_url}/api/deployments/{deployed.name}/scaler"
    first, second = deployed.versions
    httpx.patch(url, json={"replicas": 2}, headers=deployed.headers).raise_for_status()
    wait_for(hub, deployed, settled(2, second.version), "2 replicas of version 2")
    with Load(hub, deployed) as load:
        time.sleep(0.3)
        response = httpx.patch(url, json={"version": first.version}, headers=deployed.headers)
        assert response.status_code == 200, response.text
        assert response.json()["generation"] == 2
        wait_for(hub, deployed, settled(2, first.version), "rolled to version 1")
        time.sleep(0.3)
        response = httpx.patch(url, json={"rollback": True}, headers=deployed.headers)
        assert response.status_code == 200, response.text
        info = wait_for(hub, deployed, settled(2, second.version), "rolled back to version 2")
        time.sleep(0.3)
    assert load.failures == []
    assert load.answers == {first.factor, second.factor}
    assert [r["version"] for r in info["revisions"]] == [
        second.version,
        first.version,
        second.version,
    ]
    httpx.patch(url, json={"replicas": 1}, headers=deployed.headers).raise_for_status()
    wait_for(hub, deployed, settled(1), "back to 1 replica")


def test_killed_replica_is_restarted(hub: Hub, deployed: Owner) -> None:
    key = f"{deployed.name}/scaler"
    (replica_id, pid), *_ = replica_pids(hub, key).items()
    os.kill(pid, signal.SIGKILL)

    def restarted(info: dict[str, Any]) -> bool:
        rows = {r["id"]: r for r in info["status"]["replicas"]}
        row = rows.get(replica_id)
        return row is not None and row["restarts"] >= 1 and row["state"] == "ready"

    wait_for(hub, deployed, restarted, "the killed replica back")
    assert replica_pids(hub, key)[replica_id] != pid
    assert predict(hub, deployed.token, deployed.name, 1.0).status_code == 200


def test_no_ready_replica_is_503(hub: Hub, deployed: Owner) -> None:
    url = f"{hub.service_url}/api/deployments/{deployed.name}/scaler"
    httpx.patch(url, json={"replicas": 0}, headers=deployed.headers).raise_for_status()
    wait_for(hub, deployed, lambda i: not i["status"]["replicas"], "no replicas")
    response = predict(hub, deployed.token, deployed.name, 1.0)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "no ready replica" in response.json()["detail"]
    httpx.patch(url, json={"replicas": 1}, headers=deployed.headers).raise_for_status()
    wait_for(hub, deployed, settled(1), "1 replica again")


def _service_pid(hub: Hub) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"hub_service" in cmdline and str(hub.root).encode() in environ:
            return int(proc.name)
    raise AssertionError("the hubserve service process was not found")


def test_service_restart_adopts_replicas(hub: Hub, deployed: Owner) -> None:
    """Kill the service; the hub restarts it (it polls every 30 s) and the new process
    adopts the replicas that kept running: same processes, no cold start."""
    key = f"{deployed.name}/scaler"
    before = replica_pids(hub, key)
    service = _service_pid(hub)
    os.kill(service, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{hub.service_url}/healthz").status_code == 200 and (
                _service_pid(hub) != service
            ):
                break
        except (httpx.HTTPError, AssertionError):
            pass
        assert time.monotonic() < deadline, "the hub did not restart the service"
        time.sleep(0.5)
    wait_for(hub, deployed, settled(1), "the deployment back after the service restart")
    assert replica_pids(hub, key) == before
    assert predict(hub, deployed.token, deployed.name, 2.0).json() == [[6.0]]
