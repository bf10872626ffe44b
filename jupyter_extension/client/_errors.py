"""The client's exceptions, and how HTTP answers and transport failures turn into them.

Every failure is a :class:`HubserveClientError` with ``status`` (the HTTP status, or ``None``
when no answer came) and ``message`` (the service's own ``detail``), so notebooks, magics and
widgets can show one clean line and branch on the class instead of parsing text. The classes
follow what the caller can do about it: fix the request (:class:`InvalidRequest`), get access
(:class:`Unauthorized`, :class:`Forbidden`), check a name (:class:`NotFound`), resolve a clash
(:class:`Conflict`), retry later (:class:`ServiceUnavailable`), or report a bug
(:class:`ServerError`).

Messages never contain the token: the service promises that for its own answers, and
:func:`error_from_response` also removes the token from anything else that answers (a proxy,
a misconfigured URL) before it reaches a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import orjson

if TYPE_CHECKING:
    from ._models import Deployment

__all__ = [
    "ConfigurationError",
    "Conflict",
    "DeploymentFailed",
    "Forbidden",
    "HubserveClientError",
    "HubserveTimeout",
    "InvalidRequest",
    "NotFound",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
]

#: Longest message taken from a body that is not the service's JSON (an HTML error page).
_MAX_FOREIGN_CHARS = 300


class HubserveClientError(Exception):
    """Any failure of a hubserve client call.

    ``status`` is the HTTP status of the answer (``None`` when there was none, e.g. the
    service could not be reached); ``message`` is the service's explanation.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self) -> str:
        # One line, whatever the service put in its message: notebooks and magics print it.
        return " ".join(self.message.split())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, status={self.status})"


class ConfigurationError(HubserveClientError):
    """The client does not know where the service is or which token to use."""


class ServiceUnavailable(HubserveClientError):
    """The service (or the deployment) cannot answer now: unreachable, timed out, or 503.

    ``retry_after`` is the delay the service suggested, in seconds, when it gave one.
    """

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unauthorized(HubserveClientError):
    """401: the service got no usable credentials: none, or an invalid, expired or revoked
    token."""


class Forbidden(HubserveClientError):
    """403: the token is valid but lacks the scope to use hubserve, or may not do this."""


class NotFound(HubserveClientError):
    """404: no such model, version, tag, deployment or API (or none visible to the caller)."""


class Conflict(HubserveClientError):
    """409: the request clashes with the current state (exists already, still in use...)."""


class InvalidRequest(HubserveClientError, ValueError):
    """400/413/415/422: the request itself is wrong; the message says how.

    Also raised before sending anything for arguments the client can check itself, hence a
    :class:`ValueError` as well.
    """


class ServerError(HubserveClientError):
    """A 5xx other than 503: the service or a model replica failed."""


class DeploymentFailed(HubserveClientError):
    """A deployment stayed in the ``failed`` phase while waiting for it to become ready.

    ``deployment`` is its last state, whose ``status`` tells what the replicas went through.
    """

    def __init__(self, message: str, deployment: Deployment | None = None) -> None:
        super().__init__(message)
        self.deployment = deployment


class HubserveTimeout(HubserveClientError, TimeoutError):
    """Waiting (for a deployment or a job) took longer than the given timeout."""


_BY_STATUS: dict[int, type[HubserveClientError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    503: ServiceUnavailable,
}


def error_for_status(
    status: int, message: str, *, retry_after: float | None = None
) -> HubserveClientError:
    """The exception for an HTTP error ``status`` with ``message``."""
    if status == 503:
        return ServiceUnavailable(message, status, retry_after)
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else InvalidRequest
    return cls(message, status)


def redact(text: str, token: str | None) -> str:
    """``text`` with every occurrence of ``token`` masked."""
    if token:
        text = text.replace(token, "***")
    return text


def error_from_response(response: httpx.Response, token: str | None) -> HubserveClientError:
    """The exception for an error answer; its body must have been read."""
    message = redact(_message_of(response), token)
    return error_for_status(
        response.status_code, message, retry_after=_retry_after(response.headers)
    )


def error_from_transport(exc: httpx.TransportError, url: str) -> ServiceUnavailable:
    """The exception for a request that got no answer at all."""
    if isinstance(exc, httpx.ConnectError):
        reason = (
            "connection refused" if "refused" in str(exc).lower() else f"cannot connect ({exc})"
        )
    elif isinstance(exc, httpx.ConnectTimeout):
        reason = "connecting timed out"
    elif isinstance(exc, httpx.TimeoutException):
        reason = "no answer in time"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ServiceUnavailable(f"cannot reach the hubserve service at {url}: {reason}")


def _message_of(response: httpx.Response) -> str:
    """What an error answer says: the service's ``detail`` when it is the service answering."""
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if media == "application/json" or media.endswith("+json"):
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            text = _detail_text(body.get("detail", body.get("error")))
            if text:
                return text
    if media.startswith("text/plain"):
        text = response.text.strip()
        if text:
            return text[:_MAX_FOREIGN_CHARS]
    # An HTML page or nothing: the hub or its proxy answered, not hubserve.
    return f"{fallback} from {response.request.url.path} (not an answer of the hubserve service)"


def _detail_text(detail: Any) -> str:
    """``detail`` as text: a string as is, FastAPI's validation errors as ``loc: msg; ...``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()))
                what = str(item.get("msg", "invalid"))
                parts.append(f"{where}: {what}" if where else what)
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return "" if detail is None else str(detail)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough to ignore
