"""The local backend: every replica is a supervised runtime process on this machine.

How a deployment runs here:

* **Bundles** are fetched once per version by the service (``Store.pull`` into
  ``<data_dir>/local/cache``: verified, unpacked), and replicas serve the unpacked directory,
  so N replicas cost one download and runtimes need no store credentials. A failed fetch
  (the store down, the cache's disk full) is retried with the backoff below and reported in
  the deployment's status; a partial download never counts as a bundle.
* **Environments.** Each version runs in the environment its requirements need
  (:mod:`model_runtime.envs`), prepared after the fetch and before any replica of it starts,
  in the background (phase ``preparing environment``, its progress as the message): nothing
  to do when the service's environment has everything; an *overlay* of extra packages put on
  the path of a replica forked from the zygote; or a *full* separate environment, whose
  replicas start under its own interpreter (``python -m model_runtime.runtime``, no zygote).
  An overlay's first replica also starts the zygote's *warm launcher* for that environment,
  which imports the overlay's packages and what the bundle's loading imports; later replicas
  of any deployment in that environment are forked from it with those imports done.
  The installer's output is the ``environment`` entry of the deployment's logs; a failure
  (unresolvable pins, no wheel, the index down) is phase ``failed`` with the reason in one
  line, retried with the backoff below (an index that comes back heals it). Environments no
  deployment uses are evicted when the cache outgrows its size.
* **Launching.** Replicas are forked from a *zygote* (``hubserve zygote``, see
  :mod:`model_runtime.runtime._zygote`; started with the service) that has torch, FastAPI
  and the runtime imported already, so a replica is ready a few hundred milliseconds after
  the launch plus the time its model takes to load. If the zygote cannot run, replicas start
  as ``hubserve serve`` processes (a second or two slower). Either way a replica listens on
  a free loopback port, in its own session, with its output in
  ``<data_dir>/local/logs/<owner>/<name>/<id>.log``, and its environment holds nothing of
  the service's (no hub token, no store keys): only the basics (``PATH``, ``HOME``, locale)
  and its settings. Runtimes require the deployment's secret (``x-hubserve-token``), which
  only the gateway sends. Unless the deployment sets ``threads``, a replica gets this
  machine's CPUs divided by the deployment's replicas as torch threads (at least one): N
  replicas each using every core would fight over them (measured with 2 replicas on 2 cores:
  2.4 times the CPU per request and 35% fewer requests per second).
* **Resource limits.** A deployment's ``resources.memory`` and ``resources.cpu`` are
  enforced per replica through a cgroup of its own (:mod:`._cgroups`: memory limit, CFS
  quota, a cap on tasks), joined before the bundle loads. The kernel kills a replica past
  its memory limit, and only it; the status says ``out of memory (limit 700 MiB)`` and the
  replica restarts with the backoff below. Without writable cgroup v1 controllers, a
  deployment with limits fails with that reason instead of running unbounded.
* **Supervision.** One task per deployment probes each replica's ``/readyz`` every
  ``health_interval`` seconds (every ``start_interval`` while one is starting, so it takes
  calls as soon as it is ready). A replica that exits is restarted in place with exponential
  backoff (1 s, 2 s, 4 s ... up to ``max_backoff``; the count resets after a minute of
  health); one that stops answering is taken out of rotation, and killed and restarted if it
  does not recover; one that never gets ready within ``start_timeout`` is restarted too.
* **Rolling.** When the spec's generation changes (new version, other resources), replicas of
  the new generation start first; each time one of them is ready, one old replica is drained
  (out of rotation, in-flight requests finish, up to ``drain_timeout``) and then stopped with
  SIGTERM (SIGKILL after ``stop_timeout``). Scaling uses the same machinery.
* **Restarts of the service.** Each replica has a state file in ``<data_dir>/local/replicas``
  (pid, port, generation). When the service comes back after a crash, it adopts replicas that
  are alive and answer with their deployment's secret, and stops those of deployments that
  are gone, and any process marked as this backend's (``HUBSERVE_LOCAL_BACKEND`` in its
  environment) that no state file names: a replica launched just before a crash, an old
  zygote or warm launcher. A graceful stop of the service stops its replicas (and the
  zygote, which also exits by itself when the service dies).

* **Isolation.** With an :class:`~._isolation.Isolation` (the service's default, see
  :mod:`._isolation`), every replica runs in a sandbox (:mod:`model_runtime.sandbox`) as an
  unprivileged user: the machine read-only, the service's files and other users' homes
  hidden, its own ``/tmp`` and processes; a replica forked from the zygote enters it right
  after the fork, one started directly through ``python -m model_runtime.sandbox``. Every
  sandboxed replica has a cgroup (at least its cap on tasks) where cgroups are writable.
  Bundles and environments are made readable by that user. Sandboxed launches never use
  the zygote's warm launchers (they would import users' packages as root, unsandboxed). A
  replica of a separate environment is started by the zygote too when sandboxed (it forks,
  makes the sandbox, and runs that environment's interpreter), so no wrapper process stays
  behind; only without a zygote does ``python -m model_runtime.sandbox`` wait beside it.
  Without an isolation, replicas run as the service's own user and see what it sees: for
  development only (``HUBSERVE_LOCAL_ISOLATION=none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from model_runtime.bundle import load_time_imports, read_manifest
from model_runtime.envs import EnvBuildError, Environment, EnvironmentManager
from model_runtime.errors import HubserveError
from model_runtime.naming import ModelRef
from model_runtime.runtime import LAUNCH_ENV
from model_runtime.runtime._zygote import ZygoteError, spawn, spawn_command
from model_runtime.sandbox import PROFILE_ENV, Profile, SandboxError
from model_runtime.store import Store

from . import (
    Backend,
    DeploymentSpec,
    DeploymentStatus,
    Endpoint,
    EnvironmentStatus,
    LogChunk,
    ReplicaState,
    ReplicaStatus,
)
from ._cgroups import Cgroup, CgroupTree, Limits
from ._isolation import Isolation, job_folders

log = logging.getLogger("hubserve.local")

#: The only variables of the service's environment that replicas (and the zygote) inherit.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "CUDA_VISIBLE_DEVICES",
)
_MAX_SOCKET_PATH = 100


#: In the environment of the zygote and of every replica: the backend (its folder) they belong
#: to. A service killed between launching a replica and recording it leaves a process no
#: state file names; the next service finds it by this mark and stops it.
OWNER_ENV = "HUBSERVE_LOCAL_BACKEND"


def runtime_environment() -> dict[str, str]:
    """The environment replicas start with: the basics, nothing secret."""
    return {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}


def _leftovers(root: Path, keep: Collection[int]) -> list[int]:
    """Processes marked as ``root``'s that are neither in ``keep`` nor this process's
    children (its new zygote): an earlier service's unrecorded replicas, zygote, launchers."""
    marker = f"{OWNER_ENV}={root}".encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep or int(entry.name) == me:
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent != me:
            found.append(int(entry.name))
    return found


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LocalBackendSettings:
    health_interval: float = 1.0
    #: Probe interval while a replica starts: it joins the rotation as soon as it is ready.
    start_interval: float = 0.05
    probe_timeout: float = 5.0
    start_timeout: float = 300.0
    drain_timeout: float = 30.0
    stop_timeout: float = 15.0
    max_backoff: float = 60.0
    #: Consecutive failed probes before a ready replica leaves the rotation ...
    unhealthy_after: int = 3
    #: ... and before an unhealthy replica is killed and restarted.
    restart_unhealthy_after: int = 30
    use_zygote: bool = True


class _Process:
    """A replica's process: our child (``hubserve serve``) or not (forked by the zygote,
    or adopted after a restart of the service) — watched by pid either way."""

    def __init__(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.popen = popen

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return True  # no procfs: trust kill(0)
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")

    def exit_code(self) -> int | None:
        return self.popen.returncode if self.popen is not None else None

    def signal(self, signum: int) -> None:
        """Signal the replica's process group (it leads its own session), else the process."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signum)

    def looks_like_runtime(self) -> bool:
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"model_runtime" in cmdline or b"hubserve" in cmdline


@dataclass(eq=False)
class _Replica(Endpoint):
    id: str
    generation: int
    version: str
    log_file: Path
    port: int = 0
    process: _Process | None = None
    state: ReplicaState = ReplicaState.STARTING
    restarts: int = 0
    failures: int = 0
    probe_failures: int = 0
    started_at: datetime = field(default_factory=_utcnow)
    launched: float = field(default_factory=time.monotonic)
    ready_at: datetime | None = None
    restart_at: float = 0.0
    last_error: str | None = None
    in_flight: int = 0
    #: Its resource limits, when the deployment has any (or it is sandboxed).
    cgroup: Cgroup | None = None
    #: Whether it runs in a sandbox (a replica adopted after a change of that is replaced).
    sandboxed: bool = False

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> ReplicaStatus:
        return ReplicaStatus(
            id=self.id,
            version=self.version,
            generation=self.generation,
            state=self.state,
            restarts=self.restarts,
            started_at=self.started_at,
            ready_at=self.ready_at,
            in_flight=self.in_flight,
            last_error=self.last_error,
        )


@dataclass(eq=False)
class _Deployment:
    spec: DeploymentSpec
    replicas: dict[str, _Replica] = field(default_factory=dict)
    bundles: dict[str, Path] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    stopping: set[asyncio.Task[None]] = field(default_factory=set)
    message: str | None = None
    pull_failures: int = 0
    pull_retry_at: float = 0.0
    turn: int = 0
    #: Environments by bundle version, once prepared.
    environments: dict[str, Environment] = field(default_factory=dict)
    #: What a warm launcher of an overlay imports, by bundle version (found once: reading
    #: the artifacts' pickles to find their classes is not for every launch).
    preloads: dict[str, list[str]] = field(default_factory=dict)
    #: The environment being prepared in the background, and what it is doing now.
    preparing: asyncio.Task[None] | None = None
    progress: str | None = None
    env_failures: int = 0
    env_retry_at: float = 0.0


class _Zygote:
    """The launcher process, started on first use; ``None`` from :meth:`ensure` = unusable."""

    def __init__(self, directory: Path, log_file: Path, env: dict[str, str]) -> None:
        self.env = env
        path = directory / "zygote.sock"
        if len(str(path)) > _MAX_SOCKET_PATH:  # AF_UNIX paths are short
            path = Path(tempfile.mkdtemp(prefix="hubserve-")) / "zygote.sock"
        self.socket_path = path
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.failed = False
        self._lock = asyncio.Lock()

    async def ensure(self) -> Path | None:
        async with self._lock:
            if self.failed:
                return None
            if self.proc is not None and self.proc.poll() is None and self.socket_path.exists():
                return self.socket_path
            self._start()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    break
                if self.socket_path.exists():
                    return self.socket_path
                await asyncio.sleep(0.05)
            log.warning(
                "the zygote did not start (see %s); launching replicas directly", self.log_file
            )
            self.failed = True
            self.stop()
            return None

    def _start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "model_runtime.cli",
                    "zygote",
                    "--socket",
                    str(self.socket_path),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalBackend(Backend):
    """Supervised runtime processes on this machine (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        settings: LocalBackendSettings | None = None,
        *,
        job_locations: Sequence[str] = (),
        environments: EnvironmentManager | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        self.store = store
        #: None: replicas run unsandboxed, as the service's user (development only).
        self.isolation = isolation
        self.job_locations = list(job_locations)
        #: None: every replica runs in the service's own environment.
        self.environments = environments
        #: Where replicas' cgroups go (None: no writable cgroup v1 controllers here).
        self._cgroups = CgroupTree.detect()
        self.data_dir = data_dir
        self.root = data_dir / "local"
        self.settings = settings or LocalBackendSettings()
        self._state_dir = self.root / "replicas"
        #: Each running replica's API token, which launches name instead of carrying it.
        self._tokens = self.root / "tokens"
        self._logs = self.root / "logs"
        self._cache = self.root / "cache"
        self._deployments: dict[str, _Deployment] = {}
        self._zygote = _Zygote(self.root, self._logs / "zygote.log", self._environment())
        self._probe = httpx.AsyncClient(timeout=self.settings.probe_timeout)
        self._warming: asyncio.Task[Path | None] | None = None
        for directory in (self._state_dir, self._logs, self._cache, self._tokens):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- the Backend API -------------------------------------------------------------------

    async def start(self, specs: list[DeploymentSpec]) -> None:
        if self.settings.use_zygote:  # warm it now: the first deployment should not wait
            self._warming = asyncio.create_task(self._zygote.ensure())
        wanted = {spec.key: spec for spec in specs}
        adopted: dict[str, list[_Replica]] = {}
        for path in sorted(self._state_dir.glob("*.json")):
            replica, key = await self._adopt(path, wanted)
            if replica is not None:
                adopted.setdefault(key, []).append(replica)
        keep = {r.process.pid for rs in adopted.values() for r in rs if r.process is not None}
        for pid in await anyio.to_thread.run_sync(_leftovers, self.root, keep):
            log.info("stopping process %d, left by an earlier run of the service", pid)
            await self._terminate(_Process(pid))
        if self._cgroups is not None:
            names = {r.cgroup.memory.name for rs in adopted.values() for r in rs if r.cgroup}
            await anyio.to_thread.run_sync(self._cgroups.prune, names)
        for path in self._tokens.iterdir():  # of replicas gone with an earlier run
            if path.name not in {r.id for rs in adopted.values() for r in rs}:
                path.unlink(missing_ok=True)
        for spec in specs:
            deployment = _Deployment(spec)
            for replica in adopted.get(spec.key, []):
                deployment.replicas[replica.id] = replica
            self._deployments[spec.key] = deployment
            deployment.task = asyncio.create_task(self._supervise(deployment))

    async def apply(self, spec: DeploymentSpec) -> None:
        deployment = self._deployments.get(spec.key)
        if deployment is None:
            deployment = _Deployment(spec)
            self._deployments[spec.key] = deployment
            deployment.task = asyncio.create_task(self._supervise(deployment))
        else:
            deployment.spec = spec
        deployment.wake.set()

    async def remove(self, owner: str, name: str) -> None:
        deployment = self._deployments.pop(f"{owner}/{name}", None)
        if deployment is None:
            return
        await self._shutdown(deployment)
        await anyio.to_thread.run_sync(_remove_tree, self._logs / owner / name)

    def status(self, owner: str, name: str) -> DeploymentStatus:
        deployment = self._deployments.get(f"{owner}/{name}")
        if deployment is None:
            return DeploymentStatus(desired=0, ready=0, updated=0, phase="stopped")
        spec = deployment.spec
        replicas = sorted(deployment.replicas.values(), key=lambda r: r.started_at)
        ready = [r for r in replicas if r.state is ReplicaState.READY]
        updated = sum(r.generation == spec.generation for r in ready)
        # crashed, or restarted after a crash and not ready since: a crash loop
        crashed = any(
            r.state is ReplicaState.CRASHED or (r.failures and r.state is not ReplicaState.READY)
            for r in replicas
        )
        if spec.replicas == 0 and not replicas:
            phase = "stopped"
        elif deployment.preparing is not None:
            phase = "preparing environment"
        elif updated == spec.replicas and len(replicas) == updated:
            phase = "ready"
        elif not ready and (crashed or deployment.message):
            phase = "failed"
        elif crashed or (deployment.message and not updated):
            phase = "degraded"
        else:
            phase = "progressing"
        message = deployment.progress if deployment.preparing is not None else deployment.message
        if message is None and crashed:
            errors = [r.last_error for r in replicas if r.last_error]
            message = errors[-1] if errors else None
        environment = deployment.environments.get(spec.model.version or "")
        return DeploymentStatus(
            desired=spec.replicas,
            ready=len(ready),
            updated=updated,
            phase=phase,
            message=message,
            environment=EnvironmentStatus(**environment.to_json()) if environment else None,
            replicas=[r.status() for r in replicas],
        )

    def choose(
        self,
        owner: str,
        name: str,
        prefer: str | None = None,
        avoid: Collection[str] = (),
    ) -> Endpoint | None:
        deployment = self._deployments.get(f"{owner}/{name}")
        if deployment is None:
            return None
        if prefer is not None and prefer not in avoid:
            preferred = deployment.replicas.get(prefer)
            if preferred is not None and preferred.state is ReplicaState.READY:
                return preferred
        ready = [
            r
            for r in deployment.replicas.values()
            if r.state is ReplicaState.READY and r.id not in avoid
        ]
        if not ready:
            return None
        # Least outstanding requests; ties go round-robin, so idle replicas share the load.
        deployment.turn += 1
        start = deployment.turn % len(ready)
        rotated = ready[start:] + ready[:start]
        return min(rotated, key=lambda r: r.in_flight)

    async def logs(self, owner: str, name: str, tail: int) -> list[LogChunk]:
        deployment = self._deployments.get(f"{owner}/{name}")
        if deployment is None:
            return []
        replicas = sorted(deployment.replicas.values(), key=lambda r: r.started_at)
        chunks = [
            LogChunk(replica=r.id, lines=await anyio.to_thread.run_sync(_tail, r.log_file, tail))
            for r in replicas
        ]
        env_log = self._env_log(deployment.spec)
        if env_log.exists():
            lines = await anyio.to_thread.run_sync(_tail, env_log, tail)
            chunks.insert(0, LogChunk(replica="environment", lines=lines))
        return chunks

    async def aclose(self) -> None:
        deployments = list(self._deployments.values())
        self._deployments.clear()
        await asyncio.gather(*(self._shutdown(d) for d in deployments))
        if self._warming is not None:
            await asyncio.gather(self._warming, return_exceptions=True)
        await anyio.to_thread.run_sync(self._zygote.stop)
        await self._probe.aclose()

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self, deployment: _Deployment) -> None:
        while True:
            deployment.wake.clear()
            try:
                await self._converge(deployment)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep supervising whatever one round hit
                log.exception("supervising %s failed", deployment.spec.key)
                deployment.message = f"supervisor error: {exc}"
            starting = any(r.state is ReplicaState.STARTING for r in deployment.replicas.values())
            interval = self.settings.start_interval if starting else self.settings.health_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(deployment.wake.wait(), interval)

    async def _converge(self, deployment: _Deployment) -> None:
        spec = deployment.spec
        if not await self._fetch_bundle(deployment) or not self._environment_ready(deployment):
            return
        active = [r for r in deployment.replicas.values() if r.state is not ReplicaState.STOPPING]
        await asyncio.gather(*(self._check(deployment, r) for r in active))
        now = time.monotonic()
        for replica in active:
            if replica.state is ReplicaState.CRASHED:
                if replica.generation != spec.generation:
                    self._forget(deployment, replica)
                elif now >= replica.restart_at:
                    replica.restarts += 1
                    await self._launch(deployment, replica)
        active = [r for r in deployment.replicas.values() if r.state is not ReplicaState.STOPPING]
        current = [r for r in active if r.generation == spec.generation]
        old = [r for r in active if r.generation != spec.generation]
        for _ in range(spec.replicas - len(current)):
            replica = self._new_replica(deployment)
            current.append(replica)
            await self._launch(deployment, replica)
        if len(current) > spec.replicas:  # scale down: the least useful go first
            current.sort(key=lambda r: (r.state is ReplicaState.READY, -r.launched))
            for replica in current[: len(current) - spec.replicas]:
                self._stop_later(deployment, replica)
            current = current[len(current) - spec.replicas :]
        ready_new = sum(r.state is ReplicaState.READY for r in current)
        keep_old = max(0, spec.replicas - ready_new)
        old.sort(key=lambda r: r.state is not ReplicaState.READY)
        for replica in old[keep_old:]:
            self._stop_later(deployment, replica)

    async def _fetch_bundle(self, deployment: _Deployment) -> bool:
        version = deployment.spec.model.version
        assert version is not None
        if version in deployment.bundles:
            return True
        if time.monotonic() < deployment.pull_retry_at:
            return False
        ref = deployment.spec.model
        try:
            pulled = await anyio.to_thread.run_sync(self._pull, ref)
        except (HubserveError, OSError) as exc:
            deployment.pull_failures += 1
            delay = self._backoff(deployment.pull_failures)
            deployment.pull_retry_at = time.monotonic() + delay
            if _disk_full(exc):
                deployment.message = (
                    f"cannot fetch {ref}: no space left on device in the bundle cache {self._cache}"
                )
            else:
                deployment.message = f"cannot fetch {ref} from the store: {exc}"
            log.warning("%s (retrying in %.0f s)", deployment.message, delay)
            return False
        deployment.bundles[version] = pulled
        deployment.message = None
        deployment.pull_failures = 0
        return True

    def _pull(self, ref: ModelRef) -> Path:
        path = self.store.pull(ref, cache_dir=self._cache).path
        if self.isolation is not None:
            _readable_by_all(path)
        return path

    def _environment_ready(self, deployment: _Deployment) -> bool:
        """Whether the newest version's environment is there; if not, start preparing it.

        It is prepared in a task of its own: building can take a minute, and the supervisor
        keeps checking the replicas of the older version meanwhile.
        """
        version = deployment.spec.model.version or ""
        if version in deployment.environments:
            return True
        if self.environments is None:
            deployment.environments[version] = Environment("runtime", "environments are off")
            return True
        if deployment.preparing is None and time.monotonic() >= deployment.env_retry_at:
            deployment.progress = "preparing the environment"
            deployment.preparing = asyncio.create_task(self._prepare(deployment, version))
        return False

    async def _prepare(self, deployment: _Deployment, version: str) -> None:
        assert self.environments is not None
        manager = self.environments
        bundle = deployment.bundles[version]
        log_file = self._env_log(deployment.spec)
        log_file.parent.mkdir(parents=True, exist_ok=True)

        def progress(message: str) -> None:
            deployment.progress = f"preparing environment: {message}"
            with log_file.open("a", encoding="utf-8") as out:
                out.write(f"{_utcnow():%Y-%m-%d %H:%M:%S}Z {message}\n")

        def prepare() -> tuple[Environment, list[str]]:
            requirements = read_manifest(bundle).requirements
            progress(f"{version}: {len(requirements)} requirement(s)")
            environment = manager.prepare(requirements, progress=progress)
            if self.isolation is not None and environment.path is not None:
                _readable_by_all(environment.path)
            return environment, _preload(environment, bundle) if environment.site else []

        try:
            environment, preload = await anyio.to_thread.run_sync(prepare)
        except (EnvBuildError, HubserveError, OSError) as exc:
            reason = exc.reason if isinstance(exc, EnvBuildError) else str(exc)
            deployment.env_failures += 1
            delay = self._backoff(deployment.env_failures)
            deployment.env_retry_at = time.monotonic() + delay
            deployment.message = f"environment: {reason}"
            installer_log = getattr(exc, "log_file", None)
            await anyio.to_thread.run_sync(_append_log, log_file, installer_log, reason)
            log.warning("%s: %s (retrying in %.0f s)", deployment.spec.key, reason, delay)
        else:
            deployment.environments[version] = environment
            deployment.preloads[version] = preload
            deployment.message = None
            deployment.env_failures = 0
            progress(environment.describe())
            if environment.built:  # the cache grew: evict what no deployment uses
                in_use = {
                    e.key
                    for d in self._deployments.values()
                    for e in d.environments.values()
                    if e.key
                }
                await anyio.to_thread.run_sync(lambda: manager.gc(in_use))
        finally:
            deployment.preparing = None
            deployment.progress = None
            deployment.wake.set()

    def _environment(self) -> dict[str, str]:
        """What every replica's (and the zygote's) environment holds: the basics, the mark."""
        return {**runtime_environment(), OWNER_ENV: str(self.root)}

    def _env_log(self, spec: DeploymentSpec) -> Path:
        return self._logs / spec.owner / spec.name / "environment.log"

    async def _check(self, deployment: _Deployment, replica: _Replica) -> None:
        process = replica.process
        if replica.state is ReplicaState.CRASHED or process is None:
            return
        if not process.alive():
            code = process.exit_code()
            reason = "exited" + (f" with status {code}" if code is not None else "")
            cause = await anyio.to_thread.run_sync(_last_error, replica.log_file)
            if replica.cgroup is not None and replica.cgroup.oom_kills():
                limit = replica.cgroup.limits.describe_memory()
                reason, cause = f"out of memory (limit {limit})", None
            self._crashed(deployment, replica, f"{reason}: {cause}" if cause else reason)
            return
        try:
            response = await self._probe.get(replica.address + "/readyz")
            healthy = response.status_code == 200
        except httpx.HTTPError:
            healthy = False
        if healthy:
            if replica.state is not ReplicaState.READY:
                replica.state = ReplicaState.READY
                replica.ready_at = _utcnow()
                replica.last_error = None
                self._save(deployment, replica)
                deployment.wake.set()  # a new ready replica may let an old one go
            elif replica.ready_at and _utcnow() - replica.ready_at > timedelta(minutes=1):
                replica.failures = 0
            replica.probe_failures = 0
            return
        if replica.state is ReplicaState.STARTING:
            if time.monotonic() - replica.launched > self.settings.start_timeout:
                process.signal(signal.SIGKILL)
                timeout = self.settings.start_timeout
                self._crashed(deployment, replica, f"not ready after {timeout:.0f} s")
            return
        replica.probe_failures += 1
        if replica.probe_failures >= self.settings.restart_unhealthy_after:
            process.signal(signal.SIGKILL)
            self._crashed(deployment, replica, "stopped answering health checks")
        elif replica.probe_failures >= self.settings.unhealthy_after:
            replica.state = ReplicaState.UNHEALTHY
            replica.last_error = "failing health checks"

    def _crashed(self, deployment: _Deployment, replica: _Replica, reason: str) -> None:
        replica.state = ReplicaState.CRASHED
        replica.failures += 1
        delay = self._backoff(replica.failures)
        replica.restart_at = time.monotonic() + delay
        replica.last_error = reason
        log.warning(
            "replica %s of %s %s; restarting in %.0f s",
            replica.id,
            deployment.spec.key,
            reason,
            delay,
        )

    def _backoff(self, failures: int) -> float:
        return float(min(self.settings.max_backoff, 2 ** max(0, failures - 1)))

    def _new_replica(self, deployment: _Deployment) -> _Replica:
        spec = deployment.spec
        replica_id = os.urandom(4).hex()
        replica = _Replica(
            id=replica_id,
            generation=spec.generation,
            version=spec.model.version or "",
            log_file=self._logs / spec.owner / spec.name / f"{replica_id}.log",
        )
        deployment.replicas[replica_id] = replica
        return replica

    async def _launch(self, deployment: _Deployment, replica: _Replica) -> None:
        spec = deployment.spec
        bundle = deployment.bundles[replica.version]
        replica.port = _free_port()
        replica.state = ReplicaState.STARTING
        replica.launched = time.monotonic()
        replica.started_at = _utcnow()
        replica.ready_at = None
        replica.probe_failures = 0
        replica.log_file.parent.mkdir(parents=True, exist_ok=True)
        with replica.log_file.open("a", encoding="utf-8") as out:
            out.write(
                f"--- {replica.started_at:%Y-%m-%d %H:%M:%S}Z start #{replica.restarts}"
                f" of {spec.key} ({spec.model}) on port {replica.port}\n"
            )
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": replica.port,
            "batching": spec.batching,
        }
        settings["threads"] = spec.threads if spec.threads is not None else _default_threads(spec)
        if self.job_locations:
            settings["job_locations"] = self.job_locations
        environment = deployment.environments[replica.version]
        try:
            replica.cgroup = self._limit(spec, replica)
        except (ValueError, OSError) as exc:
            self._crashed(deployment, replica, f"cannot apply the resource limits: {exc}")
            return
        try:
            sandbox = self._sandbox(spec, bundle, environment, replica)
        except SandboxError as exc:
            self._crashed(deployment, replica, f"cannot be sandboxed: {exc}")
            return
        replica.sandboxed = sandbox is not None
        try:
            replica.process = await self._start_process(
                str(bundle),
                settings,
                replica.log_file,
                environment,
                replica.cgroup,
                deployment.preloads.get(replica.version, []),
                sandbox,
                self._token_file(replica, spec.secret),
            )
        except (ZygoteError, OSError) as exc:
            self._crashed(deployment, replica, f"could not be launched: {exc}")
            return
        self._save(deployment, replica)

    def _limit(self, spec: DeploymentSpec, replica: _Replica) -> Cgroup | None:
        """A fresh cgroup with the deployment's limits for this launch of ``replica`` (for a
        sandboxed one without limits, where cgroups are writable: its cap on tasks)."""
        limits = Limits.of(spec.memory, spec.cpu)
        if limits is None and self.isolation is not None and self._cgroups is not None:
            limits = Limits()
        if limits is None:
            return None
        if self._cgroups is None:
            raise ValueError(
                "memory and cpu limits need the cgroup v1 memory, cpu and pids controllers,"
                " writable by the service; none are here"
            )
        return self._cgroups.create(f"replica-{replica.id}", limits)

    def _token_file(self, replica: _Replica, secret: str) -> Path:
        """The file ``replica`` reads its API token from (0600, in the hidden data dir)."""
        path = self._tokens / replica.id
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secret)
        tmp.replace(path)
        return path

    def _sandbox(
        self, spec: DeploymentSpec, bundle: Path, environment: Environment, replica: _Replica
    ) -> Profile | None:
        """What ``replica``'s sandbox holds (None: it runs unsandboxed)."""
        if self.isolation is None:
            return None
        shown = [bundle] if environment.path is None else [bundle, environment.path]
        hidden = [self.data_dir]
        if self.environments is not None:
            hidden.append(self.environments.root)
        return self.isolation.profile(
            spec.owner,
            shown=shown,
            writable=job_folders(self.job_locations, spec.owner),
            hidden=hidden,
            limit_processes=replica.cgroup is None,
        )

    async def _start_process(
        self,
        source: str,
        settings: dict[str, Any],
        log_file: Path,
        environment: Environment,
        cgroup: Cgroup | None,
        preload: list[str],
        sandbox: Profile | None,
        token_file: Path,
    ) -> _Process:
        """Start a replica: through the zygote, which never reads its token (the child reads
        ``token_file``), else as a process of ours, whose token is in its environment."""
        if environment.python is not None:  # a separate environment: its own interpreter
            command = [str(environment.python), "-m", "model_runtime.runtime"]
            env = {
                **self._environment(),
                LAUNCH_ENV: json.dumps({"source": source, "settings": settings}),
            }
            zygote = await self._zygote.ensure() if self.settings.use_zygote else None
            if sandbox is not None and zygote is not None:  # into its sandbox
                pid = await anyio.to_thread.run_sync(
                    lambda: spawn_command(
                        zygote,
                        command,
                        env=env,
                        log_file=log_file,
                        cgroups=cgroup.procs if cgroup is not None else None,
                        sandbox=sandbox,
                        token_file=token_file,
                        bind=(settings["host"], settings["port"]),
                    )
                )
                return _Process(pid)
            launch = {"source": source, "settings": {**settings, "api_token": _read(token_file)}}
            env[LAUNCH_ENV] = json.dumps(launch)
            return self._popen(command, env, log_file, cgroup, sandbox)
        sys_path = [str(environment.site)] if environment.site is not None else []
        socket_path = await self._zygote.ensure() if self.settings.use_zygote else None
        if socket_path is not None:
            # An overlay's replicas come from a warm launcher with its packages imported
            # (unless sandboxed: see the module docstring).
            warm = environment.site is not None and sandbox is None
            warm_key = environment.key if warm else None
            pid = await anyio.to_thread.run_sync(
                lambda: spawn(
                    socket_path,
                    source,
                    log_file=log_file,
                    settings=settings,
                    sys_path=sys_path,
                    warm_key=warm_key,
                    preload=preload,
                    cgroups=cgroup.procs if cgroup is not None else None,
                    sandbox=sandbox,
                    token_file=token_file,
                    bind=(settings["host"], settings["port"]),
                )
            )
            return _Process(pid)
        env = self._environment()
        if sys_path:
            env["PYTHONPATH"] = os.pathsep.join([*sys_path, *filter(None, [env.get("PYTHONPATH")])])
        env["HUBSERVE_RUNTIME_API_TOKEN"] = _read(token_file)
        env["HUBSERVE_RUNTIME_BATCHING"] = json.dumps(settings["batching"])
        if "job_locations" in settings:
            env["HUBSERVE_RUNTIME_JOB_LOCATIONS"] = json.dumps(settings["job_locations"])
        command = [sys.executable, "-m", "model_runtime.cli", "serve", source]
        command += ["--host", settings["host"], "--port", str(settings["port"])]
        command += ["--threads", str(settings["threads"]), "--env", "none"]
        return self._popen(command, env, log_file, cgroup, sandbox)

    def _popen(
        self,
        command: list[str],
        env: dict[str, str],
        log_file: Path,
        cgroup: Cgroup | None,
        sandbox: Profile | None,
    ) -> _Process:
        if sandbox is not None:  # the wrapper joins the cgroups, then makes the sandbox
            wrapper = [sys.executable, "-m", "model_runtime.sandbox"]
            for procs in cgroup.procs if cgroup is not None else []:
                wrapper += ["--cgroup", procs]
            command = [*wrapper, "--", *command]
            env = {**env, PROFILE_ENV: sandbox.dumps()}
            cgroup = None
        with log_file.open("ab") as out:
            popen = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if cgroup is not None:  # at once: it has only started its interpreter
            try:
                cgroup.add(popen.pid)
            except OSError:
                popen.kill()
                raise
        return _Process(popen.pid, popen)

    # -- stopping ---------------------------------------------------------------------------

    def _stop_later(self, deployment: _Deployment, replica: _Replica) -> None:
        replica.state = ReplicaState.STOPPING
        task = asyncio.create_task(self._stop(deployment, replica))
        deployment.stopping.add(task)
        task.add_done_callback(deployment.stopping.discard)

    async def _stop(self, deployment: _Deployment, replica: _Replica) -> None:
        """Drain (no new requests, wait for the open ones), then stop the process."""
        replica.state = ReplicaState.STOPPING
        deadline = time.monotonic() + self.settings.drain_timeout
        while replica.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if replica.process is not None:
            await self._terminate(replica.process)
        self._forget(deployment, replica)

    async def _terminate(self, process: _Process) -> None:
        process.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.stop_timeout
        while process.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if process.alive():
            process.signal(signal.SIGKILL)

    def _forget(self, deployment: _Deployment, replica: _Replica) -> None:
        deployment.replicas.pop(replica.id, None)
        (self._state_dir / f"{replica.id}.json").unlink(missing_ok=True)
        (self._tokens / replica.id).unlink(missing_ok=True)
        if replica.cgroup is not None:
            replica.cgroup.remove()

    async def _shutdown(self, deployment: _Deployment) -> None:
        for task in (deployment.task, deployment.preparing):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for replica in list(deployment.replicas.values()):
            if replica.state is not ReplicaState.STOPPING:
                self._stop_later(deployment, replica)
        if deployment.stopping:
            await asyncio.gather(*list(deployment.stopping), return_exceptions=True)

    # -- state files and adoption -----------------------------------------------------------

    def _save(self, deployment: _Deployment, replica: _Replica) -> None:
        if replica.process is None:
            return
        record = {
            "deployment": deployment.spec.key,
            "id": replica.id,
            "generation": replica.generation,
            "version": replica.version,
            "port": replica.port,
            "pid": replica.process.pid,
            "restarts": replica.restarts,
            "sandboxed": replica.sandboxed,
            "started_at": replica.started_at.isoformat(),
        }
        path = self._state_dir / f"{replica.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)

    async def _adopt(
        self, path: Path, wanted: dict[str, DeploymentSpec]
    ) -> tuple[_Replica | None, str]:
        """The replica a state file describes, if it still runs for a wanted deployment."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            key, pid, port = str(record["deployment"]), int(record["pid"]), int(record["port"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            return None, ""
        process = _Process(pid)
        spec = wanted.get(key)
        sandboxed = bool(record.get("sandboxed", False))
        if spec is not None and sandboxed == (self.isolation is not None) and process.alive():
            replica = _Replica(
                id=str(record["id"]),
                generation=int(record["generation"]),
                version=str(record["version"]),
                log_file=self._logs / spec.owner / spec.name / f"{record['id']}.log",
                port=port,
                process=process,
                restarts=int(record.get("restarts", 0)),
                started_at=datetime.fromisoformat(record["started_at"]),
                sandboxed=bool(record.get("sandboxed", False)),
            )
            # The secret goes only to the recorded process's own socket: a replica that died
            # may have left its port to another (a model on the same loopback).
            owned = await anyio.to_thread.run_sync(_listens_on, pid, port)
            if owned and await self._answers_with_secret(replica, spec.secret):
                with contextlib.suppress(ValueError):
                    limits = Limits.of(spec.memory, spec.cpu)
                    if limits is None and self.isolation is not None:
                        limits = Limits()
                    if limits is not None and self._cgroups is not None:
                        name = f"replica-{replica.id}"
                        replica.cgroup = self._cgroups.existing(name, limits)
                replica.state = ReplicaState.READY
                replica.ready_at = _utcnow()
                log.info("adopted replica %s of %s (pid %d)", replica.id, key, pid)
                return replica, key
        if process.alive() and process.looks_like_runtime():
            log.info("stopping leftover replica pid %d of %s", pid, key)
            await self._terminate(process)
        path.unlink(missing_ok=True)
        return None, key

    async def _answers_with_secret(self, replica: _Replica, secret: str) -> bool:
        try:
            response = await self._probe.get(
                replica.address + "/v2", headers={"x-hubserve-token": secret}
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def _listens_on(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds the socket listening on 127.0.0.1:``port``."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if str(fd.readlink()) in inodes:
                    return True
    return False


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log file (reading at most the last 1 MiB)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 1024 * 1024))
            data = f.read()
    except FileNotFoundError:
        return []
    text = data.decode("utf-8", errors="replace").splitlines()
    return text[-lines:] if lines > 0 else []


#: A line that ends a Python traceback (``ModuleNotFoundError: No module named 'x'``) or
#: hubserve's own one-line errors (``Error: ...``).
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*|Error: .+)$")


def _last_error(path: Path) -> str | None:
    """The last error line a crashed replica wrote since its last start (for the status)."""
    lines = _tail(path, 200)
    starts = [i for i, line in enumerate(lines) if line.startswith("--- ")]
    for line in reversed(lines[starts[-1] if starts else 0 :]):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()[:300]
    return None


def _preload(environment: Environment, bundle: Path) -> list[str]:
    """What a warm launcher of ``environment`` imports: the overlay's packages, and what
    loading this bundle imports (its artifact loader and classes, its service's imports)."""
    try:
        extra = load_time_imports(bundle)
    except (HubserveError, OSError):
        extra = []
    return sorted({*environment.modules(), *extra})


def _append_log(log_file: Path, installer_log: str | None, reason: str) -> None:
    """The installer's whole output, then the one-line reason, into the deployment's log."""
    with log_file.open("a", encoding="utf-8") as out:
        if installer_log:
            with contextlib.suppress(OSError):
                out.write(Path(installer_log).read_text(encoding="utf-8", errors="replace"))
        out.write(f"{_utcnow():%Y-%m-%d %H:%M:%S}Z failed: {reason}\n")


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a full disk (or quota), however it was wrapped on the way."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _readable_by_all(root: Path) -> None:
    """Let any user read ``root`` and what it holds (and enter its folders): sandboxed
    replicas run as another user than the one that unpacked or built it. The folders above
    stay closed; the sandbox shows ``root`` at its own path."""
    for folder, _, files in os.walk(root):
        _add_mode(Path(folder), 0o555)
        for name in files:
            _add_mode(Path(folder) / name, 0o444)


def _add_mode(path: Path, bits: int) -> None:
    with contextlib.suppress(OSError):
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & bits != bits:
            path.chmod(stat.S_IMODE(mode) | bits)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _default_threads(spec: DeploymentSpec) -> int:
    """A replica's torch threads: its share of the CPUs, and no more than its CPU quota
    (threads beyond the quota only queue for it)."""
    share = _share_of_cpus(spec.replicas)
    with contextlib.suppress(ValueError):
        limits = Limits.of(None, spec.cpu)
        if limits is not None and limits.cpu is not None:
            return max(1, min(share, math.ceil(limits.cpu)))
    return share


def _share_of_cpus(replicas: int) -> int:
    """Torch threads for one of ``replicas`` replicas sharing this machine's CPUs."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, replicas))
