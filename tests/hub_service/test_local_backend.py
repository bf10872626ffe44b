"""The service in-process (static-token dev mode) with the real local backend.

No hub here: identities come from a static token file, so these tests focus on what the
backend and the gateway do with real runtime processes — launching without the zygote,
crash loops with backoff, store failures, large streamed bodies, header hygiene.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from hub_service._settings import HubServiceSettings
from hub_service.app import create_app
from hub_service.auth import HubUser
from hub_service.backends._cgroups import CgroupTree
from hub_service.backends._isolation import Isolation
from hub_service.backends.local import (
    OWNER_ENV,
    LocalBackend,
    LocalBackendSettings,
    _free_port,
)
from hub_service.db import Database
from hub_service.gateway import upstream_headers
from model_runtime import PackagingWarning, Service, build_bundle
from model_runtime.envs import EnvironmentManager, EnvironmentPolicy
from model_runtime.store import LocalStore
from tests.model_runtime.wheelhouse import Dist, build_wheelhouse

REPO = Path(__file__).resolve().parents[2]
SINK_SERVICE = REPO / "tests/model_runtime/runtime/kitchen_sink_service.py"
ALICE = {"Authorization": "token alice-token-123"}
PREFIX = "/services/hubserve"


@pytest.fixture(scope="module")
def iris_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iris")
    return build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=out).archive


def _client(
    tmp_path: Path,
    store: LocalStore,
    job_locations: list[str] | None = None,
    environments: EnvironmentManager | None = None,
    isolation: Isolation | None = None,
    **backend: Any,
) -> TestClient:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alice-token-123": {"name": "alice"}}))
    settings = HubServiceSettings(
        static_token_file=tokens, data_dir=tmp_path / "data", job_locations=job_locations or []
    )
    local = LocalBackend(
        store,
        settings.data_dir,
        LocalBackendSettings(health_interval=0.2, **backend),
        job_locations=settings.job_locations,
        environments=environments,
        isolation=isolation,
    )
    return TestClient(create_app(settings, store=store, backend=local))


@pytest.fixture
def store(tmp_path: Path, iris_archive: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    store.push(iris_archive, owner="alice")
    return store


def _status(client: TestClient, name: str = "iris") -> dict[str, Any]:
    response = client.get(f"{PREFIX}/api/deployments/alice/{name}", headers=ALICE)
    assert response.status_code == 200, response.text
    return dict(response.json()["status"])


def _wait(
    client: TestClient, check: Any, timeout: float = 60, name: str | None = None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = _status(client, name or "iris")
    while not check(status):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
        status = _status(client, name or "iris")
    return status


@pytest.fixture
def direct(tmp_path: Path, store: LocalStore) -> Iterator[TestClient]:
    """The service with replicas launched as plain ``hubserve serve`` processes."""
    with _client(tmp_path, store, use_zygote=False) as client:
        yield client


def test_replicas_without_the_zygote_and_large_bodies(direct: TestClient) -> None:
    response = direct.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
    assert response.status_code == 201, response.text
    _wait(direct, lambda s: s["phase"] == "ready")
    rows = [[5.1, 3.5, 1.4, 0.2]] * 40_000  # ~1.3 MB of JSON: streamed, not buffered
    response = direct.post(f"{PREFIX}/d/alice/iris/classify", json=rows, headers=ALICE)
    assert response.status_code == 200, response.text[:300]
    assert response.json() == ["setosa"] * len(rows)
    response = direct.post(f"{PREFIX}/d/alice/iris/predict", json=rows[:2], headers=ALICE)
    assert response.status_code == 200
    assert len(response.json()) == 2


#: Sandboxed replicas of the tests without a hub run as nobody (the service's default user,
#: hubserve-models, is made by `make test`; nobody is on every machine).
SANDBOX = Isolation(user="nobody", tmp_size=64 << 20)


@pytest.mark.parametrize("use_zygote", [False, True], ids=["serve", "zygote"])
def test_jobs_are_confined_to_the_services_job_locations(tmp_path: Path, use_zygote: bool) -> None:
    """``HUBSERVE_JOB_LOCATIONS`` reaches every replica, however it is launched (both
    sandboxed): a caller cannot make a job read or write outside those folders, and a job
    inside them reads and writes as the sandbox's user."""
    sink = build_bundle(f"{SINK_SERVICE}:service", output_dir=tmp_path / "build")
    store = LocalStore(tmp_path / "store")
    store.push(sink.archive, owner="alice")
    allowed, elsewhere = tmp_path / "jobs", tmp_path / "elsewhere"
    for folder in (allowed / "in", elsewhere):
        folder.mkdir(parents=True)
        np.save(folder / "a.npy", np.zeros(2, dtype=np.float32))
    allowed.chmod(0o777)  # the sandbox's user writes the output
    with _client(
        tmp_path, store, [str(allowed)], isolation=SANDBOX, use_zygote=use_zygote
    ) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "sink"}, headers=ALICE)
        assert response.status_code == 201, response.text
        _wait(client, lambda s: s["phase"] == "ready", name="sink")
        jobs = f"{PREFIX}/d/alice/sink/jobs/invert"
        outside = {"input": str(elsewhere), "output": str(allowed / "out")}
        response = client.post(jobs, json=outside, headers=ALICE)
        assert response.status_code == 422, response.text
        assert "is not a location this runtime's jobs may use" in response.json()["detail"]
        inside = {"input": str(allowed / "in"), "output": str(allowed / "out")}
        response = client.post(jobs, json=inside, headers=ALICE)
        assert response.status_code == 202, response.text
        assert _job_state(client, f"{jobs[: -len('/invert')]}/{response.json()['id']}") == (
            "succeeded"
        )
        np.testing.assert_array_equal(np.load(allowed / "out" / "a" / "inverted.npy"), np.zeros(2))


def _job_state(client: TestClient, url: str, headers: dict[str, str] = ALICE) -> str:
    deadline = time.monotonic() + 30
    while (state := client.get(url, headers=headers).json()["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return str(state)


def test_replicas_share_the_cpus(tmp_path: Path, store: LocalStore) -> None:
    """Without ``threads``, each of N replicas gets 1/N of the CPUs for torch (at least 1)."""
    expected = max(1, len(os.sched_getaffinity(0)) // 2)
    with _client(tmp_path, store) as client:
        response = client.post(
            f"{PREFIX}/api/deployments", json={"model": "iris", "replicas": 2}, headers=ALICE
        )
        assert response.status_code == 201, response.text
        _wait(client, lambda s: s["phase"] == "ready" and s["ready"] == 2)
        logs = client.get(f"{PREFIX}/api/deployments/alice/iris/logs", headers=ALICE).json()
    lines = [line for chunk in logs for line in chunk["lines"] if "torch uses" in line]
    assert len(lines) == 2, logs
    assert all(f"torch uses {expected} thread" in line for line in lines), lines


def test_missing_version_in_the_store_is_reported(tmp_path: Path, store: LocalStore) -> None:
    with _client(tmp_path, store) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "iris"}, headers=ALICE)
        assert response.status_code == 201
        version = response.json()["version"]
        _wait(client, lambda s: s["phase"] == "ready")
    # while the service is down, the version goes (a forced delete) and so does the cache
    store.delete_version("alice", "iris", version)
    shutil.rmtree(tmp_path / "data/local/cache")
    with _client(tmp_path, store) as client:  # reconciles from the database
        status = _wait(client, lambda s: s["message"] is not None)
        assert "cannot fetch" in status["message"]
        assert status["ready"] == 0
        assert status["phase"] == "failed"
        response = client.post(f"{PREFIX}/d/alice/iris/predict", json=[[1, 2, 3, 4]], headers=ALICE)
        assert response.status_code == 503
        assert "cannot fetch" in response.json()["detail"]


def test_crash_loop_backs_off(tmp_path: Path) -> None:
    source = tmp_path / "broken" / "service.py"  # a service directory: packaged as it is
    source.parent.mkdir()
    source.write_text(
        "import sys\n"
        "from model_runtime import Service\n"
        "service = Service('broken')\n"
        "@service.api(input='json', output='json')\n"
        "def echo(x):\n"
        "    return x\n"
        "if {'serve', 'zygote'} & set(sys.argv):  # in a runtime, not while packaging\n"
        "    raise RuntimeError('this model refuses to start')\n"
    )
    archive = build_bundle(str(source.parent), output_dir=tmp_path).archive
    store = LocalStore(tmp_path / "store")
    store.push(archive, owner="alice")
    with _client(tmp_path, store) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "broken"}, headers=ALICE)
        assert response.status_code == 201
        started = time.monotonic()
        status = _wait(
            client, lambda s: s["replicas"] and s["replicas"][0]["restarts"] >= 2, name="broken"
        )
        # backoff: 1 s then 2 s between the three starts
        assert time.monotonic() - started >= 3
        assert status["phase"] == "failed"
        assert status["ready"] == 0
        assert "exited" in status["message"]
        logs = client.get(f"{PREFIX}/api/deployments/alice/broken/logs", headers=ALICE).json()
        assert any("this model refuses to start" in line for line in logs[0]["lines"])
        response = client.post(f"{PREFIX}/d/alice/broken/echo", json=[1], headers=ALICE)
        assert response.status_code == 503
        assert (
            client.delete(f"{PREFIX}/api/deployments/alice/broken", headers=ALICE).status_code
            == 204
        )


def test_forwarded_headers_drop_credentials() -> None:
    headers = [
        (b"authorization", b"token secret-hub-token"),
        (b"cookie", b"hubserve-session=abc"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"hop"),
        (b"x-hubserve-token", b"forged"),
        (b"x-hubserve-user", b"forged"),
        (b"Content-Type", b"application/json"),
        (b"accept", b"application/x-npy"),
        (b"x-forwarded-for", b"192.0.2.1"),
    ]
    forwarded = upstream_headers(headers, "10.0.0.7", HubUser(name="alice"), "the-secret")
    assert forwarded == {
        "content-type": "application/json",
        "accept": "application/x-npy",
        "x-hubserve-token": "the-secret",
        "x-hubserve-user": "alice",
        "x-forwarded-for": "192.0.2.1, 10.0.0.7",
    }


def test_migrations_match_the_models(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from hub_service.db import Base

    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert database.current_revision() is None
    database.upgrade()
    database.upgrade()  # idempotent
    assert database.current_revision() == database.head_revision()
    with database.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    database.dispose()


def _alice_and_bob(tmp_path: Path, root: Path, isolation: Isolation | None) -> TestClient:
    """The service with alice's sink bundle, alice's and bob's tokens, and their job folders
    ``root/<name>`` (``{user}`` job locations) each holding ``in/a.npy``."""
    sink = build_bundle(f"{SINK_SERVICE}:service", output_dir=tmp_path / "build")
    store = LocalStore(tmp_path / "store")
    store.push(sink.archive, owner="alice")
    for user in ("alice", "bob"):
        (root / user / "in").mkdir(parents=True)
        (root / user).chmod(0o777)  # writable by a sandbox's user (nobody here)
        np.save(root / user / "in" / "a.npy", np.ones(2, dtype=np.float32))
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps({"alice-token-123": {"name": "alice"}, "bob-token-456": {"name": "bob"}})
    )
    settings = HubServiceSettings(
        static_token_file=tokens, data_dir=tmp_path / "data", job_locations=[f"{root}/{{user}}"]
    )
    local = LocalBackend(
        store,
        settings.data_dir,
        LocalBackendSettings(health_interval=0.2),
        job_locations=settings.job_locations,
        isolation=isolation,
    )
    return TestClient(create_app(settings, store=store, backend=local))


def test_user_job_locations_give_each_caller_their_own_folder(tmp_path: Path) -> None:
    """``{user}`` in ``HUBSERVE_JOB_LOCATIONS``: on one public deployment (unsandboxed: a
    sandbox shows its owner's folders only, see the next test), alice's jobs may use
    ``<root>/alice`` but not ``<root>/bob``, and bob's the other way round; the gateway names
    the caller, and a forged ``x-hubserve-user`` changes nothing."""
    root = tmp_path / "jobs"
    bob = {"Authorization": "token bob-token-456"}
    with _alice_and_bob(tmp_path, root, isolation=None) as client:
        response = client.post(
            f"{PREFIX}/api/deployments",
            json={"model": "sink", "access": {"public": True}},
            headers=ALICE,
        )
        assert response.status_code == 201, response.text
        _wait(client, lambda s: s["phase"] == "ready", name="sink")
        jobs = f"{PREFIX}/d/alice/sink/jobs"

        def job(owner: str) -> dict[str, str]:
            return {"input": f"{root}/{owner}/in", "output": f"{root}/{owner}/out"}

        for caller, name, other in ((ALICE, "alice", "bob"), (bob, "bob", "alice")):
            forged = {**caller, "x-hubserve-user": other}
            refused = client.post(f"{jobs}/invert", json=job(other), headers=forged)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"] == (
                f"{root}/{other}/in is not a location this runtime's jobs may use "
                f"(allowed for {name}: {root}/{name})"
            )
            accepted = client.post(f"{jobs}/invert", json=job(name), headers=caller)
            assert accepted.status_code == 202, accepted.text
            url = f"{jobs}/{accepted.json()['id']}"
            assert _job_state(client, url, caller) == "succeeded"
            np.testing.assert_array_equal(
                np.load(root / name / "out" / "a" / "inverted.npy"), -np.ones(2)
            )


def test_a_sandbox_shows_its_owners_job_folders_only(tmp_path: Path) -> None:
    """Sandboxed, alice's deployment shared with bob writes into alice's folder for her, and
    never sees bob's (she shared it without his say): his job there fails, his folder stays
    as it was."""
    root = tmp_path / "jobs"
    bob = {"Authorization": "token bob-token-456"}
    with _alice_and_bob(tmp_path, root, isolation=SANDBOX) as client:
        response = client.post(
            f"{PREFIX}/api/deployments",
            json={"model": "sink", "access": {"users": ["bob"]}},
            headers=ALICE,
        )
        assert response.status_code == 201, response.text
        _wait(client, lambda s: s["phase"] == "ready", name="sink")
        jobs = f"{PREFIX}/d/alice/sink/jobs"
        mine = {"input": f"{root}/alice/in", "output": f"{root}/alice/out"}
        accepted = client.post(f"{jobs}/invert", json=mine, headers=ALICE)
        assert accepted.status_code == 202, accepted.text
        assert _job_state(client, f"{jobs}/{accepted.json()['id']}") == "succeeded"
        # The runtime would allow bob's folder to bob; in the sandbox it is not there.
        his = {"input": f"{root}/bob/in", "output": f"{root}/bob/out"}
        refused = client.post(f"{jobs}/invert", json=his, headers=bob)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == f"input directory {root}/bob/in does not exist"
        assert (root / "alice" / "out" / "a" / "inverted.npy").is_file()
        assert sorted(p.name for p in (root / "bob").iterdir()) == ["in"]


@contextlib.contextmanager
def _serving(folder: Path, port: int) -> Iterator[None]:
    """``folder`` over HTTP on ``port`` (a wheelhouse as a find-links page)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def test_environment_waits_for_the_package_index(tmp_path: Path) -> None:
    """A bundle needing a package the service lacks: while the (air-gapped) wheelhouse is
    unreachable the deployment is failed with that one line and no replica; once it answers,
    the environment is built (an overlay) and the model answers from it."""
    wheels = build_wheelhouse(tmp_path / "wheels", [Dist("hubserve-envtest", "1.5")])
    svc = Service("needs-extra")

    @svc.api(input="json", output="json")
    def version(_: object) -> str:
        import hubserve_envtest

        return str(hubserve_envtest.VERSION)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PackagingWarning)  # the module is not installed here
        built = build_bundle(svc, output_dir=tmp_path, requirements=["hubserve-envtest==1.5"])
    store = LocalStore(tmp_path / "store")
    store.push(built.archive, owner="alice")
    port = _free_port()
    policy = EnvironmentPolicy(
        find_links=(f"http://127.0.0.1:{port}/",), no_index=True, use_pip_config=False
    )
    manager = EnvironmentManager(tmp_path / "envs", policy)
    with _client(tmp_path, store, environments=manager) as client:
        response = client.post(
            f"{PREFIX}/api/deployments", json={"model": "needs-extra"}, headers=ALICE
        )
        assert response.status_code == 201, response.text
        failed = _wait(client, lambda s: s["phase"] == "failed", name="needs-extra")
        assert failed["message"].startswith("environment: the package index is not reachable")
        assert failed["replicas"] == []
        assert not list((tmp_path / "envs" / "envs").glob("*"))
        with _serving(wheels, port):
            ready = _wait(client, lambda s: s["phase"] == "ready", timeout=90, name="needs-extra")
            response = client.post(f"{PREFIX}/d/alice/needs-extra/version", json={}, headers=ALICE)
    assert response.status_code == 200, response.text
    assert response.json() == "1.5"
    assert ready["environment"]["kind"] == "overlay"
    assert ready["environment"]["packages"] == {"hubserve-envtest": "1.5"}


@pytest.mark.parametrize("use_zygote", [False, True], ids=["serve", "zygote"])
def test_a_crash_shows_its_exception(tmp_path: Path, use_zygote: bool) -> None:
    """A replica that dies while loading its bundle: the status names the exception's last
    line (what the user can act on), not just that the process exited."""
    source = tmp_path / "broken"
    source.mkdir()
    (source / "service.py").write_text(
        "from model_runtime import api\n"
        "if __name__.startswith('hubserve_bundle_'):  # loaded by a runtime, not packaging\n"
        "    raise FileNotFoundError('weights.bin is missing from the bundle')\n"
        "@api(input='json', output='json')\n"
        "def echo(x):\n"
        "    return x\n"
    )
    store = LocalStore(tmp_path / "store")
    store.push(build_bundle(source, output_dir=tmp_path / "build").archive, owner="alice")
    with _client(tmp_path, store, use_zygote=use_zygote) as client:
        response = client.post(f"{PREFIX}/api/deployments", json={"model": "broken"}, headers=ALICE)
        assert response.status_code == 201, response.text
        failed = _wait(client, lambda s: s["phase"] == "failed", name="broken")
    assert failed["message"].startswith("exited"), failed
    assert failed["message"].endswith(
        "FileNotFoundError: weights.bin is missing from the bundle"
    ), failed


def _orphan(owner: Path) -> int:
    """A process marked as ``owner``'s backend whose parent is gone (as after a crash)."""
    script = f"{sys.executable} -c 'import time; time.sleep(120)' >/dev/null 2>&1 & echo $!"
    done = subprocess.run(
        ["sh", "-c", script],
        env={**os.environ, OWNER_ENV: str(owner)},
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_unrecorded_processes_of_an_earlier_run_are_stopped(
    tmp_path: Path, store: LocalStore
) -> None:
    """A service killed between launching a replica and writing its state file leaves a
    process nobody knows; the next start finds it by its mark and stops it."""
    leftover = _orphan(tmp_path / "data" / "local")
    other = _orphan(tmp_path / "another" / "local")
    try:
        with _client(tmp_path, store) as client:
            assert client.get(f"{PREFIX}/healthz").status_code == 200
            deadline = time.monotonic() + 30
            while _running(leftover):
                assert time.monotonic() < deadline, "the leftover was not stopped"
                time.sleep(0.1)
            assert _running(other)
    finally:
        for pid in (leftover, other):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


HOG = """\
import numpy as np
from model_runtime import api


@api(input="json", output="json")
def eat(megabytes: int) -> int:
    block = np.ones(megabytes * 2**20, dtype=np.uint8)  # touched: really resident
    return int(block.sum() // 2**20)
"""


@pytest.fixture
def hog_store(tmp_path: Path, iris_archive: Path) -> LocalStore:
    source = tmp_path / "hog"
    source.mkdir()
    (source / "service.py").write_text(HOG)
    store = LocalStore(tmp_path / "store")
    store.push(build_bundle(source, output_dir=tmp_path / "build").archive, owner="alice")
    store.push(iris_archive, owner="alice")
    return store


@pytest.mark.skipif(CgroupTree.detect() is None, reason="no writable cgroup v1 controllers")
@pytest.mark.parametrize("use_zygote", [False, True], ids=["serve", "zygote"])
def test_memory_limit_kills_only_that_replica(
    tmp_path: Path, hog_store: LocalStore, use_zygote: bool
) -> None:
    """A replica past its deployment's memory limit is killed by the kernel in its own
    cgroup, reported as out of memory and restarted; another deployment keeps serving."""
    tree = CgroupTree.detect()
    assert tree is not None
    limited = {"model": "hog", "resources": {"memory": "700Mi", "cpu": "1"}}
    with _client(tmp_path, hog_store, use_zygote=use_zygote) as client:
        for body in (limited, {"model": "iris"}):
            response = client.post(f"{PREFIX}/api/deployments", json=body, headers=ALICE)
            assert response.status_code == 201, response.text
        first = _wait(client, lambda s: s["phase"] == "ready", name="hog")
        _wait(client, lambda s: s["phase"] == "ready")
        replica = first["replicas"][0]["id"]
        group = tree.memory / f"replica-{replica}"
        assert int((group / "memory.limit_in_bytes").read_text()) == 700 * 2**20
        assert (tree.pids / f"replica-{replica}" / "pids.max").read_text().strip() == "4096"
        assert (tree.cpu / f"replica-{replica}" / "cpu.cfs_quota_us").read_text().strip() == (
            "100000"
        )
        eat = f"{PREFIX}/d/alice/hog/eat"
        assert client.post(eat, json=64, headers=ALICE).json() == 64
        response = client.post(eat, json=1500, headers=ALICE)
        assert response.status_code in (502, 503), response.text
        iris = client.post(
            f"{PREFIX}/d/alice/iris/classify", json=[[5.1, 3.5, 1.4, 0.2]], headers=ALICE
        )
        assert iris.status_code == 200, iris.text
        killed = _wait(
            client,
            lambda s: any(r["last_error"] for r in s["replicas"]) or s["message"],
            name="hog",
        )
        assert killed["message"] == "out of memory (limit 700 MiB)", killed
        again = _wait(client, lambda s: s["phase"] == "ready", timeout=90, name="hog")
        assert again["replicas"][0]["restarts"] == 1
        assert client.post(eat, json=64, headers=ALICE).json() == 64
        response = client.delete(f"{PREFIX}/api/deployments/alice/hog", headers=ALICE)
        assert response.status_code == 204
    assert not group.exists()  # removed with its replica


def test_limits_without_cgroups_fail_clearly(
    tmp_path: Path, hog_store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(CgroupTree, "detect", classmethod(lambda cls: None))
    body = {"model": "hog", "resources": {"memory": "700Mi"}}
    with _client(tmp_path, hog_store) as client:
        response = client.post(f"{PREFIX}/api/deployments", json=body, headers=ALICE)
        assert response.status_code == 201, response.text
        failed = _wait(client, lambda s: s["phase"] == "failed", name="hog")
        bad = {"model": "hog", "name": "hog2", "resources": {"memory": "lots"}}
        response = client.post(f"{PREFIX}/api/deployments", json=bad, headers=ALICE)
    assert failed["message"].startswith("cannot apply the resource limits: memory and cpu")
    assert response.status_code == 422
    assert "'lots' is not a quantity such as 512Mi" in str(response.json()["detail"])
