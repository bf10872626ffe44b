"""Where batch jobs read their input files and publish their output files.

A *location* is one directory-like place, named by a URI:

- a local directory: an absolute path (``/data/run1``) or ``file:///data/run1``. Relative
  paths are refused: a runtime's working directory means nothing to the caller. Where jobs
  are confined (``confine_links``), files are read and written only below where the directory
  led when the job was submitted: a file or folder in it that is a symbolic link out of it
  (made then or later) fails its item, as the link could lead to another user's files;
- an S3 prefix: ``s3://bucket/prefix``, reached with the runtime's :class:`S3Credentials`
  (the ``minio`` client). Nothing is created: a missing bucket is an error;
- a WebDAV collection: ``webdav://host:port/path`` (plain HTTP) or ``webdavs://...``
  (HTTPS), reached with ``webdav4``. Credentials come from the URI's userinfo
  (``webdav://user:password@host/path``, which wins) or from ``webdav_auth``.

Every location offers the same four operations on *relative POSIX paths* (``a/img1.fits``):
:meth:`Location.list_files` finds the input files (recursive, sorted, hidden ``.*`` files and
directories skipped, optionally filtered by an ``fnmatch`` pattern on the relative path, where
``*`` also matches ``/``), :meth:`Location.fetch` downloads one of them,
:meth:`Location.commit` publishes a local directory of results under a prefix, and
:meth:`Location.check` verifies, before a job is queued, that a location can be used.

Commits are atomic per file, so a reader (or a job that dies half-way) never sees a partial
file: a local file is written to a hidden temporary name in its target directory, flushed,
then renamed over the target with :func:`os.replace`; an S3 object only exists once its
single PUT or multipart upload completes; a WebDAV file is uploaded to a hidden temporary name
then ``MOVE``\\d onto its name. Temporary names start with ``.``, so they are never listed.

A runtime may confine jobs to *allowed* locations (:func:`check_allowed`). An allowed entry
may name its caller: ``{user}`` in its path (``/home/{user}``, ``s3://jobs/{user}``) stands
for the user a job is submitted for (:class:`JobCaller`), so one deployment shared by many
hub users gives each their own folder or prefix. Only a runtime that requires the gateway's
secret can know who calls (the gateway then says so in ``x-hubserve-user``, and nobody else
can reach the runtime); anywhere else, and for a call that names no user, such entries allow
nothing. A user name fills a path segment as it is, so only plain names are used: ASCII
letters, digits and ``. _ @ + -``, starting with a letter or a digit, without ``..``, at most
128 characters. Any other name (JupyterHub allows more) gets nothing from ``{user}`` entries
rather than an escaped form another user's name could collide with.

Errors are :class:`LocationError` (a ``ValueError``: a bad URI, a missing directory or file)
and its subclass :class:`LocationUnavailableError` for a location that cannot be used at all
any more (unreachable, credentials refused, bucket gone): a batch job records the former
against one item and goes on, but stops on the latter. Messages name the location with
:meth:`Location.describe`, which never contains credentials.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
import urllib3
from minio.error import MinioException, S3Error
from pydantic import AfterValidator
from webdav4.client import (
    BadGatewayError,
    ClientError,
    HTTPError,
    InsufficientStorage,
    IsAResourceError,
    ResourceAlreadyExists,
    ResourceNotFound,
)
from webdav4.client import Client as WebDAVClient
from webdav4.multistatus import MultiStatusResponseError

from ..errors import HubserveError
from ..s3 import (
    PART_SIZE,
    IncompleteDownload,
    LocalWriteError,
    S3Credentials,
    classify,
    download,
    make_client,
)

__all__ = [
    "USER_PLACEHOLDER",
    "JobCaller",
    "JobLocations",
    "Location",
    "LocationError",
    "LocationUnavailableError",
    "S3Credentials",
    "check_allowed",
    "check_allowed_entry",
    "open_location",
]

_CHUNK = 1024 * 1024
_HTTP_AUTH_STATUSES = {401, 403}
_HTTP_UNAVAILABLE_STATUSES = {502, 503, 504}
_WEBDAV_ERRORS = (
    ClientError,
    httpx.HTTPError,
    httpx.InvalidURL,
    MultiStatusResponseError,
    ET.ParseError,
    OSError,
)
_SCHEMES = "an absolute path, file://, s3://, webdav:// or webdavs://"

#: Stands for the calling user's name in an allowed location.
USER_PLACEHOLDER = "{user}"
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


class LocationError(HubserveError, ValueError):
    """A job location is malformed, missing, or failed one operation."""


class LocationUnavailableError(LocationError):
    """A location cannot be used any more: unreachable, credentials refused, bucket gone."""


class Location(ABC):
    """One directory-like place holding job inputs or receiving job outputs."""

    @abstractmethod
    def describe(self) -> str:
        """A name for messages and job status; never contains credentials."""

    @abstractmethod
    def check(self) -> None:
        """Verify the location can be reached with our credentials and is not a file.

        A location that does not exist yet passes where :meth:`commit` would create it
        (a local directory, an S3 prefix, a WebDAV collection whose parent exists).
        """

    @abstractmethod
    def list_files(self, pattern: str | None = None) -> list[str]:
        """Relative paths of the regular files below the location (see module doc)."""

    @abstractmethod
    def fetch(self, rel: str, dest: Path) -> None:
        """Download the file at ``rel`` to the local path ``dest``."""

    @abstractmethod
    def commit(self, local_dir: Path, rel_prefix: str) -> list[str]:
        """Publish every regular file below ``local_dir`` under ``rel_prefix``, atomically
        per file; returns the relative paths written, in order."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the location must not be used afterwards."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


@dataclass(frozen=True)
class JobCaller:
    """Whom a job is submitted for, as far as the runtime can tell.

    ``name`` fills ``{user}`` in allowed locations; without one, ``unknown`` says why, for
    the message that refuses a location.
    """

    name: str | None
    unknown: str = ""

    @classmethod
    def from_header(cls, value: str | None, *, trusted: bool) -> JobCaller:
        """The caller named by the gateway's ``x-hubserve-user`` header, which only counts
        when ``trusted``: when the runtime requires the gateway's secret."""
        if not trusted:
            return cls(
                None,
                "this runtime does not require the gateway's secret, so it cannot tell who calls",
            )
        if value is None:
            return cls(None, "the call names no user")
        if not _USER_NAME.fullmatch(value) or ".." in value:
            shown = value if len(value) <= 64 else value[:64] + "..."
            return cls(
                None,
                f"the user name {shown!r} cannot name a folder (only ASCII letters, digits "
                "and . _ @ + -, starting with a letter or a digit)",
            )
        return cls(value)


def check_allowed_entry(entry: str) -> None:
    """Refuse an allowed location whose ``{user}`` is anywhere but in its path.

    In a host or bucket name, a user called ``x@other`` would turn ``s3://{user}/in`` into
    the bucket ``other``.
    """
    if USER_PLACEHOLDER not in entry or entry.startswith("/"):
        return
    parts = urlsplit(entry)
    if USER_PLACEHOLDER in f"{parts.scheme}://{parts.netloc}":
        raise LocationError(
            f"{_without_userinfo(entry)}: {USER_PLACEHOLDER} may only stand in the path "
            "of a job location, not in its scheme, host or bucket"
        )


def _check_allowed_entries(entries: list[str]) -> list[str]:
    for entry in entries:
        check_allowed_entry(entry)
    return entries


JobLocations = Annotated[list[str], AfterValidator(_check_allowed_entries)]
"""A settings field of allowed job locations, each checked by :func:`check_allowed_entry`."""


def check_allowed(uri: str, allowed: Sequence[str], caller: JobCaller | None = None) -> None:
    """Refuse ``uri`` unless it is one of the ``allowed`` locations or below one.

    A runtime serves callers the hub lets in, but it reads and writes with its own rights: a
    deployment restricts its jobs to the folders and prefixes meant for them, or meant for
    each ``caller`` (``{user}`` entries, see the module doc). Local paths are compared after
    resolving ``..`` and symbolic links; URIs after dropping their userinfo and normalising
    their path. No ``allowed`` entries: every location is allowed.
    """
    if not allowed:
        return
    caller = caller or JobCaller(None, "the call names no user")
    try:
        target = _comparable(uri)
    except (ValueError, OSError, RuntimeError):  # bad port, NUL byte, symlink loop
        raise LocationError(f"invalid location {_without_userinfo(uri)!r}") from None
    for root in allowed:
        check_allowed_entry(root)
    name = caller.name
    usable = [
        root.replace(USER_PLACEHOLDER, name) if name is not None else root
        for root in allowed
        if name is not None or USER_PLACEHOLDER not in root
    ]
    for root in usable:
        base = _comparable(root)
        if target == base or target.startswith(base.rstrip("/") + "/"):
            return
    templates = [_without_userinfo(root) for root in allowed if USER_PLACEHOLDER in root]
    shown = ", ".join(_without_userinfo(root) for root in usable)
    message = f"{_without_userinfo(uri)} is not a location this runtime's jobs may use"
    if not usable:
        message += " (no location is allowed for this call)"
    elif name is not None and templates:
        message += f" (allowed for {name}: {shown})"
    else:
        message += f" (allowed: {shown})"
    if name is None and templates:
        message += f"; {', '.join(templates)} allow nothing here: {caller.unknown}"
    raise LocationError(message)


def _comparable(uri: str) -> str:
    if uri.startswith("/") or uri.startswith("file:"):
        path = unquote(urlsplit(uri).path) if uri.startswith("file:") else uri
        return str(Path(path).resolve())
    parts = urlsplit(uri)
    path = posixpath.normpath(unquote(parts.path) or "/")
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{path}"


def _without_userinfo(uri: str) -> str:
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def open_location(
    uri: str,
    *,
    s3: S3Credentials | None = None,
    webdav_auth: tuple[str, str] | None = None,
    confine_links: bool = False,
) -> Location:
    """The location named by ``uri`` (see module doc); makes no network call."""
    if uri.startswith("/"):
        return _LocalLocation(Path(uri), confine_links=confine_links)
    parts = urlsplit(uri)
    if parts.scheme == "":
        raise LocationError(
            f"relative path {uri!r} refused: give an absolute path or a URI ({_SCHEMES})"
        )
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise LocationError("file:// URIs must name a local path (file:///path)")
        return _LocalLocation(Path(unquote(parts.path)), confine_links=confine_links)
    if parts.scheme == "s3":
        return _open_s3(parts, s3)
    if parts.scheme in ("webdav", "webdavs"):
        return _open_webdav(parts, webdav_auth)
    if parts.scheme in ("http", "https"):
        raise LocationError(
            f"unsupported location scheme {parts.scheme!r}: "
            f"use webdav:// or webdavs:// for WebDAV servers ({_SCHEMES})"
        )
    raise LocationError(f"unsupported location scheme {parts.scheme!r}: use {_SCHEMES}")


def _is_visible(rel: str) -> bool:
    return not any(part.startswith(".") for part in rel.split("/"))


def _is_safe(rel: str) -> bool:
    """Whether ``rel`` is a plain relative path that stays below its root."""
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _wanted(rel: str, pattern: str | None) -> bool:
    return _is_visible(rel) and (pattern is None or fnmatch.fnmatchcase(rel, pattern))


def _join(prefix: str, rel: str) -> str:
    joined = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
    if not _is_safe(joined):
        raise LocationError(f"refusing to write outside the output location: {joined!r}")
    return joined


def _local_files(local_dir: Path) -> list[tuple[str, Path]]:
    """``(relative path, path)`` of the regular files below ``local_dir``; links skipped."""
    found: list[tuple[str, Path]] = []
    for dirpath, _dirnames, filenames in os.walk(local_dir):
        for name in filenames:
            path = Path(dirpath, name)
            if not path.is_symlink() and path.is_file():
                found.append((path.relative_to(local_dir).as_posix(), path))
    return sorted(found)


# -- local directories ------------------------------------------------------------------------


def _raise_oserror(exc: OSError) -> NoReturn:
    raise exc


class _LocalLocation(Location):
    def __init__(self, root: Path, *, confine_links: bool = False) -> None:
        self.root = root
        # With confine_links, where the root leads now, when the job is checked: every file
        # read or written must stay below it, so that no symbolic link in the tree, nor one
        # swapped in while the job waits, takes the job to another folder.
        self._real: Path | None = None
        if confine_links:
            try:
                self._real = root.resolve()
            except (OSError, RuntimeError):  # RuntimeError: a symbolic link loop
                raise LocationError(f"cannot resolve {root}: symbolic link loop") from None

    def _inside(self, path: Path) -> bool:
        if self._real is None:
            return True
        try:
            return path.resolve().is_relative_to(self._real)
        except (OSError, RuntimeError):
            return False

    def describe(self) -> str:
        return str(self.root)

    def check(self) -> None:
        if self.root.exists():
            if not self.root.is_dir():
                raise LocationError(f"{self.root} is not a directory")
            return
        existing = next(parent for parent in self.root.parents if parent.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise LocationError(f"cannot create directory {self.root}: {existing} is not writable")

    def list_files(self, pattern: str | None = None) -> list[str]:
        if not self.root.is_dir():
            state = "is not a directory" if self.root.exists() else "does not exist"
            raise LocationError(f"input directory {self.root} {state}")
        found: list[str] = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.root, onerror=_raise_oserror):
                dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
                for name in filenames:
                    path = Path(dirpath, name)
                    rel = path.relative_to(self.root).as_posix()
                    if _wanted(rel, pattern) and path.is_file():
                        found.append(rel)
        except OSError as exc:
            raise LocationError(f"cannot list {self.root}: {exc.strerror or exc}") from None
        return sorted(found)

    def fetch(self, rel: str, dest: Path) -> None:
        if not self._inside(self.root / rel):
            raise LocationError(f"{rel} in {self.root} is a symbolic link out of it")
        try:
            shutil.copyfile(self.root / rel, dest)
        except FileNotFoundError:
            raise LocationError(f"{rel} not found in {self.root}") from None
        except OSError as exc:
            raise LocationError(
                f"cannot read {rel} from {self.root}: {exc.strerror or exc}"
            ) from None

    def commit(self, local_dir: Path, rel_prefix: str) -> list[str]:
        written: list[str] = []
        for rel_file, path in _local_files(local_dir):
            rel = _join(rel_prefix, rel_file)
            target = self.root / rel
            temporary = target.with_name(f".hubserve-{uuid.uuid4().hex}.part")
            if not self._inside(target.parent):
                raise LocationError(f"{rel} in {self.root} leads out of it (symbolic link)")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with path.open("rb") as source, temporary.open("xb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                        out.flush()
                        os.fsync(out.fileno())
                    temporary.replace(target)
                finally:
                    temporary.unlink(missing_ok=True)
            except OSError as exc:
                raise LocationError(
                    f"cannot write {rel} to {self.root}: {exc.strerror or exc}"
                ) from None
            written.append(rel)
        return written

    def close(self) -> None:
        """Nothing to release."""


# -- S3 ---------------------------------------------------------------------------------------


def _open_s3(parts: SplitResult, credentials: S3Credentials | None) -> Location:
    if "@" in parts.netloc:
        raise LocationError(
            "s3:// URIs must not carry credentials: the runtime's S3 credentials are used"
        )
    if credentials is None:
        raise LocationError("s3:// locations are not available: this runtime has no S3 settings")
    if not parts.netloc:
        raise LocationError("s3:// URIs must name a bucket: s3://bucket/prefix")
    return _S3Location(credentials, parts.netloc, unquote(parts.path).strip("/"))


class _S3Location(Location):
    def __init__(self, credentials: S3Credentials, bucket: str, prefix: str) -> None:
        self.endpoint = credentials.endpoint
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        try:
            self.client = make_client(credentials, pool=4)
        except ValueError as exc:
            raise LocationError(f"invalid S3 endpoint {credentials.endpoint!r}: {exc}") from None

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def _error(self, exc: Exception, what: str) -> LocationError:
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                return LocationUnavailableError(
                    f"bucket {self.bucket!r} does not exist at {self.endpoint}"
                )
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                return LocationError(f"{what} not found in {self.describe()}")
            if classify(exc) == "auth":
                return LocationUnavailableError(
                    f"S3 at {self.endpoint} refused our credentials or denied access "
                    f"({exc.code}) to {self.describe()}"
                )
            return LocationError(f"S3 error {exc.code} on {what} in {self.describe()}")
        if classify(exc) == "unreachable":
            return LocationUnavailableError(
                f"cannot reach S3 at {self.endpoint}: {type(exc).__name__}"
            )
        if isinstance(exc, ValueError):
            return LocationError(f"invalid S3 location {self.describe()}: {exc}")
        return LocationError(f"S3 error on {what} in {self.describe()}: {type(exc).__name__}")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error(exc, what) from None

    def check(self) -> None:
        if not self._call("the bucket", self.client.bucket_exists, self.bucket):
            raise LocationError(f"bucket {self.bucket!r} does not exist at {self.endpoint}")

    def list_files(self, pattern: str | None = None) -> list[str]:
        found: list[str] = []
        try:
            for obj in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True):
                name = obj.object_name
                if obj.is_dir or not name or name.endswith("/"):
                    continue
                rel = name[len(self.prefix) :]
                if _is_safe(rel) and _wanted(rel, pattern):
                    found.append(rel)
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error(exc, "the listing") from None
        return sorted(found)

    def fetch(self, rel: str, dest: Path) -> None:
        try:
            download(self.client, self.bucket, self.prefix + rel, dest)
        except IncompleteDownload as exc:
            raise LocationUnavailableError(f"{exc} from {self.describe()}") from None
        except LocalWriteError as exc:  # our disk, not the server: say so
            raise LocationError(f"cannot write {rel} locally: {exc.strerror}") from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error(exc, rel) from None

    def commit(self, local_dir: Path, rel_prefix: str) -> list[str]:
        written: list[str] = []
        for rel_file, path in _local_files(local_dir):
            rel = _join(rel_prefix, rel_file)
            self._call(
                rel,
                self.client.fput_object,
                self.bucket,
                self.prefix + rel,
                str(path),
                part_size=PART_SIZE,
                num_parallel_uploads=1,
            )
            written.append(rel)
        return written

    def close(self) -> None:
        self.client._http.clear()  # minio has no public close; its pool is `_http`


# -- WebDAV -----------------------------------------------------------------------------------


def _open_webdav(parts: SplitResult, default_auth: tuple[str, str] | None) -> Location:
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise LocationError(f"invalid port in {parts.scheme}:// URI") from None
    if not host:
        raise LocationError(f"{parts.scheme}:// URIs must name a host: {parts.scheme}://host/path")
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    auth = default_auth
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    path = parts.path.rstrip("/") + "/"
    http_scheme = "https" if parts.scheme == "webdavs" else "http"
    return _WebDAVLocation(
        f"{http_scheme}://{netloc}{path}", f"{parts.scheme}://{netloc}{unquote(path)}", auth
    )


class _WebDAVLocation(Location):
    def __init__(self, base_url: str, name: str, auth: tuple[str, str] | None) -> None:
        self.name = name
        self.client = WebDAVClient(
            base_url, auth=auth, timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False
        )
        self._collections: set[str] = set()

    def describe(self) -> str:
        return self.name

    def _error(self, exc: Exception, what: str) -> LocationError:
        if isinstance(exc, ResourceNotFound):
            return LocationError(f"{what} not found at {self.name}")
        if isinstance(exc, IsAResourceError):
            return LocationError(f"{what} is a file, not a directory, at {self.name}")
        if isinstance(exc, HTTPError) and exc.status_code in _HTTP_AUTH_STATUSES:
            return LocationUnavailableError(
                f"WebDAV server {self.name} refused our credentials (HTTP {exc.status_code})"
            )
        if isinstance(exc, (BadGatewayError, InsufficientStorage, httpx.TransportError)) or (
            isinstance(exc, HTTPError) and exc.status_code in _HTTP_UNAVAILABLE_STATUSES
        ):
            return LocationUnavailableError(
                f"WebDAV server {self.name} is unavailable: {type(exc).__name__}"
            )
        if isinstance(exc, HTTPError):
            return LocationError(f"WebDAV error on {what} at {self.name}: HTTP {exc.status_code}")
        return LocationError(f"WebDAV error on {what} at {self.name}: {type(exc).__name__}")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _WEBDAV_ERRORS as exc:
            raise self._error(exc, what) from None

    def _entries(self, directory: str) -> list[dict[str, Any]]:
        what = directory or "the directory"
        entries: list[dict[str, Any]] = self._call(
            what, self.client.ls, directory, detail=True, allow_listing_resource=False
        )
        return entries

    def check(self) -> None:
        try:
            self.client.ls("", detail=False, allow_listing_resource=False)
        except ResourceNotFound:
            return  # created by the first commit, if its parent collection exists
        except _WEBDAV_ERRORS as exc:
            raise self._error(exc, "the directory") from None

    def list_files(self, pattern: str | None = None) -> list[str]:
        found: list[str] = []
        pending = [""]
        while pending:
            for entry in self._entries(pending.pop()):
                rel = str(entry["name"]).strip("/")
                if not _is_safe(rel) or not _is_visible(rel):
                    continue
                if entry.get("type") == "directory":
                    pending.append(rel)
                elif _wanted(rel, pattern):
                    found.append(rel)
        return sorted(found)

    def fetch(self, rel: str, dest: Path) -> None:
        self._call(rel, self.client.download_file, rel, dest)

    def _make_collections(self, rel_dir: str) -> None:
        parts = rel_dir.split("/") if rel_dir else []
        for depth in range(len(parts) + 1):
            collection = "/".join(parts[:depth])
            if collection in self._collections:
                continue
            try:
                self.client.mkdir(collection)
            except ResourceAlreadyExists:
                pass  # made by an earlier job, or by someone else
            except _WEBDAV_ERRORS as exc:
                raise self._error(exc, collection or "the directory") from None
            self._collections.add(collection)

    def commit(self, local_dir: Path, rel_prefix: str) -> list[str]:
        written: list[str] = []
        for rel_file, path in _local_files(local_dir):
            rel = _join(rel_prefix, rel_file)
            parent = rel.rpartition("/")[0]
            self._make_collections(parent)
            temporary = f".hubserve-{uuid.uuid4().hex}.part"
            if parent:
                temporary = f"{parent}/{temporary}"
            try:
                self._call(rel, self.client.upload_file, path, temporary, overwrite=True)
                self._call(rel, self.client.move, temporary, rel, overwrite=True)
            except LocationError:
                # Never uploaded, or the server is gone: then there is nothing more to do.
                with contextlib.suppress(*_WEBDAV_ERRORS):
                    self.client.remove(temporary)
                raise
            written.append(rel)
        return written

    def close(self) -> None:
        self.client.http.close()
