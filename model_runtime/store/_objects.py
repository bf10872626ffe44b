"""Object backends: the few primitive operations the store is built on.

The store's logic (layout, commit-last, tags) is written once in :mod:`._store` against this
small interface, in the spirit of httpx's transports: a directory on disk and an S3 bucket are
two implementations, and tests can add their own. Each backend turns its native errors into
:mod:`model_runtime.errors` classes with messages that never include credentials.
"""

from __future__ import annotations

import errno
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import NotFoundError, StoreAuthError, StoreError, StoreUnavailableError

#: ``progress(done_bytes, total_bytes)``
ProgressCallback = Callable[[int, int], None]

_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    last_modified: datetime


class ObjectBackend(ABC):
    """Keys are ``/``-separated strings; ``put_*`` must be atomic (all or nothing visible)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the objects are, for messages (never with credentials)."""

    @abstractmethod
    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def get_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        """Download to ``dest`` (written in place; callers use a temporary name)."""

    @abstractmethod
    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (recursive)."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Immediate "sub-directories" of ``prefix`` (ending in ``/``) that hold objects."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing one is not an error."""

    def exists(self, key: str) -> bool:
        try:
            self.get_bytes(key)
        except NotFoundError:
            return False
        return True


class LocalObjects(ObjectBackend):
    """Objects as files under ``root``; atomic through write-to-temporary-then-rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _write_atomically(self, key: str, write: Callable[[int], None]) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        except OSError as exc:
            raise _local_error(exc, self.root) from None
        try:
            write(fd)
            Path(tmp).replace(target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise _local_error(exc, self.root) from None
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        total = path.stat().st_size

        def write(fd: int) -> None:
            done = 0
            with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                dst.flush()
                os.fsync(dst.fileno())

        self._write_atomically(key, write)

    def put_bytes(self, key: str, data: bytes) -> None:
        def write(fd: int) -> None:
            with os.fdopen(fd, "wb") as dst:
                dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())

        self._write_atomically(key, write)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFoundError(f"{key} not found in {self.root}") from None
        except OSError as exc:
            raise _local_error(exc, self.root) from None

    def get_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        src = self._path(key)
        try:
            total = src.stat().st_size
            done = 0
            with src.open("rb") as fin, dest.open("wb") as fout:
                while chunk := fin.read(_CHUNK):
                    fout.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (FileNotFoundError, NotADirectoryError):
            if not src.exists():
                raise NotFoundError(f"{key} not found in {self.root}") from None
            raise
        except OSError as exc:
            raise _local_error(exc, dest.parent) from None

    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        base_key, _, _ = prefix.rpartition("/")
        base = self._path(base_key) if base_key else self.root
        if not base.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue  # temporaries of writes in progress
                path = Path(dirpath) / fname
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted while listing
                modified = datetime.fromtimestamp(st.st_mtime, timezone.utc)
                yield ObjectInfo(key, st.st_size, modified)

    def list_children(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        try:
            return sorted(
                p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise _local_error(exc, self.root) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _local_error(exc, self.root) from None
        # Prune directories left empty, up to the root.
        parent = path.parent
        while parent != self.root and parent.is_relative_to(self.root):
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _local_error(exc: OSError, where: Path) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"no space left on the device holding {where}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreAuthError(f"permission denied writing to {where}")
    return StoreUnavailableError(f"cannot use the store at {where}: {exc.strerror or exc}")
