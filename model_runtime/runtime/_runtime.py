"""The serving state of one loaded service: executor, batchers, jobs, metrics, readiness.

Every model call runs on one dedicated thread (the *model thread*): torch parallelises inside
an operator with its own threads, and running several calls at once would only make them
fight over the same cores. Batchable APIs reach that thread through an
:class:`~._batching.AdaptiveBatcher`; the others are queued on it directly. Calls run under
``torch.inference_mode`` when torch is loaded: no autograd bookkeeping.

A runtime is *ready* only after every API that can be exercised with a synthetic input (an
array with a fully known shape and dtype) has been called once, so the first real request
does not pay for lazy initialisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HubserveError
from ..service import ApiSpec, Service
from ..store import StoreSettings
from . import _codecs
from ._batching import AdaptiveBatcher
from ._jobs import JobError, JobManager, JobStatus
from ._locations import JobCaller, check_allowed, open_location
from ._metrics import RuntimeMetrics
from ._settings import RuntimeSettings

log = logging.getLogger("hubserve.runtime")


def _inference_mode() -> contextlib.AbstractContextManager[Any]:
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def _on_model_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        with _inference_mode():
            return func(*args)

    return run


class CallTimeout(HubserveError):
    """The model did not answer a request within ``request_timeout`` (the app answers 504)."""


class Runtime:
    """One service being served; created before the app, started by its lifespan."""

    def __init__(self, service: Service, settings: RuntimeSettings) -> None:
        self.service = service
        self.settings = settings
        manifest = service.manifest
        self.name = service.name
        self.version = manifest.version if manifest is not None else "unversioned"
        self.metrics = RuntimeMetrics(self.name, self.version)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="hubserve-model")
        self.batchers: dict[str, AdaptiveBatcher] = {}
        self.path_apis = {n: s for n, s in service.apis.items() if s.input.kind == "path"}
        self.jobs: JobManager | None = None
        self.ready = False
        self.started_at = time.time()

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def batching_of(self, spec: ApiSpec) -> tuple[int, float]:
        override = self.settings.batching.get(spec.name)
        size = spec.batching.max_batch_size
        wait = spec.batching.max_latency_ms
        if override is not None:
            size = override.max_batch_size or size
            wait = override.max_latency_ms if override.max_latency_ms is not None else wait
        return size, wait

    async def start(self) -> None:
        for spec in self.service.apis.values():
            if not spec.batchable:
                continue
            size, wait = self.batching_of(spec)
            batcher = AdaptiveBatcher(
                spec.name,
                _on_model_thread(spec.func),
                concat=_codecs.concat,
                split=_codecs.split,
                rows=partial(_codecs.batch_size, spec.input),
                executor=self.executor,
                max_batch_size=size,
                max_latency_ms=wait,
                max_queue_rows=self.settings.max_queue_rows,
                stats=self.metrics,
            )
            batcher.start()
            self.batchers[spec.name] = batcher
        if self.path_apis:
            self.jobs = JobManager(
                {name: spec.func for name, spec in self.path_apis.items()},
                work_dir=self._work_dir(),
                open_location=partial(
                    open_location,
                    s3=StoreSettings().s3_credentials(),
                    confine_links=bool(self.settings.job_locations),
                ),
            )
            self.jobs.start()
        if self.settings.warmup:
            await self.warm_up()
        self.ready = True

    def _work_dir(self) -> Path:
        import tempfile

        base = self.settings.work_dir or Path(tempfile.gettempdir())
        path = base / f"hubserve-jobs-{self.name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def warm_up(self) -> None:
        for spec in self.service.apis.values():
            sample = _synthetic_input(spec)
            if sample is None:
                continue
            started = time.perf_counter()
            try:
                await self.call(spec, sample)
            except Exception as exc:  # user code: a failed warm-up must not stop the server
                log.warning("warm-up of API %s failed: %s: %s", spec.name, type(exc).__name__, exc)
            else:
                log.info(
                    "warmed up %s in %.1f ms", spec.name, (time.perf_counter() - started) * 1e3
                )

    async def call(self, spec: ApiSpec, value: Any) -> Any:
        """The API's result for ``value``, within ``request_timeout`` or :class:`CallTimeout`.

        A call that times out still runs to its end on the model thread (a thread cannot be
        interrupted); only its caller stops waiting, and a queued request leaves the queue.
        """
        timeout = self.settings.request_timeout
        try:
            async with asyncio.timeout(timeout) as scope:
                return await self._call(spec, value)
        except TimeoutError:
            if not scope.expired():  # raised by the API's own code: its failure, not ours
                raise
            raise CallTimeout(f"{spec.name} did not answer within {timeout:g} s") from None

    async def _call(self, spec: ApiSpec, value: Any) -> Any:
        batcher = self.batchers.get(spec.name)
        if batcher is not None:
            rows = _codecs.batch_size(spec.input, value)
            if rows > self.settings.max_queue_rows:  # could never be queued: not a 503
                raise _codecs.CodecError(
                    f"{rows} rows in one request; this server takes at most"
                    f" {self.settings.max_queue_rows}",
                    413,
                )
            return await batcher.submit(value)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, _on_model_thread(spec.func), value)

    def submit_job(
        self, api: str, input: str, output: str, *, pattern: str | None, user: str | None
    ) -> JobStatus:
        """Queue a batch job for ``user`` (the gateway's ``x-hubserve-user``), inside the
        ``job_locations`` that apply to that caller; blocks while the locations are checked.

        Raises :class:`~._locations.LocationError` for a location outside them.
        """
        if self.jobs is None:
            raise JobError("this model has no path APIs, so no batch jobs", 404)
        caller = self.job_caller(user)
        if api in self.path_apis:  # an unknown API is a 404, whatever the locations
            for uri in (input, output):
                check_allowed(uri, self.settings.job_locations, caller)
        return self.jobs.submit(api, input, output, pattern=pattern, owner=caller.name)

    def job_caller(self, user: str | None) -> JobCaller:
        """Who calls, from the gateway's ``x-hubserve-user`` header ``user``: trusted only
        when this runtime requires the gateway's secret."""
        return JobCaller.from_header(user, trusted=self.settings.api_token is not None)

    async def stop(self) -> None:
        """Stop taking work, finish what is queued, then release the model thread."""
        self.ready = False
        await asyncio.gather(*(b.stop(drain=True) for b in self.batchers.values()))
        if self.jobs is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.jobs.stop)
        self.executor.shutdown(wait=True)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "ready": self.ready,
            "apis": [
                {
                    "name": spec.name,
                    "path": f"/{spec.name}",
                    "input": spec.input.to_json(),
                    "output": spec.output.to_json(),
                    "batchable": spec.batchable,
                    "doc": spec.doc,
                }
                for spec in self.service.apis.values()
            ],
        }


def _synthetic_input(spec: ApiSpec) -> Any:
    """Zeros of the declared shape (one row for wildcards) when dtype and shape are known."""
    io = spec.input
    if io.kind not in ("ndarray", "tensor") or io.shape is None or io.dtype is None:
        return None
    if io.dtype in ("object", "str", "bfloat16"):
        return None
    shape = tuple(1 if d == -1 else d for d in io.shape)
    array = np.zeros(shape, dtype=io.dtype)
    if io.kind == "tensor":
        import torch

        return torch.from_numpy(array)
    return array
