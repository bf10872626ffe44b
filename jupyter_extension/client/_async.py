"""The async client: :class:`AsyncClient`, for event loops (Jupyter kernels, web apps)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
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

__all__ = ["AsyncClient"]


class AsyncClient:
    """The async twin of :class:`~jupyter_extension.client.Client`: same methods, awaited.

    Both run the same operations (:mod:`._operations`), so they send the same requests and
    raise the same errors; here network calls are awaited and packaging runs in a worker
    thread, so a kernel's event loop (or a web server's) keeps serving meanwhile. Use it as
    ``async with AsyncClient() as client:``, or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = _discovery.service_url(url)
        self._token = _discovery.api_token(token)
        self.timeout = timeout
        self._ops = Operations(self.url)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=auth_headers(self._token),
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"AsyncClient(url={_discovery.display_url(self.url)!r})"

    # -- plumbing -----------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connections (the client is unusable afterwards)."""
        await self._http.aclose()

    async def close(self) -> None:
        """The same as :meth:`aclose`, named like :meth:`Client.close`."""
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, op: Op[T]) -> T:
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
                    result = await self._perform(step)
                except Exception as exc:  # the operation decides: handle it or let it rise
                    error = exc
        finally:
            op.close()

    async def _perform(self, step: Step) -> Any:
        if isinstance(step, Call):
            return await self._call(step)
        if isinstance(step, Sleep):
            await anyio.sleep(step.seconds)
            return None
        if isinstance(step, Blocking):
            return await anyio.to_thread.run_sync(step.function)
        raise TypeError(f"unknown step {step!r}")  # pragma: no cover

    async def _call(self, call: Call[T]) -> T:
        request = self._http.build_request(
            call.method,
            call.path,
            params=list(call.params),
            content=call.upload.achunks() if call.upload is not None else call.content,
            headers=call.request_headers(),
            timeout=http_timeout(self.timeout, call),
        )
        try:
            response = await self._http.send(request, stream=True)
            try:
                if call.sink is not None and not response.is_error:
                    await self._save(call, response)
                else:
                    await response.aread()
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise error_from_transport(exc, _discovery.display_url(self.url)) from None
        return finish(call, response, self._token)

    @staticmethod
    async def _save(call: Call[Any], response: httpx.Response) -> None:
        """Stream a file answer to disk: a temporary name, renamed once complete."""
        assert call.sink is not None
        target = call.sink.target(response)
        total, done = call.sink.total(response), 0
        partial = target.with_name(f".{target.name}.part")
        try:
            async with await anyio.open_file(partial, "wb") as file:
                async for chunk in response.aiter_bytes():
                    await file.write(chunk)
                    done += len(chunk)
                    call.sink.reporter.update(("download", done, total))
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)

    # -- identity -----------------------------------------------------------------------------

    async def me(self) -> HubIdentity:
        """Like :meth:`Client.me`."""
        return await self._run(self._ops.me())

    # -- models -------------------------------------------------------------------------------

    async def push(
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
        """Like :meth:`Client.push`."""
        return await self._run(
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

    async def models(self, owner: str | None = None) -> list[ModelSummary]:
        """Like :meth:`Client.models`."""
        return await self._run(self._ops.models(owner))

    async def model(self, name: str) -> ModelDetail:
        """Like :meth:`Client.model`."""
        return await self._run(self._ops.model(name))

    async def version(self, ref: str) -> ModelVersion:
        """Like :meth:`Client.version`."""
        return await self._run(self._ops.version(ref))

    async def download(
        self, ref: str, dest: str | os.PathLike[str], *, progress: TransferProgress = False
    ) -> Path:
        """Like :meth:`Client.download`."""
        return await self._run(self._ops.download(ref, dest, progress=progress))

    async def tag(self, ref: str, tag: str) -> ModelVersion:
        """Like :meth:`Client.tag`."""
        return await self._run(self._ops.tag(ref, tag))

    async def untag(self, name: str, tag: str) -> None:
        """Like :meth:`Client.untag`."""
        await self._run(self._ops.untag(name, tag))

    async def delete_version(self, ref: str, force: bool = False) -> None:
        """Like :meth:`Client.delete_version`."""
        await self._run(self._ops.delete_version(ref, force=force))

    async def delete_model(self, name: str, force: bool = False) -> None:
        """Like :meth:`Client.delete_model`."""
        await self._run(self._ops.delete_model(name, force=force))

    # -- deployments ----------------------------------------------------------------------

    async def deploy(
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
        """Like :meth:`Client.deploy`."""
        return await self._run(
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

    async def deployments(self, owner: str | None = None) -> list[Deployment]:
        """Like :meth:`Client.deployments`."""
        return await self._run(self._ops.deployments(owner))

    async def deployment(self, name: DeploymentArg) -> Deployment:
        """Like :meth:`Client.deployment`."""
        return await self._run(self._ops.deployment(name))

    async def scale(
        self, name: DeploymentArg, replicas: int, *, wait: bool = False, timeout: float = 300.0
    ) -> Deployment:
        """Like :meth:`Client.scale`."""
        return await self.update(name, replicas=replicas, wait=wait, timeout=timeout)

    async def roll(
        self,
        name: DeploymentArg,
        version: str | ModelVersion,
        *,
        wait: bool = False,
        timeout: float = 300.0,
    ) -> Deployment:
        """Like :meth:`Client.roll`."""
        selector = version if isinstance(version, str) else version.version
        return await self.update(name, version=selector, wait=wait, timeout=timeout)

    async def rollback(
        self, name: DeploymentArg, *, wait: bool = False, timeout: float = 300.0
    ) -> Deployment:
        """Like :meth:`Client.rollback`."""
        return await self.update(name, rollback=True, wait=wait, timeout=timeout)

    async def update(
        self, name: DeploymentArg, *, wait: bool = False, timeout: float = 300.0, **fields: Any
    ) -> Deployment:
        """Like :meth:`Client.update`."""
        return await self._run(self._ops.update(name, fields, wait=wait, timeout=timeout))

    async def undeploy(self, name: DeploymentArg) -> None:
        """Like :meth:`Client.undeploy`."""
        await self._run(self._ops.undeploy(name))

    async def logs(self, name: DeploymentArg, tail: int = 200) -> list[LogChunk]:
        """Like :meth:`Client.logs`."""
        return await self._run(self._ops.logs(name, tail))

    async def wait_ready(
        self,
        name: DeploymentArg,
        timeout: float = 300.0,
        progress: Callable[[Deployment], None] | None = None,
    ) -> Deployment:
        """Like :meth:`Client.wait_ready`."""
        return await self._run(self._ops.wait_ready(name, timeout=timeout, progress=progress))

    # -- calling --------------------------------------------------------------------------

    async def predict(
        self, deployment: DeploymentArg, api: str, data: Any, *, accept: str | None = None
    ) -> Any:
        """Like :meth:`Client.predict`."""
        return await self._run(self._ops.predict(deployment, api, data, accept=accept))

    async def infer(
        self, deployment: DeploymentArg, api: str, inputs: Mapping[str, Any] | Any
    ) -> dict[str, np.ndarray]:
        """Like :meth:`Client.infer`."""
        result: dict[str, np.ndarray] = await self._run(self._ops.infer(deployment, api, inputs))
        return result

    async def submit_job(
        self,
        deployment: DeploymentArg,
        api: str,
        input: str,
        output: str,
        *,
        pattern: str | None = None,
    ) -> Job:
        """Like :meth:`Client.submit_job`."""
        return await self._run(
            self._ops.submit_job(deployment, api, input, output, pattern=pattern)
        )

    async def job(self, deployment: DeploymentArg, job_id: str | Job) -> Job:
        """Like :meth:`Client.job`."""
        return await self._run(self._ops.job(deployment, job_id))

    async def cancel_job(self, deployment: DeploymentArg, job_id: str | Job) -> Job:
        """Like :meth:`Client.cancel_job`."""
        return await self._run(self._ops.cancel_job(deployment, job_id))

    async def wait_job(
        self,
        deployment: DeploymentArg,
        job_id: str | Job,
        *,
        timeout: float | None = None,
        progress: JobProgress = True,
    ) -> Job:
        """Like :meth:`Client.wait_job`."""
        return await self._run(
            self._ops.wait_job(deployment, job_id, timeout=timeout, progress=progress)
        )

    async def endpoint(self, deployment: DeploymentArg) -> str:
        """Like :meth:`Client.endpoint`."""
        return await self._run(self._ops.endpoint(deployment))
