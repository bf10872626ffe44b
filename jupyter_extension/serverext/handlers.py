"""REST handlers under ``{base_url}hubserve/``: the hub service, seen through the Jupyter server.

Why a forwarder: the JupyterLab panel runs in the browser, which holds the Jupyter server's
login cookie but no hub token, and must not get one (any script on the page could read it).
So the panel calls these handlers, which are ordinary jupyter_server API handlers (login,
XSRF protection, authorization all apply as for ``/api/contents``), and they call the hub
service with the server's own token (``c.HubserveExtension.token``), server-side.

* ``GET hubserve/config``: what the panel needs to know, no secrets —
  ``{"service_url", "user", "configured", "reason", "version"}``.
* ``hubserve/api/...`` and ``hubserve/d/<owner>/<name>/<path>``: forwarded to the same path
  under the service URL, if the path shape and method are on the allowlist
  (:mod:`jupyter_extension.serverext._routes`). What goes to the service: method, path, query
  (minus Jupyter's own ``token`` and ``_xsrf`` parameters), body, ``Content-Type``,
  ``Content-Length`` and ``Accept``, and ``Authorization: token <server token>``; never the
  browser's cookies or ``Authorization``. What comes back: status, ``Content-Type``, body, and
  the few headers a client needs (``Content-Disposition``, ``ETag``, ``Retry-After``,
  ``Location`` rewritten to the extension's own URL); never the service's cookies.

Bodies stream both ways (the handler is ``@stream_request_body``): a bundle upload of
gigabytes goes to the service chunk by chunk with backpressure, without being held in memory
or on disk here; downloads and predictions are relayed as they arrive. Errors of the service
(``{"detail": ...}`` JSON, any status) pass through unchanged. Errors of the extension itself
are JSON ``{"detail": ..., "message": ...}`` (``message`` is what JupyterLab's
``ServerConnection.ResponseError`` reads): 404/405 for paths and methods it does not forward,
413 for bodies above ``max_body_size``, 503 when it is not configured or the service cannot
be reached, 504 when the service does not answer in time, 502 when the connection breaks.
Never a traceback, and never the token.

One ``httpx.AsyncClient`` per server (:class:`ServiceClient`, in the tornado settings) pools
the connections to the service. jupyter_server has no shutdown hook for extensions loaded by
``_load_jupyter_server_extension``, so the pool lives as long as the server process.

Refused uploads. A request refused before its body is read (no login, XSRF, not authorized,
path not forwarded, body above ``max_body_size``, extension not configured) must still leave
the connection in a state the client understands: answering and closing while the client is
still sending makes the kernel reset the connection, which can destroy the answer before the
client reads it, and answering on a kept-alive connection without reading the body makes the
body's bytes the "next request". So, as servers with lingering close do (nginx, Apache):

* a body of known length up to :data:`DRAIN_LIMIT` is read and dropped, then the refusal is
  answered and the connection stays open for the client's next request;
* a larger body, or one of unknown length (chunked), gets the refusal at once, with
  ``Connection: close``; what the client keeps sending is dropped for up to
  :data:`LINGER_BYTES` or :data:`LINGER_SECONDS`, then the connection is closed;
* a request with ``Expect: 100-continue`` gets the refusal instead of the ``100 Continue``,
  with ``Connection: close``, so the client never sends the body.

No byte of a refused body goes to the service: the call to it only starts once the request
has passed every check. The one refusal that comes later is a chunked body that grows above
``max_body_size``: the call to the service is broken off (the service sees an incomplete
upload) and the 413 is answered early, as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import sys
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.utils import HTTP_METHOD_TO_AUTH_ACTION
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError

from ._routes import RouteError, Target, resolve
from ._settings import HubserveExtension

SETTINGS_KEY = "hubserve"
"""Key of the :class:`ServiceClient` in the tornado application settings."""
AUTH_RESOURCE = "hubserve"
"""The jupyter_server authorization resource of every handler here (read: GET, write: rest)."""
PREFIX = "hubserve/"
"""Where the handlers live, under the server's base URL."""

#: Query parameters that belong to the Jupyter server, not to the service.
JUPYTER_QUERY = frozenset({"token", "_xsrf"})
#: Request headers forwarded to the service (everything else stays here).
FORWARDED_REQUEST = ("Content-Type", "Accept")
#: Response headers relayed to the browser besides Content-Type and Content-Length.
RELAYED_RESPONSE = ("Content-Disposition", "ETag", "Retry-After", "Last-Modified")
#: Chunks of a streamed request body buffered between the browser and the service.
PIPE_CHUNKS = 16
#: A refused body of known length up to this size is read before the answer (keep-alive).
DRAIN_LIMIT = 1024 * 1024
#: After an early refusal, bytes of the body dropped before the connection is closed...
LINGER_BYTES = 64 * 1024 * 1024
#: ... and seconds waited for the rest of it.
LINGER_SECONDS = 10.0

log = logging.getLogger(__name__)


def _display(url: str) -> str:
    """``url`` without user info, fit for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ProxyError(web.HTTPError):
    """An error answer of the extension: JSON ``{"detail": ...}`` with optional headers."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status, "%s", detail)
        self.detail = detail
        self.headers = dict(headers or {})


class ServiceClient:
    """The extension's side of one Jupyter server: its settings and its connection pool."""

    def __init__(self, settings: HubserveExtension) -> None:
        self.settings = settings
        self.service_url = settings.service_url
        self.public_url = settings.public_url
        self.problem = settings.problem()
        self._token = settings.token
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
            follow_redirects=False,
            headers={"User-Agent": "hubserve-jupyter-extension"},
        )

    @property
    def configured(self) -> bool:
        return self.problem is None

    def url(self, target: Target, query: str) -> str:
        return self.service_url + target.path + (f"?{query}" if query else "")

    def auth_header(self) -> dict[str, str]:
        return {"Authorization": f"token {self._token}"}

    def service_path(self) -> str:
        """The path of the service URL, e.g. ``/services/hubserve/``."""
        return urlsplit(self.service_url).path or "/"

    def transport_error(self, exc: httpx.HTTPError) -> ProxyError:
        """A clear answer for a failed call to the service (no traceback, no token)."""
        where = _display(self.service_url)
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
            return ProxyError(
                503, f"the hubserve service at {where} cannot be reached ({reason}): is it running?"
            )
        if isinstance(exc, httpx.PoolTimeout):
            return ProxyError(503, "too many requests to the hubserve service are in flight")
        if isinstance(exc, httpx.TimeoutException):
            return ProxyError(
                504,
                f"the hubserve service at {where} did not answer within"
                f" {self.settings.timeout:g} s ({type(exc).__name__})",
            )
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
            return ProxyError(503, f"the hubserve service URL {where} cannot be used: {reason}")
        return ProxyError(
            502,
            f"the connection to the hubserve service at {where} failed"
            f" ({type(exc).__name__}: {reason})",
        )

    async def aclose(self) -> None:
        await self.client.aclose()


class _BodyPipe:
    """Request-body chunks from tornado (``data_received``) to httpx (``content``).

    The queue is bounded, so a browser that uploads faster than the service reads is slowed
    down (tornado awaits ``data_received``). If the call to the service ends early (it
    answered before reading everything, e.g. 413, or could not be reached), the remaining
    chunks are dropped instead of blocking the browser's upload forever.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(PIPE_CHUNKS)
        self.consumer: asyncio.Future[Any] | None = None

    async def _put(self, item: bytes | None) -> None:
        if self.consumer is not None and self.consumer.done():
            return  # nobody reads any more
        try:
            self._queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self._queue.put(item))
        waiting: set[asyncio.Future[Any]] = {put}
        if self.consumer is not None:
            waiting.add(self.consumer)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()

    async def feed(self, chunk: bytes) -> None:
        await self._put(chunk)

    async def close(self) -> None:
        """The body is complete."""
        await self._put(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk


_closing: set[asyncio.Future[None]] = set()  # strong references until the closes are done


def _discard(task: asyncio.Future[httpx.Response]) -> None:
    """Forget a call whose browser went away: retrieve its error, close its response."""

    def done(future: asyncio.Future[httpx.Response]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        closing = asyncio.ensure_future(future.result().aclose())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)

    task.cancel()
    task.add_done_callback(done)


class HubserveHandler(APIHandler):
    """Base of the extension's handlers: JSON errors with ``detail``, the service client."""

    auth_resource = AUTH_RESOURCE

    @property
    def hubserve(self) -> ServiceClient:
        client: ServiceClient = self.settings[SETTINGS_KEY]
        return client

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Like :meth:`APIHandler.write_error`, with the service's ``detail`` key as well.

        Tornado has logged the error already (one line for HTTP errors, the traceback for
        anything else), so nothing is logged here.
        """
        exc_info = kwargs.get("exc_info")
        self.finish(self._error_document(exc_info[1] if exc_info else None))

    def _error_document(self, error: BaseException | None) -> str:
        """The JSON body of the answer to ``error``; sets its headers (``Allow``...) too."""
        detail = self._reason
        if isinstance(error, ProxyError):
            detail = error.detail
            for name, value in error.headers.items():
                self.set_header(name, value)
        elif isinstance(error, web.HTTPError):
            if error.log_message:
                detail = error.log_message % error.args if error.args else error.log_message
        elif error is not None:
            detail = "Unhandled error"  # the traceback is in the server's log, not here
        return json.dumps({"detail": detail, "message": detail})


class ConfigHandler(HubserveHandler):
    """``GET hubserve/config``: the panel's settings. Deliberately without the token."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from model_runtime._version import __version__

        service = self.hubserve
        self.finish(
            json.dumps(
                {
                    "service_url": service.public_url or None,
                    "user": service.settings.user,
                    "configured": service.configured,
                    "reason": service.problem,
                    "version": __version__,
                }
            )
        )


@web.stream_request_body
class ProxyHandler(HubserveHandler):
    """``ANY hubserve/(api/...|d/...)``: forwarded to the service (see the module docs).

    Authentication, XSRF and authorization are checked in :meth:`prepare`, before any byte
    of the body is read, because a streamed body starts flowing to the service from there.
    A request refused there is answered as the module docs say under "Refused uploads".
    """

    _target: Target | None = None
    _pipe: _BodyPipe | None = None
    _upstream: asyncio.Future[httpx.Response] | None = None
    _refusal: web.HTTPError | None = None
    """Why the request is refused, while its body is still to be read."""
    _closing = False
    """The connection ends with the refusal (sent early, or instead of ``100 Continue``)."""
    _dropped = 0
    """Bytes of the refused body read (and dropped)."""
    _received = 0
    """Bytes of the body passed on to the service."""
    _linger: asyncio.TimerHandle | None = None
    """Ends an early refusal's connection after :data:`LINGER_SECONDS`."""

    async def prepare(self, *, _redirect_to_login: bool = True) -> None:
        try:
            await self._admit()
        except web.HTTPError as error:
            if self._finished or not self._has_body():
                raise
            await self._refuse(error)

    async def _admit(self) -> None:
        """Check the request; on success, start streaming its body to the service."""
        await super().prepare()  # login (403 without), XSRF for cookie logins, origin
        if self._finished or self.request.method == "OPTIONS":
            return  # a redirect was sent, or a CORS preflight (APIHandler.options answers)
        method = self.request.method or "GET"
        user = self.current_user
        if not user:
            raise web.HTTPError(403)
        action = HTTP_METHOD_TO_AUTH_ACTION.get(method, "write")
        allowed = self.authorizer.is_authorized(self, user, action, AUTH_RESOURCE)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            raise ProxyError(403, f"not authorized to {action} on resource {AUTH_RESOURCE}")
        try:
            self._target = resolve(method, self._raw_path())
        except RouteError as exc:
            allow = {"Allow": ", ".join(sorted(exc.allow))} if exc.allow else None
            raise ProxyError(exc.status, exc.detail, allow) from None
        if self.hubserve.problem:
            raise ProxyError(503, self.hubserve.problem)
        if self._has_body():
            self._start_streaming()

    async def _refuse(self, error: web.HTTPError) -> None:
        """Refuse a request whose body is unread, so that the connection stays coherent."""
        self._refusal = error
        headers = self.request.headers
        length = headers.get("Content-Length")
        connection = self.request.connection
        if headers.get("Expect", "").lower() == "100-continue":
            self._closing = True  # tornado sends no 100 once answered, and closes after it
            raise error
        if length is not None and int(length) <= DRAIN_LIMIT:
            if isinstance(connection, HTTP1Connection):
                connection.set_max_body_size(DRAIN_LIMIT)  # ServerApp.max_body_size may be less
            return  # data_received drops the body, then the verb answers: keep-alive
        await self._answer_early(error)

    async def _answer_early(self, error: web.HTTPError) -> None:
        """Answer ``error`` now with ``Connection: close``; drop the rest of the body a while."""
        self._refusal = error
        self._closing = True
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(sys.maxsize)  # bounded by LINGER_BYTES instead
        self.log_exception(type(error), error, None)
        self.set_status(error.status_code, reason=error.reason)
        document = self._error_document(error).encode()
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", len(document))
        self.set_header("Connection", "close")
        self.write(document)
        self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._hang_up)
        try:
            await self.flush()
        except StreamClosedError:
            self._hang_up()  # the client is gone; _execute sees the closed body and stops

    async def _end_refusal(self) -> None:
        """The refused request's body is read (and dropped): finish its answer."""
        assert self._refusal is not None
        if not self._closing:
            raise self._refusal  # answered as any error, on a connection that stays open
        with contextlib.suppress(StreamClosedError):
            await self.finish()  # the answer is out already; this ends it (on_finish hangs up)

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        if self._closing and self._headers_written:
            # The refusal is out, and ``@web.authenticated`` refuses a request without login
            # again once its body is read: only the end of the answer is left to send.
            self.finish()
            return
        super().send_error(status_code, **kwargs)

    def log_exception(
        self,
        typ: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._refusal is not None and isinstance(value, web.HTTPError):
            # ``@web.authenticated`` refuses a request without login once more when its body
            # is read, more vaguely: log the refusal itself, once.
            if self._headers_written:
                return  # logged when it was sent
            typ, value, tb = type(self._refusal), self._refusal, None
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        if self._closing:
            self._hang_up()  # the answer said Connection: close
        super().on_finish()

    def _hang_up(self) -> None:
        """Close the connection of a refused request: nothing more is read or answered."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.close()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        refusal, exc_info = self._refusal, kwargs.get("exc_info")
        if refusal is not None and exc_info and isinstance(exc_info[1], web.HTTPError):
            status_code = refusal.status_code  # the refusal, not its repetition (log_exception)
            self.set_status(status_code, reason=refusal.reason)
            kwargs["exc_info"] = (type(refusal), refusal, None)
        if self._closing:
            self.set_header("Connection", "close")
        super().write_error(status_code, **kwargs)

    def _raw_path(self) -> str:
        """The request path after ``{base_url}hubserve/``, still percent-encoded."""
        prefix = url_path_join(self.base_url, PREFIX)
        path = self.request.path
        if not path.startswith(prefix):  # the route guarantees it; be strict anyway
            raise ProxyError(404, "not a hubserve path")
        return path[len(prefix) :]

    def _has_body(self) -> bool:
        headers = self.request.headers
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return True
        try:
            return int(headers.get("Content-Length", "0")) > 0
        except ValueError:
            raise ProxyError(400, "invalid Content-Length") from None

    def _start_streaming(self) -> None:
        """Open the call to the service now; the body follows as the browser sends it."""
        limit = self.hubserve.settings.max_body_size
        length = self.request.headers.get("Content-Length")
        if length is not None and int(length) > limit:
            raise ProxyError(413, f"the request body is larger than {limit} bytes")
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            # Instead of ServerApp.max_body_size. A chunked body is counted in data_received
            # instead, for a clear 413 rather than tornado's bare 400.
            connection.set_max_body_size(limit if length is not None else sys.maxsize)
        self._pipe = _BodyPipe()
        self._upstream = asyncio.ensure_future(self._send(self._pipe.chunks()))
        self._pipe.consumer = self._upstream

    async def data_received(self, chunk: bytes) -> None:
        if self._refusal is not None:
            self._dropped += len(chunk)
            if self._closing and self._dropped > LINGER_BYTES:
                self._hang_up()
        elif self._pipe is not None:
            self._received += len(chunk)
            limit = self.hubserve.settings.max_body_size
            if self._received <= limit:
                await self._pipe.feed(chunk)
                return
            # A chunked body too large: the service sees an upload broken off, never all of it.
            if self._upstream is not None:
                _discard(self._upstream)
                self._upstream = None
            await self._answer_early(
                ProxyError(413, f"the request body is larger than {limit} bytes")
            )

    def on_connection_close(self) -> None:
        """The browser went away mid-upload: abandon the call, the service sees a broken body.

        Once the body is complete the call is the verb's (``_upstream`` is ``None`` then): it
        runs to its end, so the service's answer to a complete request is not lost to it.
        """
        if self._upstream is not None:
            _discard(self._upstream)
            self._upstream = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().on_connection_close()

    # -- the call ---------------------------------------------------------------------------

    def _query(self) -> str:
        pairs = parse_qsl(self.request.query, keep_blank_values=True)
        return urlencode([(k, v) for k, v in pairs if k not in JUPYTER_QUERY])

    def _service_headers(self) -> dict[str, str]:
        incoming = self.request.headers
        headers = {name: incoming[name] for name in FORWARDED_REQUEST if name in incoming}
        if "Content-Length" in incoming:
            headers["Content-Length"] = incoming["Content-Length"]
        headers["Accept-Encoding"] = "identity"  # relayed as is, so no content coding
        headers.update(self.hubserve.auth_header())
        return headers

    async def _send(self, content: AsyncIterator[bytes] | None) -> httpx.Response:
        assert self._target is not None
        service = self.hubserve
        request = service.client.build_request(
            self.request.method or "GET",
            service.url(self._target, self._query()),
            headers=self._service_headers(),
            content=content,
        )
        return await service.client.send(request, stream=True)

    async def _forward(self) -> None:
        if self._refusal is not None:
            await self._end_refusal()
            return
        upstream, self._upstream = self._upstream, None
        try:
            if upstream is not None:
                assert self._pipe is not None
                await self._pipe.close()
                response = await upstream
            elif self._pipe is not None:
                return  # streamed, and the browser went away: nobody to answer
            else:
                response = await self._send(None)
        except httpx.HTTPError as exc:
            raise self.hubserve.transport_error(exc) from None
        try:
            await self._relay(response)
        finally:
            await response.aclose()

    def _location(self, value: str) -> str:
        """A ``Location`` under the service, as the same resource under the extension."""
        parts = urlsplit(value)
        service_path = self.hubserve.service_path()
        if not parts.path.startswith(service_path):
            return value
        rest = parts.path[len(service_path) :]
        local = url_path_join(self.base_url, PREFIX, rest)
        return local + (f"?{parts.query}" if parts.query else "")

    async def _relay(self, response: httpx.Response) -> None:
        self.set_status(response.status_code, reason=response.reason_phrase or None)
        content_type = response.headers.get("Content-Type", "application/octet-stream")
        self.set_header("Content-Type", content_type)
        for name in RELAYED_RESPONSE:
            if name in response.headers:
                self.set_header(name, response.headers[name])
        if "Location" in response.headers:
            self.set_header("Location", self._location(response.headers["Location"]))
        length = response.headers.get("Content-Length")
        if length is not None and response.status_code not in (204, 304):
            self.set_header("Content-Length", length)
        try:
            async for chunk in response.aiter_raw():
                self.write(chunk)
                await self.flush()
            await self.finish(set_content_type=content_type)
        except StreamClosedError:
            log.info("hubserve: the client went away during %s", self.request.path)
        except httpx.HTTPError as exc:
            # Headers are out: tornado can only cut the connection, which tells the client.
            raise self.hubserve.transport_error(exc) from None

    # -- the verbs ----------------------------------------------------------------------------

    @web.authenticated
    async def get(self) -> None:
        await self._forward()

    @web.authenticated
    async def post(self) -> None:
        await self._forward()

    @web.authenticated
    async def put(self) -> None:
        await self._forward()

    @web.authenticated
    async def patch(self) -> None:
        await self._forward()

    @web.authenticated
    async def delete(self) -> None:
        await self._forward()


def default_handlers(base_url: str) -> list[tuple[str, type[HubserveHandler]]]:
    """The extension's routes under ``base_url``."""
    return [
        (url_path_join(base_url, PREFIX, "config"), ConfigHandler),
        (url_path_join(base_url, PREFIX, r"(?:api|d)/.*"), ProxyHandler),
    ]
