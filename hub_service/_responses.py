"""The error answers every route documents in the OpenAPI schema.

Every error the service sends — from a route, from authentication, from the store — is a JSON
body ``{"detail": "<message>"}`` (:class:`ErrorDetail`). The one exception is 422: FastAPI
answers a request that does not match a route's parameters or body model with a list of field
errors (:class:`InvalidRequest`), while the service's own checks (a bad name, an unknown API)
answer with a message; a 422 is declared as either. Declaring each route's error codes with
:func:`error_responses` keeps the schema honest, so clients (and the OpenAPI fuzzing in the
tests) can rely on it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

#: What any authenticated route may answer: no or a bad identity, the hub or store down.
AUTH_ERRORS = (401, 403, 502, 503)


class ErrorDetail(BaseModel):
    """The body of every error answer."""

    detail: str


class FieldError(BaseModel):
    """One field that does not match the route's parameters or body model."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidRequest(BaseModel):
    """FastAPI's answer to a request that does not match the route's model."""

    detail: list[FieldError]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router that may answer ``codes`` with an error body."""
    return {
        code: {"model": ErrorDetail | InvalidRequest if code == 422 else ErrorDetail}
        for code in codes
    }
