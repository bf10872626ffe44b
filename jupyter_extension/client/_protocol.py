"""The client's operations without I/O: what to send, and what the answers mean.

Every client operation (:mod:`._operations`) is written once, as a generator that *yields
steps* and receives their results:

* :class:`Call` -- an HTTP request to the service, with the function that parses the answer;
* :class:`Sleep` -- wait a while (polling a deployment or a job);
* :class:`Blocking` -- run a slow local function (packaging a bundle).

:class:`~._sync.Client` runs these steps with blocking I/O, :class:`~._async.AsyncClient`
with ``await`` (and packaging in a worker thread). So both clients build the same requests,
parse answers and raise errors the same way, and only the I/O differs (the "sans-I/O"
pattern). A failed step's exception is thrown back into the operation, which may handle it
or let it propagate; operations clean up in ``finally`` blocks either way.

Request bodies that are files (:class:`Upload`) stream from disk with progress, answers that
are files (:class:`Sink`) stream to disk; each client reads and writes them with its own I/O.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError

from ._errors import ServerError, error_from_response, redact
from ._progress import Reporter, Transfer

T = TypeVar("T")

#: Bytes read from or written to disk at a time when streaming files.
CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    """A file sent as the request body, streamed, with progress as stage ``upload``."""

    path: Path
    reporter: Reporter[Transfer]

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def chunks(self) -> Iterator[bytes]:
        """The body for a blocking client."""
        size, done = self.size, 0
        self.reporter.update(("upload", 0, size))
        with self.path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                done += len(chunk)
                yield chunk
                self.reporter.update(("upload", done, size))

    async def achunks(self) -> AsyncIterator[bytes]:
        """The body for an async client: file reads run in a worker thread."""
        import anyio

        size, done = self.size, 0
        self.reporter.update(("upload", 0, size))
        async with await anyio.open_file(self.path, "rb") as file:
            while chunk := await file.read(CHUNK_BYTES):
                done += len(chunk)
                yield chunk
                self.reporter.update(("upload", done, size))


@dataclass(frozen=True)
class Sink:
    """Where a file answer goes: ``dest`` itself, or a file named by the answer in it."""

    dest: Path
    reporter: Reporter[Transfer]

    def target(self, response: httpx.Response) -> Path:
        """The file to write: inside ``dest`` when it is a directory (the answer's name)."""
        if not self.dest.is_dir():
            return self.dest
        match = re.search(
            r'filename="?([^";/\\]+)"?', response.headers.get("content-disposition", "")
        )
        name = match.group(1) if match else "bundle.tar.gz"
        return self.dest / name

    def total(self, response: httpx.Response) -> int:
        length = response.headers.get("content-length", "")
        return int(length) if length.isdigit() else 0


@dataclass(frozen=True, eq=False)
class Call(Generic[T]):
    """One request to the service (``path`` relative to its URL) and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Sequence[tuple[str, str]] = ()
    content: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: Upload | None = None
    sink: Sink | None = None
    #: At least this many seconds per network operation, when the client's default is less
    #: (an upload waits while the service verifies the bundle).
    min_timeout: float | None = None

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.upload is not None:
            # A known length lets the service refuse an oversize upload before it starts.
            headers["Content-Length"] = str(self.upload.size)
        return headers


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, eq=False)
class Blocking(Generic[T]):
    """A slow local function: run as is by the blocking client, in a thread by the async one."""

    function: Callable[[], T]


Step = Call[Any] | Sleep | Blocking[Any]
#: An operation: yields steps, receives their results, returns ``T``.
Op = Generator[Step, Any, T]


def auth_headers(token: str) -> dict[str, str]:
    """Headers of every request: the hub token (never in URLs) and who is calling."""
    return {"Authorization": f"token {token}", "User-Agent": f"hubserve-client/{_version()}"}


@functools.cache
def _version() -> str:
    # From the installed metadata: importing model_runtime for it would cost a fifth of a second.
    try:
        return importlib.metadata.version("hubserve")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source checkout
        return "unknown"


def http_timeout(default: float, call: Call[Any]) -> float:
    """The timeout of one call: the client's, raised to the call's minimum if it has one."""
    return default if call.min_timeout is None else max(default, call.min_timeout)


def run(step: Call[T]) -> Op[T]:
    """Perform one call inside an operation, typed: ``value = yield from run(call)``."""
    result: T = yield step
    return result


def finish(call: Call[T], response: httpx.Response, token: str) -> T:
    """The parsed answer to ``call``, or the error it is (the body must have been read)."""
    if response.is_error:
        raise error_from_response(response, token)
    try:
        return call.parse(response)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in exc.errors()[:3]
        )
        raise ServerError(
            redact(f"unexpected answer to {call.method} {call.path}: {problems}", token),
            response.status_code,
        ) from None


# -- answer parsers ---------------------------------------------------------------------------


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def parse_as(kind: type[T]) -> Callable[[httpx.Response], T]:
    """A parser of JSON answers into ``kind`` (a pydantic model or a ``list[...]``)."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:  # building one costs a schema: once per type
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    typed: TypeAdapter[T] = adapter
    return lambda response: typed.validate_json(response.content)


def ignore(response: httpx.Response) -> None:
    """For answers without a body worth reading (204)."""
