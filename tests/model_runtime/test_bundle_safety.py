"""Untrusted archives: everything hostile is refused with a clear error, nothing is left behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest

from model_runtime import BundleError, LocalStore, UnsafeBundleError, load_bundle
from model_runtime.bundle import Limits, extract_archive, verify_archive

SERVICE = b"from model_runtime import api\n@api\ndef hello(name: str) -> str:\n    return name\n"


def manifest_for(contents: dict[str, bytes], **overrides: object) -> bytes:
    manifest = {
        "name": "evil",
        "version": "20261125T120000000Z-0badc0de",
        "created_at": datetime(2026, 11, 25, tzinfo=timezone.utc).isoformat(),
        "entrypoint": "service.py:",
        "source": "directory",
        "apis": [
            {
                "name": "hello",
                "function": "hello",
                "input": {"kind": "text"},
                "output": {"kind": "text"},
            }
        ],
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
    }
    manifest.update(overrides)
    return json.dumps(manifest).encode()


def write_tar(path: Path, add: Callable[[tarfile.TarFile], None]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    tar.addfile(info)


def good_bundle(tar: tarfile.TarFile) -> None:
    add_bytes(tar, "bundle.json", manifest_for({"service.py": SERVICE}))
    add_bytes(tar, "service.py", SERVICE)


def with_extra(extra: Callable[[tarfile.TarFile], None]) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        good_bundle(tar)
        extra(tar)

    return add


def test_a_well_formed_archive_loads(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "ok.tar.gz", good_bundle)
    assert load_bundle(archive).call("hello", "hub") == "hub"


HOSTILE: list[tuple[str, Callable[[tarfile.TarFile], None], str]] = [
    (
        "traversal",
        with_extra(lambda t: add_bytes(t, "../../etc/cron.d/x", b"x")),
        "escapes the bundle",
    ),
    (
        "nested traversal",
        with_extra(lambda t: add_bytes(t, "artifacts/../../x", b"x")),
        "escapes the bundle",
    ),
    ("absolute path", with_extra(lambda t: add_bytes(t, "/etc/passwd", b"x")), "absolute path"),
    (
        "symlink out",
        with_extra(lambda t: add_special(t, "artifacts/w", tarfile.SYMTYPE, "/etc/passwd")),
        "points outside the bundle",
    ),
    (
        "relative symlink out",
        with_extra(lambda t: add_special(t, "artifacts/w", tarfile.SYMTYPE, "../../../etc/shadow")),
        "points outside the bundle",
    ),
    (
        "symlink inside",
        with_extra(lambda t: add_special(t, "alias.py", tarfile.SYMTYPE, "service.py")),
        "may not hold links",
    ),
    (
        "hard link out",
        with_extra(lambda t: add_special(t, "h", tarfile.LNKTYPE, "../outside")),
        "points outside the bundle",
    ),
    ("device", with_extra(lambda t: add_special(t, "dev", tarfile.CHRTYPE)), "device or FIFO"),
    ("fifo", with_extra(lambda t: add_special(t, "pipe", tarfile.FIFOTYPE)), "device or FIFO"),
    (
        "duplicate",
        with_extra(lambda t: add_bytes(t, "service.py", b"import os\n")),
        "appears twice",
    ),
    ("backslash", with_extra(lambda t: add_bytes(t, "..\\..\\x", b"x")), "invalid name"),
    (
        "unlisted file",
        with_extra(lambda t: add_bytes(t, "extra.py", b"import os\n")),
        "not listed in the manifest",
    ),
    (
        "tampered file",
        lambda t: (
            add_bytes(t, "bundle.json", manifest_for({"service.py": SERVICE})),
            add_bytes(t, "service.py", SERVICE + b"import os\n"),
        ),
        "checksum mismatch for 'service.py'",
    ),
    (
        "missing file",
        lambda t: add_bytes(t, "bundle.json", manifest_for({"service.py": SERVICE})),
        "'service.py' listed in the manifest is missing",
    ),
    ("no manifest", lambda t: add_bytes(t, "service.py", SERVICE), "has no bundle.json"),
    ("manifest not json", lambda t: add_bytes(t, "bundle.json", b"{nope"), "not valid JSON"),
    (
        "manifest wrong shape",
        lambda t: add_bytes(t, "bundle.json", b'{"name": 1}'),
        "not a valid bundle manifest",
    ),
    (
        "manifest lists traversal",
        lambda t: add_bytes(t, "bundle.json", manifest_for({}, files={"../x": "0" * 64})),
        "not a relative path",
    ),
    (
        "future format",
        lambda t: add_bytes(t, "bundle.json", manifest_for({}, format_version=99)),
        "newer than this hubserve",
    ),
    (
        "huge manifest",
        lambda t: add_bytes(t, "bundle.json", b" " * (16 * 1024 * 1024 + 1)),
        "too large",
    ),
    (
        "windows drive",
        with_extra(lambda t: add_bytes(t, "C:/Windows/System32/evil.dll", b"x")),
        "absolute path",
    ),
    ("drive-relative", with_extra(lambda t: add_bytes(t, "C:evil.py", b"x")), "absolute path"),
    (
        "hard link inside",
        with_extra(lambda t: add_special(t, "alias.py", tarfile.LNKTYPE, "service.py")),
        "may not hold links",
    ),
    (
        "block device",
        with_extra(lambda t: add_special(t, "disk", tarfile.BLKTYPE)),
        "device or FIFO",
    ),
    (
        "deeply nested manifest",
        lambda t: add_bytes(t, "bundle.json", b"[" * 100_000 + b"]" * 100_000),
        "nested too deeply",
    ),
    (
        "manifest with a bad checksum",
        lambda t: add_bytes(t, "bundle.json", manifest_for({}, files={"service.py": "x" * 64})),
        "invalid sha256",
    ),
    (
        "manifest lists a windows path",
        lambda t: add_bytes(t, "bundle.json", manifest_for({}, files={"C:/x": "0" * 64})),
        "not a relative path",
    ),
    (
        "artifact outside the bundle",
        lambda t: add_bytes(
            t,
            "bundle.json",
            manifest_for({}, models=[{"name": "w", "format": "npy", "path": "../../etc/w.npy"}]),
        ),
        "artifact path '../../etc/w.npy' is not a relative path",
    ),
]


@pytest.mark.parametrize(
    ("build", "message"), [(b, m) for _, b, m in HOSTILE], ids=[name for name, _, _ in HOSTILE]
)
def test_hostile_archives_are_refused(
    tmp_path: Path, build: Callable[[tarfile.TarFile], None], message: str
) -> None:
    archive = write_tar(tmp_path / "evil.tar.gz", build)
    dest = tmp_path / "out" / "bundle"

    with pytest.raises(BundleError, match=message):
        verify_archive(archive)
    with pytest.raises(BundleError, match=message):
        extract_archive(archive, dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary left behind
    assert not (tmp_path.parent / "etc").exists()


def test_size_caps_stop_tar_bombs(tmp_path: Path) -> None:
    big = b"\0" * 4096
    archive = write_tar(
        tmp_path / "bomb.tar.gz",
        lambda t: (
            add_bytes(t, "bundle.json", manifest_for({"a": big, "b": big})),
            add_bytes(t, "a", big),
            add_bytes(t, "b", big),
        ),
    )

    with pytest.raises(UnsafeBundleError, match="over the 1000-byte limit"):
        verify_archive(archive, Limits(max_member_bytes=1000))
    with pytest.raises(UnsafeBundleError, match="expands to more than 6000 bytes"):
        verify_archive(archive, Limits(max_total_bytes=6000))
    with pytest.raises(UnsafeBundleError, match="more than 2 members"):
        verify_archive(archive, Limits(max_members=2))
    # The defaults accept it: a bomb is about the caps, not about zeros.
    assert verify_archive(archive).name == "evil"


def test_gzip_bomb_is_stopped_by_the_declared_sizes(tmp_path: Path) -> None:
    """1 GiB of zeros compresses to ~1 MiB; the cap trips before anything is written."""
    archive = tmp_path / "zeros.tar.gz"
    with gzip.open(archive, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        add_bytes(tar, "bundle.json", manifest_for({}))
        info = tarfile.TarInfo("artifacts/zeros.bin")
        info.size = 1024**3
        tar.addfile(info, _Zeros(info.size))
    assert archive.stat().st_size < 8 * 1024**2

    with pytest.raises(UnsafeBundleError, match="over the"):
        extract_archive(archive, tmp_path / "x", Limits(max_member_bytes=64 * 1024**2))
    assert not (tmp_path / "x").exists()


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = b"\0" * n
        self.left -= n
        return n


@pytest.mark.parametrize("cut", [0.3, 0.9])
def test_truncated_archives_are_refused(tmp_path: Path, cut: float) -> None:
    archive = write_tar(
        tmp_path / "ok.tar.gz",
        with_extra(lambda t: add_bytes(t, "artifacts/w.bin", bytes(range(256)) * 400)),
    )
    data = archive.read_bytes()
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(data[: int(len(data) * cut)])

    with pytest.raises(BundleError):
        extract_archive(truncated, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "notes.tar.gz"
    path.write_text("hello")
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load_bundle(path)


def test_an_unpacked_bundle_loads_again_after_python_cached_its_bytecode(tmp_path: Path) -> None:
    """Replicas share one unpacked copy; the first import writes ``__pycache__`` into it."""
    target = tmp_path / "unpacked"
    extract_archive(write_tar(tmp_path / "ok.tar.gz", good_bundle), target)
    cache = target / "__pycache__"
    cache.mkdir()
    (cache / "service.cpython-311.pyc").write_bytes(b"bytecode")
    assert load_bundle(target).call("hello", "hub") == "hub"
    (target / "notes.txt").write_text("not in the manifest")
    with pytest.raises(BundleError, match="not listed in the manifest"):
        load_bundle(target)


def test_a_member_declaring_a_terabyte_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    """The header alone (no data follows) trips the per-member cap: nothing is inflated."""
    info = tarfile.TarInfo("artifacts/huge.bin")
    info.size = 1024**4
    archive = tmp_path / "huge.tar.gz"
    with gzip.open(archive, "wb") as gz:
        gz.write(info.tobuf(tarfile.GNU_FORMAT))
    with pytest.raises(UnsafeBundleError, match="over the 17179869184-byte limit"):
        extract_archive(archive, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_zstd_archive_is_refused_as_unreadable(tmp_path: Path) -> None:
    """Bundles are gzip only: a zstd frame (magic number, then data) is not read at all."""
    archive = tmp_path / "bundle.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(64)))
    with pytest.raises(BundleError, match="not a readable bundle archive"):
        load_bundle(archive, cache_dir=tmp_path / "cache")


# -- artifacts that would run code ------------------------------------------------------------


class _Payload:
    """Unpickling this creates ``marker``: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))


def _pickle_payload(path: Path, marker: Path) -> dict[str, object]:
    import pickle

    path.write_bytes(pickle.dumps(_Payload(marker)))
    return {"format": "pickle", "framework": "python"}


def _torch_payload(path: Path, marker: Path) -> dict[str, object]:
    import torch

    torch.save({"weights": _Payload(marker)}, path)
    return {"format": "pickle", "framework": "pytorch"}


def _npy_payload(path: Path, marker: Path) -> dict[str, object]:
    import numpy as np

    array = np.empty(1, dtype=object)
    array[0] = _Payload(marker)
    with path.open("wb") as fh:
        np.save(fh, array, allow_pickle=True)
    return {"format": "npy"}  # claims to be a plain array


def _torchscript_payload(path: Path, marker: Path) -> dict[str, object]:
    import torch

    torch.save(_Payload(marker), path)  # a plain pickle, not TorchScript
    return {"format": "torchscript"}


def _class_payload(path: Path, marker: Path) -> dict[str, object]:
    """Weights are fine; the class to rebuild is a command runner, its kwargs a command."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(path))
    return {
        "format": "safetensors",
        "class": "subprocess:Popen",
        "init_kwargs": {"args": ["touch", str(marker)]},
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_pickle_payload, "is a pickle, which can run arbitrary code"),
        (_torch_payload, "is a pickle, which can run arbitrary code"),
        (_npy_payload, "Object arrays cannot be loaded when allow_pickle=False"),
        (_torchscript_payload, "failed to run"),
        (_class_payload, "subprocess:Popen is not a torch module class"),
    ],
    ids=["pickle", "torch.save", "npy of objects", "pickle posing as torchscript", "class"],
)
def test_artifacts_that_would_run_code_are_refused_without_trust_pickle(
    tmp_path: Path, make: Callable[[Path, Path], dict[str, object]], message: str
) -> None:
    marker = tmp_path / "pwned"
    weights = tmp_path / "w.bin"
    entry = {"name": "net", "path": "artifacts/w.bin", **make(weights, marker)}
    service = SERVICE + b"from model_runtime import load_model\nnet = load_model('net', __file__)\n"
    contents = {"service.py": service, "artifacts/w.bin": weights.read_bytes()}

    def bundle(tar: tarfile.TarFile) -> None:
        add_bytes(tar, "bundle.json", manifest_for(contents, models=[entry]))
        for name, data in contents.items():
            add_bytes(tar, name, data)

    archive = write_tar(tmp_path / "payload.tar.gz", bundle)
    with pytest.raises(BundleError, match=message):
        load_bundle(archive, cache_dir=tmp_path / "cache")
    assert not marker.exists(), "the artifact ran code"


def test_the_store_refuses_a_hostile_archive_before_writing_anything(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    archive = write_tar(
        tmp_path / "evil.tar.gz", with_extra(lambda t: add_bytes(t, "../../x", b"x"))
    )
    with pytest.raises(UnsafeBundleError, match="escapes the bundle"):
        store.push(archive, owner="mallory")
    assert store.list_models(owner="mallory") == []
    assert not (tmp_path / "x").exists()
