"""The model runtime: one bundle served over HTTP with adaptive micro-batching.

:func:`create_app` builds the ASGI app for a loaded :class:`~model_runtime.Service` (tests use
it in-process); :func:`serve` is what ``hubserve serve`` runs. See :mod:`._app` for the routes,
:mod:`._batching` for the batching policy and :mod:`._codecs` for the wire formats.
"""

from ._app import create_app
from ._locations import JobLocations
from ._runtime import Runtime
from ._server import (
    LAUNCH_ENV,
    build_app,
    bundle_directory,
    launch_request,
    load_service,
    serve,
    serve_launch_request,
)
from ._settings import BatchingOverride, RuntimeSettings

__all__ = [
    "LAUNCH_ENV",
    "BatchingOverride",
    "JobLocations",
    "Runtime",
    "RuntimeSettings",
    "build_app",
    "bundle_directory",
    "create_app",
    "launch_request",
    "load_service",
    "serve",
    "serve_launch_request",
]
