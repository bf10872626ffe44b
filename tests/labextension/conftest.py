"""Fixtures for the browser tests of the JupyterLab panel: a live service, real Labs, Chromium.

``make test-lab`` runs this directory in its own pytest process (after ``make labextension``
has built the panel into ``jupyter_extension/labextension``):

* ``hub_service``: ``python -m hub_service`` in standalone mode (:mod:`tests.standalone_service`:
  static tokens, local store and data directory, the local deploy backend) on a free loopback
  port, as in ``tests/jupyter_server_ext``; ``iris_versions`` pushes two versions of
  ``examples/iris`` into its store through its API (a raw gzip ``POST api/models``), as the
  user ``alice``.
* ``lab`` / ``lab_factory``: ``jupyter lab`` subprocesses, each in its own temporary tree
  (config, data, runtime, settings and workspaces directories, ``HOME``), so nothing of the
  machine's Jupyter setup leaks in; the server extension is enabled and pointed at the
  service with alice's token (``c.HubserveExtension``), the built panel is found through
  ``JUPYTER_PATH`` (a ``labextensions/hubserve-labextension`` link to the build), and the
  news prompt is switched off (``news_url`` None, ``fetchNews: "false"`` in the app settings'
  ``overrides.json``).
* ``browser`` / ``lab_page``: Debian's Chromium (``/usr/bin/chromium``, never a downloaded
  browser) driven by Playwright's sync API; each test gets a fresh context (clipboard
  permissions) and a page on a new workspace (``/lab/workspaces/<unique>?reset``) once the
  splash screen is gone and the shell is restored.

Screenshots go to ``$HUBSERVE_TEST_ARTIFACTS/labextension/`` (default
``tests/labextension/artifacts/``, emptied at the start of a run): one per step a test names,
one when a test fails, with the page's console next to them; the logs of the service and of
every Lab are copied there at the end of the session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Response, sync_playwright

from tests.live_hub import REPO, free_port
from tests.standalone_service import (
    StandaloneService,
    clean_environment,
    standalone_service,
    stop,
    wait_until_up,
)

HERE = Path(__file__).parent
CHROMIUM = Path(os.environ.get("HUBSERVE_CHROMIUM", "/usr/bin/chromium"))
EXTENSION_NAME = "hubserve-labextension"
BUILT_EXTENSION = REPO / "jupyter_extension" / "labextension"

ALICE_TOKEN = "alice-lab-browser-token"
SERVICE_TOKENS = {ALICE_TOKEN: {"name": "alice"}}
UI_TIMEOUT_MS = 15_000
"""Playwright's default wait for an element or an action."""

_SETTINGS_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}
_REPORT_KEY = pytest.StashKey[pytest.TestReport]()


def artifacts_root() -> Path:
    configured = os.environ.get("HUBSERVE_TEST_ARTIFACTS")
    return Path(configured) / "labextension" if configured else HERE / "artifacts"


# -- the hub service ---------------------------------------------------------------------------


LiveService = StandaloneService


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """The run's artifacts directory, emptied first (screenshots, consoles, server logs)."""
    root = artifacts_root()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


@pytest.fixture(scope="session")
def hub_service(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LiveService]:
    """``python -m hub_service`` in standalone mode, up until its healthz answers."""
    root = tmp_path_factory.mktemp("hub-service")
    try:
        with standalone_service(root, SERVICE_TOKENS) as service:
            yield service
    finally:
        if (root / "service.log").exists():
            shutil.copyfile(root / "service.log", artifacts / "hub_service.log")


@pytest.fixture(scope="session")
def iris_versions(tmp_path_factory: pytest.TempPathFactory, hub_service: LiveService) -> list[str]:
    """Two versions of ``examples/iris`` pushed as alice, oldest first (the last is latest)."""
    from model_runtime import build_bundle

    out = tmp_path_factory.mktemp("bundles")
    versions = []
    for _ in range(2):
        archive = build_bundle(
            f"{REPO / 'examples/iris/iris.py'}:service", output_dir=out, creator="alice"
        ).archive
        response = hub_service.call(
            "POST",
            "api/models",
            content=archive.read_bytes(),
            headers={"Content-Type": "application/gzip"},
        )
        assert response.status_code in (200, 201), response.text
        versions.append(response.json()["version"])
    assert versions[0] != versions[1]
    return versions


# -- JupyterLab --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabServer:
    """A running ``jupyter lab``: its base URL (ending in ``/``), token, tree and log."""

    url: str
    token: str
    root: Path
    log: Path

    def workspace_url(self, workspace: str) -> str:
        return f"{self.url}lab/workspaces/{workspace}?reset&token={self.token}"


LabFactory = Callable[..., LabServer]


def _lab_tree(root: Path, hubserve: dict[str, Any]) -> dict[str, str]:
    """Write the Lab's private directories and config; its environment variables."""
    for name in ("config", "data", "runtime", "notebooks", "home", "workspaces", "user-settings"):
        (root / name).mkdir()
    config = {
        "ServerApp": {
            "jpserver_extensions": {"jupyter_extension": True},
        },
        "HubserveExtension": hubserve,
    }
    (root / "config" / "jupyter_server_config.json").write_text(json.dumps(config, indent=2))
    settings = root / "app-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(_SETTINGS_OVERRIDES, indent=2))
    labextensions = root / "jupyter-path" / "labextensions"
    labextensions.mkdir(parents=True)
    (labextensions / EXTENSION_NAME).symlink_to(BUILT_EXTENSION, target_is_directory=True)
    env = clean_environment()
    env.update(
        HOME=str(root / "home"),
        JUPYTER_CONFIG_DIR=str(root / "config"),
        JUPYTER_DATA_DIR=str(root / "data"),
        JUPYTER_RUNTIME_DIR=str(root / "runtime"),
        JUPYTER_PATH=str(root / "jupyter-path"),
        JUPYTERLAB_SETTINGS_DIR=str(root / "user-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"),
        IPYTHONDIR=str(root / "home" / ".ipython"),
    )
    return env


@contextlib.contextmanager
def _run_lab(root: Path, hubserve: dict[str, Any]) -> Iterator[LabServer]:
    env = _lab_tree(root, hubserve)
    port = free_port()
    token = secrets.token_hex(16)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root / 'notebooks'}",
        "--LabApp.news_url=None",
        f"--LabApp.app_settings_dir={root / 'app-settings'}",
        "--LabApp.expose_app_in_browser=True",
    ]
    url = f"http://127.0.0.1:{port}/"
    log = root / "lab.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=root / "notebooks",
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(
            process,
            log,
            "jupyter lab",
            lambda: (
                httpx.get(
                    f"{url}hubserve/config",
                    headers={"Authorization": f"token {token}"},
                    timeout=2,
                ).status_code
                == 200
            ),
        )
        yield LabServer(url=url, token=token, root=root, log=log)
    finally:
        stop(process)


@pytest.fixture(scope="session")
def lab_factory(tmp_path_factory: pytest.TempPathFactory, artifacts: Path) -> Iterator[LabFactory]:
    """Start a Lab with ``c.HubserveExtension`` set to the keywords; all stop at session end."""
    with contextlib.ExitStack() as stack:
        started: list[tuple[str, LabServer]] = []

        def start(name: str, **hubserve: Any) -> LabServer:
            root = tmp_path_factory.mktemp(f"lab-{name}")
            server = stack.enter_context(_run_lab(root, hubserve))
            started.append((name, server))
            return server

        try:
            yield start
        finally:
            stack.close()
            for name, server in started:
                shutil.copyfile(server.log, artifacts / f"lab-{name}.log")


@pytest.fixture(scope="session")
def lab(lab_factory: LabFactory, hub_service: LiveService) -> LabServer:
    """The Lab of the tests: its extension calls the live service with alice's token."""
    return lab_factory("main", service_url=hub_service.url, token=ALICE_TOKEN)


# -- the browser -------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    if report.when == "call":
        item.stash[_REPORT_KEY] = report
    return report


@pytest.fixture(scope="session")
def built_extension() -> Path:
    """The prebuilt panel; the browser tests need it (``make labextension`` builds it)."""
    if not (BUILT_EXTENSION / "package.json").is_file():
        pytest.fail(f"no built labextension in {BUILT_EXTENSION}: run `make labextension`")
    return BUILT_EXTENSION


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (as .ci/run does)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class LabPage:
    """A Playwright page on a fresh Lab workspace, with numbered screenshots."""

    page: Page
    lab: LabServer
    directory: Path
    console: list[str] = field(default_factory=list)
    _shots: int = 0

    def shot(self, step: str) -> Path:
        """Screenshot of the whole window as ``<NN>-<step>.png`` in the test's directory."""
        self._shots += 1
        path = self.directory / f"{self._shots:02d}-{step}.png"
        self.page.screenshot(path=path)
        return path

    def record_response(self, response: Response) -> None:
        """Note failed HTTP answers in the console log (without the query: no tokens)."""
        if response.status >= 400:
            url = response.url.split("?", 1)[0]
            self.console.append(f"http {response.status}: {response.request.method} {url}")

    def open(self, workspace: str) -> None:
        """Load Lab on a new workspace and wait until its shell is restored."""
        self.page.goto(self.lab.workspace_url(workspace))
        self.page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=60_000)
        self.page.wait_for_function("() => window.jupyterapp !== undefined")
        self.page.evaluate("async () => { await window.jupyterapp.restored; }")
        self.page.locator("#jp-main-dock-panel").wait_for(state="visible")
        self.dismiss_news_prompt()

    def dismiss_news_prompt(self) -> None:
        """Answer "No" to the news prompt should it show despite ``fetchNews: false``."""
        toast = self.page.locator(".jp-Notification-Toast-default", has_text="Jupyter news")
        if toast.count():
            toast.get_by_role("button", name="No").click()


def _test_directory(artifacts: Path, item: pytest.Item) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", item.name).strip("-")
    directory = artifacts / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def lab_page_factory(
    browser: Browser, built_extension: Path, artifacts: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[LabServer], LabPage]]:
    """Open pages (each in its own browser context) on Labs; screenshot them on failure."""
    directory = _test_directory(artifacts, request.node)
    opened: list[tuple[BrowserContext, LabPage]] = []

    def open_page(server: LabServer) -> LabPage:
        context = browser.new_context(
            viewport={"width": 1400, "height": 900},
            permissions=["clipboard-read", "clipboard-write"],
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        page = context.new_page()
        lab_page = LabPage(page=page, lab=server, directory=directory)
        page.on("console", lambda msg: lab_page.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda error: lab_page.console.append(f"pageerror: {error}"))
        page.on("response", lab_page.record_response)
        opened.append((context, lab_page))
        lab_page.open(f"hubserve-test-{uuid.uuid4().hex[:8]}")
        return lab_page

    yield open_page
    report = request.node.stash.get(_REPORT_KEY, None)
    failed = report is None or report.failed
    for index, (context, lab_page) in enumerate(opened):
        suffix = f"-{index}" if len(opened) > 1 else ""
        if failed:
            with contextlib.suppress(Exception):
                lab_page.page.screenshot(path=directory / f"failed{suffix}.png", full_page=True)
        (directory / f"console{suffix}.log").write_text("\n".join(lab_page.console) + "\n")
        context.close()
    uncaught = [line for _, page in opened for line in page.console if line.startswith("pageerror")]
    if uncaught and not failed:
        pytest.fail("uncaught errors in the page:\n" + "\n".join(uncaught))


@pytest.fixture
def lab_page(lab_page_factory: Callable[[LabServer], LabPage], lab: LabServer) -> LabPage:
    """A fresh page on the main Lab."""
    return lab_page_factory(lab)
