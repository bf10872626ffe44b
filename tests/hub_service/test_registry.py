"""The model registry API against a real JupyterHub, through the hub's proxy.

The hub's users hold the service's access scope through the ``user`` role that
:func:`hub_service.configure_jupyterhub` extends; ``boss`` is a hub admin. Uploads are capped
at 8 MiB by the ``limits`` the fixture's config passes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from .conftest import ADMIN_USER, Hub, TestBundle

ACCESS = "access:services!service=hubserve"
MAX_UPLOAD = 8 * 1024 * 1024


@dataclass
class Caller:
    """A hub user with a token, calling the registry."""

    name: str
    token: str
    base: str

    def request(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return httpx.request(
            method, f"{self.base}/api/models{path}", headers=headers, timeout=30, **kwargs
        )

    def upload(self, data: bytes, **params: Any) -> httpx.Response:
        return self.request(
            "POST", params=params, content=data, headers={"Content-Type": "application/gzip"}
        )


def caller(hub: Hub, name: str | None = None) -> Caller:
    name = name or hub.create_user()
    token, _ = hub.create_token(name)
    return Caller(name, token, hub.service_url)


@pytest.fixture
def alice(hub: Hub) -> Caller:
    return caller(hub)


@pytest.fixture
def bob(hub: Hub) -> Caller:
    return caller(hub)


@pytest.fixture
def admin(hub: Hub) -> Caller:
    return caller(hub, ADMIN_USER)


@pytest.fixture
def v1(iris_bundles: tuple[TestBundle, TestBundle]) -> TestBundle:
    return iris_bundles[0]


@pytest.fixture
def v2(iris_bundles: tuple[TestBundle, TestBundle]) -> TestBundle:
    return iris_bundles[1]


# -- auth ------------------------------------------------------------------------------------

ROUTES = [
    ("GET", ""),
    ("POST", ""),
    ("GET", "/someone/iris"),
    ("DELETE", "/someone/iris"),
    ("GET", "/someone/iris/versions/latest"),
    ("GET", "/someone/iris/versions/latest/download"),
    ("DELETE", "/someone/iris/versions/20261125T161745123Z-3f2a9c1e"),
    ("PUT", "/someone/iris/tags/prod"),
    ("DELETE", "/someone/iris/tags/prod"),
]


def test_registry_needs_a_token_with_the_access_scope(hub: Hub) -> None:
    user = hub.create_user()
    narrow, _ = hub.create_token(user, scopes=[f"read:users:name!user={user}"])
    for method, path in ROUTES:
        url = f"{hub.service_url}/api/models{path}"
        anonymous = httpx.request(method, url, json={"version": "latest"})
        assert anonymous.status_code == 401, (method, path)
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        bad = httpx.request(method, url, headers={"Authorization": f"token {'0' * 32}"})
        assert bad.status_code == 401, (method, path)
        unscoped = httpx.request(method, url, headers={"Authorization": f"token {narrow}"})
        assert unscoped.status_code == 403, (method, path)
        assert ACCESS in unscoped.json()["detail"]
        assert narrow not in unscoped.text


def test_a_token_with_only_the_access_scope_may_upload(
    hub: Hub, alice: Caller, v1: TestBundle
) -> None:
    token, _ = hub.create_token(alice.name, scopes=[ACCESS])
    narrow = Caller(alice.name, token, hub.service_url)
    response = narrow.upload(v1.data)
    assert response.status_code == 201, response.text
    assert response.json()["owner"] == alice.name


# -- the owner's workflow ----------------------------------------------------------------------


def test_owner_uploads_lists_reads_tags_downloads_and_deletes(
    alice: Caller, v1: TestBundle, v2: TestBundle
) -> None:
    first = alice.upload(v1.data, tag="prod")
    assert first.status_code == 201, first.text
    record = first.json()
    assert record["owner"] == alice.name
    assert (record["name"], record["version"]) == (v1.name, v1.version)
    assert record["pushed_by"] == alice.name
    assert record["archive_sha256"] == v1.sha256
    assert record["tags"] == ["latest", "prod"]
    model = f"/{alice.name}/{v1.name}"
    assert first.headers["location"] == (
        f"/services/hubserve/api/models{model}/versions/{v1.version}"
    )

    # The same bundle again is harmless; the second version goes up as multipart.
    again = alice.upload(v1.data)
    assert again.status_code == 200, again.text
    assert again.json()["pushed_at"] == record["pushed_at"]
    second = alice.request("POST", files={"bundle": ("iris.tar.gz", v2.data, "application/gzip")})
    assert second.status_code == 201, second.text

    assert alice.request("GET").json() == [{"owner": alice.name, "name": v1.name}]
    detail = alice.request("GET", model).json()
    assert [v["version"] for v in detail["versions"]] == [v2.version, v1.version]
    assert detail["tags"] == {"latest": v2.version, "prod": v1.version}

    by_tag = alice.request("GET", f"{model}/versions/prod")
    assert by_tag.status_code == 200
    assert by_tag.json() == record | {"tags": ["prod"]}  # latest moved on to v2
    download = alice.request("GET", f"{model}/versions/latest/download")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/gzip"
    assert "attachment" in download.headers["content-disposition"]
    assert hashlib.sha256(download.content).hexdigest() == v2.sha256

    moved = alice.request("PUT", f"{model}/tags/prod", json={"version": v2.version})
    assert moved.status_code == 200, moved.text
    assert moved.json()["version"] == v2.version
    assert (
        alice.request("PUT", f"{model}/tags/latest", json={"version": v1.version}).status_code
        == 422
    )
    assert (
        alice.request("PUT", f"{model}/tags/old", json={"version": v1.version}).status_code == 200
    )
    assert alice.request("DELETE", f"{model}/tags/old").status_code == 204
    assert alice.request("DELETE", f"{model}/tags/old").status_code == 404

    assert alice.request("DELETE", f"{model}/versions/{v2.version}").status_code == 204
    detail = alice.request("GET", model).json()
    assert detail["tags"] == {"latest": v1.version}  # prod went with v2
    assert alice.request("GET", f"{model}/versions/{v2.version}").status_code == 404

    assert alice.request("DELETE", model).status_code == 204
    assert alice.request("GET", model).status_code == 404
    assert alice.request("GET").json() == []


# -- other users and admins ----------------------------------------------------------------------


def test_other_users_cannot_see_or_touch_a_model(
    alice: Caller, bob: Caller, v1: TestBundle
) -> None:
    assert alice.upload(v1.data, tag="prod").status_code == 201
    model = f"/{alice.name}/{v1.name}"
    assert bob.request("GET").json() == []
    assert bob.request("GET", params={"owner": alice.name}).json() == []
    for method, path in [
        ("GET", model),
        ("DELETE", model),
        ("GET", f"{model}/versions/{v1.version}"),
        ("GET", f"{model}/versions/prod/download"),
        ("DELETE", f"{model}/versions/{v1.version}"),
        ("DELETE", f"{model}/tags/prod"),
    ]:
        response = bob.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
    assert bob.request("PUT", f"{model}/tags/x", json={"version": "latest"}).status_code == 404
    as_alice = bob.upload(v1.data, owner=alice.name)
    assert as_alice.status_code == 403
    # All still there for alice.
    assert alice.request("GET", model).json()["tags"] == {"latest": v1.version, "prod": v1.version}


def test_admin_sees_and_manages_everything(
    hub: Hub, admin: Caller, alice: Caller, v1: TestBundle
) -> None:
    carol = hub.create_user("carol")
    assert alice.upload(v1.data).status_code == 201
    everything = admin.request("GET").json()
    assert {"owner": alice.name, "name": v1.name} in everything
    assert admin.request("GET", params={"owner": alice.name}).json() == [
        {"owner": alice.name, "name": v1.name}
    ]

    for_carol = admin.upload(v1.data, owner=carol, tag="prod")
    assert for_carol.status_code == 201, for_carol.text
    assert (for_carol.json()["owner"], for_carol.json()["pushed_by"]) == (carol, ADMIN_USER)
    carols = caller(hub, carol)
    assert carols.request("GET").json() == [{"owner": carol, "name": v1.name}]

    model = f"/{alice.name}/{v1.name}"
    assert admin.request("GET", f"{model}/versions/latest").json()["version"] == v1.version
    download = admin.request("GET", f"{model}/versions/{v1.version}/download")
    assert hashlib.sha256(download.content).hexdigest() == v1.sha256
    tag = admin.request("PUT", f"{model}/tags/reviewed", json={"version": "latest"})
    assert tag.status_code == 200
    assert admin.request("DELETE", model).status_code == 204
    assert alice.request("GET", model).status_code == 404
    assert admin.request("DELETE", f"/{carol}/{v1.name}").status_code == 204


# -- bad uploads -----------------------------------------------------------------------------


def test_oversize_upload_is_413(alice: Caller) -> None:
    response = alice.upload(b"\0" * (MAX_UPLOAD + 1))
    assert response.status_code == 413
    assert str(MAX_UPLOAD) in response.json()["detail"]
    assert alice.request("GET").json() == []


def _hostile_archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in [
            ("bundle.json", b'{"name": "evil", "version": "20260101T000000000Z-deadbeef"}'),
            ("../../outside.py", b"print('escaped')"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("artifacts/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "body",
    [b"garbage, not an archive", gzip.compress(b"not a tar"), _hostile_archive()],
    ids=["garbage", "gzip-not-tar", "hostile"],
)
def test_bad_archives_are_422_and_leave_nothing(alice: Caller, body: bytes) -> None:
    response = alice.upload(body)
    assert response.status_code == 422, response.text
    assert "Traceback" not in response.text
    assert alice.request("GET").json() == []


def test_same_version_with_other_bytes_is_409(alice: Caller, v1: TestBundle) -> None:
    assert alice.upload(v1.data).status_code == 201
    other = gzip.compress(gzip.decompress(v1.data), compresslevel=1, mtime=1)
    conflict = alice.upload(other)
    assert conflict.status_code == 409
    stored = alice.request("GET", f"/{alice.name}/{v1.name}/versions/{v1.version}").json()
    assert stored["archive_sha256"] == v1.sha256


def test_an_upload_broken_off_leaves_nothing(hub: Hub, alice: Caller, v1: TestBundle) -> None:
    data = v1.data
    url = urlsplit(hub.service_url)
    head = (
        f"POST {url.path}/api/models HTTP/1.1\r\n"
        f"Host: {url.netloc}\r\n"
        f"Authorization: token {alice.token}\r\n"
        "Content-Type: application/gzip\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname or "127.0.0.1", url.port or 80)) as sock:
        sock.sendall(head + data[: len(data) // 2])
        time.sleep(0.5)
    time.sleep(0.5)
    assert alice.request("GET").json() == []
    assert alice.upload(data).status_code == 201  # and the service is fine
