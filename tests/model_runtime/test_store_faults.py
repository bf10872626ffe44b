"""The S3 server stops in the middle of store operations (a real SeaweedFS, really stopped).

Each test stops the server at a chosen moment of a push or a pull, checks the error is the
store's "unreachable" error and names the server (never its secret), that nothing half-done
is visible (no version, no cache entry that looks complete), and that the same call works
once the server is back on the same port and data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from model_runtime import S3Store, load_bundle
from model_runtime.errors import StoreUnavailableError
from model_runtime.store import ObjectBackend, ObjectInfo, ProgressCallback
from model_runtime.testing.s3server import S3Server

from .conftest import make_bundle

pytestmark = pytest.mark.s3


def s3_store(server: S3Server) -> S3Store:
    return S3Store(
        server.endpoint,
        "models",
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
    )


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_server_stopped_mid_upload(private_s3: S3Server, tmp_path: Path) -> None:
    """A graceful stop (SIGTERM) lands in the middle of a single-request upload of 6 MiB."""
    store = s3_store(private_s3)
    built = make_bundle(tmp_path, size=6 * 1024 * 1024)
    stopped = threading.Event()

    def stop_midway(done: int, total: int) -> None:
        if done > total // 3 and not stopped.is_set():
            stopped.set()
            private_s3.stop()

    with pytest.raises(StoreUnavailableError, match=f"cannot reach S3 at {private_s3.endpoint}"):
        store.push(built.archive, owner="alice", progress=stop_midway)
    assert stopped.is_set()

    private_s3.restart()
    assert store.list_versions("alice", "adder") == []
    assert store.list_models() == []
    record = store.push(built.archive, owner="alice")
    assert [v.version for v in store.list_versions("alice", "adder")] == [record.version]


class StopAfterArchive(ObjectBackend):
    """The store's own S3 backend, with the server stopped right after an archive is up:
    the moment between the archive and the record that commits it."""

    def __init__(self, inner: ObjectBackend, server: S3Server) -> None:
        self.inner = inner
        self.server = server

    def describe(self) -> str:
        return self.inner.describe()

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self.inner.put_file(key, path, progress)
        self.server.stop()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def get_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        self.inner.get_file(key, dest, progress)

    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        return self.inner.scan(prefix)

    def list_children(self, prefix: str) -> list[str]:
        return self.inner.list_children(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def test_server_stopped_before_the_commit(private_s3: S3Server, tmp_path: Path) -> None:
    store = s3_store(private_s3)
    built = make_bundle(tmp_path)
    store.objects = StopAfterArchive(store.objects, private_s3)

    with pytest.raises(StoreUnavailableError):
        store.push(built.archive, owner="alice")

    private_s3.restart()
    store = s3_store(private_s3)
    assert store.list_versions("alice", "adder") == []  # the archive is up, uncommitted
    orphans = store.collect_garbage(older_than=timedelta(0))
    assert orphans == [f"models/alice/adder/{built.manifest.version}/bundle.tar.gz"]
    record = store.push(built.archive, owner="alice")
    assert store.resolve("alice/adder").selector == record.version


def test_server_stopped_mid_download(private_s3: S3Server, tmp_path: Path) -> None:
    """The server dies while a 32 MiB archive streams into the cache: nothing is kept that a
    later pull could take for a complete bundle, and the next pull fetches it whole."""
    store = s3_store(private_s3)
    record = store.push(make_bundle(tmp_path, size=32 * 1024 * 1024).archive, owner="alice")
    cache = tmp_path / "cache"
    killed = threading.Event()

    def kill_midway(done: int, total: int) -> None:
        if done > total // 4 and not killed.is_set():
            killed.set()
            private_s3.kill()

    with pytest.raises(StoreUnavailableError) as info:
        store.pull(record.ref, cache_dir=cache, progress=kill_midway)
    assert killed.is_set()
    assert private_s3.endpoint in str(info.value)
    assert private_s3.secret_key not in str(info.value)
    assert files_under(cache) == []

    private_s3.restart()
    pulled = store.pull(record.ref, cache_dir=cache)
    assert load_bundle(pulled.path).call("add", 1) == 2
    assert not list((cache / "downloads").iterdir())
