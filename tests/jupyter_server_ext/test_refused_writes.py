"""Refused uploads leave the connection usable: the client's next request on it goes through.

The extension decides before reading a request's body whether to forward it (login, XSRF,
authorization, allowlist, size, configuration). A refused body must not become the "next
request" of a kept-alive connection, nor be reset away with the answer while the client is
still sending it. These tests speak HTTP/1.1 by hand over one socket (:class:`Wire`), to see
exactly what goes over the connection, and use a pooled ``httpx`` client as a program would.
The service is the echoing upstream of the conftest, which records what reaches it: no
refused body may.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from jupyter_server.auth.authorizer import Authorizer
from traitlets.config import Config

from jupyter_extension.serverext import handlers

from .conftest import UPSTREAM_TOKEN, EchoUpstream

BASE = "/a%40b/"
"""pytest-jupyter's base URL."""
MAX_BODY = 4_000
"""The extension's ``max_body_size`` here."""
SMALL = 10_000
"""A refused body the extension reads (below ``DRAIN_LIMIT``; above ``MAX_BODY``)."""
LARGE = 3 * 1024 * 1024
"""A refused body the extension answers before reading (above ``DRAIN_LIMIT``)."""
HUGE = 16 * 1024 * 1024
"""Larger than the socket buffers: an answer followed by a plain close is reset away."""
XSRF = "2|00000000|" + "ab" * 16 + "|1"
"""A well-formed XSRF token (any value passes when cookie and header agree)."""
WAIT = 10.0
"""Seconds a test waits for an answer before it fails."""


@dataclass
class Answer:
    """A response as read off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def detail(self) -> str:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        return str(json.loads(self.body)["detail"])


class Wire:
    """One HTTP/1.1 connection to the Jupyter server, written and read by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> None:
        """Send a request; a ``body`` goes with its Content-Length unless ``headers`` say
        otherwise (chunked, or a larger length whose rest :meth:`send_rest` sends)."""
        lines = [f"{method} {BASE}{path} HTTP/1.1", "Host: 127.0.0.1"]
        if body and "Transfer-Encoding" not in headers:
            headers = {"Content-Length": str(len(body)), **headers}
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        if "Transfer-Encoding" in headers:
            for start in range(0, len(body), 65536):
                chunk = body[start : start + 65536]
                self.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.writer.write(b"0\r\n\r\n")
        else:
            self.writer.write(body)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def answer(self) -> Answer:
        """The next response on the connection (the server sets its Content-Length)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = {}
        for line in header_lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        body = await asyncio.wait_for(self.reader.readexactly(length), WAIT)
        return Answer(int(status_line.split()[1]), headers, body)

    async def send_rest(self, size: int) -> None:
        """Send ``size`` more bytes of a body, a little at a time."""
        for _ in range(size // SMALL):
            self.writer.write(b"x" * SMALL)
            await asyncio.wait_for(self.writer.drain(), WAIT)
            await asyncio.sleep(0.001)

    async def expect_close(self) -> None:
        """The server ends the connection (EOF or reset) and sends nothing more on it."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), WAIT)
        except ConnectionResetError:
            return
        assert rest == b"", rest[:200]


@pytest.fixture
def wire(http_server_client: Any, http_server_port: Any) -> Callable[[], Any]:
    """Opens :class:`Wire` connections to the test's Jupyter server."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[Wire]:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_server_port[-1])
        try:
            yield Wire(reader, writer)
        finally:
            writer.close()
            with suppress(ConnectionResetError, BrokenPipeError):
                await writer.wait_closed()

    return connect


class NoWritesToReadonly(Authorizer):
    """Authorizes everything but writes to ``.../d/readonly/...``."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return not (action == "write" and "/d/readonly/" in handler.request.path)


@dataclass(frozen=True)
class Refusal:
    """A request the extension refuses before reading its body, and how it answers."""

    name: str
    method: str
    path: str
    status: int
    fragment: str
    login: str = "token"
    """``token``, ``cookie`` (a browser's login, without the XSRF token) or ``none``."""


REFUSALS = [
    Refusal("no login", "POST", "hubserve/d/alice/echo/x", 403, "Forbidden", login="none"),
    Refusal("no xsrf", "POST", "hubserve/d/alice/echo/x", 403, "_xsrf", login="cookie"),
    Refusal("not authorized", "POST", "hubserve/d/readonly/echo/x", 403, "not authorized"),
    Refusal("not forwarded", "POST", "hubserve/api/openapi.json", 404, "not an endpoint"),
    Refusal("method", "PUT", "hubserve/api/me", 405, "PUT is not allowed"),
]
"""Refusals whatever the body's size."""
TOO_LARGE = Refusal("too large", "POST", "hubserve/d/alice/echo/x", 413, "larger than")
"""The refusal of a body above ``MAX_BODY`` (both ``SMALL`` and ``LARGE`` are)."""


class TestRefusedUploads:
    @pytest.fixture
    def hubserve_config(self, echo_upstream: EchoUpstream) -> dict[str, Any]:
        return {
            "service_url": echo_upstream.url,
            "token": UPSTREAM_TOKEN,
            "max_body_size": MAX_BODY,
        }

    @pytest.fixture
    def jp_server_config(self, jp_server_config: Config) -> Config:
        jp_server_config.ServerApp.authorizer_class = NoWritesToReadonly
        return jp_server_config

    @pytest.fixture
    def logins(self, jp_fetch: Any, jp_auth_header: dict[str, str]) -> Callable[..., Any]:
        """The request headers of each kind of login."""

        async def headers(kind: str) -> dict[str, str]:
            if kind == "token":
                return dict(jp_auth_header)
            if kind == "none":  # but the XSRF token, which is checked first
                return {"Cookie": f"_xsrf={XSRF}", "X-XSRFToken": XSRF}
            response = await jp_fetch("hubserve", "config")
            cookies = [v.split(";", 1)[0] for v in response.headers.get_list("Set-Cookie")]
            return {"Cookie": "; ".join(c for c in cookies if c.startswith("username-"))}

        return headers

    @pytest.fixture(autouse=True)
    def nothing_refused_is_forwarded(self, echo_upstream: EchoUpstream) -> Iterator[None]:
        yield
        assert [seen["method"] for seen in echo_upstream.seen] == ["GET"] * len(echo_upstream.seen)

    async def good_request(self, wire: Wire, auth: dict[str, str]) -> None:
        await wire.send("GET", "hubserve/api/me", auth)
        answer = await wire.answer()
        assert answer.status == 200, answer
        assert answer.body == b"size,0\n"  # the echo upstream's answer

    async def test_small_refused_bodies_are_read_and_the_connection_kept(
        self, wire: Any, logins: Any, jp_auth_header: dict[str, str]
    ) -> None:
        """Every refusal of a small body, then a good request, all over one connection."""
        async with wire() as connection:
            for refusal in [*REFUSALS, TOO_LARGE]:
                await connection.send(
                    refusal.method, refusal.path, await logins(refusal.login), b"x" * SMALL
                )
                answer = await connection.answer()
                assert answer.status == refusal.status, (refusal, answer)
                assert refusal.fragment in answer.detail(), refusal
                assert "connection" not in answer.headers, refusal
            await self.good_request(connection, jp_auth_header)

    @pytest.mark.parametrize(
        "refusal",
        [*REFUSALS, TOO_LARGE],
        ids=lambda refusal: refusal.name,
    )
    async def test_large_refused_bodies_are_answered_then_the_connection_closed(
        self, refusal: Refusal, wire: Any, logins: Any
    ) -> None:
        """The answer comes before the body is read, says ``Connection: close``, and arrives."""
        async with wire() as connection:
            await connection.send(
                refusal.method, refusal.path, await logins(refusal.login), b"x" * LARGE
            )
            answer = await connection.answer()
            assert answer.status == refusal.status, answer
            assert refusal.fragment in answer.detail()
            assert answer.headers["connection"] == "close"
            assert UPSTREAM_TOKEN.encode() not in answer.body
            await connection.expect_close()

    async def test_a_pooled_client_gets_every_refusal_and_goes_on(
        self, http_server_port: Any, logins: Any, jp_auth_header: dict[str, str]
    ) -> None:
        """What a program sees: httpx, one pool, a refused large upload, then its next call."""
        url = f"http://127.0.0.1:{http_server_port[-1]}{BASE}"
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            for refusal in [*REFUSALS, TOO_LARGE]:
                client.cookies.clear()
                response = await client.request(
                    refusal.method,
                    refusal.path,
                    headers=await logins(refusal.login),
                    content=b"x" * HUGE,
                )
                assert response.status_code == refusal.status, (refusal, response.text)
                response = await client.get("hubserve/api/me", headers=jp_auth_header)
                assert response.status_code == 200, (refusal, response.text)

    async def test_a_refused_chunked_body_is_answered_then_the_connection_closed(
        self, wire: Any, jp_auth_header: dict[str, str]
    ) -> None:
        async with wire() as connection:
            await connection.send(
                "POST",
                "hubserve/api/openapi.json",
                {**jp_auth_header, "Transfer-Encoding": "chunked"},
                b"x" * SMALL,
            )
            answer = await connection.answer()
            assert (answer.status, answer.headers["connection"]) == (404, "close")
            await connection.expect_close()

    async def test_a_chunked_body_too_large_is_refused_midway(
        self, wire: Any, jp_auth_header: dict[str, str]
    ) -> None:
        """Its length shows only as it arrives: the call to the service is broken off."""
        async with wire() as connection:
            headers = {**jp_auth_header, "Transfer-Encoding": "chunked"}
            await connection.send("POST", "hubserve/d/alice/echo/x", headers, b"x" * LARGE)
            answer = await connection.answer()
            assert (answer.status, answer.headers["connection"]) == (413, "close")
            assert f"larger than {MAX_BODY} bytes" in answer.detail()
            await connection.expect_close()

    async def test_expect_100_continue_gets_the_refusal_instead(self, wire: Any) -> None:
        """The client is told not to send the body: no ``100 Continue``, the answer, the end."""
        async with wire() as connection:
            headers = {"Content-Length": str(LARGE), "Expect": "100-continue"}
            await connection.send("POST", "hubserve/d/alice/echo/x", headers)
            answer = await connection.answer()
            assert (answer.status, answer.headers["connection"]) == (403, "close")
            await connection.expect_close()

    async def test_the_server_stops_listening_to_a_refused_body(
        self, wire: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The rest of a refused body is dropped only so long: bytes, then seconds."""
        monkeypatch.setattr(handlers, "LINGER_BYTES", 2 * SMALL)
        monkeypatch.setattr(handlers, "LINGER_SECONDS", 0.5)
        path = "hubserve/d/alice/echo/x"
        async with wire() as connection:
            await connection.send("POST", path, {"Content-Length": str(LARGE)}, b"x" * SMALL)
            assert (await connection.answer()).status == 403
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await connection.send_rest(LARGE - SMALL)
        async with wire() as connection:
            await connection.send("POST", path, {"Content-Length": str(LARGE)}, b"x" * SMALL)
            assert (await connection.answer()).status == 403
            await connection.expect_close()  # after LINGER_SECONDS


class TestNotConfigured:
    @pytest.fixture
    def hubserve_config(self) -> dict[str, Any]:
        return {}

    async def test_refused_uploads(self, wire: Any, jp_auth_header: dict[str, str]) -> None:
        path = "hubserve/api/models"
        async with wire() as connection:
            await connection.send("POST", path, jp_auth_header, b"x" * SMALL)
            answer = await connection.answer()
            assert (answer.status, "connection" in answer.headers) == (503, False)
            assert "not configured" in answer.detail()
            await connection.send("POST", path, jp_auth_header, b"x" * LARGE)
            answer = await connection.answer()
            assert (answer.status, answer.headers["connection"]) == (503, "close")
            await connection.expect_close()
