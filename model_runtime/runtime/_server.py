"""Starting a runtime: load the bundle, tune the process, run uvicorn until SIGTERM.

Loading happens before the server binds its port, so a runtime that listens has its model
in memory; ``/readyz`` turns green after the warm-up in the app's lifespan. Once everything
long-lived exists, :func:`gc.freeze` moves it out of the collector's reach: the model's
objects are never scanned again, so collections stay short and do not show up in p99.
On SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (up to
``graceful_timeout``), and the lifespan drains the batch queues before the process exits.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from ..bundle import load_bundle, unpack_bundle
from ..errors import HubserveError
from ..naming import ModelRef
from ..service import Service
from ..store import open_store, split_model_uri
from ._app import create_app
from ._runtime import Runtime
from ._settings import RuntimeSettings

log = logging.getLogger("hubserve.runtime")

SOURCE_ENV = "HUBSERVE_RUNTIME_SOURCE"
#: ``python -m model_runtime.runtime`` serves the ``{"source", "settings"}`` JSON found here
#: (how a bundle's separate environment starts a runtime, secrets off the command line).
LAUNCH_ENV = "HUBSERVE_RUNTIME_LAUNCH"


def launch_request(source: str, settings: RuntimeSettings) -> str:
    """What :func:`serve_launch_request` needs, as JSON (secrets included, in clear)."""
    data = settings.model_dump(mode="json", exclude_unset=True)
    if settings.api_token is not None:
        data["api_token"] = settings.api_token.get_secret_value()
    return json.dumps({"source": source, "settings": data})


def serve_launch_request() -> None:
    """Serve what :data:`LAUNCH_ENV` describes; the variable is dropped first, so the model's
    code and its subprocesses never see the secret in it."""
    request = json.loads(os.environ.pop(LAUNCH_ENV))
    serve(str(request["source"]), RuntimeSettings(**request["settings"]))


def bundle_directory(source: str, cache_dir: str | Path | None = None) -> Path:
    """The unpacked bundle of a directory, an archive, or a store reference/URI."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return unpack_bundle(path, cache_dir=cache_dir)
    if source.startswith(("/", ".", "~")) or source.endswith((".tar.gz", ".tgz")):
        raise HubserveError(f"no bundle at {path}: not a bundle directory or archive")
    uri = split_model_uri(source)
    if uri is not None:
        store, ref = open_store(uri[0]), uri[1]
    else:
        store, ref = open_store(), ModelRef.parse(source)
    return store.pull(ref, cache_dir=cache_dir).path


def load_service(source: str, settings: RuntimeSettings) -> Service:
    """Load a bundle from a directory, an archive, or a store reference/URI."""
    return load_bundle(
        bundle_directory(source, settings.cache_dir),
        trust_pickle=settings.trust_pickle,
        device=settings.device,
    )


def _configure_torch(threads: int) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)
    log.info("torch uses %d thread%s", threads, "" if threads == 1 else "s")
    with contextlib.suppress(RuntimeError):  # already set, or parallel work already ran
        torch.set_num_interop_threads(1)


def build_app(source: str, settings: RuntimeSettings) -> ASGIApp:
    _configure_torch(settings.torch_threads())
    service = load_service(source, settings)
    app = create_app(Runtime(service, settings))
    gc.freeze()  # no collect first: it costs ~60 ms of cold start and frees next to nothing
    return app


def worker_app() -> ASGIApp:
    """App factory for multi-worker mode: each uvicorn worker loads the bundle itself."""
    return build_app(os.environ[SOURCE_ENV], RuntimeSettings())


def serve(source: str, settings: RuntimeSettings) -> None:
    """Serve ``source`` in the foreground until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    common = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": int(settings.graceful_timeout),
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
        "log_level": "info",
    }
    if settings.workers > 1:
        os.environ[SOURCE_ENV] = source
        for key, value in settings.model_dump(exclude_none=True).items():
            if key not in ("batching", "api_token"):
                os.environ[f"HUBSERVE_RUNTIME_{key.upper()}"] = str(value)
        if settings.api_token is not None:
            os.environ["HUBSERVE_RUNTIME_API_TOKEN"] = settings.api_token.get_secret_value()
        uvicorn.run(
            "model_runtime.runtime._server:worker_app",
            factory=True,
            workers=settings.workers,
            **common,  # type: ignore[arg-type]
        )
        return
    # uvicorn re-raises the signal it stopped on once it has drained; with this handler in
    # place that ends the process with status 0, which supervisors read as a clean stop.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    app = build_app(source, settings)
    sockets = None if settings.socket_fd is None else [socket.socket(fileno=settings.socket_fd)]
    uvicorn.Server(uvicorn.Config(app, **common)).run(sockets=sockets)  # type: ignore[arg-type]


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)
