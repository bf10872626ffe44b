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

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.serverapp import ServerApp
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
