"""Store and disk faults under the service: S3 stopped, the bundle cache or upload space full.

The service runs in-process (static-token dev mode) with the real local backend and a real
S3 server (SeaweedFS) that the tests stop and restart on the same port and data. Disks fill
up for real: a small tmpfs is mounted over the bundle cache or the upload directory and
filled to the last byte (we run as root here and in CI).

What must hold: a clear 503 (never a 500) while the store is down, no half version visible
afterwards, retries succeed once it is back, deployments report the store or disk error in
their status and recover by themselves, and no partial bundle is left in the cache.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hub_service._settings import HubServiceSettings
from hub_service.app import create_app
from hub_service.backends.local import LocalBackend, LocalBackendSettings
from model_runtime import build_bundle
from model_runtime.store import S3Store
from model_runtime.testing.s3server import S3Server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ALICE = {"Authorization": "token alice-token-123"}
PREFIX = "/services/hubserve"
TIMEOUT = 60


@pytest.fixture(scope="module")
def iris_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iris")
    return build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=out).archive


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def store(s3: S3Server, request: pytest.FixtureRequest) -> S3Store:
    """A bucket of this test alone on the shared server (restarted if a test left it down)."""
    if not s3.running:
        s3.start()
    bucket = "t-" + request.node.name.replace("_", "-")[:50].strip("-")
    return S3Store(
        s3.endpoint, bucket, access_key=s3.access_key, secret_key=s3.secret_key, secure=False
    )


def service(tmp_path: Path, store: S3Store) -> TestClient:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alice-token-123": {"name": "alice"}}))
    settings = HubServiceSettings(static_token_file=tokens, data_dir=tmp_path / "data")
    backend = LocalBackend(
        store, settings.data_dir, LocalBackendSettings(health_interval=0.2, use_zygote=False)
    )
    return TestClient(create_app(settings, store=store, backend=backend))


def status(client: TestClient, name: str = "iris") -> dict[str, Any]:
    response = client.get(f"{PREFIX}/api/deployments/alice/{name}", headers=ALICE)
    assert response.status_code == 200, response.text
    return dict(response.json()["status"])


def wait_status(client: TestClient, check: Any, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    current = status(client)
    while not check(current):
        assert time.monotonic() < deadline, f"{what}: not reached; last status {current}"
        time.sleep(0.1)
        current = status(client)
    return current


def upload(client: TestClient, archive: Path) -> Any:
    return client.post(
        f"{PREFIX}/api/models",
        content=archive.read_bytes(),
        headers={**ALICE, "Content-Type": "application/gzip"},
    )


@contextlib.contextmanager
def full_disk(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` and filled up; yields the filler file."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        filler = path / "filler"
        with filler.open("wb") as out, pytest.raises(OSError) as info:  # noqa: PT012
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        assert info.value.errno == errno.ENOSPC
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


# -- the store stopped --------------------------------------------------------------------------


def test_upload_while_the_store_is_down_is_503_and_leaves_nothing(
    tmp_path: Path, s3: S3Server, store: S3Store, iris_archive: Path
) -> None:
    with service(tmp_path, store) as client:
        s3.stop()
        response = upload(client, iris_archive)
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == "the model store is not reachable, try again later"
        assert client.get(f"{PREFIX}/api/models", headers=ALICE).status_code == 503
        s3.restart()
        assert client.get(f"{PREFIX}/api/models/alice/iris", headers=ALICE).status_code == 404
        assert client.get(f"{PREFIX}/api/models", headers=ALICE).json() == []
        assert upload(client, iris_archive).status_code == 201
        assert not list((tmp_path / "data/uploads").iterdir())  # no temporary file kept


def test_deploy_while_the_store_is_down_is_503_then_works(
    tmp_path: Path, s3: S3Server, store: S3Store, iris_archive: Path
) -> None:
    """A new deployment needs its model resolved in the store: 503 and nothing created."""
    store.push(iris_archive, owner="alice")
    with service(tmp_path, store) as client:
        s3.stop()
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
        assert response.status_code == 503, response.text
        assert "model store is not reachable" in response.json()["detail"]
        assert client.get(f"{PREFIX}/api/deployments", headers=ALICE).json() == []
        s3.restart()
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
        assert response.status_code == 201, response.text
        wait_status(client, lambda s: s["phase"] == "ready", "ready after the store is back")


def test_deployment_recovers_by_itself_once_the_store_is_back(
    tmp_path: Path, s3: S3Server, store: S3Store, iris_archive: Path
) -> None:
    """The service restarts with an empty cache while S3 is down: the deployment says why it
    cannot run, its status still answers, and it comes up once S3 is back, untouched."""
    store.push(iris_archive, owner="alice")
    with service(tmp_path, store) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
        assert response.status_code == 201, response.text
        wait_status(client, lambda s: s["phase"] == "ready", "first start")
    shutil.rmtree(tmp_path / "data/local/cache")
    s3.stop()
    with service(tmp_path, store) as client:
        down = wait_status(client, lambda s: s["message"] is not None, "the store error shown")
        assert down["phase"] == "failed"
        assert f"cannot reach S3 at {s3.endpoint}" in down["message"]
        assert s3.secret_key not in json.dumps(down)
        response = client.post(f"{PREFIX}/d/alice/iris/predict", json=[[1, 2, 3, 4]], headers=ALICE)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "cannot reach S3" in response.json()["detail"]
        s3.restart()
        wait_status(client, lambda s: s["phase"] == "ready", "recovered by itself")
        response = client.post(f"{PREFIX}/d/alice/iris/predict", json=[[1, 2, 3, 4]], headers=ALICE)
        assert response.status_code == 200, response.text


# -- full disks ---------------------------------------------------------------------------------


def test_full_bundle_cache_is_reported_and_recovers(
    tmp_path: Path, store: S3Store, iris_archive: Path
) -> None:
    store.push(iris_archive, owner="alice")
    cache = tmp_path / "data/local/cache"
    with full_disk(cache) as filler, service(tmp_path, store) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
        assert response.status_code == 201, response.text
        full = wait_status(client, lambda s: s["message"] is not None, "the disk error shown")
        assert full["phase"] == "failed"
        assert f"no space left on device in the bundle cache {cache}" in full["message"]
        assert "Traceback" not in full["message"]
        assert files_under(cache) == ["filler"]  # no partial archive or bundle
        filler.unlink()
        wait_status(client, lambda s: s["phase"] == "ready", "ready once space is freed")
        response = client.post(f"{PREFIX}/d/alice/iris/predict", json=[[1, 2, 3, 4]], headers=ALICE)
        assert response.status_code == 200, response.text
        response = client.delete(f"{PREFIX}/api/deployments/alice/iris", headers=ALICE)
        assert response.status_code == 204


def test_full_upload_space_is_507(tmp_path: Path, store: S3Store, iris_archive: Path) -> None:
    with full_disk(tmp_path / "data/uploads") as filler, service(tmp_path, store) as client:
        response = upload(client, iris_archive)
        assert response.status_code == 507, response.text
        assert "no space left" in response.json()["detail"]
        assert client.get(f"{PREFIX}/api/models", headers=ALICE).json() == []
        filler.unlink()
        assert upload(client, iris_archive).status_code == 201
