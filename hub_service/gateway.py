"""The prediction gateway: ``ANY {prefix}d/<owner>/<name>/<path>`` → a replica's ``/<path>``.

Every call is authenticated like any other route (hub token or browser session, through the
same :func:`hub_service.auth.require_user`), rate-limited per hub user (a token bucket shared
by all the user's tokens, :mod:`hub_service._rate_limit`: 429 with ``Retry-After`` beyond
``HUBSERVE_GATEWAY_RATE_LIMIT`` calls per second and ``HUBSERVE_GATEWAY_RATE_BURST`` at once),
then authorized against the deployment's grants (:func:`hub_service.access.can_call`: owner,
admins, granted users and groups, or every hub user when public). The gateway then picks
the ready replica with the fewest requests in flight
(:meth:`hub_service.backends.Backend.choose`) and forwards the request — method, path below
the deployment, query, body, headers — and relays the answer. Runtime APIs, Open Inference
Protocol v2 routes (``v2/...``) and batch-job routes (``jobs/...``) all pass through unchanged.

What does *not* pass: the caller's credentials. ``Authorization`` and ``Cookie`` headers are
dropped (a model's code never sees a hub token) and replaced by the deployment's secret in
``x-hubserve-token``, the only thing runtimes accept; ``x-hubserve-user`` tells the runtime
who called. Tokens are never accepted in URLs, and ``token`` / ``access_token`` query
parameters (where other Jupyter services take them) are dropped too, so a token pasted into a
URL by mistake never reaches a replica. Hop-by-hop headers are dropped both ways, and so is
``Set-Cookie`` from runtimes.

Speed matters here: every prediction pays this hop. So the gateway is plain ASGI in front of
FastAPI's routing (:class:`GatewayMiddleware`), with an aiohttp connection pool to the
replicas (httpx's pool bookkeeping cost more than the model for small requests). Small bodies
with a known length (up to 1 MiB, i.e. most predictions) are read whole, which also makes a
request replayable: when a replica cannot be connected to (it just crashed), the call is
retried on another ready replica instead of failing. Larger bodies stream through both ways
and are not retried. With no ready replica the answer is 503 with ``Retry-After`` and the
deployment's phase; a replica failing before it answers gives 502, a timeout 504; one failing
mid-answer aborts the connection (so the caller cannot mistake half an answer for a whole).

Batch jobs live in the memory of the replica that runs them, so the gateway remembers which
replica accepted each job (from the ``202`` answer to ``POST jobs/<api>``) and sends that
job's status and cancel calls (``jobs/<id>``) to the same replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import unquote

import aiohttp
from fastapi import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._rate_limit import RateLimiter, retry_after
from ._state import Route, ServiceState
from .access import can_call
from .auth import HubUser, LoginRequired, require_user
from .backends import Endpoint
from .oauth import login_required_handler

log = logging.getLogger("hubserve.gateway")

#: Query parameters that carry tokens elsewhere in Jupyter: never forwarded.
_TOKEN_PARAMS = frozenset({"token", "access_token"})

#: Bodies up to this size with a known length are read whole (requests: replayable).
WHOLE_BODY = 1024 * 1024
RETRIES = 2
#: Batch jobs whose replica the gateway remembers (the oldest are forgotten first).
MAX_JOBS = 10_000
_CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Request headers never forwarded: credentials of the caller, and what the client sets itself.
DROPPED_REQUEST = HOP_BY_HOP | {"host", "authorization", "cookie", "content-length"}
DROPPED_RESPONSE = HOP_BY_HOP | {"set-cookie"}


def upstream_headers(
    headers: Iterable[tuple[bytes, bytes]], client: str, user: HubUser, secret: str
) -> dict[str, str]:
    """The headers a replica gets: the caller's, minus credentials and hop-by-hop ones."""
    pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]
    named = {
        token.strip().lower()
        for key, value in pairs
        if key == "connection"
        for token in value.split(",")
        if token.strip()
    }
    forwarded = ""
    out: dict[str, str] = {}
    for key, value in pairs:
        if key == "x-forwarded-for":
            forwarded = value
        elif key not in DROPPED_REQUEST and key not in named and not key.startswith("x-hubserve-"):
            out[key] = value
    out["x-hubserve-token"] = secret
    out["x-hubserve-user"] = user.name
    out["x-forwarded-for"] = f"{forwarded}, {client}" if forwarded else client
    return out


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class Gateway:
    """Routes calls to deployments (see the module docstring); owns the replica connections."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.prefix = state.settings.base_url + "d/"
        self._session: aiohttp.ClientSession | None = None
        #: ``(owner/name, job id)`` → the replica running the job (jobs live in its memory).
        self._jobs: OrderedDict[tuple[str, str], str] = OrderedDict()
        settings = state.settings
        self.limiter = (
            RateLimiter(settings.gateway_rate_limit, settings.gateway_rate_burst)
            if settings.gateway_rate_limit > 0
            else None
        )

    async def start(self) -> None:
        settings = self.state.settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.connect_timeout, sock_read=settings.gateway_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def handles(self, scope: Scope) -> bool:
        return scope["type"] == "http" and str(scope["path"]).startswith(self.prefix)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") or str(scope["path"]).encode()
        rest = raw.decode("latin-1")[len(self.prefix) :]
        owner, _, rest = rest.partition("/")
        name, _, path = rest.partition("/")
        owner, name = unquote(owner), unquote(name)
        request = Request(scope, receive)
        try:
            user = await require_user(request)
            self._limit(user)
            route = self._route(user, owner, name)
        except HTTPException as exc:
            await _error(exc.status_code, str(exc.detail), exc.headers)(scope, receive, send)
            return
        except LoginRequired as exc:
            await (await login_required_handler(request, exc))(scope, receive, send)
            return
        query = _without_tokens(scope.get("query_string", b"").decode("latin-1"))
        target = "/" + path + (f"?{query}" if query else "")
        client = scope["client"][0] if scope.get("client") else ""
        headers = upstream_headers(scope["headers"], client, user, route.secret)
        try:
            await self._forward(scope, receive, send, owner, name, target, headers)
        except _ClientGone:
            log.info("a caller of %s/%s left before sending its whole request", owner, name)

    def _limit(self, user: HubUser) -> None:
        if self.limiter is None:
            return
        wait = self.limiter.acquire(user.name)
        if wait:
            raise HTTPException(
                429,
                f"{user.name} calls deployments faster than"
                f" {self.limiter.rate:g} per second: retry later",
                headers={"Retry-After": retry_after(wait)},
            )

    def _route(self, user: HubUser, owner: str, name: str) -> Route:
        route = self.state.routes.get(f"{owner}/{name}")
        # One answer for both, as the API gives: a caller not granted cannot tell it exists.
        if route is None or not can_call(user, owner, route.grants):
            raise HTTPException(404, f"deployment {owner}/{name} not found")
        return route

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        owner: str,
        name: str,
        target: str,
        headers: dict[str, str],
    ) -> None:
        assert self._session is not None, "the gateway is not started"
        length = _content_length(scope["headers"])
        whole = length is not None and length <= WHOLE_BODY
        body: bytes | AsyncIterator[bytes] = (
            await _read_body(receive) if whole else _stream_body(receive)
        )
        if length is not None:
            headers["content-length"] = str(length)
        key = f"{owner}/{name}"
        job = _job_id(target)
        prefer = self._jobs.get((key, job)) if job else None
        attempts = 1 + (RETRIES if whole else 0)
        refused: set[str] = set()
        for attempt in range(attempts):
            endpoint = self.state.backend.choose(owner, name, prefer, refused)
            if endpoint is None:
                await self._unavailable(owner, name, bool(refused))(scope, receive, send)
                return
            endpoint.acquire()
            try:
                upstream = await self._session.request(
                    scope["method"],
                    endpoint.address + target,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                )
            except aiohttp.ClientConnectorError:
                # Nothing reached the replica (it just died): another may take the call, and
                # if none does, the caller may safely send it again.
                endpoint.release()
                refused.add(endpoint.id)
                if attempt + 1 < attempts:
                    continue
                log.warning("no replica of %s/%s accepted the connection", owner, name)
                await self._unavailable(owner, name, True)(scope, receive, send)
                return
            except asyncio.TimeoutError:
                endpoint.release()
                await _error(504, "the model did not answer in time")(scope, receive, send)
                return
            except aiohttp.ClientError as exc:
                endpoint.release()
                log.warning("replica %s failed: %s", endpoint.address, type(exc).__name__)
                response = _error(502, "the model's replica failed while answering")
                await response(scope, receive, send)
                return
            submits_job = scope["method"] == "POST" and target.startswith("/jobs/")
            await self._relay(upstream, endpoint, send, key if submits_job else None)
            return

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        endpoint: Endpoint,
        send: Send,
        job_of: str | None = None,
    ) -> None:
        """Send the replica's answer on; remember which replica took a new batch job."""
        try:
            headers = [
                (key.lower(), value)
                for key, value in upstream.raw_headers
                if key.decode("latin-1").lower() not in DROPPED_RESPONSE
            ]
            length = upstream.content_length
            if length is not None and length <= WHOLE_BODY:
                data = await upstream.read()
                if job_of is not None and upstream.status == 202:
                    self._remember_job(job_of, data, endpoint)
                await send(
                    {"type": "http.response.start", "status": upstream.status, "headers": headers}
                )
                await send({"type": "http.response.body", "body": data})
                return
            await send(
                {"type": "http.response.start", "status": upstream.status, "headers": headers}
            )
            async for chunk in upstream.content.iter_chunked(_CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("replica %s broke off its answer: %s", endpoint.address, type(exc).__name__)
            raise  # the response has started: abort the connection rather than end it cleanly
        finally:
            upstream.release()
            endpoint.release()

    def _remember_job(self, key: str, body: bytes, endpoint: Endpoint) -> None:
        try:
            job = json.loads(body)["id"]
        except (ValueError, KeyError, TypeError):
            return
        self._jobs[(key, str(job))] = endpoint.id
        while len(self._jobs) > MAX_JOBS:
            self._jobs.popitem(last=False)

    def _unavailable(self, owner: str, name: str, refused: bool = False) -> Response:
        """503 + ``Retry-After``: nothing reached a replica, so the call can be sent again."""
        status = self.state.backend.status(owner, name)
        detail = (
            f"deployment {owner}/{name} has no ready replica"
            f" ({status.phase}: {status.ready}/{status.desired} ready"
            f"{'; a replica refused the connection' if refused else ''})"
        )
        if status.message:
            detail += f": {status.message}"
        return _error(503, detail, {"Retry-After": "1"})


class GatewayMiddleware:
    """Sends ``{prefix}d/...`` to the :class:`Gateway`, everything else to the app."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.gateway.handles(scope):
            await self.gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _job_id(target: str) -> str | None:
    """The job id of a ``/jobs/<id>`` route (job status, cancel), else ``None``."""
    parts = target.split("?", 1)[0].strip("/").split("/")
    return parts[1] if len(parts) == 2 and parts[0] == "jobs" else None


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _stream_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


class _ClientGone(Exception):
    """The caller disconnected before its request body was complete."""


def _without_tokens(query: str) -> str:
    """``query`` minus any :data:`_TOKEN_PARAMS` (checked cheaply first: the common case)."""
    if "token" not in query.lower() and "%" not in query:
        return query
    kept = [
        part
        for part in query.split("&")
        if unquote(part.partition("=")[0]).lower() not in _TOKEN_PARAMS
    ]
    return "&".join(kept)
