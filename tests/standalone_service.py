"""The hub service in standalone development mode, as a subprocess, for the suites without a hub.

``python -m hub_service`` with static tokens (``HUBSERVE_STATIC_TOKEN_FILE``, see
:meth:`hub_service._settings.HubServiceSettings.load_static_tokens`), a local store, data
directory and bundle cache under one temporary root, the local deploy backend, on a free
loopback port: what a developer runs without a hub. The suites of the Jupyter server
extension, of the Lab panel and the OpenAPI fuzzing of the hub service start one each
through :func:`standalone_service`; nothing of the caller's ``HUBSERVE_*`` or Jupyter
environment leaks into it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live_hub import free_port

STARTUP_TIMEOUT = 60.0
"""Seconds for a started process to answer."""
#: Environment prefixes that would configure the service (or Jupyter) from outside the test.
FOREIGN_ENVIRONMENT = ("HUBSERVE_", "JUPYTERHUB_", "JUPYTER_", "JUPYTERLAB_", "JPY_")


@dataclass(frozen=True)
class StandaloneService:
    """The running service (``url`` ends in ``/services/hubserve/``), its tree and log.

    ``token`` is the caller :meth:`headers` and :meth:`call` use unless told otherwise.
    """

    url: str
    root: Path
    log: Path
    token: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"token {token or self.token}"}

    def call(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """``method url+path`` with ``token`` (default: :attr:`token`)."""
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def delete_deployments(self) -> None:
        """Delete every deployment the caller sees (cleanup between tests)."""
        listed = self.call("GET", "api/deployments")
        listed.raise_for_status()
        for deployment in listed.json():
            name = f"{deployment['owner']}/{deployment['name']}"
            response = self.call("DELETE", f"api/deployments/{name}")
            assert response.status_code in (204, 404), response.text


def clean_environment() -> dict[str, str]:
    """This process's environment without anything that configures hubserve or Jupyter."""
    return {
        key: value for key, value in os.environ.items() if not key.startswith(FOREIGN_ENVIRONMENT)
    }


def stop(process: subprocess.Popen[bytes]) -> None:
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


def wait_until_up(
    process: subprocess.Popen[bytes], log: Path, what: str, check: Callable[[], bool]
) -> None:
    """Poll ``check`` until it holds; fail with the log if the process exits or times out."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}):\n{log.read_text()}")
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not up in {STARTUP_TIMEOUT} s:\n{log.read_text()}")
        time.sleep(0.1)


@contextlib.contextmanager
def standalone_service(
    root: Path,
    tokens: Mapping[str, Mapping[str, Any]],
    *,
    env: Mapping[str, str] | None = None,
) -> Iterator[StandaloneService]:
    """Run the service under ``root`` until the block ends.

    ``tokens`` is the static token table (``{token: {"name": ..., "admin": ..., "groups":
    [...]}}``); its first token is the default caller. ``env`` adds or overrides ``HUBSERVE_*``
    settings (limits, rate limits...).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}/services/hubserve/"
    token_file = root / "tokens.json"
    token_file.write_text(json.dumps(tokens), encoding="utf-8")
    environment = clean_environment()
    environment.update(
        HUBSERVE_STATIC_TOKEN_FILE=str(token_file),
        HUBSERVE_SERVICE_URL=f"http://127.0.0.1:{port}",
        HUBSERVE_DATA_DIR=str(root / "data"),
        HUBSERVE_STORE=str(root / "store"),
        HUBSERVE_HOME=str(root / "home"),
        HUBSERVE_CACHE=str(root / "cache"),
        # Sandboxed replicas, as by default, where the tests can make sandboxes (as root).
        HUBSERVE_LOCAL_ISOLATION="sandbox" if os.geteuid() == 0 else "none",
    )
    environment.update(env or {})
    log = root / "service.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "hub_service"],
            env=environment,
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_up(
            process,
            log,
            "hub_service",
            lambda: httpx.get(f"{url}healthz", timeout=2).status_code == 200,
        )
        yield StandaloneService(url=url, root=root, log=log, token=next(iter(tokens)))
    finally:
        stop(process)
