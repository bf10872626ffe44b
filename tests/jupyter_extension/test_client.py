"""The Python client against a real JupyterHub with hubserve, as a notebook would use it.

A data scientist's notebook (run cell by cell in a real IPython shell) defines a small torch
model and a :class:`model_runtime.Service` with APIs of several kinds; the client pushes it
(two versions), deploys it, calls every API with the natural Python value (numpy, lists,
DataFrames, text, bytes, files, images), through OIP too, scales it, rolls it forward and
back, reads its logs, runs a batch job and deletes it. Then the same through
:class:`AsyncClient`, discovery from a single-user server's environment, and the errors a
user meets: unreachable service, a token without hubserve's scope, unknown names, bad input.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from jupyter_extension.client import (
    AsyncClient,
    Client,
    ConfigurationError,
    Conflict,
    Deployment,
    Forbidden,
    InvalidRequest,
    ModelVersion,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    _operations,
)
from model_runtime.bundle import extract_archive
from tests.live_hub import shared_umask
from tests.model_runtime.notebook import Notebook

from .conftest import Hub, free_port

pytestmark = pytest.mark.slow
READY_TIMEOUT = 90.0
DEPLOYMENT = "demo"

CELLS = [
    """
import numpy as np
import torch
from torch import nn
from model_runtime import Service, kinds
""",
    """
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.linear(x)

net = Scale()
with torch.no_grad():
    net.linear.weight.copy_(2.0 * torch.eye(2))
svc = Service("clientdemo", models={"net": net}, description="x -> factor * x")
""",
    """
@svc.api(input=kinds.ndarray("float32", (-1, 2)), output="ndarray", batchable=True)
def scale(x: np.ndarray) -> np.ndarray:
    \"\"\"Each row times the factor.\"\"\"
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()

@svc.api(input=kinds.dataframe(["a", "b"]), output="dataframe")
def total(df):
    return df.assign(total=df["a"] + df["b"])

@svc.api(input="text", output="text")
def shout(text: str) -> str:
    return text.upper()

@svc.api(input="file", output="json")
def size(data: bytes) -> dict:
    return {"size": len(data)}

@svc.api(input=kinds.image("L"), output="json")
def shape(image: np.ndarray) -> list:
    return list(image.shape)

@svc.api(input="json", output="json")
def count(rows: list) -> int:
    return len(rows)

@svc.api(input="path", output="json")
def negate(src, out):
    array = np.load(src, allow_pickle=False)
    np.save(out / "negated.npy", -array)
    return {"shape": list(array.shape)}
""",
]
#: The second version: the same service, retrained to factor 3.
RETRAIN = """
with torch.no_grad():
    net.linear.weight.copy_(3.0 * torch.eye(2))
"""
#: A small service as a file, for the other push sources (no torch: it packages fast).
ECHO_SERVICE = """
from model_runtime import Service

service = Service("{name}")


@service.api(input="json", output="json")
def echo(value):
    return {{"got": value}}
"""


@dataclass
class User:
    name: str
    token: str
    client: Client
    versions: list[ModelVersion] = field(default_factory=list)
    progress: list[tuple[str, int, int]] = field(default_factory=list)


@pytest.fixture(scope="module")
def user(hub: Hub) -> Iterator[User]:
    """A hub user whose notebook pushed two versions of the demo service (factor 2, then 3)."""
    name = hub.create_user("nb")
    token, _ = hub.create_token(name)
    hub.job_folder(name)  # before any replica starts: sandboxes show what exists at launch
    with Client(hub.service_url, token) as client:
        who = User(name, token, client)
        notebook = Notebook()
        try:
            for cell in CELLS:
                notebook.run(cell)
            first = client.push(
                notebook["svc"], progress=lambda *update: who.progress.append(update)
            )
            notebook.run(RETRAIN)
            second = client.push(notebook["svc"], tags=["candidate"], progress=False)
        finally:
            notebook.shell.reset(new_session=True)
        who.versions = [first, second]
        yield who


@pytest.fixture(scope="module")
def deployed(user: User) -> Iterator[Deployment]:
    """Version 1 deployed as ``demo`` with one replica, waited for; deleted at the end."""
    deployment = user.client.deploy(
        user.versions[0], name=DEPLOYMENT, wait=True, timeout=READY_TIMEOUT
    )
    yield deployment
    with contextlib.suppress(NotFound):
        user.client.undeploy(DEPLOYMENT)


# -- models ---------------------------------------------------------------------------------


def test_push_from_a_notebook_packages_then_uploads(user: User) -> None:
    first, second = user.versions
    assert (first.owner, first.name) == (user.name, "clientdemo")
    assert first.version < second.version
    assert first.archive_sha256 != second.archive_sha256  # other weights
    assert [api.name for api in first.manifest.apis] == [
        "scale",
        "total",
        "shout",
        "size",
        "shape",
        "count",
        "negate",
    ]
    assert "candidate" in second.tags and "latest" in second.tags
    stages = [stage for stage, _, _ in user.progress]
    assert stages[0] == "package" and stages[-1] == "upload"
    assert user.progress[-1] == ("upload", first.archive_size, first.archive_size)


def test_models_versions_tags_and_download(user: User, tmp_path: Path) -> None:
    client, (first, second) = user.client, user.versions
    assert any(m.key == f"{user.name}/clientdemo" for m in client.models())
    detail = client.model("clientdemo")
    assert [v.version for v in detail.versions] == [second.version, first.version]
    assert detail.tags["latest"] == detail.tags["candidate"] == second.version
    assert client.version("clientdemo").version == second.version  # latest by default
    assert client.version(f"{user.name}/clientdemo:candidate").version == second.version

    tagged = client.tag(f"clientdemo:{first.version}", "stable")
    assert tagged.version == first.version and "stable" in tagged.tags
    assert client.version("clientdemo:stable").version == first.version
    client.untag("clientdemo", "stable")
    with pytest.raises(NotFound):
        client.version("clientdemo:stable")

    archive = client.download(first.ref, tmp_path)
    assert archive.parent == tmp_path and archive.name.endswith(".tar.gz")
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == first.archive_sha256
    named = client.download(f"clientdemo:{first.version}", tmp_path / "copy.tar.gz")
    assert named.read_bytes() == archive.read_bytes()


def test_push_sources_file_archive_and_bundle_directory(user: User, tmp_path: Path) -> None:
    client = user.client
    source = tmp_path / "echo.py"
    source.write_text(ECHO_SERVICE.format(name="echo"))
    pushed = client.push(f"{source}:service")  # progress bars on stderr
    assert (pushed.name, pushed.manifest.apis[0].name) == ("echo", "echo")

    archive = client.download(pushed.ref, tmp_path)
    assert client.push(archive, progress=False).version == pushed.version  # stored already
    directory = tmp_path / "bundle"
    extract_archive(archive, directory)
    assert client.push(directory, progress=False).version == pushed.version

    with pytest.raises(InvalidRequest, match="cannot package"):
        client.push(f"{tmp_path / 'missing.py'}:service", progress=False)
    with pytest.raises(InvalidRequest, match="names no version"):
        client.delete_version("echo")
    client.delete_version(pushed.ref)
    with pytest.raises(NotFound):
        client.model("echo")


# -- deploying and calling --------------------------------------------------------------------


def test_deploy_waits_until_ready(user: User, deployed: Deployment) -> None:
    assert deployed.key == f"{user.name}/{DEPLOYMENT}"
    assert deployed.version == user.versions[0].version
    assert deployed.status.settled and len(deployed.status.replicas) == 1
    assert [api.name for api in deployed.apis][:2] == ["scale", "total"]
    # The service answers a relative URL when the hub has no public URL; endpoint() is absolute.
    assert user.client.endpoint(DEPLOYMENT) == urljoin(user.client.url, deployed.url)
    assert [d.key for d in user.client.deployments()] == [deployed.key]


def test_predict_numpy_round_trips_as_npy(user: User, deployed: Deployment) -> None:
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    result = user.client.predict(DEPLOYMENT, "scale", x)
    assert isinstance(result, np.ndarray) and result.dtype == np.float32
    np.testing.assert_array_equal(result, 2 * x)
    tensor = user.client.predict(deployed, "scale", torch.ones(1, 2))
    np.testing.assert_array_equal(tensor, [[2.0, 2.0]])


def test_predict_json_dataframe_text_files_and_images(
    user: User, deployed: Deployment, tmp_path: Path
) -> None:
    client = user.client
    assert client.predict(DEPLOYMENT, "scale", [[1, 2]]) == [[2.0, 4.0]]
    frame = client.predict(DEPLOYMENT, "total", pd.DataFrame({"b": [1, 2], "a": [10, 20]}))
    assert isinstance(frame, pd.DataFrame)
    assert frame.to_dict(orient="list") == {"a": [10, 20], "b": [1, 2], "total": [11, 22]}
    assert client.predict(DEPLOYMENT, "shout", "hello") == "HELLO"
    assert client.predict(DEPLOYMENT, "size", b"\x00" * 5) == {"size": 5}
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1234)
    assert client.predict(DEPLOYMENT, "size", path) == {"size": 1234}
    image = Image.new("RGB", (5, 7), color=(10, 20, 30))
    assert client.predict(DEPLOYMENT, "shape", image) == [7, 5]
    assert client.predict(DEPLOYMENT, "count", np.ones((3, 2))) == 3  # .npy refused: as JSON
    answer = client.predict(
        DEPLOYMENT, "scale", np.ones((1, 2), np.float32), accept="application/json"
    )
    assert answer == [[2.0, 2.0]]


def test_infer_speaks_open_inference_protocol(user: User, deployed: Deployment) -> None:
    x = np.array([[1.5, -2.0]], dtype=np.float32)
    outputs = user.client.infer(DEPLOYMENT, "scale", x)
    assert list(outputs) == ["output"]
    assert outputs["output"].dtype == np.float32
    np.testing.assert_array_equal(outputs["output"], 2 * x)
    with pytest.raises(InvalidRequest, match="expected shape"):
        user.client.infer(DEPLOYMENT, "scale", np.ones((1, 3), np.float32))


def test_bad_input_is_invalid_request_with_the_runtimes_message(
    user: User, deployed: Deployment
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        user.client.predict(DEPLOYMENT, "scale", np.ones((2, 3), np.float32))
    assert caught.value.status == 422
    assert "expected shape (-1, 2), got (2, 3)" in caught.value.message
    with pytest.raises(InvalidRequest, match="missing column b"):
        user.client.predict(DEPLOYMENT, "total", pd.DataFrame({"a": [1]}))


def test_unknown_names_are_not_found(user: User, deployed: Deployment) -> None:
    client = user.client
    with pytest.raises(NotFound, match=f"deployment {user.name}/nope not found"):
        client.deployment("nope")
    with pytest.raises(NotFound):
        client.predict("nope", "scale", [[1, 2]])
    with pytest.raises(NotFound):
        client.predict(DEPLOYMENT, "no_such_api", [[1, 2]])
    with pytest.raises(NotFound):
        client.model("no-such-model")
    with pytest.raises(NotFound):
        client.deploy("no-such-model")
    with pytest.raises(InvalidRequest, match="is not a deployment name"):
        client.deployment("a/b/c")


def test_deploy_refusals(user: User, deployed: Deployment) -> None:
    with pytest.raises(Conflict, match="already exists"):
        user.client.deploy("clientdemo", name=DEPLOYMENT)
    with pytest.raises(InvalidRequest, match="replicas"):
        user.client.deploy("clientdemo", name="other", replicas=-1)


def test_scale_up_and_down(user: User, deployed: Deployment) -> None:
    client = user.client
    seen: list[str] = []
    up = client.scale(DEPLOYMENT, 2, wait=True, timeout=READY_TIMEOUT)
    assert up.replicas == 2 and up.status.ready == 2 and up.status.settled
    assert client.predict(DEPLOYMENT, "scale", [[1, 1]]) == [[2.0, 2.0]]
    down = client.scale(DEPLOYMENT, 1)
    assert down.replicas == 1
    down = client.wait_ready(DEPLOYMENT, READY_TIMEOUT, lambda d: seen.append(d.status.phase))
    assert down.status.ready == 1 and seen[-1] == "ready"


def test_roll_forward_and_back(user: User, deployed: Deployment) -> None:
    client, (first, second) = user.client, user.versions
    rolled = client.roll(DEPLOYMENT, second, wait=True, timeout=READY_TIMEOUT)
    assert rolled.version == second.version
    assert all(r.version == second.version for r in rolled.status.replicas)
    assert client.predict(DEPLOYMENT, "scale", [[1, 1]]) == [[3.0, 3.0]]
    back = client.rollback(DEPLOYMENT, wait=True, timeout=READY_TIMEOUT)
    assert back.version == first.version
    assert [r.version for r in back.revisions] == [first.version, second.version, first.version]
    assert client.predict(DEPLOYMENT, "scale", [[1, 1]]) == [[2.0, 2.0]]
    with pytest.raises(Conflict):
        client.delete_version(first.ref)  # a deployment runs it


def test_logs_of_each_replica(user: User, deployed: Deployment) -> None:
    chunks = user.client.logs(DEPLOYMENT, tail=50)
    replicas = {r.id for r in user.client.deployment(DEPLOYMENT).status.replicas}
    assert replicas <= {chunk.replica for chunk in chunks}
    assert all(len(chunk.lines) <= 50 for chunk in chunks)
    assert any(chunk.lines for chunk in chunks)


def test_batch_job_over_a_directory(
    hub: Hub, user: User, deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two replicas: a job lives in one of them, and the gateway keeps sending its status
    calls there, query string included: pages of two items add up to the whole job."""
    monkeypatch.setattr(_operations, "JOB_ITEMS_PAGE", 2)
    user.client.scale(DEPLOYMENT, 2, wait=True, timeout=READY_TIMEOUT)
    source, target = hub.job_folder(user.name) / "in", hub.job_folder(user.name) / "out"
    with shared_umask():
        source.mkdir()
        target.mkdir()
    for i in range(3):
        np.save(source / f"x{i}.npy", np.full((2, 2), i, dtype=np.float32))
    job = user.client.submit_job(DEPLOYMENT, "negate", str(source), str(target))
    assert job.items_total == 3 and job.api == "negate"
    states: list[str] = []
    done = user.client.wait_job(
        DEPLOYMENT, job, timeout=READY_TIMEOUT, progress=lambda j: states.append(j.state)
    )
    assert done.state == "succeeded" and done.finished and done.items_done == 3
    assert [item.item for item in done.items] == ["x0.npy", "x1.npy", "x2.npy"]
    assert states[-1] == "succeeded"
    np.testing.assert_array_equal(np.load(target / "x2" / "negated.npy"), np.full((2, 2), -2))
    for _ in range(6):  # round-robin would send half of these to the other replica
        again = user.client.job(DEPLOYMENT, job.id)
        assert again.items_failed == 0 and again.items == done.items
    with pytest.raises(NotFound):
        user.client.job(DEPLOYMENT, "no-such-job")
    user.client.scale(DEPLOYMENT, 1, wait=True, timeout=READY_TIMEOUT)


def test_async_client(hub: Hub, user: User, deployed: Deployment, tmp_path: Path) -> None:
    source = tmp_path / "echo.py"
    source.write_text(ECHO_SERVICE.format(name="asyncecho"))

    async def scenario() -> None:
        async with AsyncClient(hub.service_url, user.token) as client:
            assert (await client.me()).name == user.name
            info = await client.deployment(DEPLOYMENT)
            assert info.key == deployed.key and info.status.settled
            x = np.ones((2, 2), np.float32)
            np.testing.assert_array_equal(await client.predict(DEPLOYMENT, "scale", x), 2 * x)
            outputs = await client.infer(DEPLOYMENT, "scale", x)
            np.testing.assert_array_equal(outputs["output"], 2 * x)
            assert await client.logs(DEPLOYMENT, tail=5)
            assert (await client.wait_ready(DEPLOYMENT, timeout=READY_TIMEOUT)).status.settled
            pushed = await client.push(f"{source}:service", progress=False)
            assert pushed.name == "asyncecho"
            archive = await client.download(pushed.ref, tmp_path)
            assert archive.stat().st_size == pushed.archive_size
            await client.delete_model("asyncecho")
            with pytest.raises(NotFound):
                await client.deployment("nope")
            with pytest.raises(InvalidRequest, match="expected shape"):
                await client.predict(DEPLOYMENT, "scale", np.ones((1, 3), np.float32))

    asyncio.run(scenario())


def test_undeploy(user: User, deployed: Deployment) -> None:
    user.client.undeploy(DEPLOYMENT)
    with pytest.raises(NotFound):
        user.client.deployment(DEPLOYMENT)
    with pytest.raises(NotFound):
        user.client.predict(DEPLOYMENT, "scale", [[1, 2]])
    assert user.client.deployments() == []


# -- finding the service, and errors ------------------------------------------------------------


def test_discovery_from_a_single_user_servers_environment(
    hub: Hub, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    monkeypatch.setenv("HUBSERVE_URL", hub.service_url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", user.token)
    with Client() as client:
        assert client.url == f"{hub.service_url}/"
        assert client.me().name == user.name

    monkeypatch.delenv("HUBSERVE_URL")
    monkeypatch.setenv("JUPYTERHUB_API_URL", f"{hub.url}/hub/api")
    with Client() as client:
        assert client.url == f"{hub.url}/services/hubserve/"
        assert client.me().name == user.name

    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    with pytest.raises(ConfigurationError, match="JUPYTERHUB_API_TOKEN"):
        Client()


def test_unreachable_service_is_service_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/services/hubserve/"
    with (
        Client(url, "a-token-nobody-checks") as client,
        pytest.raises(ServiceUnavailable) as caught,
    ):
        client.me()
    assert caught.value.status is None
    assert str(caught.value) == f"cannot reach the hubserve service at {url}: connection refused"


def test_token_without_hubserves_scope_is_forbidden(hub: Hub, user: User) -> None:
    token, _ = hub.create_token(user.name, scopes=[f"read:users:name!user={user.name}"])
    with Client(hub.service_url, token) as client, pytest.raises(Forbidden) as caught:
        client.models()
    assert caught.value.status == 403
    assert token not in str(caught.value) and token not in repr(caught.value)
    assert token not in repr(client)
    with (
        Client(hub.service_url, "0123456789abcdef-not-a-token") as client,
        pytest.raises(Unauthorized),
    ):
        client.me()
