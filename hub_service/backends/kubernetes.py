"""The Kubernetes backend: every deployment is a set of objects in one namespace of a cluster.

What a deployment becomes (built by :func:`model_runtime.k8s.build_manifests`, one
``object_name`` per deployment, e.g. ``hs-alice-iris-1a2b3c``):

* a **Secret** ``<object_name>-token`` holding the deployment's gateway secret (key ``token``):
  runtimes accept only calls that carry it, and only the gateway sends it;
* a **Deployment**: N runtime pods, each pulling the bundle from the S3 store in an init
  container (credentials from the admin's store Secret, ``HUBSERVE_K8S_S3_SECRET``) and
  building or reusing the bundle's environment in a second one (under the service's
  ``HUBSERVE_ENV_*`` policy, in an ``emptyDir`` or in the shared claim
  ``HUBSERVE_K8S_ENV_CACHE_CLAIM``; no second one with ``HUBSERVE_ENV_ENABLED=false``), probed on
  ``/readyz`` and ``/healthz``, rolling updates with ``maxUnavailable: 0`` (a new pod is ready
  before an old one goes); the pod template carries the model version and the deployment's
  *generation* (an annotation the backend adds), so a new version or new runtime settings
  change the template and Kubernetes rolls, while a new replica count only scales;
* a **Service** (ClusterIP, port 80) in front of the pods: the gateway sends every call to
  ``http://<object_name>.<namespace>.svc.<cluster domain>:80`` and Kubernetes balances the
  ready pods, so :meth:`KubernetesBackend.choose` returns one endpoint per deployment;
* optionally an **Ingress** with TLS (a cert-manager ``ClusterIssuer``) for a direct endpoint
  at a host from a template, and a **HorizontalPodAutoscaler** (CPU target).

Every object carries labels that mark it as a hubserve runtime object
(``app.kubernetes.io/managed-by=hubserve``, ``app.kubernetes.io/name=hubserve-runtime``: the
backend lists and cleans up only such objects) and tie it to its deployment
(``app.kubernetes.io/instance=<object_name>``), owner, model, version and generation.

How the backend converges:

* **Applying** (:meth:`~KubernetesBackend.apply`, on create, scale, roll, rollback) sends each
  object as a JSON merge patch and creates the ones that do not exist yet. A merge patch of
  the whole object replaces lists (containers, env, ports) and keeps what the cluster added
  (a Service's cluster IP, an autoscaler's replica count when the object leaves it out), so
  the objects end up as built whatever they held before. The first attempt runs inside the
  call, so an error shows in the answer to the request that caused it.
* **Errors of the API** (403 forbidden or over quota, 422 invalid, 409 conflict, the API
  server unreachable) never escape: they become the deployment's status message (phase
  ``failed``, or ``degraded`` while ready pods of an earlier state still serve) and the apply
  is retried with exponential backoff (1 s, 2 s, 4 s ... up to ``backoff_max``).
* **Status** comes from two list calls per round for the whole namespace (the runtime
  Deployments and pods), every ``progress_interval`` while anything converges and every
  ``poll_interval`` otherwise: ready and updated pods (of the current generation), restarts,
  the Deployment's failure conditions (``ReplicaFailure``, e.g. a pod quota;
  ``ProgressDeadlineExceeded``), and why a pod is not running (``ImagePullBackOff``,
  ``CrashLoopBackOff`` with the last exit, a failing bundle pull, unschedulable) as the
  message (a failed environment build: the build's one-line reason, the init container's
  termination message). A Deployment found missing (deleted with kubectl) is applied again.
* **Autoscaling**: with ``HUBSERVE_K8S_AUTOSCALE_MAX`` an autoscaler owns the replica count;
  the user's replica count is its floor (unless ``AUTOSCALE_MIN`` is set), and zero replicas
  removes it (an autoscaler cannot hold zero) until the deployment is scaled up again.
* **Logs** are the last lines of each pod's runtime container (the previous run's for a
  crash-looping one, the init container's while the bundle pull fails).
* **Restarts of the service** (:meth:`~KubernetesBackend.start`): every deployment is applied
  again (pods that still run the same template are kept: re-applying an unchanged object
  changes nothing), and hubserve-managed objects of deployments that are gone — or kinds a
  deployment no longer uses, after the settings changed — are deleted. So one namespace
  belongs to one hubserve service.
* **Removing** deletes the objects (pods get Kubernetes' graceful termination); if the API
  refuses, the leftovers are deleted by the background sweep, retried with backoff.
* **Batch jobs** live in the memory of the pod that runs them, but the Service picks a pod
  for each call, so with several replicas a job's status call may reach another pod (404):
  run batch jobs on single-replica deployments.

Configuration: :class:`~hub_service.backends._k8s_settings.KubernetesSettings`
(``HUBSERVE_K8S_*`` variables), which ``configure_jupyterhub`` passes to the service through
``extra_env``::

    hub_service.configure_jupyterhub(
        c, store="s3://models", backend="kubernetes",
        extra_env={"HUBSERVE_K8S_NAMESPACE": "models", "HUBSERVE_K8S_AUTOSCALE_MAX": "4"},
    )

The model store must be S3 (``HUBSERVE_STORE=s3://bucket[/prefix]``): pods pull bundles from
it, and a directory on the service's machine is out of their reach. The service must reach
Service addresses, i.e. run in the cluster (as with Zero to JupyterHub).

The service account needs, in the namespace: ``list, create, patch, delete`` on
``deployments`` (apps), ``services``, ``secrets``, ``ingresses`` (networking.k8s.io, if used)
and ``horizontalpodautoscalers`` (autoscaling, if used); ``list`` on ``pods`` and ``get`` on
``pods/log``. Secrets access covers every Secret of the namespace: give runtimes a namespace
of their own.

The official ``kubernetes`` client is synchronous: its calls run in the backend's own pool of
worker threads, with a timeout each (``request_timeout``); a caller that is cancelled (the
service stopping) does not wait for a call in flight. Answers are read as plain JSON
(``_preload_content=False``), which keeps the backend independent of the client's model
classes and of fields newer clusters add.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from model_runtime.k8s import (
    ENV_CONTAINER,
    Autoscale,
    EnvPolicy,
    RuntimeTarget,
    build_manifests,
    labels,
    object_name,
)
from model_runtime.naming import ModelRef

from .._settings import HubServiceSettings
from . import (
    Backend,
    DeploymentSpec,
    DeploymentStatus,
    Endpoint,
    LogChunk,
    ReplicaState,
    ReplicaStatus,
)
from ._k8s_settings import KubernetesSettings

log = logging.getLogger("hubserve.kubernetes")
#: The client's config loaders have no type hints (in any version): used as ``Any``.
_config: Any = k8s_config

T = TypeVar("T")

#: What every runtime object carries (and nothing else: not the service's own objects).
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=hubserve,app.kubernetes.io/name=hubserve-runtime"
INSTANCE = "app.kubernetes.io/instance"
GENERATION = "hubserve.io/generation"
VERSION = "hubserve.io/version"
#: Per-version labels: kept off the token Secret, which outlives versions.
_VERSIONED = frozenset({GENERATION, VERSION})
MERGE_PATCH = "application/merge-patch+json"
#: Container waiting reasons that mean the pod will not get ready by itself.
BAD_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreCreateHookError",
        "PostStartHookError",
    }
)
#: Concurrent applies when many deployments converge at once (service start).
_APPLY_CONCURRENCY = 8
#: Threads for the client's blocking calls (applies, status reads, logs, deletes).
_THREADS = 16
_MAX_MESSAGE = 500
#: Environments on, nothing restricted: the pods' builds use the image's pip configuration.
_DEFAULT_POLICY = EnvPolicy()

Obj = dict[str, Any]


@dataclass(frozen=True)
class _Kind:
    """A kind of object the backend manages: which client API serves it, under what name."""

    kind: str
    api: str  #: "core", "apps", "networking" or "autoscaling"
    resource: str  #: the suffix of the client's methods, e.g. "namespaced_deployment"


SECRET = _Kind("Secret", "core", "namespaced_secret")
DEPLOYMENT = _Kind("Deployment", "apps", "namespaced_deployment")
SERVICE = _Kind("Service", "core", "namespaced_service")
INGRESS = _Kind("Ingress", "networking", "namespaced_ingress")
HPA = _Kind("HorizontalPodAutoscaler", "autoscaling", "namespaced_horizontal_pod_autoscaler")
POD = _Kind("Pod", "core", "namespaced_pod")
KINDS = {kind.kind: kind for kind in (SECRET, DEPLOYMENT, SERVICE, INGRESS, HPA)}
#: Deletion order: what routes traffic first, the token last.
DELETE_ORDER = (HPA, INGRESS, SERVICE, DEPLOYMENT, SECRET)


class KubernetesCallError(Exception):
    """A failed call to the Kubernetes API, described for people (the status message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def describe(exc: BaseException, host: str = "") -> str:
    """What went wrong in a call to the API, in one line: the API's own message for a refusal
    (``403 Forbidden: ... exceeded quota ...``), the cause for a network failure."""
    if isinstance(exc, ApiException):
        message = ""
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            body = exc.body.decode() if isinstance(exc.body, bytes) else exc.body
            message = str(json.loads(body or "").get("message") or "")
        status = f"{exc.status} {exc.reason or ''}".strip()
        return _shorten(f"{status}: {message}" if message else status)
    cause = _root_cause(exc)
    where = f" at {host}" if host else ""
    return _shorten(f"cannot reach the Kubernetes API{where}: {cause}")


def _root_cause(exc: BaseException) -> str:
    """The system error under a network failure (urllib3 wraps it twice or three times)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        nested = getattr(current, "reason", None)
        current = (
            nested
            if isinstance(nested, BaseException)
            else (current.__cause__ or current.__context__)
        )
    for error in chain:  # first the OS's word: urllib3 calls a refused connection a timeout
        if isinstance(error, OSError) and error.strerror:
            return error.strerror.lower()
    if any(isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError)) for e in chain):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def api_client_for(settings: KubernetesSettings) -> k8s.ApiClient:
    """A client of the cluster the settings name (kubeconfig, in-cluster, or the default)."""
    configuration = k8s.Configuration()
    if settings.kubeconfig is not None:
        _config.load_kube_config(
            config_file=str(settings.kubeconfig),
            context=settings.context,
            client_configuration=configuration,
            persist_config=False,
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        _config.load_incluster_config(client_configuration=configuration)
    else:
        _config.load_kube_config(
            context=settings.context, client_configuration=configuration, persist_config=False
        )
    # one retry: enough for a kept-alive connection the server closed, few log lines when
    # the API is down (the backend retries on its own schedule)
    configuration.retries = 1
    return k8s.ApiClient(configuration)


def env_policy_of(settings: HubServiceSettings) -> EnvPolicy | None:
    """The service's environment policy (``HUBSERVE_ENV_*``) for the pods, ``None`` when
    environments are off: the pods build and serve under the rules the local backend uses."""
    if not settings.env_enabled:
        return None
    return EnvPolicy(
        index_url=settings.env_index_url,
        extra_index_urls=tuple(settings.env_extra_index_urls),
        find_links=tuple(settings.env_find_links),
        no_index=settings.env_no_index,
        allow_sdist=settings.env_allow_sdist,
        allow=tuple(settings.env_allow),
        deny=tuple(settings.env_deny),
        max_env_bytes=settings.env_max_env_bytes,
    )


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    return None


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, (int, str)):
        with contextlib.suppress(ValueError):
            return int(value)
    return default


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or ``None`` where a step is missing."""
    current: Any = obj
    for step in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(step)
    return current


# -- reading pods ------------------------------------------------------------------------------


def _container_problem(status: Mapping[str, Any], role: str) -> str | None:
    """Why a container will not run by itself (``None`` when nothing says so)."""
    name = status.get("name", "?")
    waiting = _get(status, "state", "waiting") or {}
    reason = str(waiting.get("reason") or "")
    if reason in BAD_WAITING:
        text = f"{role} {name}: {reason}"
        last = _get(status, "lastState", "terminated")
        if isinstance(last, Mapping):
            text += f" (last exit code {last.get('exitCode', '?')}"
            if last.get("reason"):
                text += f", {last['reason']}"
            text += ")"
            if last.get("message"):
                text += f": {str(last['message']).strip()}"
        if waiting.get("message"):
            text += f": {waiting['message']}"
        return text
    terminated = _get(status, "state", "terminated")
    if isinstance(terminated, Mapping) and _int(terminated.get("exitCode")) != 0:
        text = f"{role} {name} exited with code {terminated.get('exitCode')}"
        if terminated.get("reason"):
            text += f" ({terminated['reason']})"
        if terminated.get("message"):
            text += f": {str(terminated['message']).strip()}"
        return text
    return None


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why a pod is not getting ready, if Kubernetes says: image pulls, crash loops, failed
    bundle pulls (the init container), scheduling."""
    status = pod.get("status") or {}
    for container in status.get("initContainerStatuses") or []:
        problem = _container_problem(container, "init container")
        if problem:
            return problem
    for container in status.get("containerStatuses") or []:
        problem = _container_problem(container, "container")
        if problem:
            return problem
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = condition.get("reason") or "not scheduled"
            return f"{reason}: {condition.get('message') or 'the pod cannot be placed'}"
    if status.get("phase") == "Failed":
        return f"pod failed: {status.get('reason') or ''} {status.get('message') or ''}".strip()
    return None


def building_environment(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's environment init container is building the bundle's environment."""
    return any(
        init.get("name") == ENV_CONTAINER and _get(init, "state", "running") is not None
        for init in _get(pod, "status", "initContainerStatuses") or []
    )


def _pod_ready(pod: Mapping[str, Any]) -> tuple[bool, datetime | None]:
    for condition in _get(pod, "status", "conditions") or []:
        if condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
            return ready, _time(condition.get("lastTransitionTime")) if ready else None
    return False, None


def _terminating(pod: Mapping[str, Any]) -> bool:
    return _get(pod, "metadata", "deletionTimestamp") is not None


def _restarts(pod: Mapping[str, Any]) -> int:
    status = pod.get("status") or {}
    containers = (status.get("containerStatuses") or []) + (
        status.get("initContainerStatuses") or []
    )
    return sum(_int(c.get("restartCount")) for c in containers)


def replica_of(pod: Mapping[str, Any]) -> ReplicaStatus:
    """A pod as one replica of the deployment's status."""
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    generation = (meta.get("annotations") or {}).get(GENERATION, pod_labels.get(GENERATION))
    ready, ready_at = _pod_ready(pod)
    problem = pod_problem(pod)
    if _terminating(pod):
        state = ReplicaState.STOPPING
    elif ready:
        state = ReplicaState.READY
    elif problem:
        state = ReplicaState.CRASHED
    else:
        state = ReplicaState.STARTING
    started = _time(_get(pod, "status", "startTime")) or _time(meta.get("creationTimestamp"))
    return ReplicaStatus(
        id=str(meta.get("name", "")),
        version=str(pod_labels.get(VERSION, "")),
        generation=_int(generation),
        state=state,
        restarts=_restarts(pod),
        started_at=started or _utcnow(),
        ready_at=ready_at,
        last_error=problem,
    )


def deployment_problem(deployment: Mapping[str, Any] | None) -> str | None:
    """A failure the Deployment reports: pods it cannot create (quota), a stalled rollout."""
    for condition in _get(deployment, "status", "conditions") or []:
        kind, status = condition.get("type"), condition.get("status")
        if kind == "ReplicaFailure" and status == "True":
            return f"{condition.get('reason') or 'ReplicaFailure'}: {condition.get('message', '')}"
        if kind == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return f"rollout stalled: {condition.get('message', 'ProgressDeadlineExceeded')}"
    return None


# -- the backend -------------------------------------------------------------------------------


@dataclass(eq=False)
class _ServiceEndpoint(Endpoint):
    """The deployment's Service: the gateway's one endpoint; Kubernetes balances the pods."""

    id: str
    url: str
    in_flight: int = 0

    @property
    def address(self) -> str:
        return self.url


@dataclass(eq=False)
class _Deployment:
    spec: DeploymentSpec
    name: str  #: the object name
    endpoint: _ServiceEndpoint
    #: Bumped by each apply(); ``applied`` is the value the cluster has seen.
    wanted: int = 1
    applied: int = 0
    failures: int = 0
    retry_at: float = 0.0
    error: str | None = None
    #: The kinds the last apply created (to tell optional objects that are no longer wanted).
    kinds: frozenset[str] = frozenset()
    #: What the last status read found (kept when the API is unreachable).
    deployment: Obj | None = None
    pods: list[Obj] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    removed: bool = False

    @property
    def key(self) -> str:
        return self.spec.key


class KubernetesBackend(Backend):
    """Deployments as Kubernetes objects (see the module docstring)."""

    def __init__(
        self,
        settings: KubernetesSettings,
        store_uri: str,
        *,
        api_client: k8s.ApiClient | None = None,
        job_locations: Sequence[str] = (),
        env_policy: EnvPolicy | None = _DEFAULT_POLICY,
    ) -> None:
        if not store_uri.startswith("s3://"):
            shown = repr(store_uri) if store_uri else "the default local directory"
            raise ValueError(
                "the kubernetes deploy backend needs an S3 model store"
                " (HUBSERVE_STORE=s3://bucket[/prefix], with HUBSERVE_S3_ENDPOINT and keys):"
                f" its pods pull bundles from the store, and {shown} is out of their reach"
            )
        self.settings = settings
        self.store_uri = store_uri.rstrip("/")
        self.job_locations = tuple(job_locations)
        #: What the pods' environment builds may install; ``None``: environments are off.
        self.env_policy = env_policy
        self._check_settings()
        self._owns_client = api_client is None
        self.api_client = api_client or api_client_for(settings)
        self._apis: dict[str, Any] = {
            "core": k8s.CoreV1Api(self.api_client),
            "apps": k8s.AppsV1Api(self.api_client),
            "networking": k8s.NetworkingV1Api(self.api_client),
            "autoscaling": k8s.AutoscalingV2Api(self.api_client),
        }
        self._records: dict[str, _Deployment] = {}
        self._executor = ThreadPoolExecutor(_THREADS, thread_name_prefix="hubserve-k8s")
        self._closed = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(_APPLY_CONCURRENCY)
        #: The sweep of objects no deployment owns: due at start and after a failed delete.
        self._sweep_due = False
        self._sweep_failures = 0
        self._sweep_at = 0.0
        #: Why the last status read failed (``None`` when it worked).
        self._api_error: str | None = None

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    # -- the Backend API -------------------------------------------------------------------

    async def start(self, specs: list[DeploymentSpec]) -> None:
        for spec in specs:
            self._records[spec.key] = self._record(spec)
        self._sweep_due = True
        # What runs already serves at once: read it before the service takes calls, but do
        # not hold the service's start for long when the API is slow.
        first = asyncio.create_task(self._observe())
        self._background.add(first)
        first.add_done_callback(self._background.discard)
        await asyncio.wait({first}, timeout=min(2.0, self.settings.request_timeout))
        self._ensure_worker()

    async def apply(self, spec: DeploymentSpec) -> None:
        record = self._records.get(spec.key)
        if record is None:
            record = self._records[spec.key] = self._record(spec)
        else:
            record.spec = spec
            record.wanted += 1
        record.retry_at = 0.0
        self._ensure_worker()
        await self._apply(record)
        self._wake.set()

    async def remove(self, owner: str, name: str) -> None:
        record = self._records.pop(f"{owner}/{name}", None)
        obj = record.name if record is not None else object_name(owner, name)
        lock = record.lock if record is not None else asyncio.Lock()
        if record is not None:
            record.removed = True
        async with lock:
            try:
                await self._thread(lambda: self._delete_all(obj))
            except KubernetesCallError as exc:
                log.warning("could not delete the objects of %s/%s: %s", owner, name, exc)
                self._sweep_due = True  # the sweep deletes them once the API lets it
                self._ensure_worker()
                self._wake.set()

    def status(self, owner: str, name: str) -> DeploymentStatus:
        record = self._records.get(f"{owner}/{name}")
        if record is None:
            return DeploymentStatus(desired=0, ready=0, updated=0, phase="stopped")
        return self._status(record)

    def _status(self, record: _Deployment) -> DeploymentStatus:
        """Phases: ``ready`` when the Deployment rolled out the current spec and every pod
        of it is ready; ``failed`` (no ready pod) or ``degraded`` (some) when something
        went wrong — the message says what; ``stopped`` at zero replicas; ``preparing
        environment`` while a pod's init container builds the bundle's environment; else
        ``progressing``."""
        spec = record.spec
        replicas = sorted(
            (replica_of(pod) for pod in record.pods), key=lambda r: (r.started_at, r.id)
        )
        live = [r for r in replicas if r.state is not ReplicaState.STOPPING]
        ready = [r for r in live if r.state is ReplicaState.READY]
        updated = sum(r.generation == spec.generation for r in ready)
        desired = self._desired(record)
        message = self._message(record, replicas)
        blocking = record.error is not None or self._api_error is not None
        deployment_done = self._rolled_out(record, desired)
        if desired == 0 and not replicas and record.error is None:
            phase = "stopped"
        elif (
            not blocking
            and record.applied == record.wanted
            and updated == desired
            and len(live) == desired
            and deployment_done
        ):
            phase = "ready"
        elif message is not None:
            phase = "degraded" if ready else "failed"
        elif building := [
            _pod_name(pod)
            for pod in record.pods
            if building_environment(pod) and not _terminating(pod)
        ]:
            phase = "preparing environment"
            message = f"preparing environment: building it in pod {building[0]}"
        else:
            phase = "progressing"
        return DeploymentStatus(
            desired=desired,
            ready=len(ready),
            updated=updated,
            phase=phase,
            message=message,
            replicas=replicas,
        )

    def choose(
        self,
        owner: str,
        name: str,
        prefer: str | None = None,
        avoid: Collection[str] = (),
    ) -> Endpoint | None:
        # ``prefer`` (a batch job's replica) cannot be honoured: the Service picks the pod.
        record = self._records.get(f"{owner}/{name}")
        if record is None or record.endpoint.id in avoid:
            return None
        ready = _int(_get(record.deployment, "status", "readyReplicas"))
        return record.endpoint if ready > 0 else None

    async def logs(self, owner: str, name: str, tail: int) -> list[LogChunk]:
        record = self._records.get(f"{owner}/{name}")
        if record is None:
            return []
        try:
            return await self._thread(lambda: self._read_logs(record.name, tail))
        except KubernetesCallError as exc:
            return [LogChunk(replica="(kubernetes)", lines=[f"cannot read the logs: {exc}"])]

    async def aclose(self) -> None:
        self._closed = True
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._records.clear()
        # calls still in flight end by their timeout; nothing waits for them
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_client:
            closing: Any = self.api_client.close  # untyped in the client
            closing()

    # -- desired state ----------------------------------------------------------------------

    def _record(self, spec: DeploymentSpec) -> _Deployment:
        name = object_name(spec.owner, spec.name)
        domain = self.settings.cluster_domain.strip(".")
        url = f"http://{name}.{self.settings.namespace}.svc.{domain}:80"
        return _Deployment(spec=spec, name=name, endpoint=_ServiceEndpoint(id=name, url=url))

    def target(self, spec: DeploymentSpec) -> RuntimeTarget:
        """What the manifest builder gets for a deployment under these settings."""
        s = self.settings
        autoscale = None
        if s.autoscale_max is not None and spec.replicas > 0:
            # the user's replica count is the floor unless the admin set one
            floor = s.autoscale_min if s.autoscale_min is not None else spec.replicas
            autoscale = Autoscale(
                min_replicas=floor,
                max_replicas=max(s.autoscale_max, floor),
                cpu_percent=s.autoscale_cpu,
            )
        name = object_name(spec.owner, spec.name)
        extra: dict[str, Any] = {} if s.image is None else {"image": s.image}
        if self.env_policy is None:
            extra["environments"] = False
        else:
            extra.update(env_policy=self.env_policy, env_cache_claim=s.env_cache_claim)
        return RuntimeTarget(
            owner=spec.owner,
            name=spec.name,
            model_owner=spec.model.owner,
            model_name=spec.model.name,
            version=spec.model.version or spec.model.selector,
            store_uri=self.store_uri,
            replicas=spec.replicas,
            namespace=s.namespace,
            s3_secret=s.s3_secret,
            token_secret=f"{name}-token",
            threads=spec.threads,
            cpu=spec.cpu or s.cpu,
            memory=spec.memory or s.memory,
            cpu_limit=s.cpu_limit,
            memory_limit=s.memory_limit,
            batching=spec.batching,
            job_locations=self.job_locations,
            ingress_host=s.host_for(spec.owner, spec.name),
            tls_issuer=s.tls_issuer,
            autoscale=autoscale,
            generation=spec.generation,
            **extra,
        )

    def manifests(self, spec: DeploymentSpec) -> list[Obj]:
        """Every object of a deployment, in apply order: the token Secret, then the runtime's."""
        target = self.target(spec)
        secret_labels = {k: v for k, v in labels(target).items() if k not in _VERSIONED}
        secret: Obj = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": f"{object_name(spec.owner, spec.name)}-token",
                "namespace": self.settings.namespace,
                "labels": secret_labels,
            },
            "type": "Opaque",
            "data": {"token": base64.b64encode(spec.secret.encode()).decode()},
        }
        objects = build_manifests(target)
        for obj in objects:
            if obj["kind"] == DEPLOYMENT.kind:
                # The generation changes exactly when what replicas run changes (version,
                # threads, batching, resources), so in the pod template it makes Kubernetes
                # roll then, as the local backend does, and tells each pod's generation.
                template = obj["spec"]["template"].setdefault("metadata", {})
                template.setdefault("annotations", {})[GENERATION] = str(spec.generation)
        return [secret, *objects]

    def _check_settings(self) -> None:
        """Refuse settings no deployment could be built with (at start, not at each apply)."""
        probe = DeploymentSpec(
            owner="probe",
            name="probe",
            model=ModelRef("probe", "probe", "20260101T000000000Z-00000000"),
            generation=1,
            replicas=1,
            secret="probe",  # noqa: S106 - not a real secret: nothing is applied
        )
        try:
            self.manifests(probe)
        except ValueError as exc:  # ManifestError is one
            raise ValueError(f"bad HUBSERVE_K8S_* settings: {exc}") from None

    def _desired(self, record: _Deployment) -> int:
        """Replicas wanted now: the spec's, or the autoscaler's choice when it has one."""
        if HPA.kind in record.kinds and record.spec.replicas > 0:
            scaled = _get(record.deployment, "spec", "replicas")
            if isinstance(scaled, int):
                return scaled
        return record.spec.replicas

    @staticmethod
    def _rolled_out(record: _Deployment, desired: int) -> bool:
        deployment = record.deployment
        if deployment is None:
            return False
        status = deployment.get("status") or {}
        generation = _int(_get(deployment, "metadata", "generation"))
        return (
            _int(status.get("observedGeneration")) >= generation
            and _int(status.get("updatedReplicas")) == desired
            and _int(status.get("replicas")) == desired
        )

    def _message(self, record: _Deployment, replicas: list[ReplicaStatus]) -> str | None:
        if record.error is not None:
            wait = max(0.0, record.retry_at - time.monotonic())
            return f"{record.error} (retrying in {wait:.0f} s)"
        if self._api_error is not None:
            return self._api_error
        problem = deployment_problem(record.deployment)
        if problem is not None:
            return problem
        errors = [
            r.last_error for r in replicas if r.last_error and r.state is ReplicaState.CRASHED
        ]
        return errors[-1] if errors else None

    # -- background work --------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._work())

    async def _work(self) -> None:
        """Retry failed applies, sweep leftovers, read the status; again and again."""
        while not self._closed:
            self._wake.clear()
            try:
                await self._apply_due()
                if self._sweep_due and time.monotonic() >= self._sweep_at:
                    await self._sweep()
                await self._observe()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad round stop the supervision
                log.exception("the Kubernetes backend's round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval())

    def _interval(self) -> float:
        now = time.monotonic()
        interval = self.settings.poll_interval
        for record in self._records.values():
            if record.applied != record.wanted:
                interval = min(interval, max(0.0, record.retry_at - now))
            elif self._status(record).phase == "progressing":
                interval = min(interval, self.settings.progress_interval)
        if self._sweep_due:
            interval = min(interval, max(0.0, self._sweep_at - now))
        return max(interval, 0.01)

    async def _apply_due(self) -> None:
        now = time.monotonic()
        due = [r for r in self._records.values() if r.applied != r.wanted and now >= r.retry_at]
        if due:
            await asyncio.gather(*(self._apply(record) for record in due))

    async def _apply(self, record: _Deployment) -> None:
        """One attempt to bring the cluster to the record's spec; failures are remembered
        (the status message) and retried later with backoff."""
        async with self._limit, record.lock:
            if record.removed or record.applied == record.wanted:
                return
            wanted, spec = record.wanted, record.spec
            try:
                manifests = self.manifests(spec)
                previous = record.kinds
                await self._thread(
                    functools.partial(self._apply_objects, record.name, manifests, previous)
                )
            except Exception as exc:
                record.failures += 1
                delay = float(min(self.settings.backoff_max, 2 ** (record.failures - 1)))
                record.retry_at = time.monotonic() + delay
                if isinstance(exc, KubernetesCallError):
                    record.error = str(exc)
                    log.warning("%s: %s; retrying in %.0f s", spec.key, exc, delay)
                else:
                    record.error = f"cannot build the Kubernetes objects: {exc}"
                    log.exception("building the objects of %s failed", spec.key)
                return
            record.kinds = frozenset(m["kind"] for m in manifests)
            record.applied = wanted
            record.failures = 0
            record.error = None
            log.info("applied %s (generation %d) as %s", spec.key, spec.generation, record.name)

    async def _observe(self) -> None:
        """Read the namespace's Deployments and pods (two calls) into the records."""
        if not self._records:
            self._api_error = None
            return
        try:
            deployments, pods = await self._thread(self._list_runtime)
        except KubernetesCallError as exc:
            if self._api_error is None:
                log.warning("cannot read the status of the deployments: %s", exc)
            self._api_error = str(exc)
            return
        self._api_error = None
        by_name = {_get(d, "metadata", "name"): d for d in deployments}
        by_instance: dict[str, list[Obj]] = {}
        for pod in pods:
            instance = _get(pod, "metadata", "labels", INSTANCE)
            if isinstance(instance, str):
                by_instance.setdefault(instance, []).append(pod)
        for record in self._records.values():
            record.deployment = by_name.get(record.name)
            record.pods = by_instance.get(record.name, [])
            if record.deployment is None and record.applied and record.applied == record.wanted:
                # deleted behind our back (kubectl): make it again
                log.warning("the Deployment %s of %s is gone; re-applying", record.name, record.key)
                record.wanted += 1
                self._wake.set()

    async def _sweep(self) -> None:
        """Delete hubserve-managed objects that belong to no deployment, or that a deployment
        no longer uses (an Ingress or autoscaler after the settings changed)."""
        try:
            found = await self._thread(self._list_managed)
            for kind, name in found:
                if not self._wanted(kind, name):
                    log.info("deleting %s %s: no deployment uses it", kind.kind, name)
                    await self._thread(functools.partial(self._delete, kind, name))
        except KubernetesCallError as exc:
            self._sweep_failures += 1
            delay = float(min(self.settings.backoff_max, 2 ** (self._sweep_failures - 1)))
            self._sweep_at = time.monotonic() + delay
            log.warning("cannot clean up leftover objects: %s; retrying in %.0f s", exc, delay)
            return
        self._sweep_due = False
        self._sweep_failures = 0

    def _wanted(self, kind: _Kind, name: str) -> bool:
        for record in self._records.values():
            if kind is SECRET and name == f"{record.name}-token":
                return True
            if name == record.name:
                try:
                    return kind.kind in {m["kind"] for m in self.manifests(record.spec)}
                except Exception:  # cannot tell (the apply reports why): keep it
                    return True
        return False

    async def _thread(self, call: Callable[[], T]) -> T:
        """Run a blocking client call in the backend's threads."""
        if self._closed:
            raise KubernetesCallError("the Kubernetes backend is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # -- calls to the API (run in worker threads) --------------------------------------------

    def _call(self, kind: _Kind, verb: str, what: str, **kwargs: Any) -> Any:
        """``<verb>_<kind>`` of the client, with the timeout, answering raw; failures become
        a :class:`KubernetesCallError` that says what was being done."""
        method = getattr(self._apis[kind.api], f"{verb}_{kind.resource}")
        try:
            response = method(
                _preload_content=False, _request_timeout=self.settings.request_timeout, **kwargs
            )
            data = response.data
            response.release_conn()
        except ApiException as exc:
            raise KubernetesCallError(f"{what}: {describe(exc)}", exc.status) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesCallError(f"{what}: {describe(exc, self.host)}") from exc
        return json.loads(data) if data else None

    def _apply_objects(self, obj: str, manifests: list[Obj], previous: Iterable[str]) -> None:
        floor = next(
            (_int(m["spec"].get("minReplicas"), 1) for m in manifests if m["kind"] == HPA.kind),
            None,
        )
        for manifest in manifests:
            stored = self._put(manifest)
            # An autoscaler owns the count (the manifest leaves it out), but it does not act
            # on a Deployment at zero: after a scale to zero, start again at the floor.
            if (
                manifest["kind"] == DEPLOYMENT.kind
                and floor is not None
                and _int(_get(stored, "spec", "replicas"), floor) < floor
            ):
                self._put(manifest, {"spec": {"replicas": floor}})
        # optional objects the previous apply made and this one does not (autoscaler at 0)
        for gone in sorted(set(previous) - {m["kind"] for m in manifests}):
            self._delete(KINDS[gone], obj)

    def _put(self, manifest: Obj, patch: Obj | None = None) -> Obj:
        """Merge-patch an object to ``manifest`` (or by ``patch``), creating it when it does
        not exist; the object as stored."""
        kind = KINDS[manifest["kind"]]
        name = manifest["metadata"]["name"]
        body = manifest if patch is None else patch
        try:
            return self._patch(kind, name, body, f"cannot apply the {kind.kind} {name}")
        except KubernetesCallError as exc:
            if exc.status != 404:
                raise
        what = f"cannot create the {kind.kind} {name}"
        try:
            created = self._call(
                kind, "create", what, namespace=self.settings.namespace, body=manifest
            )
            return dict(created or {})
        except KubernetesCallError as exc:
            if exc.status != 409:
                raise
        return self._patch(kind, name, body, what)  # created meanwhile: patch it after all

    def _patch(self, kind: _Kind, name: str, body: Obj, what: str) -> Obj:
        patched = self._call(
            kind,
            "patch",
            what,
            name=name,
            namespace=self.settings.namespace,
            body=body,
            _content_type=MERGE_PATCH,
        )
        return dict(patched or {})

    def _delete(self, kind: _Kind, name: str) -> None:
        try:
            self._call(
                kind,
                "delete",
                f"cannot delete the {kind.kind} {name}",
                name=name,
                namespace=self.settings.namespace,
                propagation_policy="Background",
            )
        except KubernetesCallError as exc:
            if exc.status != 404:
                raise

    def _delete_all(self, obj: str) -> None:
        for kind in DELETE_ORDER:
            try:
                self._delete(kind, f"{obj}-token" if kind is SECRET else obj)
            except KubernetesCallError as exc:
                if not self._unused(kind, exc):
                    raise

    def _unused(self, kind: _Kind, exc: KubernetesCallError) -> bool:
        """Whether a refusal concerns an optional kind these settings do not use (its API or
        the permission for it may well be missing: then none of it can be ours either)."""
        configured = {
            INGRESS.kind: self.settings.ingress_host is not None,
            HPA.kind: self.settings.autoscale_max is not None,
        }
        return exc.status in (403, 404) and configured.get(kind.kind) is False

    def _list(self, kind: _Kind, selector: str = MANAGED_SELECTOR) -> list[Obj]:
        answer = self._call(
            kind,
            "list",
            f"cannot list the {kind.kind}s",
            namespace=self.settings.namespace,
            label_selector=selector,
        )
        return list((answer or {}).get("items") or [])

    def _list_runtime(self) -> tuple[list[Obj], list[Obj]]:
        return self._list(DEPLOYMENT), self._list(POD)

    def _list_managed(self) -> list[tuple[_Kind, str]]:
        found = []
        for kind in DELETE_ORDER:
            try:
                items = self._list(kind)
            except KubernetesCallError as exc:
                if self._unused(kind, exc):
                    continue
                raise
            for item in items:
                meta = item.get("metadata") or {}
                if INSTANCE in (meta.get("labels") or {}):  # only what hubserve labelled
                    found.append((kind, str(meta.get("name"))))
        return found

    def _read_logs(self, obj: str, tail: int) -> list[LogChunk]:
        pods = self._list(POD, f"{MANAGED_SELECTOR},{INSTANCE}={obj}")
        pods.sort(key=lambda p: (str(_get(p, "metadata", "creationTimestamp")), _pod_name(p)))
        return [LogChunk(replica=_pod_name(pod), lines=self._pod_log(pod, tail)) for pod in pods]

    def _pod_log(self, pod: Obj, tail: int) -> list[str]:
        if tail <= 0:
            return []
        container, previous = _log_source(pod)
        if container is None:
            return []
        name = _pod_name(pod)
        try:
            method = self._apis["core"].read_namespaced_pod_log
            response = method(
                name,
                self.settings.namespace,
                container=container,
                tail_lines=tail,
                previous=previous,
                _preload_content=False,
                _request_timeout=self.settings.request_timeout,
            )
            data: bytes = response.data
            response.release_conn()
        except ApiException as exc:
            if exc.status in (400, 404):  # not started yet, or gone
                return [f"(no output from {container}: {describe(exc)})"]
            raise KubernetesCallError(f"cannot read the log of {name}: {describe(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesCallError(describe(exc, self.host)) from exc
        return data.decode("utf-8", errors="replace").splitlines()[-tail:]


def _pod_name(pod: Mapping[str, Any]) -> str:
    return str(_get(pod, "metadata", "name") or "")


def _log_source(pod: Mapping[str, Any]) -> tuple[str | None, bool]:
    """Which container's output tells most about a pod: the runtime's (its previous run while
    it crash-loops), or the init container's while the bundle pull fails or runs."""
    containers = _get(pod, "spec", "containers") or []
    main = containers[0].get("name") if containers else None
    status = pod.get("status") or {}
    for init in status.get("initContainerStatuses") or []:
        running = _get(init, "state", "running") is not None
        restarted = _int(init.get("restartCount")) > 0
        if _get(init, "state", "terminated", "exitCode") != 0 and (
            running or restarted or _container_problem(init, "init container")
        ):
            return str(init.get("name")), restarted and not running
    for container in status.get("containerStatuses") or []:
        if container.get("name") == main:
            running = _get(container, "state", "running") is not None
            return main, (not running and _int(container.get("restartCount")) > 0)
    return main, False
