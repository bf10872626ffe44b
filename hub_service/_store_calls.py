"""Calling the model store from async routes: in a worker thread, with errors as HTTP answers.

Store calls block (file system, S3 over HTTP), so routes run them through :func:`store_call`,
which also turns hubserve's errors into the one mapping every route uses: not found 404, bad
name or bundle 422, immutable version 409, store unreachable or refusing our credentials 503
(with a fixed message: the details go to the service log), any other store failure 502.
Messages never include where the store is (a server path or bucket is nobody's business).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from fastapi import HTTPException

from model_runtime.errors import (
    BundleError,
    HubserveError,
    InvalidNameError,
    NotFoundError,
    StoreAuthError,
    StoreError,
    StoreUnavailableError,
    VersionExistsError,
)
from model_runtime.store import Store

log = logging.getLogger("hubserve.store")

T = TypeVar("T")


def _hide_location(message: str, store: Store) -> str:
    return message.replace(f" in {store.objects.describe()}", "")


def http_error(exc: HubserveError, store: Store) -> HTTPException:
    """The HTTP answer to a store or bundle error."""
    message = _hide_location(str(exc), store)
    if isinstance(exc, NotFoundError):
        return HTTPException(404, message)
    if isinstance(exc, (InvalidNameError, BundleError)):
        return HTTPException(422, message)
    if isinstance(exc, VersionExistsError):
        return HTTPException(409, message)
    if isinstance(exc, StoreUnavailableError):
        log.warning("model store unavailable: %s", exc)
        return HTTPException(503, "the model store is not reachable, try again later")
    if isinstance(exc, StoreAuthError):
        log.error("model store refused the service: %s", exc)
        return HTTPException(503, "the model store refused the service's credentials")
    if isinstance(exc, StoreError):
        log.error("model store failed: %s", exc)
        return HTTPException(502, f"the model store failed: {message}")
    return HTTPException(422, message)


async def store_call(store: Store, work: Callable[[], T]) -> T:
    """Run the blocking ``work`` in a worker thread, mapping hubserve errors to HTTP."""
    try:
        return await anyio.to_thread.run_sync(work)
    except HubserveError as exc:
        raise http_error(exc, store) from None
