"""The model registry API: upload, list, inspect, download, tag and delete model versions.

Concepts:

* **Models, versions, tags.** A *model* is ``owner/name``; the owner is a hub user (the
  first part of the name, as for deployments), the name comes from the bundle itself. A model
  has immutable *versions* (assigned when the bundle is packaged: UTC time and a content
  hash, so they sort by age) and movable *tags*. ``latest`` is not stored: it always names
  the newest version, so it cannot be set or deleted here. Wherever a route takes a
  ``{version}`` to *read*, a tag or ``latest`` works as well; deleting needs the version
  itself, so a moved tag can never delete the wrong one.
* **The store is the registry.** Every answer comes from the model store
  (:mod:`model_runtime.store`, a directory or an S3 bucket); the service keeps no copy of it
  in its database, which only knows which versions deployments run (see
  :meth:`~hub_service._state.ServiceState.versions_in_use`). Store calls block, so each runs
  in a worker thread.
* **Uploads** are bundle archives (``.tar.gz``, as ``hubserve package`` or
  :func:`model_runtime.build_bundle` make them), sent either as the raw request body
  (``application/gzip``, ``application/x-gzip`` or ``application/octet-stream``) or as
  ``multipart/form-data`` with a file field named ``bundle``. Both are streamed to a temporary
  file under the service's data directory (never held in memory), with the size limit
  ``max_upload_bytes`` enforced from ``Content-Length`` up front and again while streaming
  (413). The store then verifies the archive completely (checksums, no path tricks: 422 when
  it is not a sound bundle) and commits it; the temporary file is removed whatever happens,
  and an upload that breaks off leaves nothing visible. Uploading the same bundle again is
  harmless (200 instead of 201); the same version with other bytes is refused (409).
* **Rights** (:mod:`hub_service.access`): owners and hub admins manage a model; to anyone
  else it does not exist (404), and only admins may upload for another owner (``?owner=``).
  Listing shows the caller's own models, or for admins everybody's (``?owner=`` filters).
* **Deleting** a version or a model that a deployment runs is refused (409, naming the
  deployments) unless ``?force=true``: the running replicas keep what they loaded, but could
  not be restarted or scaled from the store any more.
* **Errors** are JSON ``{"detail": "..."}`` with a message meant for people: 404 unknown
  model, version or tag; 422 bad names or bundles; 409 conflicts; 503 when the store cannot be
  reached or refuses the service's credentials; 502 when it fails otherwise. Store trouble is
  never a 500, and messages do not reveal where the store lives (the mapping is
  :func:`hub_service._store_calls.http_error`, shared with the deployment routes).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect

from model_runtime.errors import InvalidNameError
from model_runtime.naming import (
    LATEST,
    ModelRef,
    check_model_name,
    check_owner,
    check_tag,
    check_version,
    is_version,
)
from model_runtime.store import ModelSummary, StoredVersion, VersionSummary

from ._responses import AUTH_ERRORS, error_responses
from ._state import ServiceState, get_state
from ._store_calls import store_call
from .access import owner_for, require_manage
from .auth import AuthenticatedRoute, HubUser, require_user

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger(__name__)

T = TypeVar("T")

RAW_TYPES = ("application/gzip", "application/x-gzip", "application/octet-stream")
"""Content types of an upload sent as the raw body (a missing type counts as raw too)."""
MULTIPART_FIELD = "bundle"
"""The form field that holds the archive in a ``multipart/form-data`` upload."""
ARCHIVE_NAME = "bundle.tar.gz"
#: What a multipart body may hold beyond the archive: boundaries, part headers, small fields.
MULTIPART_OVERHEAD = 64 * 1024
#: Upload bytes gathered in memory before they go to disk (in a worker thread).
FLUSH_BYTES = 1024 * 1024
#: Download chunk size.
READ_BYTES = 1024 * 1024
#: Temporary upload/download directories older than this are left over from a crash.
STALE_SECONDS = 6 * 3600


# -- response models ----------------------------------------------------------------------


class VersionRecord(StoredVersion):
    """A stored version: the store's record (manifest included) and the tags naming it."""

    tags: list[str] = Field(
        default_factory=list, description="Tags naming this version, `latest` included."
    )


class ModelDetail(BaseModel):
    """A model with its versions (newest first) and its tags."""

    owner: str
    name: str
    versions: list[VersionSummary]
    tags: dict[str, str] = Field(description="Every tag, `latest` included, to its version.")


class TagTarget(BaseModel):
    """Where ``PUT .../tags/{tag}`` points the tag."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        description="A version, or a tag (or `latest`) naming the version to point at.",
        examples=["20261125T161745123Z-3f2a9c1e", "latest"],
    )


class TagInfo(BaseModel):
    owner: str
    name: str
    tag: str
    version: str


router = APIRouter(
    prefix="/api/models",
    tags=["models"],
    responses=error_responses(*AUTH_ERRORS, 422),
    route_class=AuthenticatedRoute,
)


# -- checks ---------------------------------------------------------------------------------


async def _in_thread(state: ServiceState, work: Callable[[], T]) -> T:
    """Run the blocking store calls ``work`` in a worker thread, errors mapped to HTTP."""
    return await store_call(state.store, work)


def _checked(check: Callable[[str], str], value: str) -> str:
    try:
        return check(value)
    except InvalidNameError as exc:
        raise HTTPException(422, str(exc)) from None


def _model(user: HubUser, owner: str, name: str) -> None:
    """404 unless ``user`` manages ``owner``'s models; 422 for names that cannot be."""
    require_manage(user, owner, f"model {owner}/{name}")
    _checked(check_owner, owner)
    _checked(check_model_name, name)


def _selector(selector: str) -> str:
    return selector if is_version(selector) else _checked(check_tag, selector)


def _user_tag(tag: str) -> str:
    if tag == LATEST:
        raise HTTPException(
            422, "'latest' always names the newest version: it cannot be set or deleted"
        )
    return _checked(check_tag, tag)


def _in_use_message(what: str, used: dict[str, list[str]]) -> str:
    deployments = sorted({d for names in used.values() for d in names})
    return (
        f"{what} is in use by the deployment(s) {', '.join(deployments)}: delete or move them"
        " first, or pass force=true"
    )


def _with_tags(record: StoredVersion, tags: dict[str, str]) -> VersionRecord:
    return VersionRecord(
        **dict(record), tags=sorted(t for t, v in tags.items() if v == record.version)
    )


# -- temporary files ----------------------------------------------------------------------


def _scratch_dir(parent: Path) -> Path:
    """A fresh private directory under ``parent``; sweeps ones a crash left behind."""
    parent.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - STALE_SECONDS
    with os.scandir(parent) as entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
            except OSError:
                pass
    return Path(tempfile.mkdtemp(prefix="tmp-", dir=parent))


class _Sink:
    """The upload's temporary file: counts bytes against the limit, writes off the loop."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None

    async def open(self) -> None:
        self._file = await anyio.to_thread.run_sync(self.path.open, "wb")

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise HTTPException(413, f"the bundle is larger than {self.limit} bytes")
        self._buffer += data
        if len(self._buffer) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer and self._file is not None:
            data, self._buffer = bytes(self._buffer), bytearray()
            await anyio.to_thread.run_sync(self._file.write, data)

    async def close(self) -> None:
        if self._file is not None:
            await self.flush()
            file, self._file = self._file, None
            await anyio.to_thread.run_sync(file.close)


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise HTTPException(400, "invalid Content-Length") from None
    if length < 0:
        raise HTTPException(400, "invalid Content-Length")
    return length


async def _receive_raw(request: Request, sink: _Sink) -> None:
    async for chunk in request.stream():
        await sink.write(chunk)


@dataclass
class _MultipartState:
    in_bundle: bool = False
    seen_bundle: bool = False
    complete: bool = False


async def _receive_multipart(request: Request, sink: _Sink, boundary: bytes) -> None:
    """Stream the ``bundle`` file field of a multipart body into ``sink``; ignore others."""
    pending: list[bytes] = []
    headers: dict[bytes, bytes] = {}
    header = [b"", b""]
    state = _MultipartState()

    def on_part_begin() -> None:
        headers.clear()
        state.in_bundle = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        headers[header[0].strip().lower()] = header[1].strip()
        header[0] = header[1] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if options.get(b"name") == MULTIPART_FIELD.encode():
            if state.seen_bundle:
                raise HTTPException(422, f"send one '{MULTIPART_FIELD}' field, not several")
            state.in_bundle = state.seen_bundle = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.in_bundle:
            pending.append(data[start:end])

    def on_end() -> None:
        state.complete = True

    callbacks: MultipartCallbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_end": on_end,
    }
    envelope_limit = sink.limit + MULTIPART_OVERHEAD
    received = 0
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in request.stream():
            received += len(chunk)
            if received > envelope_limit:
                raise HTTPException(413, f"the bundle is larger than {sink.limit} bytes")
            parser.write(chunk)
            for piece in pending:
                await sink.write(piece)
            pending.clear()
        parser.finalize()
    except FormParserError:
        raise HTTPException(400, "malformed multipart/form-data body") from None
    if not state.complete:
        raise HTTPException(400, "incomplete multipart/form-data body")
    if not state.seen_bundle:
        raise HTTPException(
            422, f"a multipart upload needs the archive in a file field named '{MULTIPART_FIELD}'"
        )


async def _receive_upload(request: Request, archive: Path, limit: int) -> None:
    """Stream the request's archive (raw or multipart) to ``archive``, at most ``limit`` bytes."""
    media_type, options = parse_options_header(request.headers.get("content-type"))
    media = media_type.decode("latin-1").lower()
    multipart = media == "multipart/form-data"
    if media and not multipart and media not in RAW_TYPES:
        raise HTTPException(
            415,
            f"send the bundle archive as {', '.join(RAW_TYPES)}, or as multipart/form-data"
            f" with a file field '{MULTIPART_FIELD}'",
        )
    boundary = options.get(b"boundary", b"")
    if multipart and not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary")
    length = _content_length(request)
    if length is not None and length > limit + (MULTIPART_OVERHEAD if multipart else 0):
        raise HTTPException(413, f"the bundle is larger than {limit} bytes")
    sink = _Sink(archive, limit)
    await sink.open()
    try:
        if multipart:
            await _receive_multipart(request, sink, boundary)
        else:
            await _receive_raw(request, sink)
    except ClientDisconnect:
        log.info("an upload was broken off by the client")
        raise HTTPException(400, "the upload was broken off") from None
    finally:
        await sink.close()
    if sink.size == 0:
        raise HTTPException(422, "the upload is empty: send a bundle archive")


# -- routes -------------------------------------------------------------------------------

User = Annotated[HubUser, Depends(require_user)]
State = Annotated[ServiceState, Depends(get_state)]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A bundle archive (.tar.gz), raw or as the multipart file field"
        f" '{MULTIPART_FIELD}'.",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [MULTIPART_FIELD],
                    "properties": {MULTIPART_FIELD: {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}


@router.get("", response_model=list[ModelSummary])
async def list_models(
    user: User,
    state: State,
    owner: Annotated[str | None, Query(description="Only this owner's models.")] = None,
) -> list[ModelSummary]:
    """The models the caller may see: its own, or for hub admins everybody's."""
    if owner is not None:
        _checked(check_owner, owner)
        if not user.admin and owner != user.name:
            return []
    elif not user.admin:
        owner = user.name
    where = owner
    return await _in_thread(state, lambda: state.store.list_models(where))


@router.post(
    "",
    status_code=201,
    response_model=VersionRecord,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": VersionRecord, "description": "This bundle was stored already."},
        **error_responses(400, 409, 413, 415, 422, 507),
    },
)
async def upload_model(
    request: Request,
    response: Response,
    user: User,
    state: State,
    owner: Annotated[
        str | None, Query(description="Store for this owner (hub admins only).")
    ] = None,
    tag: Annotated[
        list[str] | None, Query(description="Tags to point at the new version (repeatable).")
    ] = None,
) -> VersionRecord:
    """Upload a bundle archive; it becomes the model's newest version (``latest``)."""
    target = _checked(check_owner, owner_for(user, owner))
    tags = [_user_tag(t) for t in tag or []]
    limit = state.settings.limits.max_upload_bytes
    scratch = await anyio.to_thread.run_sync(_scratch_dir, state.settings.data_dir / "uploads")
    try:
        archive = scratch / ARCHIVE_NAME
        try:
            await _receive_upload(request, archive, limit)
        except OSError as exc:  # the service's own disk: not the caller's fault
            log.error("cannot keep an upload in %s: %s", scratch.parent, exc.strerror)
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise HTTPException(
                507 if full else 503,
                "no space left on the service for the upload, try again later"
                if full
                else "the service cannot keep the upload, try again later",
            ) from None
        started = datetime.now(timezone.utc)

        def push() -> tuple[StoredVersion, dict[str, str]]:
            record = state.store.push(archive, owner=target, tags=tags, pushed_by=user.name)
            return record, state.store.tags(record.owner, record.name)

        record, all_tags = await _in_thread(state, push)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)
    if record.pushed_at < started:
        response.status_code = 200
        log.info("%s uploaded %s again (stored already)", user.name, record.ref)
    else:
        log.info("%s uploaded %s (%d bytes)", user.name, record.ref, record.archive_size)
    response.headers["Location"] = request.url_for(
        "get_version", owner=record.owner, name=record.name, version=record.version
    ).path
    return _with_tags(record, all_tags)


@router.get("/{owner}/{name}", response_model=ModelDetail, responses=error_responses(404, 422))
async def get_model(owner: str, name: str, user: User, state: State) -> ModelDetail:
    """A model: its versions, newest first, and its tags."""
    _model(user, owner, name)
    versions = await _in_thread(state, lambda: state.store.list_versions(owner, name))
    if not versions:
        raise HTTPException(404, f"model {owner}/{name} not found")
    tags = {t: v.version for v in versions for t in v.tags}
    return ModelDetail(owner=owner, name=name, versions=versions, tags=tags)


@router.delete(
    "/{owner}/{name}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, 422),
)
async def delete_model(
    owner: str,
    name: str,
    user: User,
    state: State,
    force: Annotated[bool, Query(description="Delete even versions deployments run.")] = False,
) -> Response:
    """Delete a model: every version and tag."""
    _model(user, owner, name)
    used = await state.versions_in_use(owner, name)
    if used and not force:
        # Deployments may outlive a forced delete: a model that is gone is 404, not 409.
        if not await _in_thread(state, lambda: state.store.list_versions(owner, name)):
            raise HTTPException(404, f"model {owner}/{name} not found")
        raise HTTPException(409, _in_use_message(f"model {owner}/{name}", used))
    count = await _in_thread(state, lambda: state.store.delete_model(owner, name))
    log.info("%s deleted %s/%s (%d versions)", user.name, owner, name, count)
    return Response(status_code=204)


@router.get(
    "/{owner}/{name}/versions/{version}",
    response_model=VersionRecord,
    responses=error_responses(404, 422),
)
async def get_version(
    owner: str, name: str, version: str, user: User, state: State
) -> VersionRecord:
    """A version's record (its manifest included); ``{version}`` may be a tag or ``latest``."""
    _model(user, owner, name)
    ref = ModelRef(owner, name, _selector(version))

    def stat() -> tuple[StoredVersion, dict[str, str]]:
        record = state.store.stat(ref)
        return record, state.store.tags(owner, name)

    record, tags = await _in_thread(state, stat)
    return _with_tags(record, tags)


@router.get(
    "/{owner}/{name}/versions/{version}/download",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The bundle archive.",
        },
        **error_responses(404, 422),
    },
)
async def download_version(
    owner: str, name: str, version: str, user: User, state: State
) -> StreamingResponse:
    """The bundle archive of a version (or tag); checked against its sha256 on the way."""
    _model(user, owner, name)
    ref = ModelRef(owner, name, _selector(version))
    parent = state.settings.data_dir / "downloads"

    def fetch() -> tuple[StoredVersion, IO[bytes]]:
        scratch = _scratch_dir(parent)
        try:
            record = state.store.download(ref, scratch / ARCHIVE_NAME)
            # Open, then remove: the open file keeps the bytes until the stream closes it,
            # so nothing is left on disk, however the download ends.
            return record, (scratch / ARCHIVE_NAME).open("rb")
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    record, file = await _in_thread(state, fetch)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while data := await anyio.to_thread.run_sync(file.read, READ_BYTES):
                yield data
        finally:
            file.close()

    filename = f"{record.name}-{record.version}.tar.gz"
    return StreamingResponse(
        chunks(),
        media_type="application/gzip",
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Content-Length": str(record.archive_size),
            "ETag": f'"{record.archive_sha256}"',
        },
    )


@router.delete(
    "/{owner}/{name}/versions/{version}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 409, 422),
)
async def delete_version(
    owner: str,
    name: str,
    version: str,
    user: User,
    state: State,
    force: Annotated[bool, Query(description="Delete it even if deployments run it.")] = False,
) -> Response:
    """Delete one version (the version itself, not a tag) and the tags that name it."""
    _model(user, owner, name)
    _checked(check_version, version)
    used = await state.versions_in_use(owner, name)
    if used.get(version) and not force:
        await _in_thread(state, lambda: state.store.stat(ModelRef(owner, name, version)))
        raise HTTPException(
            409, _in_use_message(f"{owner}/{name}:{version}", {version: used[version]})
        )
    await _in_thread(state, lambda: state.store.delete_version(owner, name, version))
    log.info("%s deleted %s/%s:%s", user.name, owner, name, version)
    return Response(status_code=204)


@router.put(
    "/{owner}/{name}/tags/{tag}", response_model=TagInfo, responses=error_responses(400, 404, 422)
)
async def set_tag(
    owner: str, name: str, tag: str, target: TagTarget, user: User, state: State
) -> TagInfo:
    """Point ``tag`` at a version (created or moved); ``latest`` is not settable."""
    _model(user, owner, name)
    tag = _user_tag(tag)
    ref = ModelRef(owner, name, _selector(target.version))
    record = await _in_thread(state, lambda: state.store.set_tag(ref, tag))
    return TagInfo(owner=owner, name=name, tag=tag, version=record.version)


@router.delete(
    "/{owner}/{name}/tags/{tag}",
    status_code=204,
    response_class=Response,
    responses=error_responses(404, 422),
)
async def delete_tag(owner: str, name: str, tag: str, user: User, state: State) -> Response:
    """Remove a tag (the version stays)."""
    _model(user, owner, name)
    tag = _user_tag(tag)
    await _in_thread(state, lambda: state.store.delete_tag(owner, name, tag))
    return Response(status_code=204)
