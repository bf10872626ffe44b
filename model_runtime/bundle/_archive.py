"""Writing bundle archives, and reading untrusted ones safely.

An archive is a gzip-compressed tar with ``bundle.json`` first and every other file after it,
in sorted order, with fixed owners and times: packaging the same directory twice gives the
same bytes. Archives come from other users and from the network, so reading one treats every
member as hostile until checked:

* names must be relative (no drive letter either), without ``..``, backslashes or NUL
  bytes, and unique;
* only regular files and directories are accepted: links (inside or leaving the tree),
  devices and FIFOs are refused;
* every member, the total size and the member count are capped (tar and gzip bombs);
* every file must be listed in the manifest with a matching sha256, and nothing may be missing.

Extraction writes into a temporary sibling directory and renames it into place only when all
checks passed, so a failed extraction leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from ..errors import BundleError, UnsafeBundleError
from ._manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, BundleManifest, parse_manifest

_CHUNK = 1024 * 1024
#: Compression level 1: model weights barely compress, and level 6 is ~4x slower on them.
COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class Limits:
    """Caps applied when reading an archive; raise them for very large models."""

    max_member_bytes: int = 16 * 1024**3
    max_total_bytes: int = 32 * 1024**3
    max_members: int = 10_000


DEFAULT_LIMITS = Limits()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(directory: Path, manifest: BundleManifest, dest: Path) -> None:
    """Archive ``directory`` (whose files the manifest lists) to ``dest``, atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    mtime = int(manifest.created_at.timestamp())
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=COMPRESS_LEVEL, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            data = manifest.to_json_bytes()
            tar.addfile(_file_info(MANIFEST_NAME, len(data), mtime), io.BytesIO(data))
            for rel in sorted(manifest.files):
                path = directory / rel
                with path.open("rb") as fh:
                    tar.addfile(_file_info(rel, path.stat().st_size, mtime), fh)
        Path(tmp_name).replace(dest)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _file_info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_name(member: tarfile.TarInfo) -> str:
    name = member.name
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeBundleError(f"archive member {name!r} has an invalid name")
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).drive:  # "/etc", "C:/Windows", "C:x"
        raise UnsafeBundleError(f"archive member {name!r} is an absolute path")
    if ".." in pure.parts:
        raise UnsafeBundleError(f"archive member {name!r} escapes the bundle directory ('..')")
    return str(pure)


def _check_type(member: tarfile.TarInfo, name: str) -> None:
    if member.issym() or member.islnk():
        kind = "symlink" if member.issym() else "hard link"
        base = PurePosixPath(name).parent if member.issym() else PurePosixPath()
        target = PurePosixPath(os.path.normpath(base / member.linkname))
        if PurePosixPath(member.linkname).is_absolute() or target.parts[:1] == ("..",):
            raise UnsafeBundleError(
                f"{kind} {name!r} -> {member.linkname!r} points outside the bundle"
            )
        raise UnsafeBundleError(
            f"{kind} {name!r} -> {member.linkname!r}: bundles may not hold links"
        )
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeBundleError(f"archive member {name!r} is a device or FIFO")
    if not (member.isreg() or member.isdir()):
        raise UnsafeBundleError(f"archive member {name!r} is not a regular file or directory")


def _members(
    archive: Path, limits: Limits
) -> Iterator[tuple[str, tarfile.TarInfo, IO[bytes] | None]]:
    """Yield checked members in stream order; file objects are valid until the next item."""
    seen: set[str] = set()
    total = 0
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise UnsafeBundleError(f"archive has more than {limits.max_members} members")
                name = _check_name(member)
                _check_type(member, name)
                if name in seen:
                    raise UnsafeBundleError(f"archive member {name!r} appears twice")
                seen.add(name)
                if member.isdir():
                    yield name, member, None
                    continue
                if member.size > limits.max_member_bytes:
                    raise UnsafeBundleError(
                        f"archive member {name!r} is {member.size} bytes, over the"
                        f" {limits.max_member_bytes}-byte limit"
                    )
                if name == MANIFEST_NAME and member.size > MAX_MANIFEST_BYTES:
                    raise UnsafeBundleError(f"{MANIFEST_NAME} is {member.size} bytes: too large")
                total += member.size
                if total > limits.max_total_bytes:
                    raise UnsafeBundleError(
                        f"archive expands to more than {limits.max_total_bytes} bytes"
                    )
                yield name, member, tar.extractfile(member)
    except _READ_ERRORS as exc:
        raise _unreadable(archive, exc) from None


_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _unreadable(archive: Path, exc: BaseException) -> BundleError:
    return BundleError(f"{archive.name} is not a readable bundle archive ({exc})")


def _copy_hashing(src: IO[bytes], dst: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while chunk := src.read(_CHUNK):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest()


def _check_files(manifest: BundleManifest, digests: dict[str, str], origin: str) -> None:
    for rel, expected in manifest.files.items():
        actual = digests.get(rel)
        if actual is None:
            raise BundleError(f"{origin}: file {rel!r} listed in the manifest is missing")
        if actual != expected:
            raise BundleError(
                f"{origin}: checksum mismatch for {rel!r} (the bundle was modified or corrupted)"
            )
    extra = sorted(set(digests) - set(manifest.files))
    if extra:
        raise BundleError(f"{origin}: files not listed in the manifest: {', '.join(extra[:5])}")


def _scan(
    archive: Path, limits: Limits, open_dest: Callable[[str], IO[bytes]] | None
) -> BundleManifest:
    try:
        manifest, digests = _read_all(archive, limits, open_dest)
    except _READ_ERRORS as exc:  # raised while reading a member's data
        raise _unreadable(archive, exc) from None
    if manifest is None:
        raise BundleError(f"{archive.name} has no {MANIFEST_NAME}: not a hubserve bundle")
    _check_files(manifest, digests, archive.name)
    return manifest


def _read_all(
    archive: Path, limits: Limits, open_dest: Callable[[str], IO[bytes]] | None
) -> tuple[BundleManifest | None, dict[str, str]]:
    """Stream every member once: hash it, and write it out when extracting."""
    manifest: BundleManifest | None = None
    digests: dict[str, str] = {}
    for name, _member, fileobj in _members(archive, limits):
        if fileobj is None:
            if open_dest is not None:
                open_dest(name + "/")
            continue
        if name == MANIFEST_NAME:
            data = fileobj.read()
            manifest = parse_manifest(data, origin=f"{archive.name}: {MANIFEST_NAME}")
            if open_dest is not None:
                with open_dest(name) as out:
                    out.write(data)
            continue
        if open_dest is None:
            digests[name] = _copy_hashing(fileobj, None)
        else:
            with open_dest(name) as out:
                digests[name] = _copy_hashing(fileobj, out)
    return manifest, digests


def verify_archive(archive: Path, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """Check an archive completely without extracting it; return its manifest."""
    return _scan(archive, limits, None)


def read_archive_manifest(archive: Path, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """The manifest alone, without verifying the files (cheap: it is the first member)."""
    try:
        for name, _member, fileobj in _members(archive, limits):
            if name == MANIFEST_NAME and fileobj is not None:
                return parse_manifest(fileobj.read(), origin=f"{archive.name}: {MANIFEST_NAME}")
    except _READ_ERRORS as exc:
        raise _unreadable(archive, exc) from None
    raise BundleError(f"{archive.name} has no {MANIFEST_NAME}: not a hubserve bundle")


def extract_archive(archive: Path, dest: Path, limits: Limits = DEFAULT_LIMITS) -> BundleManifest:
    """Verify and extract ``archive`` into ``dest`` (which must not exist yet)."""
    if dest.exists():
        raise BundleError(f"cannot extract into {dest}: it already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))

    def open_dest(rel: str) -> IO[bytes]:
        target = tmp / rel
        if rel.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            return io.BytesIO()
        target.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL + O_NOFOLLOW: never write through something that is already there.
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        return os.fdopen(fd, "wb")

    try:
        manifest = _scan(archive, limits, open_dest)
        tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BundleError(
            f"cannot extract {archive.name} into {dest.parent}: {exc.strerror or exc}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def directory_digests(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under ``directory`` except the manifest; no links."""
    digests: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if path.is_symlink():
            raise UnsafeBundleError(f"{directory}: {rel!r} is a link; bundles may not hold links")
        if path.is_file() and rel != MANIFEST_NAME:
            digests[rel] = sha256_file(path)
    return digests


def verify_directory(directory: Path, manifest: BundleManifest) -> None:
    """Check an unpacked bundle against its manifest (tampering, partial copies).

    Bytecode caches that Python wrote when an earlier process imported the bundle's modules
    (``__pycache__/*.pyc``, not in the manifest) are not the bundle's content: ignored.
    """
    digests = {
        rel: digest
        for rel, digest in directory_digests(directory).items()
        if rel in manifest.files or not _is_bytecode_cache(rel)
    }
    _check_files(manifest, digests, str(directory))


def _is_bytecode_cache(rel: str) -> bool:
    parts = rel.split("/")
    return len(parts) >= 2 and parts[-2] == "__pycache__" and parts[-1].endswith(".pyc")
