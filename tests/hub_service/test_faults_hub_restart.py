"""JupyterHub restarts while hubserve runs as an external service (the Z2JH topology).

Hub, proxy and service are three processes started by the test, as in Zero to JupyterHub
where they are separate pods: configurable-http-proxy (the hub does not start it:
``ConfigurableHTTPProxy.should_start = False``), the hub with hubserve registered as an
external service (``configure_jupyterhub(c, api_token=...)``), and ``python -m hub_service``
with the settings that token and the hub's URLs give it. The hub is stopped and started
again; proxy and service keep running:

* while the hub is down, tokens the hub accepted before keep working through the proxy
  (the outage grace of :class:`hub_service.auth.HubAuthenticator`), a token the service
  never saw gets 503 "the hub is not reachable";
* once the hub is back, a token revoked in the meantime is refused within the auth TTL, the
  others keep working.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from traitlets.config import Config

from hub_service import configure_jupyterhub
from model_runtime import build_bundle
from tests.live_hub import stop_group

from .conftest import ADMIN_USER, POSITIVE_TTL, REPO, chp_path, free_port
from .test_faults_processes import runtime_processes

pytestmark = pytest.mark.slow

CONFIG = """\
import hub_service

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {proxy_port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = {proxy_token!r}
c.JupyterHub.db_url = "sqlite:///{root}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{root}/jupyterhub_cookie_secret"
c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = {password!r}
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{{admin!r}}}
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {admin_token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "test-admin", "scopes": ["admin:users", "tokens"], "services": ["test-admin"]}}
]
{service_config}
"""
EXTERNAL = "hub_service.configure_jupyterhub(c, port={port}, api_token={token!r})"
MANAGED = """hub_service.configure_jupyterhub(
    c,
    port={port},
    store="{root}/store",
    data_dir="{root}/service",
    extra_env={{"HUBSERVE_POSITIVE_TTL": "{ttl}"}},
)"""
SERVICE_SOURCE = Path(__file__).with_name("services") / "scaler.py"


class Stack:
    """The three processes, each in its own process group, logging under ``root``; with
    ``managed``, the hub starts and stops the service itself (the default topology)."""

    def __init__(self, root: Path, *, managed: bool = False) -> None:
        self.root = root
        self.proxy_port, self.proxy_api_port, self.hub_port, self.service_port = (
            free_port() for _ in range(4)
        )
        self.proxy_token = secrets.token_hex(32)
        self.admin_token = secrets.token_hex(32)
        self.service_token = secrets.token_hex(32)
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        (root / "jupyterhub_config.py").write_text(
            CONFIG.format(
                proxy_port=self.proxy_port,
                proxy_api_port=self.proxy_api_port,
                hub_port=self.hub_port,
                service_port=self.service_port,
                proxy_token=self.proxy_token,
                admin_token=self.admin_token,
                service_config=(
                    MANAGED.format(port=self.service_port, root=root, ttl=POSITIVE_TTL)
                    if managed
                    else EXTERNAL.format(port=self.service_port, token=self.service_token)
                ),
                root=root,
                password=secrets.token_hex(12),
                admin=ADMIN_USER,
            )
        )

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                command,
                cwd=self.root,
                env={**os.environ, "PYTHONPATH": str(REPO), **env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_proxy(self) -> None:
        self._start(
            "proxy",
            [
                str(chp_path()),
                "--ip=127.0.0.1",
                f"--port={self.proxy_port}",
                "--api-ip=127.0.0.1",
                f"--api-port={self.proxy_api_port}",
                f"--default-target=http://127.0.0.1:{self.hub_port}",
                f"--error-target=http://127.0.0.1:{self.hub_port}/hub/error",
            ],
            {"CONFIGPROXY_AUTH_TOKEN": self.proxy_token},
        )

    def start_hub(self) -> None:
        config = str(self.root / "jupyterhub_config.py")
        self._start("hub", [sys.executable, "-m", "jupyterhub", "-f", config], {})
        self.wait("the hub API", lambda: self.hub_api().get("/").status_code == 200)

    def wait_for_service(self) -> None:
        self.wait(
            "hubserve through the proxy",
            lambda: httpx.get(f"{self.url}/services/hubserve/healthz").status_code == 200,
        )

    def start_service(self) -> None:
        """``python -m hub_service`` as a Z2JH pod would run it: the hub's URLs, the token."""
        self._start(
            "service",
            [sys.executable, "-m", "hub_service"],
            {
                "JUPYTERHUB_SERVICE_NAME": "hubserve",
                "JUPYTERHUB_API_TOKEN": self.service_token,
                "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.hub_port}/hub/api",
                "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{self.service_port}",
                "JUPYTERHUB_SERVICE_PREFIX": "/services/hubserve/",
                "HUBSERVE_STORE": str(self.root / "store"),
                "HUBSERVE_DATA_DIR": str(self.root / "service"),
                "HUBSERVE_POSITIVE_TTL": str(POSITIVE_TTL),
                "HUBSERVE_NEGATIVE_TTL": "1",
                "HUBSERVE_HUB_TIMEOUT": "2",
            },
        )
        self.wait_for_service()

    def stop(self, name: str) -> None:
        stop_group(self.procs.pop(name))

    def new_user_token(self) -> tuple[str, str]:
        """A new hub user and a token of theirs."""
        with self.hub_api() as api:
            user = f"user-{secrets.token_hex(4)}"
            assert api.post("/users", json={"usernames": [user]}).status_code == 201
            response = api.post(f"/users/{user}/tokens", json={"expires_in": 3600})
            assert response.status_code == 201, response.text
            return user, response.json()["token"]

    def hub_api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/hub/api",
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=10,
        )

    def wait(self, what: str, check: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    log = (self.root / f"{name}.log").read_text()[-4000:]
                    pytest.fail(f"{name} exited ({proc.returncode}) waiting for {what}:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if check():
                    return
            time.sleep(0.2)
        pytest.fail(f"{what} not up after {timeout} s")

    def me(self, token: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/services/hubserve/api/me",
            headers={"Authorization": f"token {token}"},
            timeout=10,
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    try:
        stack.start_proxy()
        stack.start_hub()
        stack.start_service()
        yield stack
    finally:
        for name in ("service", "hub", "proxy"):
            if name in stack.procs:
                stack.stop(name)


def test_service_outlives_a_hub_restart(stack: Stack) -> None:
    with stack.hub_api() as api:
        user = f"outage-{secrets.token_hex(4)}"
        assert api.post("/users", json={"usernames": [user]}).status_code == 201
        tokens = []
        for _ in range(3):
            response = api.post(f"/users/{user}/tokens", json={"expires_in": 3600})
            assert response.status_code == 201, response.text
            tokens.append((response.json()["token"], response.json()["id"]))
    (kept, _), (revoked, revoked_id), (unseen, _) = tokens
    assert stack.me(kept).status_code == 200
    assert stack.me(revoked).status_code == 200

    stack.stop("hub")
    time.sleep(POSITIVE_TTL + 0.2)  # the positive cache is over: only the grace is left
    for token in (kept, revoked):
        response = stack.me(token)
        assert response.status_code == 200, response.text
        assert response.json()["name"] == user
    response = stack.me(unseen)
    assert response.status_code == 503
    assert response.json()["detail"] == "the hub is not reachable, try again"
    assert unseen not in response.text

    started = time.monotonic()
    stack.start_hub()
    print(f"hub restarted in {time.monotonic() - started:.1f} s; hubserve kept serving")
    with stack.hub_api() as api:
        assert api.delete(f"/users/{user}/tokens/{revoked_id}").status_code == 204
    time.sleep(POSITIVE_TTL + 0.2)
    assert stack.me(kept).status_code == 200
    assert stack.me(unseen).status_code == 200
    response = stack.me(revoked)
    assert response.status_code == 401
    assert revoked not in response.text
    log = (stack.root / "service.log").read_text()
    assert "the hub is not reachable: accepting tokens" in log
    assert "the hub answers again" in log
    assert kept not in log and revoked not in log and unseen not in log


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path, managed=True)
    try:
        stack.start_proxy()
        stack.start_hub()
        stack.wait_for_service()
        yield stack
    finally:
        for name in ("hub", "proxy"):
            if name in stack.procs:
                stack.stop(name)


def test_hub_restart_restarts_a_managed_service(managed: Stack, tmp_path: Path) -> None:
    """The default topology: the hub stops the service, which stops its replicas (no process
    is left behind), and starts it again, which starts the deployment again from scratch."""
    user, token = managed.new_user_token()
    auth = {"Authorization": f"token {token}"}
    archive = build_bundle(f"{SERVICE_SOURCE}:service", output_dir=tmp_path / "build").archive
    api = f"{managed.url}/services/hubserve/api"
    response = httpx.post(
        f"{api}/models",
        content=archive.read_bytes(),
        headers={**auth, "Content-Type": "application/gzip"},
        timeout=60,
    )
    assert response.status_code == 201, response.text
    response = httpx.post(f"{api}/deployments", json={"model": "scaler"}, headers=auth)
    assert response.status_code == 201, response.text
    url = f"{managed.url}/services/hubserve/d/{user}/scaler/scale"

    def answers() -> bool:
        return httpx.post(url, json=[[1.0]], headers=auth, timeout=10).status_code == 200

    managed.wait("the deployment", answers)
    assert runtime_processes(managed.root)  # the scan sees the zygote and the replica

    managed.stop("hub")
    deadline = time.monotonic() + 15  # processes told to stop may take a moment to go
    while (left := runtime_processes(managed.root)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == {}, f"runtime processes outlived the hub (pid: parent): {left}"
    started = time.monotonic()
    managed.start_hub()
    managed.wait("the deployment after the hub restart", answers)
    print(f"managed service: the deployment answers {time.monotonic() - started:.1f} s after")


def test_external_service_is_registered_not_started() -> None:
    c = Config()
    configure_jupyterhub(c, port=10111, api_token="external-token-0123456789")
    (service,) = c.JupyterHub.services
    assert service == {
        "name": "hubserve",
        "url": "http://127.0.0.1:10111",
        "oauth_no_confirm": True,
        "api_token": "external-token-0123456789",
    }
    with pytest.raises(ValueError, match="reads its settings from its own environment"):
        configure_jupyterhub(Config(), api_token="external-token-0123456789", store="/srv")
