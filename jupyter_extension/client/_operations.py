"""Everything the client does, written once for both clients (see :mod:`._protocol`).

Each public method of :class:`~._sync.Client` and :class:`~._async.AsyncClient` runs the
generator of the same name here. Names follow the service: a model is ``[owner/]name``, a
version reference ``[owner/]name[:version-or-tag]`` (``latest`` by default), a deployment
``[owner/]name``; a missing owner means the caller, found once with ``GET api/me``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel

from ._encoding import (
    NPY,
    Body,
    decode_infer,
    decode_predict,
    dumps,
    encode_infer,
    encode_predict,
)
from ._errors import DeploymentFailed, HubserveTimeout, InvalidRequest
from ._models import (
    Deployment,
    HubIdentity,
    Job,
    JobItem,
    LogChunk,
    ModelDetail,
    ModelSummary,
    ModelVersion,
    VersionSummary,
)
from ._progress import (
    JobProgress,
    Reporter,
    Transfer,
    TransferProgress,
    job_reporter,
    transfer_reporter,
)
from ._protocol import Blocking, Call, Op, Sink, Sleep, Upload, ignore, parse_as, run

if TYPE_CHECKING:
    from model_runtime import Service

T = TypeVar("T")

#: How often to look at a deployment while waiting for it.
POLL_SECONDS = 0.25
#: How often to look at a batch job while waiting for it.
JOB_POLL_SECONDS = 0.5
#: Items asked for per request: the most a runtime answers at once.
JOB_ITEMS_PAGE = 1000
#: How long a deployment may stay ``failed`` before waiting gives up on it: the backend
#: restarts crashed replicas, so a failure may be brief.
FAILED_GRACE_SECONDS = 10.0
#: Uploads and downloads wait at least this long for each network operation (the service
#: verifies a whole bundle before it answers an upload).
TRANSFER_TIMEOUT = 300.0

ModelArg = str | ModelVersion | VersionSummary
DeploymentArg = str | Deployment


def _seg(text: str) -> str:
    """One URL path segment."""
    return quote(text, safe="")


def split_ref(
    text: str, what: str, form: str = "[owner/]name"
) -> tuple[str | None, str, str | None]:
    """``[owner/]name[:selector]`` as ``(owner or None, name, selector or None)``; ``what``
    and ``form`` say what was expected, for the message when ``text`` is not that."""
    head, colon, selector = text.strip().partition(":")
    owner, slash, name = head.rpartition("/")
    if (
        not name
        or (slash and not owner)
        or "/" in owner
        or (colon and not selector)
        or any(c.isspace() for c in text.strip())
    ):
        raise InvalidRequest(f"{text!r} is not a {what} name: use {form}")
    return (owner or None), name, (selector or None)


def _json(method: str, path: str, parse: Callable[[httpx.Response], T], body: Any) -> Call[T]:
    return Call(
        method,
        path,
        parse,
        content=orjson.dumps(body, default=_plain),
        headers={"Content-Type": "application/json"},
    )


def _plain(value: Any) -> Any:
    """Request bodies may hold the client's own models (``Access``...) and sets."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} values have no JSON form")


class Operations:
    """The operations of one client; remembers who the caller is once asked."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._identity: HubIdentity | None = None

    # -- identity and names -------------------------------------------------------------------

    def me(self) -> Op[HubIdentity]:
        identity = yield from run(Call("GET", "api/me", parse_as(HubIdentity)))
        self._identity = identity
        return identity

    def owner(self) -> Op[str]:
        """The caller's name: the owner of names given without one."""
        if self._identity is None:
            yield from self.me()
        assert self._identity is not None
        return self._identity.name

    def _model_key(self, text: str, versioned: bool = False) -> Op[tuple[str, str, str | None]]:
        if versioned:
            owner, name, selector = split_ref(text, "model version", "[owner/]name[:version]")
        else:
            owner, name, selector = split_ref(text, "model")
        if owner is None:
            owner = yield from self.owner()
        return owner, name, selector

    def _deployment_key(self, deployment: DeploymentArg) -> Op[tuple[str, str]]:
        if isinstance(deployment, Deployment):
            return deployment.owner, deployment.name
        owner, name, selector = split_ref(deployment, "deployment")
        if selector is not None:
            raise InvalidRequest(f"{deployment!r} is not a deployment name: use [owner/]name")
        if owner is None:
            owner = yield from self.owner()
        return owner, name

    def _deployment_path(self, deployment: DeploymentArg, rest: str = "") -> Op[str]:
        owner, name = yield from self._deployment_key(deployment)
        return f"api/deployments/{_seg(owner)}/{_seg(name)}{rest}"

    def _gateway_path(self, deployment: DeploymentArg, rest: str) -> Op[str]:
        owner, name = yield from self._deployment_key(deployment)
        return f"d/{_seg(owner)}/{_seg(name)}/{rest}"

    # -- models ---------------------------------------------------------------------------

    def push(
        self,
        source: Service | str | os.PathLike[str],
        *,
        tags: Iterable[str] = (),
        owner: str | None = None,
        progress: TransferProgress = True,
        requirements: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        description: str | None = None,
        trust_pickle: bool = False,
    ) -> Op[ModelVersion]:
        reporter = transfer_reporter(progress, _label(source))
        scratch = tempfile.TemporaryDirectory(prefix="hubserve-push-")
        try:
            archive: Path = yield Blocking(
                lambda: prepare_archive(
                    source,
                    Path(scratch.name),
                    reporter,
                    requirements=requirements,
                    labels=labels,
                    description=description,
                    trust_pickle=trust_pickle,
                )
            )
            params = [("tag", tag) for tag in tags]
            if owner is not None:
                params.append(("owner", owner))
            call = Call(
                "POST",
                "api/models",
                parse_as(ModelVersion),
                params=params,
                headers={"Content-Type": "application/gzip"},
                upload=Upload(archive, reporter),
                min_timeout=TRANSFER_TIMEOUT,
            )
            return (yield from run(call))
        finally:
            reporter.close()
            scratch.cleanup()

    def models(self, owner: str | None = None) -> Op[list[ModelSummary]]:
        params = [("owner", owner)] if owner is not None else []
        call = Call("GET", "api/models", parse_as(list[ModelSummary]), params=params)
        return (yield from run(call))

    def model(self, name: str) -> Op[ModelDetail]:
        owner, model, _ = yield from self._model_key(name)
        call = Call("GET", f"api/models/{_seg(owner)}/{_seg(model)}", parse_as(ModelDetail))
        return (yield from run(call))

    def _version_path(self, ref: str, rest: str = "") -> Op[str]:
        owner, model, selector = yield from self._model_key(ref, versioned=True)
        version = _seg(selector or "latest")
        return f"api/models/{_seg(owner)}/{_seg(model)}/versions/{version}{rest}"

    def version(self, ref: str) -> Op[ModelVersion]:
        path = yield from self._version_path(ref)
        return (yield from run(Call("GET", path, parse_as(ModelVersion))))

    def download(
        self, ref: str, dest: str | os.PathLike[str], *, progress: TransferProgress = False
    ) -> Op[Path]:
        path = yield from self._version_path(ref, "/download")
        reporter = transfer_reporter(progress, ref)
        sink = Sink(Path(dest), reporter)
        try:
            call = Call("GET", path, sink.target, sink=sink, min_timeout=TRANSFER_TIMEOUT)
            return (yield from run(call))
        finally:
            reporter.close()

    def tag(self, ref: str, tag: str) -> Op[ModelVersion]:
        owner, model, selector = yield from self._model_key(ref, versioned=True)
        base = f"api/models/{_seg(owner)}/{_seg(model)}"
        target = yield from run(
            _json(
                "PUT",
                f"{base}/tags/{_seg(tag)}",
                parse_as(dict[str, Any]),
                {"version": selector or "latest"},
            )
        )
        version = str(target["version"])
        return (
            yield from run(Call("GET", f"{base}/versions/{_seg(version)}", parse_as(ModelVersion)))
        )

    def untag(self, name: str, tag: str) -> Op[None]:
        owner, model, _ = yield from self._model_key(name)
        path = f"api/models/{_seg(owner)}/{_seg(model)}/tags/{_seg(tag)}"
        yield from run(Call("DELETE", path, ignore))

    def delete_version(self, ref: str, *, force: bool = False) -> Op[None]:
        owner, model, selector = yield from self._model_key(ref, versioned=True)
        if selector is None:
            raise InvalidRequest(
                f"{ref!r} names no version: delete_version needs [owner/]name:version"
            )
        path = f"api/models/{_seg(owner)}/{_seg(model)}/versions/{_seg(selector)}"
        yield from run(Call("DELETE", path, ignore, params=_force(force)))

    def delete_model(self, name: str, *, force: bool = False) -> Op[None]:
        owner, model, _ = yield from self._model_key(name)
        path = f"api/models/{_seg(owner)}/{_seg(model)}"
        yield from run(Call("DELETE", path, ignore, params=_force(force)))

    # -- deployments ------------------------------------------------------------------------

    def deploy(
        self,
        model: ModelArg,
        *,
        name: str | None = None,
        owner: str | None = None,
        replicas: int = 1,
        threads: int | None = None,
        batching: Mapping[str, Any] | None = None,
        access: Mapping[str, Any] | BaseModel | None = None,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Op[Deployment]:
        body: dict[str, Any] = {
            "model": model if isinstance(model, str) else model.ref,
            "replicas": replicas,
        }
        if name is not None:
            body["name"] = name
        if owner is not None:
            body["owner"] = owner
        if threads is not None:
            body["resources"] = {"threads": threads}
        if batching is not None:
            body["batching"] = dict(batching)
        if access is not None:
            body["access"] = access
        created = yield from run(_json("POST", "api/deployments", parse_as(Deployment), body))
        if not wait:
            return created
        return (yield from self.wait_ready(created, timeout=timeout))

    def deployments(self, owner: str | None = None) -> Op[list[Deployment]]:
        params = [("owner", owner)] if owner is not None else []
        call = Call("GET", "api/deployments", parse_as(list[Deployment]), params=params)
        return (yield from run(call))

    def deployment(self, deployment: DeploymentArg) -> Op[Deployment]:
        path = yield from self._deployment_path(deployment)
        return (yield from run(Call("GET", path, parse_as(Deployment))))

    def update(
        self,
        deployment: DeploymentArg,
        fields: Mapping[str, Any],
        *,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Op[Deployment]:
        body = dict(fields)
        if "threads" in body:  # a shortcut for the one resource the local backend uses
            resources = body.get("resources") or {}
            if isinstance(resources, BaseModel):
                resources = resources.model_dump(exclude_none=True)
            body["resources"] = {**resources, "threads": body.pop("threads")}
        path = yield from self._deployment_path(deployment)
        changed = yield from run(_json("PATCH", path, parse_as(Deployment), body))
        if not wait:
            return changed
        return (yield from self.wait_ready(changed, timeout=timeout))

    def undeploy(self, deployment: DeploymentArg) -> Op[None]:
        path = yield from self._deployment_path(deployment)
        yield from run(Call("DELETE", path, ignore, min_timeout=60.0))

    def logs(self, deployment: DeploymentArg, tail: int = 200) -> Op[list[LogChunk]]:
        path = yield from self._deployment_path(deployment, "/logs")
        call = Call("GET", path, parse_as(list[LogChunk]), params=[("tail", str(tail))])
        return (yield from run(call))

    def wait_ready(
        self,
        deployment: DeploymentArg,
        *,
        timeout: float = 300.0,
        progress: Callable[[Deployment], None] | None = None,
    ) -> Op[Deployment]:
        """Poll until the deployment is settled (see :attr:`DeploymentStatus.settled`)."""
        key = yield from self._deployment_key(deployment)
        deadline = time.monotonic() + timeout
        failed_since: float | None = None
        while True:
            info = yield from self.deployment(f"{key[0]}/{key[1]}")
            if progress is not None:
                progress(info)
            status = info.status
            if status.settled:
                return info
            now = time.monotonic()
            if status.phase == "failed":
                failed_since = now if failed_since is None else failed_since
                if now - failed_since >= FAILED_GRACE_SECONDS:
                    reason = status.message or "its replicas do not start"
                    raise DeploymentFailed(f"deployment {info.key} failed: {reason}", info)
            else:
                failed_since = None
            if now >= deadline:
                raise HubserveTimeout(
                    f"deployment {info.key} not ready after {timeout:g} s ({status.phase}:"
                    f" {status.ready}/{status.desired} ready, {status.updated} updated)"
                    + (f": {status.message}" if status.message else "")
                )
            yield Sleep(min(POLL_SECONDS, max(0.0, deadline - now)))

    # -- calling ------------------------------------------------------------------------------

    def predict(
        self, deployment: DeploymentArg, api: str, data: Any, *, accept: str | None = None
    ) -> Op[Any]:
        path = yield from self._gateway_path(deployment, quote(api.strip("/"), safe="/"))
        body = encode_predict(data)
        try:
            return (yield from run(_predict_call(path, body, accept)))
        except InvalidRequest as exc:
            # An array sent to an API that takes JSON (e.g. rows for a classifier): the
            # runtime refuses .npy with a 415, so send the same values as nested lists.
            if exc.status != 415 or body.content_type != NPY:
                raise
        return (yield from run(_predict_call(path, Body(dumps(data), "application/json"), accept)))

    def infer(self, deployment: DeploymentArg, api: str, inputs: Any) -> Op[Any]:
        path = yield from self._gateway_path(deployment, f"v2/models/{_seg(api)}/infer")
        call = Call(
            "POST",
            path,
            decode_infer,
            content=encode_infer(inputs),
            headers={"Content-Type": "application/json"},
        )
        return (yield from run(call))

    def submit_job(
        self,
        deployment: DeploymentArg,
        api: str,
        input: str,
        output: str,
        *,
        pattern: str | None = None,
    ) -> Op[Job]:
        body: dict[str, Any] = {"input": input, "output": output}
        if pattern is not None:
            body["pattern"] = pattern
        path = yield from self._gateway_path(deployment, f"jobs/{_seg(api)}")
        return (yield from run(_json("POST", path, parse_as(Job), body)))

    def job(self, deployment: DeploymentArg, job: str | Job) -> Op[Job]:
        job_id = job.id if isinstance(job, Job) else job
        path = yield from self._gateway_path(deployment, f"jobs/{_seg(job_id)}")
        return (yield from _job_catching_up(path, []))

    def cancel_job(self, deployment: DeploymentArg, job: str | Job) -> Op[Job]:
        job_id = job.id if isinstance(job, Job) else job
        path = yield from self._gateway_path(deployment, f"jobs/{_seg(job_id)}")
        return (yield from run(Call("DELETE", path, parse_as(Job))))

    def wait_job(
        self,
        deployment: DeploymentArg,
        job: str | Job,
        *,
        timeout: float | None = None,
        progress: JobProgress = True,
    ) -> Op[Job]:
        key = yield from self._deployment_key(deployment)
        job_id = job.id if isinstance(job, Job) else job
        deadline = None if timeout is None else time.monotonic() + timeout
        path = yield from self._gateway_path(f"{key[0]}/{key[1]}", f"jobs/{_seg(job_id)}")
        items: list[JobItem] = []
        reporter: Reporter[Job] = job_reporter(progress)
        try:
            while True:
                status = yield from _job_catching_up(path, items)
                reporter.update(status)
                if status.finished:
                    return status
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise HubserveTimeout(
                        f"job {job_id} not finished after {timeout:g} s ({status.state}:"
                        f" {status.items_done}/{status.items_total} files done)"
                    )
                pause = (
                    JOB_POLL_SECONDS if deadline is None else min(JOB_POLL_SECONDS, deadline - now)
                )
                yield Sleep(max(0.0, pause))
        finally:
            reporter.close()

    def endpoint(self, deployment: DeploymentArg) -> Op[str]:
        path = yield from self._gateway_path(deployment, "")
        return self.url + path


def _job_catching_up(path: str, items: list[JobItem]) -> Op[Job]:
    """The job at ``path`` with all its items: ``items`` holds those received earlier and
    gains the new ones, asked for from where it ends, so each item crosses the network once
    however often a caller polls."""
    while True:
        params = (("items_from", str(len(items))), ("items_limit", str(JOB_ITEMS_PAGE)))
        status = yield from run(Call("GET", path, parse_as(Job), params=params))
        # An older runtime ignores the parameters and answers every item from 0: putting the
        # page in the place it says it starts at suits both.
        if status.items_from <= len(items):
            items[status.items_from : status.items_from + len(status.items)] = status.items
        if len(items) >= status.items_done or not status.items:
            return status.model_copy(update={"items": list(items), "items_from": 0})


def _predict_call(path: str, body: Body, accept: str | None) -> Call[Any]:
    headers = {"Content-Type": body.content_type}
    if accept is not None:
        headers["Accept"] = accept
    return Call(
        "POST",
        path,
        lambda response: decode_predict(response, body.expect),
        content=body.content,
        headers=headers,
    )


def _force(force: bool) -> list[tuple[str, str]]:
    return [("force", "true")] if force else []


def _label(source: object) -> str:
    """How progress bars and messages name what is pushed."""
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else ""


# -- packaging ------------------------------------------------------------------------------


def prepare_archive(
    source: Service | str | os.PathLike[str],
    scratch: Path,
    reporter: Reporter[Transfer],
    *,
    requirements: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    description: str | None = None,
    trust_pickle: bool = False,
) -> Path:
    """The bundle archive to upload for ``source``, packaged into ``scratch`` when needed.

    An archive (``.tar.gz``/``.tgz``) is sent as it is; a bundle directory (with
    ``bundle.json``) is verified and archived; anything else (a :class:`Service`, a service
    directory, ``file.py[:var]``, ``module:var``) is packaged by
    :func:`model_runtime.build_bundle`.
    """
    from model_runtime.errors import HubserveError

    try:
        if isinstance(source, str | os.PathLike):
            path = Path(os.fspath(source))
            if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
                return path
            if path.is_dir() and (path / "bundle.json").is_file():
                return _archive_bundle_directory(path, scratch, reporter)
        from model_runtime import Service, build_bundle

        reporter.update(("package", 0, 1))
        built = build_bundle(
            source if isinstance(source, str | Service) else Path(os.fspath(source)),
            output_dir=scratch,
            requirements=requirements,
            labels=labels,
            description=description,
            trust_pickle=trust_pickle,
        )
        reporter.update(("package", 1, 1))
        return built.archive
    except HubserveError as exc:
        raise InvalidRequest(f"cannot package {_label(source) or 'the service'}: {exc}") from exc


def _archive_bundle_directory(directory: Path, scratch: Path, reporter: Reporter[Transfer]) -> Path:
    from model_runtime.bundle import read_manifest, verify_directory
    from model_runtime.bundle._archive import write_archive

    reporter.update(("package", 0, 1))
    manifest = read_manifest(directory)
    verify_directory(directory, manifest)
    archive = scratch / f"{manifest.name}-{manifest.version}.tar.gz"
    write_archive(directory, manifest, archive)
    reporter.update(("package", 1, 1))
    return archive
