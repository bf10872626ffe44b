"""Property tests of the bundle reader: whatever the bytes, only a ``BundleError`` comes out.

Archives come from other users and the network. For any archive -- a valid one with its bytes
mutated, or one assembled from arbitrary members (names with ``..``, absolute paths,
backslashes, links, FIFOs, odd sizes) -- and any manifest JSON, reading either succeeds or
raises :class:`~model_runtime.BundleError`; extraction writes nothing outside its target and
leaves nothing behind when it fails. And what is written is what is read back: a round trip
preserves every file and checksum.

Examples are derandomized and not stored, so CI runs the same cases every time.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_runtime import BundleError
from model_runtime.bundle import BundleManifest, extract_archive, parse_manifest, verify_archive
from model_runtime.bundle._archive import write_archive

from .test_bundle_safety import SERVICE, manifest_for

PROPERTIES = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_SEGMENT = st.text(st.sampled_from("abcXYZ019_-."), min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..")
)
#: Relative paths a bundle may hold: one to three plain segments.
_PATHS = st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join)
_FILES = st.dictionaries(_PATHS, st.binary(max_size=2048), max_size=6).filter(
    lambda files: _no_prefix_clash(list(files)) and "bundle.json" not in files
)


def _no_prefix_clash(paths: list[str]) -> bool:
    """No path is also a directory of another (``a`` and ``a/b``): not a tree."""
    return not any(other.startswith(path + "/") for path in paths for other in paths)


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _outcome(read: Callable[[], Any]) -> Any:
    """The result of ``read``, or None when it refused with a BundleError (the only option)."""
    try:
        return read()
    except BundleError:
        return None


@PROPERTIES
@given(files=_FILES)
def test_a_round_trip_preserves_every_file_and_checksum(
    tmp_path_factory: Any, files: dict[str, bytes]
) -> None:
    tmp = tmp_path_factory.mktemp("roundtrip")
    source = tmp / "source"
    for rel, data in {"service.py": SERVICE, **files}.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    contents = {"service.py": SERVICE, **files}
    manifest = BundleManifest.model_validate(json.loads(manifest_for(contents)))
    write_archive(source, manifest, tmp / "b.tar.gz")

    assert verify_archive(tmp / "b.tar.gz") == manifest
    extracted = extract_archive(tmp / "b.tar.gz", tmp / "out")
    assert extracted.files == {rel: hashlib.sha256(d).hexdigest() for rel, d in contents.items()}
    for rel, data in contents.items():
        assert (tmp / "out" / rel).read_bytes() == data
    on_disk = {p.relative_to(tmp / "out").as_posix() for p in (tmp / "out").rglob("*")}
    assert {p for p in on_disk if (tmp / "out" / p).is_file()} == {*contents, "bundle.json"}


def _valid_archive() -> bytes:
    buffer = io.BytesIO()
    payload = bytes(range(256)) * 8
    contents = {"service.py": SERVICE, "artifacts/w.bin": payload}
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in [("bundle.json", manifest_for(contents)), *contents.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


VALID = _valid_archive()

#: (offset fraction, new byte) flips, and a cut: gzip/tar framing, headers and data all hit.
_MUTATIONS = st.tuples(
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4),
    st.one_of(st.none(), st.floats(0, 1)),
)


@PROPERTIES
@given(mutation=_MUTATIONS)
def test_a_mutated_archive_is_read_or_refused_never_anything_else(
    tmp_path_factory: Any, mutation: tuple[list[tuple[float, int]], float | None]
) -> None:
    flips, cut = mutation
    data = bytearray(VALID)
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        del data[int(cut * len(data)) :]
    tmp = tmp_path_factory.mktemp("mutated")
    archive = tmp / "m.tar.gz"
    archive.write_bytes(bytes(data))

    _check_reading(tmp, archive)


@st.composite
def _members(draw: Any) -> tuple[tarfile.TarInfo, bytes]:
    name = draw(
        st.one_of(
            _PATHS,
            st.sampled_from(["bundle.json", "service.py", "../x", "/etc/x", "a/../../x", "C:x"]),
            st.text(st.sampled_from("ab./\\:\x00"), min_size=1, max_size=6),
        )
    )
    kind = draw(
        st.sampled_from(
            [tarfile.REGTYPE] * 4
            + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE]
        )
    )
    data = draw(st.binary(max_size=64)) if kind == tarfile.REGTYPE else b""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.linkname = draw(st.sampled_from(["service.py", "../../etc/passwd", "/etc/passwd"]))
    return info, data


@PROPERTIES
@given(members=st.lists(_members(), max_size=6), manifest_first=st.booleans())
def test_an_archive_of_arbitrary_members_is_read_or_refused_never_escapes(
    tmp_path_factory: Any, members: list[tuple[tarfile.TarInfo, bytes]], manifest_first: bool
) -> None:
    tmp = tmp_path_factory.mktemp("members")
    archive = tmp / "a.tar.gz"
    regular = {i.name: d for i, d in members if i.type == tarfile.REGTYPE}
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        if manifest_first:
            data = manifest_for(regular)
            info = tarfile.TarInfo("bundle.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info, data in members:
            try:
                tar.addfile(info, io.BytesIO(data))
            except (ValueError, UnicodeError):  # a name tar itself cannot encode: not sent
                continue

    _check_reading(tmp, archive)


def _check_reading(tmp: Path, archive: Path) -> None:
    """Verify and extract: a manifest or a BundleError; nothing written outside the target."""
    before = _snapshot(tmp)
    verified = _outcome(lambda: verify_archive(archive))
    assert _snapshot(tmp) == before, "verifying wrote files"
    target = tmp / "out" / "bundle"
    extracted = _outcome(lambda: extract_archive(archive, target))
    assert (verified is None) == (extracted is None), "verify and extract disagree"
    created = _snapshot(tmp) - before
    if extracted is None:
        assert created <= {"out"}, created  # the parent, made for the target; nothing else
        assert not target.exists()
    else:
        inside = {f"out{os.sep}bundle", "out"}
        assert all(p in inside or p.startswith(f"out{os.sep}bundle{os.sep}") for p in created)
        assert not any(p.is_symlink() for p in target.rglob("*"))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
_FIELDS = st.sampled_from(
    ["name", "version", "created_at", "apis", "files", "models", "format_version", "entrypoint"]
)


@PROPERTIES
@given(
    overrides=st.dictionaries(_FIELDS, _JSON, max_size=3),
    raw=st.one_of(st.none(), st.binary(max_size=64), _JSON.map(lambda v: json.dumps(v).encode())),
)
def test_any_manifest_is_parsed_or_refused_with_a_bundle_error(
    overrides: dict[str, Any], raw: bytes | None
) -> None:
    """A valid manifest with fields replaced by arbitrary JSON, or arbitrary bytes."""
    if raw is None:
        base = json.loads(manifest_for({"service.py": SERVICE}))
        base["created_at"] = datetime(2026, 1, 1, tzinfo=timezone.utc).isoformat()
        raw = json.dumps({**base, **overrides}).encode()
    manifest = _outcome(lambda: parse_manifest(raw))
    assert manifest is None or isinstance(manifest, BundleManifest)
