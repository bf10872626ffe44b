"""``make up`` end to end: ``dev/up.py`` on a temporary state directory and free ports.

The whole stack starts (SeaweedFS, JupyterHub with configurable-http-proxy, the hubserve
service, a JupyterLab single-user server on demand); the ready line comes once the hub API
and hubserve's ``healthz`` answer through the proxy and the preloaded astro example is
deployed and ready (it answers ``segment`` at once, and the token make up used for it is
revoked); users log in with the dev passwords and get tokens; the admin deploys the pushed
iris example and calls it; a user starts a JupyterLab server. SIGINT then stops everything:
no process of the stack may remain (by command line, working directory or the stack's
environment marker; replicas and the zygote included), and the public ports are free again.
A second run on the same state is refused, and a run after a ``kill -9`` stops what the
killed one left behind, and finds the astro deployment in place (nothing pushed, nothing
rolled). The preload's rules themselves (reuse a stored version of the same content, roll
only to a changed example, keep what the owner chose, leave another model's deployment
alone) are tested on the shared live hub, through ``dev/up.py``'s ``_push_and_deploy``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest

from jupyter_extension.client import Client
from model_runtime import build_bundle
from tests.live_hub import shared_umask

from .conftest import REPO, Hub, chp_path, free_port

UP = REPO / "dev" / "up.py"
ASTRO = REPO / "examples" / "astro"
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
    assert "boss/astro runs boss/astro-segmenter:" in output.text
    assert "1/1 replica(s) ready (pushed and deployed)" in output.text
    assert "NOT preloaded" not in output.text
    assert (state / "users" / "boss" / "astro.ipynb").is_file()  # the notebook, for Lab
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

    # The preloaded astro example: deployed by the admin, ready, and it segments an image.
    api = f"{url}/services/hubserve/api"
    astro = httpx.get(f"{api}/deployments/boss/astro", headers=admin, timeout=10)
    assert astro.status_code == 200, astro.text
    assert astro.json()["model"] == "boss/astro-segmenter"
    assert astro.json()["created_by"] == "boss"
    assert astro.json()["status"]["phase"] == "ready"
    mask = _segment(url, admin, np.random.default_rng(0).normal(size=(2, 64, 96)))
    assert mask.shape == (2, 64, 96)
    assert mask.dtype == np.uint8
    assert int(mask.max()) < 4  # background, point, extended, artefact
    # A batch job like the notebook's, in the caller's home: HUBSERVE_JOB_LOCATIONS is
    # users/{user}, so boss's jobs may use boss's home and not alice's.
    if os.geteuid() == 0:  # its replica is sandboxed, as the models' user make up made
        replica = json.loads(next((state / "service/local/replicas").glob("*.json")).read_text())
        owner = Path(f"/proc/{replica['pid']}").stat().st_uid
        assert owner == pwd.getpwnam("hubserve-models").pw_uid
    homes = state.resolve() / "users"
    sky = homes / "boss" / "astro-work" / "sky"
    with shared_umask():  # as a notebook in make up's JupyterLab makes folders
        sky.mkdir(parents=True, exist_ok=True)
    np.save(sky / "field.npy", np.random.default_rng(1).normal(size=(64, 96)).astype(np.float32))
    jobs = f"{url}/services/hubserve/d/boss/astro/jobs"
    theirs = {"input": str(homes / "alice" / "sky"), "output": str(homes / "alice" / "out")}
    elsewhere = httpx.post(f"{jobs}/segment_folder", headers=admin, json=theirs, timeout=30)
    assert elsewhere.status_code == 422, elsewhere.text
    assert f"(allowed for boss: {homes / 'boss'})" in elsewhere.json()["detail"]
    segmented = homes / "boss" / "astro-work" / "segmented"
    own = {"input": str(sky), "output": str(segmented)}
    accepted = httpx.post(f"{jobs}/segment_folder", headers=admin, json=own, timeout=30)
    assert accepted.status_code == 202, accepted.text
    job_url, deadline = f"{jobs}/{accepted.json()['id']}", time.monotonic() + 60
    while (job := httpx.get(job_url, headers=admin).json())["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "succeeded", job
    assert (segmented / "field" / "field.mask.fits").is_file()
    # The token make up got for it is gone; its own service token cannot use hubserve.
    tokens = httpx.get(f"{url}/hub/api/users/boss/tokens", headers=admin, timeout=10).json()
    assert not [t for t in tokens["api_tokens"] if "preload" in (t["note"] or "")], tokens
    up_token = (state / "hub" / "make-up.token").read_text().strip()
    refused = httpx.get(
        f"{api}/me", headers={"Authorization": f"token {up_token}"}, timeout=10
    ).status_code
    assert refused == 403

    # The admin owns the pushed example: deploys it (local backend) and calls it.
    models = httpx.get(f"{api}/models", headers=admin, timeout=10)
    assert models.status_code == 200, models.text
    assert {("boss", "iris"), ("boss", "astro-segmenter")} <= {
        (m["owner"], m["name"]) for m in models.json()
    }
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
    # The astro deployment came back with the service: make up pushed and rolled nothing.
    output.wait_for("Ctrl-C stops everything", 10)
    assert "1/1 replica(s) ready (unchanged)" in output.text, output.text
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


# -- the preload's rules, on the shared live hub ----------------------------------------------


def _segment(url: str, auth: dict[str, str], images: np.ndarray) -> np.ndarray:
    """Masks from the preloaded deployment's ``segment`` API (arrays travel as .npy)."""
    body = io.BytesIO()
    np.save(body, images.astype(np.float32))
    response = httpx.post(
        f"{url}/services/hubserve/d/boss/astro/segment",
        headers={**auth, "Content-Type": "application/x-npy"},
        content=body.getvalue(),
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return np.asarray(np.load(io.BytesIO(response.content), allow_pickle=False))


def _up_module() -> ModuleType:
    """``dev/up.py`` imported as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("hubserve_dev_up", UP)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_preload_is_idempotent_and_rolls_to_a_changed_example(hub: Hub, tmp_path: Path) -> None:
    up = _up_module()
    owner = hub.create_user("preload")
    token, _ = hub.create_token(owner, scopes=["access:services!service=hubserve"])
    key = f"{owner}/astro"
    changed = tmp_path / "astro"
    shutil.copytree(ASTRO, changed, ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
    with (changed / "service.py").open("a") as file:  # a changed example: one more API
        file.write(
            '\n\n@service.api(input="json", output="json")\n'
            "def edition(_: object) -> str:\n"
            '    return "changed"\n'
        )
    with Client(hub.service_url, token) as client:
        first = build_bundle(str(ASTRO / "service.py:service"), output_dir=tmp_path)
        line = up._push_and_deploy(client, owner, first, 120)
        assert line.startswith(f"{key} runs {owner}/astro-segmenter:{first.manifest.version},")
        assert line.endswith("1/1 replica(s) ready (pushed and deployed)")

        # The same example packaged again (a new version name, the same files): nothing
        # pushed, nothing rolled.
        again = build_bundle(str(ASTRO / "service.py:service"), output_dir=tmp_path)
        assert again.manifest.version != first.manifest.version
        line = up._push_and_deploy(client, owner, again, 120)
        assert line.endswith("(unchanged)"), line
        assert len(client.model(f"{owner}/astro-segmenter").versions) == 1

        # A changed example is pushed, and the deployment rolls to it.
        newer = build_bundle(str(changed / "service.py:service"), output_dir=tmp_path)
        line = up._push_and_deploy(client, owner, newer, 120)
        assert f"(pushed, rolled from {first.manifest.version})" in line, line
        deployment = client.deployment(key)
        assert deployment.version == newer.manifest.version
        assert deployment.status.settled

        # What the owner chose is kept: rolled back by hand, it stays there.
        client.rollback(key, wait=True, timeout=120)
        line = up._push_and_deploy(client, owner, newer, 120)
        assert line.endswith("(unchanged)"), line
        assert client.deployment(key).version == first.manifest.version

        # A deployment of that name serving another model is left alone.
        client.undeploy(key)
        client.push(str(REPO / "examples/iris/iris.py:service"), progress=False)
        client.deploy(f"{owner}/iris", name="astro", wait=True, timeout=120)
        line = up._push_and_deploy(client, owner, newer, 120)
        assert line == (
            f"{key} serves {owner}/iris: left alone,"
            f" {owner}/astro-segmenter:{newer.manifest.version} not deployed"
        )
        client.undeploy(key)
