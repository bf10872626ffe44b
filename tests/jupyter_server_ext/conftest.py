"""Fixtures: a live hub service in standalone mode, and Jupyter servers with the extension.

The pytest-jupyter plugin is loaded on the command line (``make test-server-ext`` runs
``pytest -p pytest_jupyter.jupyter_server``): it has no entry point, and ``pytest_plugins``
is only allowed in the root conftest, where it would also load into the hub tests.

``hub_service`` starts ``python -m hub_service`` once per session, as a developer would
without a hub (:mod:`tests.standalone_service`: static tokens, a local store and data
directory, the local deploy backend, on a free loopback port). Each test gets its own Jupyter
server (pytest-jupyter's ``jp_serverapp``) configured from ``hubserve_config``, which test
classes override for the error cases.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.serverapp import ServerApp
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from traitlets.config import Config

from jupyter_extension.serverext.handlers import SETTINGS_KEY, ServiceClient
from tests.live_hub import REPO
from tests.standalone_service import StandaloneService, standalone_service

ALICE_TOKEN = "alice-service-token"
BOB_TOKEN = "bob-service-token"
SERVICE_TOKENS = {
    ALICE_TOKEN: {"name": "alice"},
    BOB_TOKEN: {"name": "bob"},
}
UPSTREAM_TOKEN = "upstream-secret-token"
"""The extension's token for the :func:`echo_upstream` service."""
MAX_UPLOAD_BYTES = 4 * 1024 * 1024
"""The service's upload limit (small, so a test can exceed it)."""
#: Variables that would configure the extension (or the service) from outside the test.
HUB_ENVIRONMENT = (
    "HUBSERVE_URL",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_API_TOKEN",
    "JUPYTERHUB_USER",
    "JUPYTERHUB_PUBLIC_HUB_URL",
    "JUPYTERHUB_SERVICE_URL",
)


PLUGIN = "pytest_jupyter.jupyter_server"
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the pytest-jupyter plugin (a plain ``pytest``), skip with the reason, not error."""
    if config.pluginmanager.has_plugin(PLUGIN):
        return
    skip = pytest.mark.skip(reason=f"needs `-p {PLUGIN}`: run `make test-server-ext`")
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(skip)


LiveService = StandaloneService


@pytest.fixture(scope="session")
def hub_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """``python -m hub_service`` in standalone mode, up until its healthz answers."""
    limits = json.dumps({"max_upload_bytes": MAX_UPLOAD_BYTES})
    with standalone_service(
        tmp_path_factory.mktemp("hub-service"), SERVICE_TOKENS, env={"HUBSERVE_LIMITS": limits}
    ) as service:
        yield service


@pytest.fixture(scope="session")
def iris_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``examples/iris`` service packaged as a bundle archive."""
    from model_runtime import build_bundle

    out = tmp_path_factory.mktemp("bundle")
    return build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=out).archive


@pytest.fixture(autouse=True)
def no_hub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests configure the extension themselves, also when run inside a JupyterHub server."""
    for name in HUB_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def hubserve_config(hub_service: LiveService) -> dict[str, Any]:
    """``c.HubserveExtension`` of the test's Jupyter server: the live service, alice's token."""
    return {"service_url": hub_service.url, "token": ALICE_TOKEN}


@pytest.fixture
def jp_server_config(hubserve_config: dict[str, Any]) -> Config:
    """Only our extension (not the terminals pytest-jupyter adds by default)."""
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {
                    "jupyter_extension": True,
                    "jupyter_server_terminals": False,
                }
            },
            "HubserveExtension": hubserve_config,
        }
    )


@pytest.fixture(autouse=True)
def close_service_client(jp_asyncio_loop: Any, jp_server_cleanup: None) -> Iterator[None]:
    """Close the server's connection pool while its event loop still runs.

    jupyter_server has no stop hook for module extensions; a test's loop is closed after
    each test, so the pool is closed here rather than left to the garbage collector.
    """
    yield
    if not ServerApp.initialized():
        return
    web_app = getattr(ServerApp.instance(), "web_app", None)
    client = web_app.settings.get(SETTINGS_KEY) if web_app is not None else None
    if isinstance(client, ServiceClient):
        jp_asyncio_loop.run_until_complete(client.aclose())


class _Echo(web.RequestHandler):
    """Answers with what it received; ``.../teapot`` answers 418 with extra headers,
    ``.../slow`` not before the test ends, ``.../hangup`` by closing the connection."""

    def initialize(self, seen: list[dict[str, Any]], release: asyncio.Event) -> None:
        self.seen = seen
        self.release = release

    def _answer(self) -> None:
        request = self.request
        record = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": dict(request.headers),
            "size": len(request.body),
        }
        self.seen.append(record)
        if request.path.endswith("/teapot"):
            self.set_status(418)
            self.set_header("Content-Type", "application/problem+json")
            self.set_header("Set-Cookie", "upstream=1")
            self.set_header("Retry-After", "7")
            self.set_header("Location", "/services/hubserve/api/deployments/alice/pot?x=1")
            self.finish(json.dumps({"detail": "short and stout"}))
            return
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.finish(f"size,{len(request.body)}\n")

    async def get(self, *_: str) -> None:
        if self.request.path.endswith("/slow"):
            await self.release.wait()  # until the test is over
        if self.request.path.endswith("/hangup"):
            assert self.request.connection is not None
            self.request.connection.close()  # type: ignore[attr-defined]
            return
        self._answer()

    def post(self, *_: str) -> None:
        self._answer()

    def put(self, *_: str) -> None:
        self._answer()


@dataclass
class EchoUpstream:
    """A stand-in for the service that answers with what it received (see :class:`_Echo`)."""

    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    """Every request it answered: method, path, query, headers and body size."""


@pytest.fixture
def echo_upstream(jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[EchoUpstream]:
    """An :class:`_Echo` server on the test's event loop, to see exactly what is forwarded."""
    release = asyncio.Event()
    sock, port = bind_unused_port()
    upstream = EchoUpstream(f"http://127.0.0.1:{port}/services/hubserve/")

    async def start() -> HTTPServer:
        options = {"seen": upstream.seen, "release": release}
        app = web.Application([(r"/services/hubserve/(.*)", _Echo, options)])
        server = HTTPServer(app)
        server.add_socket(sock)
        return server

    server = jp_asyncio_loop.run_until_complete(start())
    yield upstream
    release.set()
    server.stop()
    jp_asyncio_loop.run_until_complete(server.close_all_connections())
