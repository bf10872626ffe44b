"""Fixtures: a live hub service in standalone mode, and Jupyter servers with the extension.

The pytest-jupyter plugin is loaded on the command line (``make test-server-ext`` runs
``pytest -p pytest_jupyter.jupyter_server``): it has no entry point, and ``pytest_plugins``
is only allowed in the root conftest, where it would also load into the hub tests.

``hub_service`` starts ``python -m hub_service`` once per session, as a developer would
without a hub: static tokens (``HUBSERVE_STATIC_TOKEN_FILE``), a local store and data
directory, the local deploy backend, on a free loopback port. Each test gets its own Jupyter
server (pytest-jupyter's ``jp_serverapp``) configured from ``hubserve_config``, which test
classes override for the error cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server.serverapp import ServerApp
from traitlets.config import Config

from jupyter_extension.serverext.handlers import SETTINGS_KEY, ServiceClient
from tests.live_hub import REPO, free_port

ALICE_TOKEN = "alice-service-token"
BOB_TOKEN = "bob-service-token"
SERVICE_TOKENS = {
    ALICE_TOKEN: {"name": "alice"},
    BOB_TOKEN: {"name": "bob"},
}
STARTUP_TIMEOUT = 60
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


@dataclass(frozen=True)
class LiveService:
    """The running hub service: its URL (ending in ``/services/hubserve/``) and its files."""

    url: str
    root: Path
    log: Path

    def headers(self, token: str = ALICE_TOKEN) -> dict[str, str]:
        return {"Authorization": f"token {token}"}


def _service_environment(root: Path, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HUBSERVE_", "JUPYTERHUB_"))
    }
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps(SERVICE_TOKENS), encoding="utf-8")
    env.update(
        HUBSERVE_STATIC_TOKEN_FILE=str(tokens),
        HUBSERVE_SERVICE_URL=f"http://127.0.0.1:{port}",
        HUBSERVE_DATA_DIR=str(root / "data"),
        HUBSERVE_STORE=str(root / "store"),
        HUBSERVE_HOME=str(root / "home"),
        HUBSERVE_CACHE=str(root / "cache"),
        HUBSERVE_LIMITS=json.dumps({"max_upload_bytes": MAX_UPLOAD_BYTES}),
    )
    return env


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the service stops its replicas), then kill what is left of its group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def hub_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """``python -m hub_service`` in standalone mode, up until its healthz answers."""
    root = tmp_path_factory.mktemp("hub-service")
    port = free_port()
    url = f"http://127.0.0.1:{port}/services/hubserve/"
    log = root / "service.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub_service"],
            env=_service_environment(root, port),
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"hub_service exited ({process.returncode}):\n{log.read_text()}")
            try:
                if httpx.get(f"{url}healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"hub_service not up in {STARTUP_TIMEOUT} s:\n{log.read_text()}")
            time.sleep(0.1)
        yield LiveService(url=url, root=root, log=log)
    finally:
        _stop(process)


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
