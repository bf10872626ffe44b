"""The prediction gateway: ``ANY {prefix}d/<owner>/<name>/<path>`` → a replica's ``/<path>``.

Every call is authenticated like any other route (hub token or browser session, see
:mod:`hub_service.auth`), then authorized against the deployment's grants
(:func:`hub_service.access.can_call`: owner, admins, granted users and groups, or every hub
user when public). The gateway then picks the ready replica with the fewest requests in flight
(:meth:`hub_service.backends.Backend.choose`) and forwards the request — method, path below
the deployment, query, body, headers — and streams the answer back. Runtime APIs, Open
Inference Protocol v2 routes (``v2/...``) and batch-job routes (``jobs/...``) all pass through
unchanged.

What does *not* pass: the caller's credentials. ``Authorization`` and ``Cookie`` headers are
dropped (a model's code never sees a hub token) and replaced by the deployment's secret in
``x-hubserve-token``, the only thing runtimes accept; ``x-hubserve-user`` tells the runtime
who called. Hop-by-hop headers are dropped both ways.

Bodies stream both ways. A request body of known, small size (up to 1 MiB, i.e. most
predictions) is read first, so when a replica cannot be connected to (it just crashed) the
call is retried on another ready replica instead of failing; larger bodies stream straight
through and are not retried. With no ready replica the answer is 503 with ``Retry-After`` and
the deployment's phase; a replica that fails mid-answer gives 502, a timeout 504.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from ._state import ServiceState
from .access import can_call
from .auth import HubUser, require_user
from .backends import Endpoint

log = logging.getLogger("hubserve.gateway")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
#: Request bodies up to this size are buffered, so a failed connection can be retried.
REPLAYABLE_BODY = 1024 * 1024
RETRIES = 2
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
#: Request headers never forwarded: credentials of the caller, and what the proxy sets itself.
DROPPED_REQUEST = HOP_BY_HOP | {"host", "authorization", "cookie", "x-hubserve-token"}
DROPPED_RESPONSE = HOP_BY_HOP | {"set-cookie"}


def _request_headers(request: Request, user: HubUser, secret: str) -> list[tuple[str, str]]:
    connection = request.headers.get("connection", "")
    named = {token.strip().lower() for token in connection.split(",") if token.strip()}
    headers = [
        (key, value)
        for key, value in request.headers.items()
        if key not in DROPPED_REQUEST and key not in named and not key.startswith("x-hubserve-")
    ]
    headers.append(("x-hubserve-token", secret))
    headers.append(("x-hubserve-user", user.name))
    client = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-for")
    headers.append(("x-forwarded-for", f"{forwarded}, {client}" if forwarded else client))
    return headers


def _response_headers(response: httpx.Response) -> dict[str, str]:
    return {
        key: value for key, value in response.headers.items() if key.lower() not in DROPPED_RESPONSE
    }


class Gateway:
    """Routes calls to deployments (see the module docstring)."""

    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.router = APIRouter(tags=["gateway"])
        self._client: httpx.AsyncClient | None = None
        for method in METHODS:  # one documented operation per method
            self.router.add_api_route(
                "/d/{owner}/{name}/{path:path}",
                self.forward,
                methods=[method],
                operation_id=f"gateway_{method.lower()}",
                summary=f"{method} a deployment's route",
            )
        self.router.add_api_route(
            "/d/{owner}/{name}", self.forward, methods=METHODS, include_in_schema=False
        )

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.state.settings.gateway_timeout, connect=self.state.settings.connect_timeout
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def forward(
        self,
        owner: str,
        name: str,
        request: Request,
        user: Annotated[HubUser, Depends(require_user)],
        path: str = "",
    ) -> Response:
        """Call the deployment ``owner/name``: ``path`` is the runtime route (an API name,
        ``v2/...``, ``jobs/...``, ``docs``)."""
        route = self.state.routes.get(f"{owner}/{name}")
        if route is None:
            raise HTTPException(404, f"deployment {owner}/{name} not found")
        if not can_call(user, owner, route.grants):
            raise HTTPException(403, f"{user.name} may not call the deployment {owner}/{name}")
        length = request.headers.get("content-length")
        body: bytes | AsyncIterator[bytes]
        replayable = length is not None and length.isdigit() and int(length) <= REPLAYABLE_BODY
        body = await request.body() if replayable else request.stream()
        url_path = "/" + path
        if request.url.query:
            url_path += "?" + request.url.query
        headers = _request_headers(request, user, route.secret)
        attempts = 1 + (RETRIES if replayable else 0)
        for attempt in range(attempts):
            endpoint = self.state.backend.choose(owner, name)
            if endpoint is None:
                return self._unavailable(owner, name)
            try:
                return await self._send(endpoint, request.method, url_path, headers, body)
            except httpx.ConnectError:
                if attempt + 1 == attempts:
                    log.warning("no replica of %s/%s accepted the connection", owner, name)
                    raise HTTPException(
                        502, f"the replicas of {owner}/{name} did not accept the call"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        endpoint: Endpoint,
        method: str,
        url_path: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterator[bytes],
    ) -> Response:
        assert self._client is not None, "the gateway is not started"
        upstream = self._client.build_request(
            method, endpoint.address + url_path, headers=headers, content=body
        )
        endpoint.acquire()
        try:
            response = await self._client.send(upstream, stream=True)
        except httpx.ConnectError:
            endpoint.release()
            raise
        except httpx.TimeoutException:
            endpoint.release()
            raise HTTPException(504, "the model did not answer in time") from None
        except httpx.HTTPError as exc:
            endpoint.release()
            log.warning("replica %s failed: %s", endpoint.address, type(exc).__name__)
            raise HTTPException(502, "the model's replica failed while answering") from None

        async def close() -> None:
            await response.aclose()
            endpoint.release()

        return StreamingResponse(
            _relay(response),
            status_code=response.status_code,
            headers=_response_headers(response),
            background=BackgroundTask(close),
        )

    def _unavailable(self, owner: str, name: str) -> Response:
        status = self.state.backend.status(owner, name)
        detail = (
            f"deployment {owner}/{name} has no ready replica"
            f" ({status.phase}: {status.ready}/{status.desired} ready)"
        )
        if status.message:
            detail += f": {status.message}"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; a replica dying mid-answer ends the stream."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("replica stream broke off: %s", type(exc).__name__)
