"""S3 specifics against a real server: credentials, multipart, a server that dies mid-push."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from model_runtime import S3Store, build_bundle, load_bundle
from model_runtime.errors import StoreAuthError, StoreError, StoreUnavailableError
from model_runtime.testing.s3server import S3Server

from .conftest import S3Target, make_bundle
from .notebook import Notebook

pytestmark = pytest.mark.s3


def test_wrong_credentials_fail_cleanly(s3: S3Target, tmp_path: Path) -> None:
    good = s3.store()
    good.push(make_bundle(tmp_path).archive, owner="alice")
    bad = S3Store(
        s3.endpoint,
        good.bucket,
        access_key=s3.access_key,
        secret_key="not-the-secret",
        secure=s3.secure,
    )

    with pytest.raises(StoreAuthError, match="refused our credentials") as info:
        bad.list_versions("alice", "adder")
    assert "not-the-secret" not in str(info.value)
    with pytest.raises(StoreAuthError):
        bad.push(make_bundle(tmp_path, offset=2).archive, owner="alice")
    assert [v.version for v in good.list_versions("alice", "adder")] != []


def test_unreachable_server_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    store = S3Store(f"127.0.0.1:{port}", "models", access_key="a", secret_key="b", secure=False)

    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=f"cannot reach S3 at 127.0.0.1:{port}"):
        store.list_models()
    assert time.monotonic() - started < 10


def test_large_archive_goes_up_in_parts(s3: S3Target, tmp_path: Path) -> None:
    built = make_bundle(tmp_path, size=72 * 1024 * 1024)
    assert built.archive.stat().st_size > 64 * 1024 * 1024
    store = s3.store()
    updates: list[int] = []

    record = store.push(
        built.archive, owner="alice", progress=lambda done, total: updates.append(done)
    )

    assert len(updates) >= 4  # one update per 16 MiB part at least
    pulled = store.pull(record.ref, cache_dir=tmp_path / "cache")
    assert load_bundle(pulled.path).call("add", 1) == 2


def test_notebook_model_round_trip_through_s3(
    s3: S3Target, cnn_notebook: Notebook, tmp_path: Path
) -> None:
    """package -> push -> pull -> load gives bit-for-bit the notebook's outputs."""
    store = s3.store()
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path / "build")
    record = store.push(built.archive, owner="alice")
    pulled = store.pull("alice/cnn:latest", cache_dir=tmp_path / "cache")

    assert pulled.record.version == record.version == built.manifest.version
    served = load_bundle(pulled.path)
    x = np.random.default_rng(7).standard_normal((8, 1, 16, 16)).astype(np.float32)
    assert np.array_equal(served.call("predict", x), cnn_notebook["predict"](x))


def test_server_killed_mid_push_then_retry(private_s3: S3Server, tmp_path: Path) -> None:
    """The S3 server dies while a 72 MiB push is under way: a clear error, no half version."""
    store = S3Store(
        private_s3.endpoint,
        "models",
        access_key=private_s3.access_key,
        secret_key=private_s3.secret_key,
        secure=False,
    )
    store.push(make_bundle(tmp_path, offset=9).archive, owner="alice")  # an older version
    built = make_bundle(tmp_path, size=72 * 1024 * 1024)
    killed = threading.Event()

    def kill_midway(done: int, total: int) -> None:
        if done > total // 3 and not killed.is_set():
            killed.set()
            private_s3.kill()

    with pytest.raises(StoreError) as info:
        store.push(built.archive, owner="alice", progress=kill_midway)
    assert killed.is_set()
    assert isinstance(info.value, StoreUnavailableError)
    assert private_s3.secret_key not in str(info.value)

    private_s3.restart()
    versions = [v.version for v in store.list_versions("alice", "adder")]
    assert built.manifest.version not in versions
    record = store.push(built.archive, owner="alice")
    assert store.resolve("alice/adder").selector == record.version
    pulled = store.pull(record.ref, cache_dir=tmp_path / "cache")
    assert load_bundle(pulled.path).call("add", 1) == 2


def test_pull_while_server_is_down_leaves_no_cache_entry(
    private_s3: S3Server, tmp_path: Path
) -> None:
    store = S3Store(
        private_s3.endpoint,
        "models",
        access_key=private_s3.access_key,
        secret_key=private_s3.secret_key,
        secure=False,
    )
    record = store.push(make_bundle(tmp_path).archive, owner="alice")
    private_s3.stop()

    with pytest.raises(StoreUnavailableError):
        store.pull(record.ref, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "bundles").exists()

    private_s3.restart()
    assert store.pull(record.ref, cache_dir=tmp_path / "cache").record == record
