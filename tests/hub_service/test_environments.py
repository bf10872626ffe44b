"""Per-bundle environments through the live hub: a bundle whose pin conflicts with the
service's own packages gets a separate environment and works; what cannot be built fails
with one line; the admin's deny list answers 422 at deploy time.

The bundles are built in this process with explicit requirements (what the user lists wins
over what packaging detects), pushed and deployed through the hub's proxy with a user's
token, exactly as a notebook would. The scikit-learn overlay, from a notebook kernel, is in
``tests/jupyter_extension/test_environments_notebook.py``.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import hubserve
from model_runtime import Service, build_bundle
from tests.live_hub import DENIED_PACKAGE, Hub

#: A pandas the service's environment does not have: pandas is one of the runtime's own
#: imports, so an overlay cannot hold it.
OTHER_PANDAS = "2.2.3"


def _pandas_service(name: str) -> Service:
    svc = Service(name)

    @svc.api(input="json", output="json")
    def versions(_: object) -> dict[str, str]:
        import pandas

        return {"pandas": pandas.__version__}

    return svc


@pytest.fixture
def token(hub: Hub) -> str:
    return hub.create_token(hub.create_user("envs"))[0]


@pytest.fixture
def client(hub: Hub, token: str) -> Iterator[hubserve.Client]:
    with hubserve.Client(hub.service_url + "/", token) as api:
        yield api


def _push(client: hubserve.Client, svc: Service, tmp_path: Path, requirements: list[str]) -> str:
    built = build_bundle(svc, output_dir=tmp_path, requirements=requirements)
    return client.push(built.archive, progress=False).version


def _wait_failed(client: hubserve.Client, name: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.deployment(name).status
        if status.phase == "failed" and status.message:
            return status.message
        time.sleep(0.5)
    raise AssertionError(f"{name} did not fail: {client.deployment(name).status}")


@pytest.mark.timeout(600)
def test_conflicting_pin_gets_a_separate_environment(
    client: hubserve.Client, tmp_path: Path
) -> None:
    assert importlib.metadata.version("pandas") != OTHER_PANDAS
    svc = _pandas_service("oldpandas")
    _push(client, svc, tmp_path, [f"pandas=={OTHER_PANDAS}"])
    deployment = client.deploy("oldpandas", wait=True, timeout=480)
    environment = deployment.status.environment
    assert environment is not None
    assert environment.kind == "full"
    assert f"pandas=={OTHER_PANDAS}" in environment.reason
    assert "the runtime has pandas" in environment.reason
    assert client.predict(deployment, "versions", {}) == {"pandas": OTHER_PANDAS}
    logs = {chunk.replica: chunk.lines for chunk in client.logs(deployment)}
    assert any("full environment" in line for line in logs["environment"])
    client.undeploy(deployment)


@pytest.mark.timeout(300)
def test_unresolvable_pin_fails_with_one_line(client: hubserve.Client, tmp_path: Path) -> None:
    svc = _pandas_service("nowheel")
    _push(client, svc, tmp_path, ["pandas==0.0.1"])
    client.deploy("nowheel")
    message = _wait_failed(client, "nowheel")
    assert message.startswith("environment: unresolvable:"), message
    assert "pandas" in message
    assert "\n" not in message
    logs = {chunk.replica: chunk.lines for chunk in client.logs("nowheel")}
    # the installer's whole output, then the reason
    assert any(line.startswith("$ uv pip ") for line in logs["environment"])
    assert logs["environment"][-1].endswith(message.removeprefix("environment: "))
    assert not [k for k in logs if k != "environment"], "no replica may start"
    client.undeploy("nowheel")


def test_denied_package_is_refused_at_deploy(
    client: hubserve.Client, hub: Hub, token: str, tmp_path: Path
) -> None:
    svc = _pandas_service("denied")
    _push(client, svc, tmp_path, [f"{DENIED_PACKAGE}==1.0"])
    response = httpx.post(
        f"{hub.service_url}/api/deployments",
        json={"model": "denied"},
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    assert f"{DENIED_PACKAGE} is denied by the hub's policy" in response.json()["detail"]
    assert client.deployments() == []
