"""The model registry API in-process: static-token dev mode, a local store, a SQLite DB.

Fast checks of what the real-hub tests (``test_registry.py``) cannot reach easily: streamed
multipart and chunked uploads, size limits while streaming, a client that goes away in the
middle of an upload, deployments that hold a version, a store that is down.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hub_service._settings import HubServiceSettings, ServiceLimits
from hub_service._state import ServiceState
from hub_service.app import create_app
from hub_service.db import Database, Deployment
from hub_service.registry import router as registry_router
from model_runtime.store import LocalStore, S3Store, Store

from .conftest import TestBundle

ALICE, BOB, ROOT = "a" * 32, "b" * 32, "r" * 32
API = "/services/hubserve/api/models"
LIMIT = 256 * 1024


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def raw(token: str) -> dict[str, str]:
    return {**auth(token), "Content-Type": "application/gzip"}


@dataclass
class Env:
    client: TestClient
    app: FastAPI
    data_dir: Path

    @property
    def state(self) -> ServiceState:
        state = self.app.state.hubserve
        assert isinstance(state, ServiceState)
        return state

    def scratch_left(self) -> list[Path]:
        """Whatever uploads and downloads left in the data directory (should be nothing)."""
        return [
            p
            for sub in ("uploads", "downloads")
            if (self.data_dir / sub).exists()
            for p in (self.data_dir / sub).iterdir()
        ]

    def upload(self, bundle: TestBundle, token: str = ALICE, **params: Any) -> Any:
        response = self.client.post(API, params=params, content=bundle.data, headers=raw(token))
        assert response.status_code in (200, 201), response.text
        return response.json()


def make_app(tmp_path: Path, store: Store | None = None) -> tuple[FastAPI, Path]:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                ALICE: {"name": "alice"},
                BOB: {"name": "bob"},
                ROOT: {"name": "root", "admin": True},
            }
        )
    )
    data_dir = tmp_path / "data"
    settings = HubServiceSettings(
        static_token_file=tokens,
        data_dir=data_dir,
        limits=ServiceLimits(max_upload_bytes=LIMIT),
    )
    app = create_app(
        settings,
        store=store or LocalStore(tmp_path / "store"),
        database=Database(f"sqlite:///{tmp_path / 'db.sqlite'}"),
    )
    return app, data_dir


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    app, data_dir = make_app(tmp_path)
    with TestClient(app) as client:
        yield Env(client, app, data_dir)


@pytest.fixture
def v1(iris_bundles: tuple[TestBundle, TestBundle]) -> TestBundle:
    return iris_bundles[0]


@pytest.fixture
def v2(iris_bundles: tuple[TestBundle, TestBundle]) -> TestBundle:
    return iris_bundles[1]


def multipart_body(data: bytes, field: str = "bundle", boundary: str = "xyzzy42") -> bytes:
    return (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="note"\r\n\r\n'
            "hello\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="b.tar.gz"\r\n'
            "Content-Type: application/gzip\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )


def chunked(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# -- uploads ---------------------------------------------------------------------------------


def test_raw_upload_then_read_everything_back(env: Env, v1: TestBundle) -> None:
    response = env.client.post(
        API, params={"tag": ["prod", "eu"]}, content=v1.data, headers=raw(ALICE)
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["owner"], body["name"], body["version"]) == ("alice", v1.name, v1.version)
    assert body["pushed_by"] == "alice"
    assert body["archive_sha256"] == v1.sha256
    assert body["archive_size"] == len(v1.data)
    assert body["tags"] == ["eu", "latest", "prod"]
    assert body["manifest"]["name"] == v1.name
    location = f"{API}/alice/{v1.name}/versions/{v1.version}"
    assert response.headers["location"] == location

    for selector in (v1.version, "prod", "latest"):
        got = env.client.get(f"{API}/alice/{v1.name}/versions/{selector}", headers=auth(ALICE))
        assert got.status_code == 200, got.text
        assert got.json() == body

    model = env.client.get(f"{API}/alice/{v1.name}", headers=auth(ALICE)).json()
    assert [v["version"] for v in model["versions"]] == [v1.version]
    assert model["tags"] == {"eu": v1.version, "latest": v1.version, "prod": v1.version}
    assert env.client.get(API, headers=auth(ALICE)).json() == [{"owner": "alice", "name": "iris"}]

    download = env.client.get(f"{location}/download", headers=auth(ALICE))
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert download.headers["content-disposition"] == (
        f'attachment; filename="{v1.name}-{v1.version}.tar.gz"'
    )
    assert hashlib.sha256(download.content).hexdigest() == v1.sha256
    assert env.scratch_left() == []


@pytest.mark.parametrize("content_type", ["application/x-gzip", "application/octet-stream", None])
def test_raw_upload_content_types(env: Env, v1: TestBundle, content_type: str | None) -> None:
    headers = auth(ALICE) | ({"Content-Type": content_type} if content_type else {})
    response = env.client.post(API, content=v1.data, headers=headers)
    assert response.status_code == 201, response.text


def test_multipart_upload_and_idempotent_reupload(env: Env, v1: TestBundle) -> None:
    response = env.client.post(
        API,
        files={"bundle": ("iris.tar.gz", v1.data, "application/gzip")},
        data={"comment": "ignored"},
        headers=auth(ALICE),
    )
    assert response.status_code == 201, response.text
    first = response.json()
    assert first["archive_sha256"] == v1.sha256

    # The same bytes again, chunked this time, with a tag: 200, the record unchanged.
    body = multipart_body(v1.data)
    again = env.client.post(
        API,
        params={"tag": "stable"},
        content=chunked(body),
        headers={**auth(ALICE), "Content-Type": "multipart/form-data; boundary=xyzzy42"},
    )
    assert again.status_code == 200, again.text
    assert again.json() == first | {"tags": ["latest", "stable"]}
    assert env.scratch_left() == []


def test_multipart_needs_the_bundle_field(env: Env, v1: TestBundle) -> None:
    response = env.client.post(API, files={"archive": ("x.tar.gz", v1.data)}, headers=auth(ALICE))
    assert response.status_code == 422
    assert "'bundle'" in response.json()["detail"]

    two = env.client.post(
        API,
        files=[("bundle", ("a.tar.gz", v1.data)), ("bundle", ("b.tar.gz", v1.data))],
        headers=auth(ALICE),
    )
    assert two.status_code == 422
    assert env.client.get(API, headers=auth(ALICE)).json() == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"--xyzzy42\r\nbroken", "multipart/form-data; boundary=xyzzy42", 400),
        (b"whatever", "multipart/form-data", 400),
        (b"a=b", "application/x-www-form-urlencoded", 415),
        (b"{}", "application/json", 415),
        (b"", "application/gzip", 422),
    ],
)
def test_bad_upload_bodies(env: Env, body: bytes, content_type: str, status: int) -> None:
    response = env.client.post(
        API, content=body, headers={**auth(ALICE), "Content-Type": content_type}
    )
    assert response.status_code == status, response.text
    assert env.scratch_left() == []


def test_oversize_upload_refused_from_content_length(env: Env) -> None:
    response = env.client.post(API, content=b"\0" * (LIMIT + 1), headers=raw(ALICE))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["detail"]
    assert env.scratch_left() == []


@pytest.mark.parametrize("multipart", [False, True])
def test_oversize_upload_refused_while_streaming(env: Env, multipart: bool) -> None:
    data = b"\0" * (LIMIT + 1)
    if multipart:
        body, content_type = multipart_body(data), "multipart/form-data; boundary=xyzzy42"
    else:
        body, content_type = data, "application/octet-stream"
    # A generator body is sent chunked: no Content-Length to refuse it up front.
    response = env.client.post(
        API, content=chunked(body), headers={**auth(ALICE), "Content-Type": content_type}
    )
    assert response.status_code == 413, response.text
    assert env.scratch_left() == []
    assert env.client.get(API, headers=auth(ROOT)).json() == []


def test_an_upload_at_the_limit_is_accepted_by_size(env: Env) -> None:
    response = env.client.post(API, content=chunked(b"\0" * LIMIT), headers=raw(ALICE))
    assert response.status_code == 422  # as big as allowed, but not a bundle


def test_garbage_and_hostile_archives_are_422_and_leave_nothing(env: Env) -> None:
    manifest = json.dumps({"name": "evil", "version": "20260101T000000000Z-deadbeef"}).encode()
    for body in (
        b"not a gzip at all",
        gzip.compress(b"gzip, but no tar inside"),
        tar_gz({"hello.txt": b"hi"}),
        tar_gz({"bundle.json": manifest, "../escape.py": b"print('owned')"}),
    ):
        response = env.client.post(API, content=body, headers=raw(ALICE))
        assert response.status_code == 422, response.text
        assert "Traceback" not in response.text
    assert env.client.get(API, headers=auth(ROOT)).json() == []
    assert env.scratch_left() == []


def test_same_version_other_bytes_is_409(env: Env, v1: TestBundle) -> None:
    env.upload(v1)
    regzipped = gzip.compress(gzip.decompress(v1.data), compresslevel=1, mtime=1)
    assert regzipped != v1.data
    response = env.client.post(API, content=regzipped, headers=raw(ALICE))
    assert response.status_code == 409
    assert "immutable" in response.json()["detail"]
    got = env.client.get(f"{API}/alice/{v1.name}/versions/{v1.version}", headers=auth(ALICE))
    assert got.json()["archive_sha256"] == v1.sha256


def test_bad_upload_tags_are_refused_before_reading(env: Env, v1: TestBundle) -> None:
    for tag in ("latest", "-bad", "20261125T161745123Z-3f2a9c1e"):
        response = env.client.post(API, params={"tag": tag}, content=v1.data, headers=raw(ALICE))
        assert response.status_code == 422, tag
    assert env.client.get(API, headers=auth(ALICE)).json() == []


def test_client_going_away_mid_upload_leaves_nothing(env: Env, v1: TestBundle) -> None:
    data = v1.data
    sent: list[dict[str, Any]] = []
    messages = [
        {"type": "http.request", "body": data[: len(data) // 2], "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": API,
        "raw_path": API.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"token {ALICE}".encode()),
            (b"content-type", b"application/gzip"),
            (b"content-length", str(len(data)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(env.app, scope, receive, send)
    assert sent[0]["status"] == 400
    assert env.scratch_left() == []
    assert env.client.get(API, headers=auth(ALICE)).json() == []


# -- tags, deletion, deployments ---------------------------------------------------------------


def test_tags_move_and_latest_is_derived(env: Env, v1: TestBundle, v2: TestBundle) -> None:
    env.upload(v1)
    env.upload(v2)
    tags = f"{API}/alice/iris/tags"
    put = env.client.put(f"{tags}/prod", json={"version": v1.version}, headers=auth(ALICE))
    assert put.status_code == 200, put.text
    assert put.json() == {"owner": "alice", "name": "iris", "tag": "prod", "version": v1.version}
    # A tag may be given as a tag (or latest): it is resolved to the version it names.
    put = env.client.put(f"{tags}/canary", json={"version": "latest"}, headers=auth(ALICE))
    assert put.json()["version"] == v2.version
    put = env.client.put(f"{tags}/canary", json={"version": "prod"}, headers=auth(ALICE))
    assert put.json()["version"] == v1.version
    model = env.client.get(f"{API}/alice/iris", headers=auth(ALICE)).json()
    assert model["tags"] == {"canary": v1.version, "latest": v2.version, "prod": v1.version}
    assert [v["version"] for v in model["versions"]] == [v2.version, v1.version]

    for tag in ("bad tag", ".dot", v1.version):
        bad = env.client.put(f"{tags}/{tag}", json={"version": v1.version}, headers=auth(ALICE))
        assert bad.status_code == 422, tag
    latest = env.client.put(f"{tags}/latest", json={"version": v1.version}, headers=auth(ALICE))
    assert latest.status_code == 422
    assert "latest" in latest.json()["detail"]
    assert env.client.delete(f"{tags}/latest", headers=auth(ALICE)).status_code == 422
    missing = env.client.put(
        f"{tags}/x", json={"version": "20200101T000000000Z-00000000"}, headers=auth(ALICE)
    )
    assert missing.status_code == 404
    assert str(env.data_dir.parent) not in missing.text  # the store's location stays private
    assert (
        env.client.put(f"{tags}/x", json={"version": "nope"}, headers=auth(ALICE)).status_code
        == 404
    )
    assert env.client.put(f"{tags}/x", json={"v": "1"}, headers=auth(ALICE)).status_code == 422

    assert env.client.delete(f"{tags}/canary", headers=auth(ALICE)).status_code == 204
    assert env.client.delete(f"{tags}/canary", headers=auth(ALICE)).status_code == 404
    model = env.client.get(f"{API}/alice/iris", headers=auth(ALICE)).json()
    assert model["tags"] == {"latest": v2.version, "prod": v1.version}


def add_deployment(env: Env, owner: str, name: str, version: str) -> None:
    with env.state.db.session() as session:
        session.add(
            Deployment(
                owner=owner,
                name=name,
                model_owner="alice",
                model_name="iris",
                selector=version,
                version=version,
                replicas=1,
                secret="s",
                created_by=owner,
            )
        )


def test_delete_refused_while_deployed_unless_forced(
    env: Env, v1: TestBundle, v2: TestBundle
) -> None:
    env.upload(v1)
    env.upload(v2)
    add_deployment(env, "alice", "web", v1.version)
    add_deployment(env, "bob", "batch", v1.version)
    model = f"{API}/alice/iris"

    # v2 is free: it goes (and with it latest moves back to v1).
    assert (
        env.client.delete(f"{model}/versions/{v2.version}", headers=auth(ALICE)).status_code == 204
    )
    assert env.client.get(f"{model}/versions/latest", headers=auth(ALICE)).json()["version"] == (
        v1.version
    )

    refused = env.client.delete(f"{model}/versions/{v1.version}", headers=auth(ALICE))
    assert refused.status_code == 409
    assert "alice/web" in refused.json()["detail"]
    assert "bob/batch" in refused.json()["detail"]
    refused = env.client.delete(model, headers=auth(ALICE))
    assert refused.status_code == 409
    assert "alice/web" in refused.json()["detail"]
    # Deleting needs the version itself, not a tag that might have moved.
    assert env.client.delete(f"{model}/versions/latest", headers=auth(ALICE)).status_code == 422

    forced = env.client.delete(
        f"{model}/versions/{v1.version}", params={"force": "true"}, headers=auth(ALICE)
    )
    assert forced.status_code == 204
    assert env.client.get(model, headers=auth(ALICE)).status_code == 404
    # The deployments still name v1, but what is gone is gone: 404, not 409.
    gone = env.client.delete(f"{model}/versions/{v1.version}", headers=auth(ALICE))
    assert gone.status_code == 404
    assert env.client.delete(model, headers=auth(ALICE)).status_code == 404


def test_delete_model_with_force(env: Env, v1: TestBundle, v2: TestBundle) -> None:
    env.upload(v1)
    env.upload(v2, tag="prod")
    add_deployment(env, "alice", "web", v2.version)
    model = f"{API}/alice/iris"
    assert env.client.delete(model, headers=auth(ALICE)).status_code == 409
    assert env.client.delete(model, params={"force": True}, headers=auth(ALICE)).status_code == 204
    assert env.client.get(model, headers=auth(ALICE)).status_code == 404
    assert env.client.get(API, headers=auth(ALICE)).json() == []
    again = env.client.delete(model, params={"force": True}, headers=auth(ALICE))
    assert again.status_code == 404


def test_delete_unused_model(env: Env, v1: TestBundle) -> None:
    env.upload(v1)
    assert env.client.delete(f"{API}/alice/iris", headers=auth(ALICE)).status_code == 204
    assert env.client.delete(f"{API}/alice/iris", headers=auth(ALICE)).status_code == 404


# -- rights ----------------------------------------------------------------------------------


def test_other_users_see_nothing_admins_everything(env: Env, v1: TestBundle) -> None:
    env.upload(v1, tag="prod")
    model = f"{API}/alice/iris"
    version = f"{model}/versions/{v1.version}"

    assert env.client.get(API, headers=auth(BOB)).json() == []
    assert env.client.get(API, params={"owner": "alice"}, headers=auth(BOB)).json() == []
    for method, url in [
        ("GET", model),
        ("DELETE", model),
        ("GET", version),
        ("GET", f"{version}/download"),
        ("DELETE", version),
        ("DELETE", f"{model}/tags/prod"),
        ("GET", f"{API}/alice/nothing-here"),
    ]:
        response = env.client.request(method, url, headers=auth(BOB))
        assert response.status_code == 404, (method, url)
        assert response.json() == {"detail": f"model alice/{url.split('/')[6]} not found"}
    put = env.client.put(f"{model}/tags/x", json={"version": "latest"}, headers=auth(BOB))
    assert put.status_code == 404
    as_alice = env.client.post(API, params={"owner": "alice"}, content=v1.data, headers=raw(BOB))
    assert as_alice.status_code == 403
    # Naming oneself as the owner is fine.
    assert env.upload(v1, token=BOB, owner="bob")["owner"] == "bob"

    everything = env.client.get(API, headers=auth(ROOT)).json()
    assert everything == [{"owner": "alice", "name": "iris"}, {"owner": "bob", "name": "iris"}]
    only = env.client.get(API, params={"owner": "bob"}, headers=auth(ROOT)).json()
    assert only == [{"owner": "bob", "name": "iris"}]
    assert env.client.get(version, headers=auth(ROOT)).json()["tags"] == ["latest", "prod"]
    for_alice = env.client.post(API, params={"owner": "carol"}, content=v1.data, headers=raw(ROOT))
    assert for_alice.status_code == 201
    assert (for_alice.json()["owner"], for_alice.json()["pushed_by"]) == ("carol", "root")
    assert env.client.delete(f"{API}/carol/iris", headers=auth(ROOT)).status_code == 204
    assert env.client.delete(model, headers=auth(ROOT)).status_code == 204


def test_registry_routes_need_a_token(env: Env) -> None:
    for method, url in [("GET", API), ("POST", API), ("GET", f"{API}/alice/iris")]:
        assert env.client.request(method, url).status_code == 401
        bad = env.client.request(method, url, headers=auth("z" * 32))
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("token", "method", "url", "params"),
    [
        (ALICE, "GET", f"{API}/alice/Not_Valid", None),
        (ALICE, "GET", f"{API}/alice/iris/versions/..bad", None),
        (ALICE, "DELETE", f"{API}/alice/iris/versions/prod", None),
        (ALICE, "GET", API, {"owner": "bad owner!"}),
        (ROOT, "GET", f"{API}/-bad-/iris", None),
        (ROOT, "POST", API, {"owner": "-nobody"}),
        (ALICE, "DELETE", f"{API}/alice/iris/tags/-x", None),
    ],
)
def test_invalid_names_are_422(
    env: Env, token: str, method: str, url: str, params: dict[str, str] | None
) -> None:
    response = env.client.request(method, url, params=params, headers=raw(token), content=b"x")
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)


# -- the store being down ----------------------------------------------------------------------


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the test uses it


def test_store_down_is_503(tmp_path: Path, closed_port: int, v1: TestBundle) -> None:
    store = S3Store(
        f"127.0.0.1:{closed_port}",
        "models",
        access_key="key",
        secret_key="secret-value",
        secure=False,
    )
    app, data_dir = make_app(tmp_path, store)
    with TestClient(app) as client:
        env = Env(client, app, data_dir)
        for method, url in [
            ("GET", API),
            ("GET", f"{API}/alice/iris"),
            ("GET", f"{API}/alice/iris/versions/latest"),
            ("GET", f"{API}/alice/iris/versions/latest/download"),
            ("DELETE", f"{API}/alice/iris"),
        ]:
            response = client.request(method, url, headers=auth(ALICE))
            assert response.status_code == 503, (method, url, response.text)
            assert response.json() == {
                "detail": "the model store is not reachable, try again later"
            }
        upload = client.post(API, content=v1.data, headers=raw(ALICE))
        assert upload.status_code == 503
        assert "secret-value" not in upload.text
        assert env.scratch_left() == []


# -- documentation -----------------------------------------------------------------------------


def test_openapi_documents_the_registry() -> None:
    # The registry's own routes, alone: what the service's /openapi.json holds about them.
    app = FastAPI()
    app.include_router(registry_router)
    spec = app.openapi()
    api = "/api/models"
    paths = spec["paths"]
    assert set(paths[api]) == {"get", "post"}
    assert set(paths[f"{api}/{{owner}}/{{name}}"]) == {"get", "delete"}
    assert set(paths[f"{api}/{{owner}}/{{name}}/versions/{{version}}"]) == {"get", "delete"}
    assert set(paths[f"{api}/{{owner}}/{{name}}/tags/{{tag}}"]) == {"put", "delete"}
    upload = paths[api]["post"]
    assert set(upload["requestBody"]["content"]) == {
        "application/gzip",
        "application/x-gzip",
        "application/octet-stream",
        "multipart/form-data",
    }
    assert upload["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VersionRecord"
    }
    assert {"413", "422", "409"} <= set(upload["responses"])
    download = paths[f"{api}/{{owner}}/{{name}}/versions/{{version}}/download"]["get"]
    assert "application/gzip" in download["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    assert {"VersionRecord", "ModelDetail", "TagTarget", "TagInfo", "ErrorDetail"} <= set(schemas)
    assert "manifest" in schemas["VersionRecord"]["properties"]
