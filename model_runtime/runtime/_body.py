"""Reading request bodies with a size limit, refusing before reading when possible.

A body is bounded by ``max_body_bytes``: one whose declared ``Content-Length`` is larger is
refused before a byte of it is read, and a chunked one as soon as it grows past the limit,
so a client cannot make the runtime buffer more than the limit in memory.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Receive


class BodyTooLarge(Exception):
    """The body is larger than the limit: the app answers 413."""


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes before reading them when possible."""
    return await receive_body(request.receive, limit, request.headers.get("content-length"))


async def receive_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    """:func:`read_body` for bare ASGI handlers; ``declared`` is the ``Content-Length``."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):  # the common case: one chunk
        if len(body) > limit:
            raise BodyTooLarge
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
