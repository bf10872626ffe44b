"""Which paths under ``{base_url}hubserve/`` the extension forwards, and how.

The extension is a forwarder with the server's own hub token, so it must not become a way
to reach anything else of the service (or to smuggle ``..`` past its routing). Only the
path shapes of the hub service's documented API pass, each with its methods:

=============================================================  ===========================
``api/me``                                                     GET
``api/models``                                                 GET, POST (upload)
``api/models/<owner>/<name>``                                  GET, DELETE
``api/models/<owner>/<name>/versions/<version>``               GET, DELETE
``api/models/<owner>/<name>/versions/<version>/download``      GET
``api/models/<owner>/<name>/tags/<tag>``                       PUT, DELETE
``api/deployments``                                            GET, POST
``api/deployments/<owner>/<name>``                             GET, PATCH, DELETE
``api/deployments/<owner>/<name>/logs``                        GET
``d/<owner>/<name>/<path...>``                                 GET, POST, PUT, PATCH, DELETE
=============================================================  ===========================

Paths are checked segment by segment after percent-decoding, so ``%2e%2e`` is ``..`` and
``%2F`` is a ``/`` inside a segment: both are refused, as are empty segments (only the
gateway's ``<path>`` may end in ``/``) and control characters. Segments are re-encoded for
the service; names themselves are the service's to validate (it answers 422 or 404).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

ANY = "*"
"""A placeholder segment in :data:`API_ROUTES`: any name."""

API_ROUTES: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    (("api", "me"), frozenset({"GET"})),
    (("api", "models"), frozenset({"GET", "POST"})),
    (("api", "models", ANY, ANY), frozenset({"GET", "DELETE"})),
    (("api", "models", ANY, ANY, "versions", ANY), frozenset({"GET", "DELETE"})),
    (("api", "models", ANY, ANY, "versions", ANY, "download"), frozenset({"GET"})),
    (("api", "models", ANY, ANY, "tags", ANY), frozenset({"PUT", "DELETE"})),
    (("api", "deployments"), frozenset({"GET", "POST"})),
    (("api", "deployments", ANY, ANY), frozenset({"GET", "PATCH", "DELETE"})),
    (("api", "deployments", ANY, ANY, "logs"), frozenset({"GET"})),
)
GATEWAY_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
"""Methods of the ``d/<owner>/<name>/<path>`` gateway (runtime APIs, OIP v2, batch jobs)."""

_BAD_CHARACTERS = re.compile(r"[\x00-\x1f\x7f\\/]")
# Characters left unencoded in forwarded segments (beyond letters, digits and "_.-~"):
# hub user names may hold "@" and "+", OIP and job paths ":".
_SAFE = "@+:,;=!$'()*"


class RouteError(Exception):
    """A request the extension does not forward: 404 (no such path) or 405 (method)."""

    def __init__(self, status: int, detail: str, allow: frozenset[str] = frozenset()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.allow = allow


@dataclass(frozen=True)
class Target:
    """A checked request: the path to append to the service URL, already percent-encoded."""

    path: str
    gateway: bool


def _segments(raw: str) -> list[str]:
    """Decode and check the segments of ``raw`` (``api/...`` or ``d/...``, no leading /)."""
    decoded = [unquote(part, errors="strict") for part in raw.split("/")]
    for index, segment in enumerate(decoded):
        last_of_gateway = index == len(decoded) - 1 and index >= 3 and decoded[0] == "d"
        if segment in (".", "..") or (not segment and not last_of_gateway):
            raise RouteError(404, f"hubserve/{raw}: empty, '.' or '..' path segments")
        if _BAD_CHARACTERS.search(segment):
            raise RouteError(404, f"hubserve/{raw}: bad characters in a path segment")
    return decoded


def _matches(shape: tuple[str, ...], segments: list[str]) -> bool:
    return len(shape) == len(segments) and all(
        want in (ANY, got) for want, got in zip(shape, segments, strict=True)
    )


def resolve(method: str, raw_path: str) -> Target:
    """Check ``method raw_path`` against the allowlist; the service path to call, or raise.

    ``raw_path`` is the part of the request path after ``hubserve/``, still percent-encoded.
    """
    try:
        segments = _segments(raw_path)
    except UnicodeDecodeError:
        raise RouteError(404, f"hubserve/{raw_path}: the path is not UTF-8") from None
    if segments[0] == "d":
        if len(segments) < 4:
            raise RouteError(404, "gateway paths look like hubserve/d/<owner>/<name>/<api>")
        allowed, gateway = GATEWAY_METHODS, True
    else:
        found = [methods for shape, methods in API_ROUTES if _matches(shape, segments)]
        if not found:
            raise RouteError(404, f"hubserve/{raw_path} is not an endpoint of the hub service")
        allowed, gateway = found[0], False
    if method not in allowed:
        raise RouteError(
            405, f"{method} is not allowed on hubserve/{raw_path}", allow=frozenset(allowed)
        )
    return Target("/".join(quote(s, safe=_SAFE) for s in segments), gateway)
