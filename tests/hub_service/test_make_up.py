"""``make up`` end to end: ``dev/up.py`` on a temporary state directory and free ports.

The whole stack starts (SeaweedFS, JupyterHub with configurable-http-proxy, the hubserve
service, a JupyterLab single-user server on demand); the ready line comes once the hub API
and hubserve's ``healthz`` answer through the proxy; users log in with the dev passwords and
get tokens; the admin deploys the pushed example and calls it; a user starts a JupyterLab
server. SIGINT then stops everything: no process of the stack may remain (by command line,
working directory or the stack's environment marker; replicas and the zygote included), and
the public ports are free again. A second run on the same state is refused, and a run after
a ``kill -9`` stops what the killed one left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, chp_path, free_port

UP = REPO / "dev" / "up.py"
READY = "hubserve is up at "
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0

pytestmark = pytest.mark.slow


class Output:
    """Lines of a process's stdout, read by a thread so that waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line containing ``text``; fails on timeout or end of output."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {text!r} within {timeout:g} s; output:\n{self.text}")
            if line is None:
                pytest.fail(f"dev/up.py ended before {text!r}; output:\n{self.text}")
            self.lines.append(line)
            if text in line:
                return line

    def drain(self, timeout: float = 10) -> None:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _stack_processes(state: Path) -> dict[int, str]:
    """Processes whose command line mentions ``state``, whose working directory is in it, or
    whose environment carries the stack's marker."""
    marker = f"HUBSERVE_UP_STATE={state}".encode()
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if not cmdline:
                continue
            cwd = str((entry / "cwd").readlink())
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(state) in cmdline or cwd.startswith(str(state)) or marker in environ:
            found[int(entry.name)] = cmdline
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _up_command(state: Path, port: int, s3_port: int) -> list[str]:
    return [
        sys.executable,
        str(UP),
        "--state",
        str(state),
        "--port",
        str(port),
        "--s3-port",
        str(s3_port),
        "--admin",
        "boss",
        "--chp",
        str(chp_path()),
    ]


class Stack:
    """``dev/up.py`` runs, on one state directory and one pair of ports."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.port, self.s3_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runs: list[tuple[subprocess.Popen[str], Output]] = []

    def start(self) -> tuple[subprocess.Popen[str], Output]:
        proc = subprocess.Popen(
            _up_command(self.state, self.port, self.s3_port),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.runs.append((proc, Output(proc)))
        return self.runs[-1]

    def cleanup(self) -> None:
        for proc, output in self.runs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            output.drain()
            assert proc.stdout is not None
            proc.stdout.close()
        for pid in _stack_processes(self.state):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Runs of ``dev/up.py`` on a fresh state directory; whatever is left is killed."""
    stack = Stack(tmp_path / "state")
    try:
        yield stack
    finally:
        stack.cleanup()


def _login(url: str, user: str, password: str) -> str:
    """Log in through the hub's login form; return a new API token of ``user``."""
    with httpx.Client(base_url=url, timeout=10) as browser:
        assert browser.get("/hub/login").status_code == 200
        response = browser.post(
            "/hub/login",
            data={"username": user, "password": password, "_xsrf": browser.cookies["_xsrf"]},
        )
        assert response.status_code == 302, response.text
        response = browser.post(
            f"/hub/api/users/{user}/tokens",
            json={"note": "test_make_up", "expires_in": 600},
            headers={"X-XSRFToken": browser.cookies["_xsrf"]},
        )
        assert response.status_code == 201, response.text
        return str(response.json()["token"])


def test_make_up_starts_the_stack_and_sigint_stops_all_of_it(stack: Stack) -> None:
    proc, output = stack.start()
    state, url = stack.state, stack.url
    ready = output.wait_for(READY, READY_TIMEOUT)
    assert url in ready
    output.wait_for("Ctrl-C stops everything", 10)
    assert "/iris:" in output.text  # the example model was pushed
    passwords = json.loads((state / "hub" / "passwords.json").read_text())
    assert passwords["user"] in output.text
    assert passwords["admin"] in output.text

    # Through the proxy: the hub API and hubserve.
    hub_api = httpx.get(f"{url}/hub/api/", timeout=10)
    assert hub_api.status_code == 200
    assert hub_api.json()["version"].startswith("6.")
    assert httpx.get(f"{url}/services/hubserve/healthz", timeout=10).status_code == 200

    # A user logs in with the dev password, gets a token, reaches hubserve with it.
    token = _login(url, "alice", passwords["user"])
    auth = {"Authorization": f"token {token}"}
    me = httpx.get(f"{url}/services/hubserve/api/me", headers=auth, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice"
    assert me.json()["admin"] is False
    admin = {"Authorization": f"token {_login(url, 'boss', passwords['admin'])}"}
    me = httpx.get(f"{url}/services/hubserve/api/me", headers=admin, timeout=10)
    assert me.json()["admin"] is True

    # The admin owns the pushed example: deploys it (local backend) and calls it.
    api = f"{url}/services/hubserve/api"
    models = httpx.get(f"{api}/models", headers=admin, timeout=10)
    assert models.status_code == 200, models.text
    assert {"owner": "boss", "name": "iris"}.items() <= models.json()[0].items()
    created = httpx.post(
        f"{api}/deployments", headers=admin, json={"model": "iris", "replicas": 1}, timeout=60
    )
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{api}/deployments/boss/iris", headers=admin).json())["status"][
        "phase"
    ] != "ready":
        assert time.monotonic() < deadline, f"iris not deployed: {status}"
        time.sleep(0.5)
    answer = httpx.post(
        f"{url}/services/hubserve/d/boss/iris/classify",
        headers=admin,
        json=[[5.1, 3.5, 1.4, 0.2]],
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == ["setosa"]

    # The user's JupyterLab server starts, in its home under the state directory.
    response = httpx.post(f"{url}/hub/api/users/alice/server", headers=auth, timeout=30)
    assert response.status_code in (201, 202), response.text
    deadline = time.monotonic() + 90
    while True:
        server = httpx.get(f"{url}/hub/api/users/alice", headers=auth).json()["servers"].get("")
        if server and server["ready"]:
            break
        assert time.monotonic() < deadline, f"alice's server not ready: {server}"
        time.sleep(0.5)
    status = httpx.get(f"{url}/user/alice/api/status", headers=auth, timeout=10)
    assert status.status_code == 200, status.text
    lab = httpx.get(f"{url}/user/alice/lab", headers=auth, timeout=10)
    assert lab.status_code == 200
    assert "JupyterLab" in lab.text
    # ... with the hubserve server extension loaded and pointed at the service (the panel's
    # and the notebook's way in), which sees alice through her server's token
    config = httpx.get(f"{url}/user/alice/hubserve/config", headers=auth, timeout=10)
    assert config.status_code == 200, config.text
    assert config.json()["configured"] is True, config.json()
    me = httpx.get(f"{url}/user/alice/hubserve/api/me", headers=auth, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["name"] == "alice"
    assert (state / "users" / "alice").is_dir()
    assert _stack_processes(state)

    # Ctrl-C: everything stops, nothing is left behind.
    proc.send_signal(signal.SIGINT)
    assert proc.wait(STOP_TIMEOUT) == 0
    output.drain()
    assert "stopped." in output.text
    assert "outlived" not in output.text  # the orderly stop left nothing for the last sweep
    deadline = time.monotonic() + 10
    while (left := _stack_processes(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left behind: {left}"
    assert not _port_in_use(stack.port)
    assert not _port_in_use(stack.s3_port)


def test_make_up_runs_once_per_state_and_cleans_up_after_a_crash(stack: Stack) -> None:
    first, output = stack.start()
    output.wait_for(READY, READY_TIMEOUT)

    # A second run on the same state directory is refused while the first one runs.
    second = subprocess.run(
        _up_command(stack.state, free_port(), free_port()),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 1
    assert f"another `make up` (pid {first.pid}) is already running" in second.stderr

    # kill -9: the stack's processes outlive it; the next run stops them, then starts afresh.
    first.kill()
    first.wait()
    orphans = _stack_processes(stack.state)
    assert orphans
    again, output = stack.start()
    output.wait_for(READY, READY_TIMEOUT)
    assert "left over by an earlier run" in output.text
    assert not set(orphans) & set(_stack_processes(stack.state))
    assert httpx.get(f"{stack.url}/services/hubserve/healthz", timeout=10).status_code == 200

    again.send_signal(signal.SIGTERM)
    assert again.wait(STOP_TIMEOUT) == 0
    deadline = time.monotonic() + 10
    while (left := _stack_processes(stack.state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"left behind: {left}"


def test_make_up_refuses_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _up_command(tmp_path / "state", port, free_port()),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"port {port} (hub) is already in use" in result.stderr
    assert "--port" in result.stderr
    assert not _stack_processes(tmp_path / "state")
