"""The runtime's HTTP application.

Routes:

* ``POST /<api>`` for each API -- the hot path. These are plain Starlette routes (no
  dependency injection, no pydantic on the request) that read the body once, decode it with
  :mod:`._codecs`, call the model through the runtime and encode the reply in the request's
  own format (or ``Accept``). Their OpenAPI description is generated from the bundle's
  signatures by :mod:`._openapi`, so ``/docs`` still documents them precisely.
* Open Inference Protocol v2 under ``/v2`` (:mod:`._oip`), batch jobs under ``/jobs``.
* ``/healthz`` (alive), ``/readyz`` (model loaded and warmed up), ``/metrics``, ``/``.

Errors are JSON ``{"detail": ...}`` with the right status: 400/413/415/422 for bad input
(422 too when the API function raises :class:`~model_runtime.InvalidInput`), 404 for
unknown routes, 503 + ``Retry-After`` when the queue is full, 504 when the model takes longer
than ``request_timeout``, 500 with the exception's type and message (never a traceback) when
the API's own code fails.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .._version import __version__
from ..errors import InvalidInput
from ..service import ApiSpec
from . import _codecs
from ._batching import Overloaded
from ._body import BodyTooLarge, read_body, receive_body
from ._jobs import ITEMS_PAGE, MAX_ITEMS_FROM, MAX_ITEMS_PAGE, JobError
from ._locations import LocationError, LocationUnavailableError
from ._oip import oip_router
from ._openapi import ERROR, install_openapi
from ._runtime import CallTimeout, Runtime

log = logging.getLogger("hubserve.runtime")

#: Routes that answer without the gateway secret (probes of the deploy backend).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"detail": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class _ApiHandler:
    """One API as a bare ASGI app: no Request or Response objects on the hot path.

    Each request costs a header scan, one body read, decode, the model call (usually through
    the batcher), encode and two ``send`` calls; everything else is bound once, here.
    """

    def __init__(self, runtime: Runtime, spec: ApiSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.name = spec.name
        self.limit = runtime.settings.max_body_bytes
        self.observe = runtime.metrics.observe_request
        self.in_flight = runtime.metrics.in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        self.in_flight.inc()
        status = 500
        try:
            content_type = accept = length = user = None
            for key, value in scope["headers"]:
                if key == b"content-type":
                    content_type = value.decode("latin-1")
                elif key == b"accept":
                    accept = value.decode("latin-1")
                elif key == b"content-length":
                    length = value.decode("latin-1")
                elif key == b"x-hubserve-user":  # whom a job over a path API is for
                    user = value.decode("latin-1")
            status, media_type, payload, headers = await self._handle(
                receive, content_type, accept, length, user
            )
            start: list[tuple[bytes, bytes]] = [
                (b"content-type", media_type.encode("latin-1")),
                (b"content-length", str(len(payload)).encode()),
            ]
            start.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
            await send({"type": "http.response.start", "status": status, "headers": start})
            await send({"type": "http.response.body", "body": payload})
        finally:
            self.in_flight.dec()
            self.observe(self.name, status, time.perf_counter() - started)

    async def _handle(
        self,
        receive: Receive,
        content_type: str | None,
        accept: str | None,
        length: str | None,
        user: str | None,
    ) -> tuple[int, str, bytes, dict[str, str]]:
        spec, name = self.spec, self.name
        try:
            body = await receive_body(receive, self.limit, length)
            if spec.input.kind == "path":  # a folder in, a folder out: run as a batch job
                job = await _submit_job(self.runtime, name, _job_request(body), user)
                return _as_tuple(job)
            decoded = _codecs.decode(spec.input, body, content_type)
            result = await self.runtime.call(spec, decoded.value)
        except BodyTooLarge:
            return _error(413, f"request body is larger than {self.limit} bytes")
        except _codecs.CodecError as exc:  # bad input, found by the codecs or inside the API
            return _error(exc.status_code, str(exc))
        except InvalidInput as exc:  # the API's own code refused this input
            return _error(422, str(exc))
        except CallTimeout as exc:
            return _error(504, str(exc))
        except Overloaded as exc:
            retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
            return _error(503, f"{name} is overloaded; retry later", retry)
        except Exception as exc:  # the API's own code failed on this input
            log.warning("API %s failed: %s: %s", name, type(exc).__name__, exc)
            return _error(500, f"API {name!r} failed: {type(exc).__name__}: {exc}")
        try:
            payload, media_type = _codecs.encode(
                spec.output, result, wire=decoded.wire, accept=accept
            )
        except (TypeError, ValueError) as exc:
            log.error("API %s returned a value that cannot be encoded: %s", name, exc)
            return _error(500, f"API {name!r} returned a value hubserve cannot encode")
        return 200, media_type, payload, {}


def _error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> tuple[int, str, bytes, dict[str, str]]:
    return status, "application/json", orjson.dumps({"detail": message}), headers or {}


def _as_tuple(response: Response) -> tuple[int, str, bytes, dict[str, str]]:
    headers = {
        k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")
    }
    return (
        response.status_code,
        response.media_type or "application/json",
        bytes(response.body),
        headers,
    )


class ApiFastPath:
    """Send ``POST /<api>`` straight to its handler, before FastAPI's router (pure ASGI)."""

    def __init__(self, app: ASGIApp, handlers: dict[str, _ApiHandler]) -> None:
        self.app = app
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.handlers.get(scope["path"])
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


_JOB_BODY = 'expected JSON {"input": "<location>", "output": "<location>", "pattern": "*.fits"}'


def _job_request(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _codecs.CodecError(_JOB_BODY, 400) from None
    if (
        not isinstance(data, dict)
        or not {"input", "output"} <= set(data)
        or not all(isinstance(data[k], str) for k in ("input", "output"))
        or not isinstance(data.get("pattern", ""), str)
    ):
        raise _codecs.CodecError(_JOB_BODY, 422)
    return data


async def _submit_job(
    runtime: Runtime, api: str, body: dict[str, Any], user: str | None
) -> Response:
    """Check the locations and queue the job, off the event loop: listing a folder or a
    bucket can take long, and inference requests must not wait for it."""
    if runtime.jobs is None:
        return error_response(404, "this model has no path APIs, so no batch jobs")
    submit = partial(
        runtime.submit_job,
        api,
        str(body["input"]),
        str(body["output"]),
        pattern=body.get("pattern"),
        user=user,
    )
    try:
        status = await asyncio.get_running_loop().run_in_executor(None, submit)
    except JobError as exc:
        return error_response(exc.status_code, str(exc))
    except LocationUnavailableError as exc:  # the storage is down, not the request wrong
        return error_response(503, str(exc), {"Retry-After": "10"})
    except LocationError as exc:
        return error_response(422, str(exc))
    return Response(
        status.model_dump_json().encode(),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"/jobs/{status.id}"},
    )


def _query_int(request: Request, name: str, default: int, maximum: int) -> int:
    """The query parameter ``name``, an integer from 0 to ``maximum``."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 12 or int(text) > maximum:
        raise JobError(f"{name} must be an integer from 0 to {maximum}", 422)
    return int(text)


def _job_routes(runtime: Runtime) -> list[Route]:
    async def submit(request: Request) -> Response:
        try:
            body = _job_request(await read_body(request, 1024 * 1024))
        except BodyTooLarge:
            return error_response(413, "a job request is at most 1 MiB")
        except _codecs.CodecError as exc:
            return error_response(exc.status_code, str(exc))
        user = request.headers.get("x-hubserve-user")
        return await _submit_job(runtime, request.path_params["api"], body, user)

    def caller(request: Request) -> str | None:
        return runtime.job_caller(request.headers.get("x-hubserve-user")).name

    async def status(request: Request) -> Response:
        if runtime.jobs is None:
            return error_response(404, "this model has no path APIs, so no batch jobs")
        try:
            if request.method == "DELETE":
                job = runtime.jobs.cancel(request.path_params["job_id"], caller(request))
            else:
                job = runtime.jobs.get(
                    request.path_params["job_id"],
                    caller=caller(request),
                    items_from=_query_int(request, "items_from", 0, MAX_ITEMS_FROM),
                    items_limit=_query_int(request, "items_limit", ITEMS_PAGE, MAX_ITEMS_PAGE),
                )
        except JobError as exc:
            return error_response(exc.status_code, str(exc))
        return Response(job.model_dump_json().encode(), media_type="application/json")

    async def listing(request: Request) -> Response:
        jobs = runtime.jobs.list(caller(request)) if runtime.jobs is not None else []
        return Response(
            orjson.dumps([j.model_dump(mode="json") for j in jobs]), media_type="application/json"
        )

    return [
        Route("/jobs", listing, methods=["GET"]),
        Route("/jobs/{api}", submit, methods=["POST"]),
        Route("/jobs/{job_id}", status, methods=["GET", "DELETE"]),
    ]


class GatewayTokenMiddleware:
    """Accept only callers that present the gateway's shared secret (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        presented = b""
        for key, value in scope["headers"]:
            if key == b"x-hubserve-token":
                presented = value
            elif key == b"authorization" and value[:7].lower() == b"bearer ":
                presented = value[7:]
        if not presented:
            response = error_response(401, "this runtime only accepts calls from its gateway")
        elif not hmac.compare_digest(presented, self.token):
            response = error_response(403, "invalid runtime token")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def create_app(runtime: Runtime) -> ASGIApp:
    """The ASGI app serving ``runtime``; its lifespan starts and drains the runtime.

    From the outside in: the gateway-token check (when a token is set), the API fast path,
    then FastAPI for everything else. The fast path sits outside FastAPI's own middleware
    stack, which costs about a sixth of the throughput of a small model.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        log.info("serving %s", runtime.ref)
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title=f"{runtime.name} (hubserve)",
        version=runtime.version,
        description=runtime.service.description or f"Model {runtime.ref} served by hubserve.",
        lifespan=lifespan,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg')}")

    @app.get("/", tags=["runtime"], summary="What this runtime serves")
    async def index() -> dict[str, Any]:
        return {**runtime.describe(), "hubserve": __version__}

    @app.get("/healthz", tags=["runtime"], summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["runtime"],
        summary="Readiness: loaded and warmed up",
        responses={503: ERROR},
    )
    async def readyz() -> Response:
        if runtime.ready:
            return Response(
                orjson.dumps({"status": "ready", "model": runtime.ref}),
                media_type="application/json",
            )
        return error_response(503, "model is loading")

    @app.get(
        "/metrics",
        tags=["runtime"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
    )
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4")

    app.include_router(oip_router(runtime))
    for route in _job_routes(runtime):
        app.router.routes.append(route)
    handlers = {
        f"/{spec.name}": _ApiHandler(runtime, spec) for spec in runtime.service.apis.values()
    }
    for path, handler in handlers.items():
        # Reached only when the fast path did not take the request (e.g. GET -> 405).
        app.router.routes.append(Route(path, handler, methods=["POST"], name=handler.name))
    install_openapi(app, runtime, public=PUBLIC_PATHS)
    outer: ASGIApp = ApiFastPath(app, handlers)
    token = runtime.settings.api_token
    if token is not None and token.get_secret_value():
        outer = GatewayTokenMiddleware(outer, token.get_secret_value())
    return outer
