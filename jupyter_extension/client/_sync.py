"""The blocking client: :class:`Client`."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel

from . import _discovery
from ._errors import error_from_transport
from ._models import (
    Deployment,
    HubIdentity,
    Job,
    LogChunk,
    ModelDetail,
    ModelSummary,
    ModelVersion,
)
from ._operations import DeploymentArg, ModelArg, Operations
from ._progress import JobProgress, TransferProgress
from ._protocol import Blocking, Call, Op, Sleep, Step, auth_headers, finish, http_timeout

if TYPE_CHECKING:
    import numpy as np

    from model_runtime import Service

T = TypeVar("T")

__all__ = ["Client"]


class Client:
    """The hubserve service from Python: push models, deploy them, call them.

    In a JupyterHub single-user server, ``Client()`` finds the service (``$HUBSERVE_URL``) and
    the server's token (``$JUPYTERHUB_API_TOKEN``) by itself; elsewhere pass ``url`` (the
    service prefix, e.g. ``https://hub.example.org/services/hubserve/``) and ``token`` (any
    JupyterHub token allowed to use hubserve). Names without an owner (``"iris"``) are the
    caller's own; ``"alice/iris"`` names another user's, where granted.

    Errors raise :class:`~jupyter_extension.client.HubserveClientError` subclasses carrying
    the service's message. Use it as a context manager, or call :meth:`close`, to release
    its connections.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = _discovery.service_url(url)
        self._token = _discovery.api_token(token)
        self.timeout = timeout
        self._ops = Operations(self.url)
        self._http = httpx.Client(
            base_url=self.url,
            headers=auth_headers(self._token),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"Client(url={_discovery.display_url(self.url)!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections (the client is unusable afterwards)."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, op: Op[T]) -> T:
        """Drive an operation: perform each step it yields, send the result back in."""
        try:
            result: Any = None
            error: Exception | None = None
            while True:
                try:
                    step = op.throw(error) if error is not None else op.send(result)
                except StopIteration as stop:
                    value: T = stop.value
                    return value
                result, error = None, None
                try:
                    result = self._perform(step)
                except Exception as exc:  # the operation decides: handle it or let it rise
                    error = exc
        finally:
            op.close()

    def _perform(self, step: Step) -> Any:
        if isinstance(step, Call):
            return self._call(step)
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        if isinstance(step, Blocking):
            return step.function()
        raise TypeError(f"unknown step {step!r}")  # pragma: no cover

    def _call(self, call: Call[T]) -> T:
        request = self._http.build_request(
            call.method,
            call.path,
            params=list(call.params),
            content=call.upload.chunks() if call.upload is not None else call.content,
            headers=call.request_headers(),
            timeout=http_timeout(self.timeout, call),
        )
        try:
            response = self._http.send(request, stream=True)
            try:
                if call.sink is not None and not response.is_error:
                    self._save(call, response)
                else:
                    response.read()
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise error_from_transport(exc, _discovery.display_url(self.url)) from None
        return finish(call, response, self._token)

    @staticmethod
    def _save(call: Call[Any], response: httpx.Response) -> None:
        """Stream a file answer to disk: a temporary name, renamed once complete."""
        assert call.sink is not None
        target = call.sink.target(response)
        total, done = call.sink.total(response), 0
        partial = target.with_name(f".{target.name}.part")
        try:
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
                    done += len(chunk)
                    call.sink.reporter.update(("download", done, total))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    # -- identity -----------------------------------------------------------------------------

    def me(self) -> HubIdentity:
        """Who the token belongs to: hub user name, admin flag, groups, scopes."""
        return self._run(self._ops.me())

    # -- models -------------------------------------------------------------------------------

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
    ) -> ModelVersion:
        """Package ``source`` if needed and upload it as the model's newest version.

        ``source`` is a :class:`model_runtime.Service` (e.g. defined in this notebook), a
        ``"file.py:var"`` or ``"module:var"`` string, a service directory, a bundle directory
        or a ``.tar.gz`` bundle archive. ``tags`` are pointed at the new version; ``owner``
        pushes for another user (hub admins only). ``progress``: ``True`` shows bars,
        ``False`` nothing, or a callable ``progress(stage, done, total)`` with stage
        ``"package"`` or ``"upload"``. The build options (``requirements``, ``labels``,
        ``description``, ``trust_pickle``) are those of :func:`model_runtime.build_bundle`.
        Pushing the same bundle twice is harmless: the version already stored comes back.
        """
        return self._run(
            self._ops.push(
                source,
                tags=tags,
                owner=owner,
                progress=progress,
                requirements=requirements,
                labels=labels,
                description=description,
                trust_pickle=trust_pickle,
            )
        )

    def models(self, owner: str | None = None) -> list[ModelSummary]:
        """Your models (hub admins: everybody's; ``owner`` narrows the list)."""
        return self._run(self._ops.models(owner))

    def model(self, name: str) -> ModelDetail:
        """A model (``[owner/]name``): its versions, newest first, and its tags."""
        return self._run(self._ops.model(name))

    def version(self, ref: str) -> ModelVersion:
        """A version (``[owner/]name[:version-or-tag]``, default ``latest``) and its manifest."""
        return self._run(self._ops.version(ref))

    def download(
        self, ref: str, dest: str | os.PathLike[str], *, progress: TransferProgress = False
    ) -> Path:
        """Save a version's bundle archive to ``dest`` (a file, or a directory to put it in)."""
        return self._run(self._ops.download(ref, dest, progress=progress))

    def tag(self, ref: str, tag: str) -> ModelVersion:
        """Point ``tag`` at the version ``ref`` names (created or moved); returns that version."""
        return self._run(self._ops.tag(ref, tag))

    def untag(self, name: str, tag: str) -> None:
        """Remove ``tag`` from the model ``[owner/]name`` (the version stays)."""
        self._run(self._ops.untag(name, tag))

    def delete_version(self, ref: str, force: bool = False) -> None:
        """Delete the version ``[owner/]name:version``; ``force`` even if deployments run it."""
        self._run(self._ops.delete_version(ref, force=force))

    def delete_model(self, name: str, force: bool = False) -> None:
        """Delete a model with every version and tag; ``force`` even if deployments run it."""
        self._run(self._ops.delete_model(name, force=force))

    # -- deployments ----------------------------------------------------------------------

    def deploy(
        self,
        model: ModelArg,
        *,
        name: str | None = None,
        replicas: int = 1,
        threads: int | None = None,
        batching: Mapping[str, Any] | None = None,
        access: Mapping[str, Any] | BaseModel | None = None,
        owner: str | None = None,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Deployment:
        """Deploy a pushed model version behind ``d/<owner>/<name>/``.

        ``model`` is ``"[owner/]name[:version-or-tag]"`` (default ``latest``) or a
        :class:`ModelVersion`; ``name`` defaults to the model's. ``threads``: torch threads per
        replica; ``batching``: ``{api: {"max_batch_size": .., "max_latency_ms": ..}}``;
        ``access``: ``{"users": [...], "groups": [...], "public": bool}`` (who else may call
        it). Replicas start in the background; ``wait=True`` returns once they are ready
        (:meth:`wait_ready`).
        """
        return self._run(
            self._ops.deploy(
                model,
                name=name,
                owner=owner,
                replicas=replicas,
                threads=threads,
                batching=batching,
                access=access,
                wait=wait,
                timeout=timeout,
            )
        )

    def deployments(self, owner: str | None = None) -> list[Deployment]:
        """The deployments you may manage or call (``owner`` narrows the list)."""
        return self._run(self._ops.deployments(owner))

    def deployment(self, name: DeploymentArg) -> Deployment:
        """A deployment (``[owner/]name``): settings, revisions, live status."""
        return self._run(self._ops.deployment(name))

    def scale(
        self, name: DeploymentArg, replicas: int, *, wait: bool = False, timeout: float = 300.0
    ) -> Deployment:
        """Run ``replicas`` replicas (0 stops them all but keeps the deployment)."""
        return self.update(name, replicas=replicas, wait=wait, timeout=timeout)

    def roll(
        self,
        name: DeploymentArg,
        version: str | ModelVersion,
        *,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Deployment:
        """Roll to another version (or tag) of the same model, without downtime."""
        selector = version if isinstance(version, str) else version.version
        return self.update(name, version=selector, wait=wait, timeout=timeout)

    def rollback(
        self, name: DeploymentArg, *, wait: bool = False, timeout: float = 300.0
    ) -> Deployment:
        """Roll back to the version of the previous revision."""
        return self.update(name, rollback=True, wait=wait, timeout=timeout)

    def update(
        self, name: DeploymentArg, *, wait: bool = False, timeout: float = 300.0, **fields: Any
    ) -> Deployment:
        """Change a deployment: any of ``replicas``, ``version``, ``rollback``, ``resources``
        (or ``threads``), ``batching``, ``access``; ``wait=True`` returns once it is settled."""
        return self._run(self._ops.update(name, fields, wait=wait, timeout=timeout))

    def undeploy(self, name: DeploymentArg) -> None:
        """Stop every replica (in-flight calls finish) and delete the deployment."""
        self._run(self._ops.undeploy(name))

    def logs(self, name: DeploymentArg, tail: int = 200) -> list[LogChunk]:
        """The last ``tail`` lines of each replica's output."""
        return self._run(self._ops.logs(name, tail))

    def wait_ready(
        self,
        name: DeploymentArg,
        timeout: float = 300.0,
        progress: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Wait until exactly the desired replicas are ready and run the newest revision.

        Raises :class:`DeploymentFailed` (with the backend's message) when the deployment
        stays ``failed`` for about 10 s, :class:`HubserveTimeout` after ``timeout`` seconds.
        ``progress`` is called with each state seen.
        """
        return self._run(self._ops.wait_ready(name, timeout=timeout, progress=progress))

    # -- calling --------------------------------------------------------------------------

    def predict(
        self, deployment: DeploymentArg, api: str, data: Any, *, accept: str | None = None
    ) -> Any:
        """Call the API ``api`` of a deployment with ``data``; returns the decoded answer.

        numpy arrays and torch tensors travel as ``.npy`` (the answer comes back as numpy;
        APIs that take JSON get nested lists),
        DataFrames as JSON (a table answer comes back as a DataFrame), PIL images, ``bytes``
        and file paths as file uploads, everything else as JSON. ``accept`` asks for another
        answer format (e.g. ``"application/json"``).
        """
        return self._run(self._ops.predict(deployment, api, data, accept=accept))

    def infer(
        self, deployment: DeploymentArg, api: str, inputs: Mapping[str, Any] | Any
    ) -> dict[str, np.ndarray]:
        """Call ``api`` through the Open Inference Protocol v2; returns the named outputs."""
        result: dict[str, np.ndarray] = self._run(self._ops.infer(deployment, api, inputs))
        return result

    def submit_job(
        self,
        deployment: DeploymentArg,
        api: str,
        input: str,
        output: str,
        *,
        pattern: str | None = None,
    ) -> Job:
        """Start a batch job: the path API ``api`` over every file of ``input`` (a directory,
        ``s3://`` or ``webdav://`` location the replicas can reach), results to ``output``.

        Jobs live in the replica that runs them: follow them with a single-replica deployment.
        """
        return self._run(self._ops.submit_job(deployment, api, input, output, pattern=pattern))

    def job(self, deployment: DeploymentArg, job_id: str | Job) -> Job:
        """A batch job's state and per-file results (all of them, fetched a page at a time)."""
        return self._run(self._ops.job(deployment, job_id))

    def cancel_job(self, deployment: DeploymentArg, job_id: str | Job) -> Job:
        """Cancel a job (a running one stops after its current file)."""
        return self._run(self._ops.cancel_job(deployment, job_id))

    def wait_job(
        self,
        deployment: DeploymentArg,
        job_id: str | Job,
        *,
        timeout: float | None = None,
        progress: JobProgress = True,
    ) -> Job:
        """Wait until a job is over and return it (check its ``state``: a job whose files
        failed is a result, not an error). ``progress``: a bar, nothing, or ``progress(job)``.
        """
        return self._run(self._ops.wait_job(deployment, job_id, timeout=timeout, progress=progress))

    def endpoint(self, deployment: DeploymentArg) -> str:
        """The absolute URL of a deployment (``.../d/<owner>/<name>/``), for curl and others."""
        return self._run(self._ops.endpoint(deployment))
