"""The model store, on both backends: a local directory and a real S3 server."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from model_runtime import NotFoundError, Store, load_bundle
from model_runtime.errors import InvalidNameError, VersionExistsError
from model_runtime.naming import ModelRef

from .conftest import make_bundle


def test_push_list_stat_pull(store: Store, tmp_path: Path) -> None:
    built = make_bundle(tmp_path)
    progress: list[tuple[int, int]] = []

    record = store.push(built.archive, owner="alice", progress=lambda d, t: progress.append((d, t)))

    assert record.ref == f"alice/adder:{built.manifest.version}"
    assert record.archive_size == built.archive.stat().st_size
    assert progress and progress[-1] == (record.archive_size, record.archive_size)
    assert [(m.owner, m.name) for m in store.list_models()] == [("alice", "adder")]
    assert store.list_models("bob") == []
    (summary,) = store.list_versions("alice", "adder")
    assert (summary.version, summary.tags, summary.size) == (
        record.version,
        ["latest"],
        record.archive_size,
    )
    assert store.stat("alice/adder").manifest == built.manifest
    assert store.stat(f"alice/adder:{record.version}").version == record.version

    pulled = store.pull("alice/adder:latest", cache_dir=tmp_path / "cache")
    assert pulled.record == store.stat("alice/adder")
    assert load_bundle(pulled.path).call("add", 41) == 42
    # A second pull is served from the cache.
    assert store.pull("alice/adder", cache_dir=tmp_path / "cache").path == pulled.path


def test_versions_newest_first_and_latest_moves_forward(store: Store, tmp_path: Path) -> None:
    first = make_bundle(tmp_path, offset=1)
    second = make_bundle(tmp_path, offset=2)
    assert first.manifest.version < second.manifest.version

    store.push(second.archive, owner="alice")
    store.push(first.archive, owner="alice")  # older version pushed last

    versions = store.list_versions("alice", "adder")
    assert [v.version for v in versions] == [second.manifest.version, first.manifest.version]
    assert store.resolve("alice/adder").selector == second.manifest.version
    assert store.tags("alice", "adder") == {"latest": second.manifest.version}


def test_tags_move_and_resolve(store: Store, tmp_path: Path) -> None:
    one = store.push(make_bundle(tmp_path, offset=1).archive, owner="alice", tags=["prod"])
    two = store.push(make_bundle(tmp_path, offset=2).archive, owner="alice")

    assert store.resolve("alice/adder:prod") == ModelRef("alice", "adder", one.version)
    store.set_tag(f"alice/adder:{two.version}", "prod")
    assert store.stat("alice/adder:prod").version == two.version
    store.set_tag("alice/adder:prod", "stable")
    assert store.tags("alice", "adder") == {
        "latest": two.version,
        "prod": two.version,
        "stable": two.version,
    }
    store.delete_tag("alice", "adder", "stable")
    with pytest.raises(NotFoundError, match="has no tag 'stable'"):
        store.stat("alice/adder:stable")
    with pytest.raises(NotFoundError, match="has no tag 'stable'"):
        store.delete_tag("alice", "adder", "stable")
    with pytest.raises(InvalidNameError):
        store.set_tag("alice/adder:prod", "../escape")
    with pytest.raises(InvalidNameError, match="'latest' is managed by the store"):
        store.set_tag(f"alice/adder:{one.version}", "latest")


def test_versions_are_immutable_and_pushes_idempotent(store: Store, tmp_path: Path) -> None:
    built = make_bundle(tmp_path)
    first = store.push(built.archive, owner="alice")
    again = store.push(built.archive, owner="alice")
    assert again == first

    # The same version with other bytes (here: the store's record says so) is refused.
    key = f"models/alice/adder/{built.manifest.version}/bundle.json"
    record = store.objects.get_bytes(key)
    store.objects.put_bytes(key, record.replace(first.archive_sha256.encode(), b"0" * 64))
    with pytest.raises(VersionExistsError, match="already exists with different content"):
        store.push(built.archive, owner="alice")


def test_delete_version_and_model(store: Store, tmp_path: Path) -> None:
    one = store.push(make_bundle(tmp_path, offset=1).archive, owner="alice", tags=["prod"])
    two = store.push(make_bundle(tmp_path, offset=2).archive, owner="alice")

    store.delete_version("alice", "adder", two.version)
    assert [v.version for v in store.list_versions("alice", "adder")] == [one.version]
    assert store.tags("alice", "adder") == {"latest": one.version, "prod": one.version}
    with pytest.raises(NotFoundError, match="not found"):
        store.stat(f"alice/adder:{two.version}")
    with pytest.raises(NotFoundError):
        store.delete_version("alice", "adder", two.version)

    assert store.delete_model("alice", "adder") == 1
    assert store.list_versions("alice", "adder") == []
    assert store.list_models("alice") == []
    with pytest.raises(NotFoundError, match="model alice/adder not found"):
        store.stat("alice/adder")
    with pytest.raises(NotFoundError):
        store.delete_model("alice", "adder")


def test_owners_are_separate(store: Store, tmp_path: Path) -> None:
    store.push(make_bundle(tmp_path, offset=1).archive, owner="alice")
    store.push(make_bundle(tmp_path, offset=2).archive, owner="bob@example.org")

    assert {(m.owner, m.name) for m in store.list_models()} == {
        ("alice", "adder"),
        ("bob@example.org", "adder"),
    }
    assert [m.owner for m in store.list_models("bob@example.org")] == ["bob@example.org"]
    assert (
        store.stat("bob@example.org/adder").manifest.version
        != store.stat("alice/adder").manifest.version
    )


def test_bad_names_are_refused(store: Store, tmp_path: Path) -> None:
    built = make_bundle(tmp_path)
    with pytest.raises(InvalidNameError, match="invalid owner"):
        store.push(built.archive, owner="../../etc")
    with pytest.raises(InvalidNameError, match="invalid model name"):
        store.stat("alice/Bad Name")
    with pytest.raises(InvalidNameError, match="invalid reference"):
        store.stat("adder")


class _Interrupted(Exception):
    pass


def test_interrupted_push_leaves_nothing_visible(store: Store, tmp_path: Path) -> None:
    """A push cut mid-stream (the user hits stop): no version, and the next push works."""
    built = make_bundle(tmp_path, size=40 * 1024 * 1024)

    def cut(done: int, total: int) -> None:
        if done > total // 3:
            raise _Interrupted

    with pytest.raises(_Interrupted):
        store.push(built.archive, owner="alice", progress=cut)
    assert store.list_versions("alice", "adder") == []
    with pytest.raises(NotFoundError):
        store.stat("alice/adder")

    record = store.push(built.archive, owner="alice")
    assert store.list_versions("alice", "adder")[0].version == record.version


def test_concurrent_pushes_produce_distinct_versions(store: Store, tmp_path: Path) -> None:
    bundles = [make_bundle(tmp_path, offset=i) for i in range(6)]
    errors: list[BaseException] = []

    def push(i: int) -> None:
        try:
            store.push(bundles[i].archive, owner="alice")
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(bundles))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    versions = [v.version for v in store.list_versions("alice", "adder")]
    assert sorted(versions, reverse=True) == versions
    assert set(versions) == {b.manifest.version for b in bundles}
    assert store.resolve("alice/adder").selector == max(versions)


def test_garbage_collection_removes_uncommitted_archives(store: Store, tmp_path: Path) -> None:
    built = make_bundle(tmp_path)
    orphan = f"models/alice/adder/{built.manifest.version}/bundle.tar.gz"
    store.objects.put_file(orphan, built.archive)  # as a push that died before committing

    assert store.list_versions("alice", "adder") == []
    assert store.collect_garbage(older_than=timedelta(hours=1)) == []
    assert store.collect_garbage(older_than=timedelta(seconds=-1)) == [orphan]
    assert not store.objects.exists(orphan)


def test_corrupted_archive_in_the_store_is_detected(store: Store, tmp_path: Path) -> None:
    record = store.push(make_bundle(tmp_path).archive, owner="alice")
    key = f"models/alice/adder/{record.version}/bundle.tar.gz"
    store.objects.put_bytes(key, b"not the archive")

    with pytest.raises(Exception, match="does not match its record"):
        store.pull("alice/adder", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "bundles" / "alice" / "adder" / record.version).exists()
