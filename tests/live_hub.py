"""A real JupyterHub with hubserve, for every test suite that needs the live stack.

Use it by importing the fixture into a package's ``conftest.py``
(``from tests.live_hub import hub``); it starts once per test session.

The ``hub`` fixture writes a ``jupyterhub_config.py`` that calls
:func:`hub_service.configure_jupyterhub` (so the tests cover the real wiring: managed service,
roles, scopes), with the shared-password authenticator (users log in with ``PASSWORD``;
``boss`` is admin), PKCE required for OAuth, short auth-cache TTLs, a generous gateway rate
limit, and a test-only service ``test-admin`` whose random token may create users, groups and
tokens. Ports for the proxy (the public URL), the proxy's API, the hub and the hubserve
service are picked free on 127.0.0.1. ``jupyterhub`` runs as a subprocess in its own process
group, with configurable-http-proxy from npm (``$HUBSERVE_CHP``, else
``.hubserve/node/node_modules/.bin/configurable-http-proxy``, as
``make test-hub`` installs it); the fixture waits until the hub API answers and hubserve's
``healthz`` answers through the proxy, and stops the hub (which stops the proxy and the
service) at the end. The hub's log is printed when startup fails.

Suites that use it run in a pytest process without the jupyter_server pytest plugin
(``make test-hub``): the two do not mix. Outside pytest, the same hub is the context manager
:func:`running_hub` (the soak and the gateway benchmark in ``bench/`` start it so), which
takes extra ``HUBSERVE_*`` settings for the service.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "hub-test-password"
ADMIN_USER = "boss"
# Short auth caches, so revocation shows within a second.
POSITIVE_TTL = 1.0
NEGATIVE_TTL = 1.0
#: Gateway calls per second per user (the service's default, 100, would throttle load loops).
GATEWAY_RATE_LIMIT = 10_000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class HubStartError(RuntimeError):
    """The hub did not start; the message ends with the tail of its log."""


def chp_path() -> Path:
    configured = os.environ.get("HUBSERVE_CHP")
    path = (
        Path(configured)
        if configured
        else REPO / ".hubserve/node/node_modules/.bin/configurable-http-proxy"
    )
    if not path.exists():
        raise HubStartError(f"configurable-http-proxy not found at {path}: run `make test-hub`")
    return path


CONFIG = """\
import hub_service

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/jupyterhub_cookie_secret"
c.JupyterHub.oauth_require_pkce = True
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.SharedPasswordAuthenticator.admin_password = {admin_password!r}
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{{admin!r}}}

c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [
    {{
        "name": "test-admin",
        "scopes": ["admin:users", "admin:groups", "tokens", "access:services"],
        "services": ["test-admin"],
    }}
]
hub_service.configure_jupyterhub(
    c,
    port={service_port},
    store="{root}/store",
    data_dir="{root}/service",
    limits={limits!r},
    extra_env={extra_env!r},
)
"""


@dataclass
class Hub:
    """The running hub: public URL, an admin client for the hub API, and helpers."""

    url: str
    api: httpx.Client
    log: Path
    root: Path
    #: The jupyterhub process, and the port the hubserve service listens on (behind the proxy).
    pid: int
    service_port: int

    @property
    def service_url(self) -> str:
        return f"{self.url}/services/hubserve"

    def job_folder(self, user: str) -> Path:
        """``user``'s folder for batch jobs (the hub's job locations: ``<root>/jobs/{user}``),
        shared with the sandboxed replicas' user as ``make up`` shares homes: its group, which
        new folders inherit (setgid), may write; so may that group in folders the test makes
        with a umask of 002 (:func:`shared_umask`)."""
        folder = self.root / "jobs" / user
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(KeyError, PermissionError):
            os.chown(folder, -1, grp.getgrnam(MODELS_USER).gr_gid)
        folder.chmod(0o2775)
        return folder

    def create_user(self, prefix: str = "user") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        response = self.api.post("/users", json={"usernames": [name]})
        assert response.status_code == 201, response.text
        return name

    def create_token(self, user: str, scopes: list[str] | None = None) -> tuple[str, str]:
        """A new token of ``user`` (with ``scopes``, else the user's own): (token, id)."""
        body: dict[str, Any] = {"note": "hubserve test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.api.post(f"/users/{user}/tokens", json=body)
        assert response.status_code == 201, response.text
        model = response.json()
        return model["token"], model["id"]

    def revoke_token(self, user: str, token_id: str) -> None:
        response = self.api.delete(f"/users/{user}/tokens/{token_id}")
        assert response.status_code == 204, response.text

    def add_to_group(self, group: str, user: str) -> None:
        if self.api.get(f"/groups/{group}").status_code == 404:
            assert self.api.post(f"/groups/{group}").status_code == 201
        response = self.api.post(f"/groups/{group}/users", json={"users": [user]})
        assert response.status_code == 200, response.text


def _wait_until(check: Any, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HubStartError(
                f"jupyterhub exited ({proc.returncode}):\n{log.read_text()[-6000:]}"
            )
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise HubStartError(f"jupyterhub not ready after {timeout} s:\n{log.read_text()[-6000:]}")


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM the process group ``proc`` leads; SIGKILL it after ``timeout`` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _stop(proc: subprocess.Popen[bytes], root: Path) -> None:
    """Stop the hub (it stops the proxy and the service), then anything it left behind."""
    stop_group(proc)
    for state in (root / "service/local/replicas").glob("*.json"):  # replicas left behind
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.killpg(int(json.loads(state.read_text())["pid"]), signal.SIGKILL)
    pid_file = root / "jupyterhub-proxy.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


#: The OS user sandboxed replicas run as (the service's default; `make test` creates it).
MODELS_USER = "hubserve-models"
#: The size of each sandboxed replica's private /tmp on the test hub.
SANDBOX_TMP_BYTES = 128 * 1024 * 1024
#: A package the test hub's environment policy denies (see HUBSERVE_ENV_DENY).
DENIED_PACKAGE = "hubserve-denied-test-package"


@contextlib.contextmanager
def shared_umask() -> Iterator[None]:
    """Files and folders made meanwhile are writable by their group (see Hub.job_folder)."""
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def running_hub(
    root: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    limits: Mapping[str, int] | None = None,
) -> Iterator[Hub]:
    """The hub of the module docstring, its files under ``root``; stopped on exit.

    ``extra_env`` adds ``HUBSERVE_*`` settings of the service to (or overrides) the short
    auth-cache TTLs of the tests; ``limits`` replaces the tests' upload limit. Raises
    :class:`HubStartError` when the hub or the service does not come up.
    """
    service_env = {
        "HUBSERVE_POSITIVE_TTL": str(POSITIVE_TTL),
        "HUBSERVE_NEGATIVE_TTL": str(NEGATIVE_TTL),
        # On, but far above what a test's load loop (one user, serial calls) can reach.
        "HUBSERVE_GATEWAY_RATE_LIMIT": str(GATEWAY_RATE_LIMIT),
        # The environments' admin policy denies one (made-up) package: deploy answers 422.
        "HUBSERVE_ENV_DENY": json.dumps([DENIED_PACKAGE]),
        # Replicas are sandboxed (the default; unless the tests do not run as root), with a
        # small private /tmp to fill up; batch jobs use each caller's folder (Hub.job_folder).
        "HUBSERVE_LOCAL_TMP_SIZE": str(SANDBOX_TMP_BYTES),
        "HUBSERVE_LOCAL_ISOLATION": "sandbox" if os.geteuid() == 0 else "none",
        "HUBSERVE_JOB_LOCATIONS": json.dumps([str(root / "jobs" / "{user}")]),
        **(extra_env or {}),
    }
    proxy_port, proxy_api_port, hub_port, service_port = (free_port() for _ in range(4))
    admin_token = secrets.token_hex(32)
    config = root / "jupyterhub_config.py"
    config.write_text(
        CONFIG.format(
            proxy_port=proxy_port,
            proxy_api_port=proxy_api_port,
            hub_port=hub_port,
            service_port=service_port,
            chp=str(chp_path()),
            root=root,
            password=PASSWORD,
            admin_password=secrets.token_hex(24),
            admin=ADMIN_USER,
            admin_token=admin_token,
            limits=dict(limits or {"max_upload_bytes": 8 * 1024 * 1024}),
            extra_env=service_env,
        )
    )
    log = root / "jupyterhub.log"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{proxy_port}"
    api = httpx.Client(
        base_url=f"{url}/hub/api",
        headers={"Authorization": f"token {admin_token}"},
        timeout=10,
    )
    try:
        _wait_until(lambda: api.get("/").status_code == 200, proc, log, 60)
        _wait_until(
            lambda: httpx.get(f"{url}/services/hubserve/healthz").status_code == 200,
            proc,
            log,
            60,
        )
        yield Hub(url=url, api=api, log=log, root=root, pid=proc.pid, service_port=service_port)
    finally:
        api.close()
        _stop(proc, root)


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    try:
        with running_hub(tmp_path_factory.mktemp("jupyterhub")) as started:
            yield started
    except HubStartError as exc:
        pytest.fail(str(exc))
