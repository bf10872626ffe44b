"""The Kubernetes objects that run one hubserve deployment.

A deployment of ``owner``'s model ``name`` at ``version`` becomes, in one namespace:

* a **Deployment** (``apps/v1``) whose pods pull the bundle from the store in an *init
  container* (``hubserve pull`` into an ``emptyDir``, S3 credentials from a Secret), build or
  reuse the environment the bundle was packaged for in a second one (``hubserve env build``
  into the environment root, an ``emptyDir`` or a PersistentVolumeClaim that pods share), and
  then run ``hubserve serve --env auto`` on it. Pods are ready when ``/readyz`` answers
  (model loaded and warmed up) and restarted when ``/healthz`` stops answering; a startup
  probe gives slow models time to load before liveness counts. Updates roll one new pod in
  before an old one goes (``maxSurge`` 1, ``maxUnavailable`` 0), so a new version never
  lowers capacity;
* a **Service** (``ClusterIP``, port 80 to the pods' 8000): the address the hub service's
  gateway calls, ``http://<object name>.<namespace>.svc``; Kubernetes balances the pods;
* optionally an **Ingress** (``networking.k8s.io/v1``) for a direct endpoint, with TLS from
  cert-manager when a ``ClusterIssuer`` is named;
* optionally a **HorizontalPodAutoscaler** (``autoscaling/v2``) on CPU utilisation.

With ``environments=False`` the pods skip the environment and serve in the image's own
(``--env none``); with ``baked=True`` the image already holds the bundle and its environment
(``hubserve containerize``), for clusters where pods may not fetch or install anything, and
the pods have no init containers at all.

Every object carries the labels of :func:`labels` (owner, model, version, generation,
``app.kubernetes.io/*``) and annotations with the exact, unmangled values. The pod template
carries the model version but not the generation: a change of replica count or of anything
outside the pods does not restart them.

:func:`build_manifests` is pure: plain JSON-able dicts, no cluster access and no Kubernetes
library, so ``hubserve export`` works anywhere and the backend applies the same objects with
the official client. The objects are valid for Kubernetes 1.29 to 1.33 (the tests check them
against the official OpenAPI schemas of each).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._version import __version__
from ..errors import HubserveError
from ..naming import check_model_name, check_owner, check_version
from ._env_policy import EnvPolicy
from ._errors import ManifestError
from ._names import (
    is_dns_label,
    is_dns_subdomain,
    is_label_key,
    is_label_value,
    label_value,
    object_name,
)

Manifest = dict[str, Any]

#: The runtime image of this hubserve version (see deploy/Containerfile).
DEFAULT_IMAGE = f"ghcr.io/hubserve/runtime:{__version__}"
#: Port the runtime listens on inside the pod, and the Service's port.
CONTAINER_PORT = 8000
SERVICE_PORT = 80
#: Where the init container unpacks the bundle (an emptyDir shared with the runtime).
BUNDLE_CACHE = "/var/cache/hubserve"
#: CPU request used when autoscaling is asked for without one (utilisation needs a request).
DEFAULT_AUTOSCALE_CPU = "250m"
#: The main container's name (the backend reads its status and logs).
RUNTIME_CONTAINER = "runtime"
PULL_CONTAINER = "pull-bundle"
#: The init container that builds (or finds) the bundle's environment.
ENV_CONTAINER = "env"
#: Where the environments live in a pod: a volume mounted in the env and runtime containers.
ENV_ROOT = "/var/lib/hubserve/envs"
#: Where ``hubserve containerize`` puts the bundle and its environment in an image.
IMAGE_BUNDLE = "/opt/hubserve/bundle"
IMAGE_ENV_ROOT = "/opt/hubserve/envs"

LABEL_PREFIX = "hubserve.io"
APP_NAME = "hubserve-runtime"

# Kubernetes resource quantities: "500m", "2", "1.5", "512Mi", "1G", "1e3".
_QUANTITY_RE = re.compile(r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$")
_BATCHING_LIMITS = {"max_batch_size": (1, 65536), "max_latency_ms": (0, 60_000)}


@dataclass(frozen=True)
class Autoscale:
    """Let a HorizontalPodAutoscaler keep CPU use near ``cpu_percent`` of the request."""

    min_replicas: int = 1
    max_replicas: int = 4
    cpu_percent: int = 70

    def __post_init__(self) -> None:
        if self.min_replicas < 1:
            raise ManifestError("autoscale: min_replicas must be at least 1")
        if self.max_replicas < self.min_replicas:
            raise ManifestError("autoscale: max_replicas must be at least min_replicas")
        if not 1 <= self.cpu_percent <= 1000:
            raise ManifestError("autoscale: cpu_percent must be between 1 and 1000")


@dataclass(frozen=True)
class RuntimeTarget:
    """Everything that decides the Kubernetes objects of one deployment.

    ``owner``/``name`` identify the deployment (and so the object names); ``model_owner``,
    ``model_name`` and ``version`` the model version it serves, fetched from ``store_uri``
    (``s3://bucket[/prefix]``) with the keys in the Secret ``s3_secret`` (its keys,
    ``HUBSERVE_S3_ENDPOINT``, ``HUBSERVE_S3_ACCESS_KEY``, ``HUBSERVE_S3_SECRET_KEY``,
    ``HUBSERVE_S3_SECURE``, become the init container's environment). ``token_secret``
    names a Secret whose key ``token`` every caller must present (the hub gateway does);
    ``None`` leaves the runtime open to anything that reaches the Service.

    ``threads`` defaults to the CPUs of the container's limit (or of the node); ``cpu`` and
    ``memory`` are requests, ``cpu_limit`` and ``memory_limit`` limits, in Kubernetes
    quantities (``"500m"``, ``"2Gi"``). ``batching`` overrides the bundle's batching per API
    (``{"predict": {"max_batch_size": 32, "max_latency_ms": 5}}``); ``job_locations`` confines
    its batch jobs (see the runtime's ``job_locations`` setting). ``ingress_host`` adds
    an Ingress (``tls_issuer`` a cert-manager ClusterIssuer for its certificate,
    ``ingress_class`` its IngressClass); ``autoscale`` a HorizontalPodAutoscaler, which then
    owns the replica count (``replicas`` is not written). ``generation`` counts the changes
    the hub service made to the deployment; ``extra_labels`` go on every object.

    ``environments`` runs the bundle in its own environment, built by an init container
    under ``env_policy`` (index, allowed packages, size cap) in an ``emptyDir``, or in the
    PersistentVolumeClaim ``env_cache_claim`` that every pod mounts: environments are keyed
    by a hash of what they hold and built atomically under a lock, so pods (and deployments)
    share them and only the first pod on a new requirement set waits for a build; the runtime
    container mounts them read-only (model code cannot alter another deployment's). ``baked``
    targets an image made by ``hubserve containerize``: bundle and environment are in it,
    nothing is pulled or built, and ``store_uri`` is only recorded (it need not be S3).
    """

    owner: str
    name: str
    model_owner: str
    model_name: str
    version: str
    store_uri: str
    replicas: int = 1
    namespace: str = "hubserve"
    image: str = DEFAULT_IMAGE
    s3_secret: str = "hubserve-store"  # noqa: S105 - a Secret name, not a secret
    token_secret: str | None = None
    threads: int | None = None
    cpu: str | None = None
    memory: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None
    batching: Mapping[str, Mapping[str, float | int]] = field(default_factory=dict)
    job_locations: tuple[str, ...] = ()
    ingress_host: str | None = None
    tls_issuer: str | None = None
    autoscale: Autoscale | None = None
    generation: int = 1
    extra_labels: Mapping[str, str] = field(default_factory=dict)
    ingress_class: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    environments: bool = True
    env_cache_claim: str | None = None
    env_policy: EnvPolicy = field(default_factory=EnvPolicy)
    baked: bool = False

    def __post_init__(self) -> None:
        try:
            check_owner(self.owner)
            check_model_name(self.name)
            check_owner(self.model_owner)
            check_model_name(self.model_name)
            check_version(self.version)
        except HubserveError as exc:
            raise ManifestError(str(exc)) from None
        if not self.baked and not re.match(r"^s3://[^/\s]+(/[^\s]*)?$", self.store_uri):
            raise ManifestError(
                f"store {self.store_uri!r}: a cluster pulls bundles from S3, give s3://bucket"
                "[/prefix]"
            )
        if self.replicas < 0:
            raise ManifestError("replicas must not be negative")
        if not is_dns_label(self.namespace):
            raise ManifestError(f"namespace {self.namespace!r} is not a DNS-1123 label")
        if not self.image or any(c.isspace() for c in self.image):
            raise ManifestError(f"image {self.image!r} is not an image reference")
        for what, secret in (("s3_secret", self.s3_secret), ("token_secret", self.token_secret)):
            if secret is not None and not is_dns_subdomain(secret):
                raise ManifestError(f"{what} {secret!r} is not a valid Secret name")
        for secret in self.image_pull_secrets:
            if not is_dns_subdomain(secret):
                raise ManifestError(f"image pull secret {secret!r} is not a valid Secret name")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ManifestError("threads must be between 1 and 1024")
        for what in ("cpu", "memory", "cpu_limit", "memory_limit"):
            quantity = getattr(self, what)
            if quantity is not None and not _QUANTITY_RE.match(quantity):
                raise ManifestError(
                    f"{what} {quantity!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)"
                )
        _check_batching(self.batching)
        if self.ingress_host is not None and (
            not is_dns_subdomain(self.ingress_host) or "." not in self.ingress_host
        ):
            raise ManifestError(f"ingress host {self.ingress_host!r} is not a DNS name")
        if self.tls_issuer is not None:
            if self.ingress_host is None:
                raise ManifestError("a TLS issuer needs an ingress host")
            if not is_dns_subdomain(self.tls_issuer):
                raise ManifestError(f"TLS issuer {self.tls_issuer!r} is not a valid name")
        if self.ingress_class is not None and not is_dns_subdomain(self.ingress_class):
            raise ManifestError(f"ingress class {self.ingress_class!r} is not a valid name")
        if self.generation < 1:
            raise ManifestError("generation starts at 1")
        for key, value in self.extra_labels.items():
            if not is_label_key(key) or not is_label_value(value):
                raise ManifestError(f"extra label {key}={value!r} is not a valid label")
            if key.startswith(f"{LABEL_PREFIX}/") or key.startswith("app.kubernetes.io/"):
                raise ManifestError(f"extra label {key!r} would replace one of hubserve's")
        self._check_environments()

    def _check_environments(self) -> None:
        claim = self.env_cache_claim
        if claim is not None and not is_dns_subdomain(claim):
            raise ManifestError(f"env cache claim {claim!r} is not a valid claim name")
        if not self.environments and (claim is not None or not self.env_policy.is_default):
            raise ManifestError(
                "an env cache claim or environment policy needs environments (they are off)"
            )
        if self.baked and (claim is not None or not self.env_policy.is_default):
            raise ManifestError(
                "a baked image holds its environment already: give the environment policy"
                " to `hubserve containerize`, and no env cache claim"
            )

    @property
    def object_name(self) -> str:
        return object_name(self.owner, self.name)

    @property
    def model_ref(self) -> str:
        """``model_owner/model_name:version``."""
        return f"{self.model_owner}/{self.model_name}:{self.version}"

    @property
    def bundle_uri(self) -> str:
        """Where the init container pulls from: ``s3://bucket[/prefix]/owner/name:version``."""
        return f"{self.store_uri.rstrip('/')}/{self.model_ref}"

    @property
    def bundle_path(self) -> str:
        """Where ``hubserve pull`` unpacks the bundle with ``HUBSERVE_CACHE=BUNDLE_CACHE``."""
        return f"{BUNDLE_CACHE}/bundles/{self.model_owner}/{self.model_name}/{self.version}"

    @property
    def service_url(self) -> str:
        """The in-cluster URL of the deployment's Service."""
        return f"http://{self.object_name}.{self.namespace}.svc:{SERVICE_PORT}"


def _check_batching(batching: Mapping[str, Mapping[str, float | int]]) -> None:
    for api_name, values in batching.items():
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", api_name):
            raise ManifestError(f"batching: {api_name!r} is not an API name")
        for key, value in values.items():
            if key not in _BATCHING_LIMITS:
                raise ManifestError(
                    f"batching.{api_name}: unknown setting {key!r}"
                    f" (use {', '.join(sorted(_BATCHING_LIMITS))})"
                )
            low, high = _BATCHING_LIMITS[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise ManifestError(f"batching.{api_name}.{key} must be in [{low}, {high}]")
            if key == "max_batch_size" and not float(value).is_integer():
                raise ManifestError(f"batching.{api_name}.max_batch_size must be an integer")


# -- labels ----------------------------------------------------------------------------------


def selector(owner: str, name: str) -> dict[str, str]:
    """The labels that select a deployment's pods: stable for its whole life.

    A Deployment's selector cannot change, so it holds only what never changes: the app
    name and the object name (which encodes owner and deployment name).
    """
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": object_name(owner, name),
    }


def labels(target: RuntimeTarget) -> dict[str, str]:
    """The labels of every object of ``target``: selector labels plus what it serves.

    Model names and versions are label-safe as they are; owners (user names) go through
    :func:`~model_runtime.k8s.label_value`. ``hubserve.io/deployment`` is the deployment's
    name, ``hubserve.io/model`` the served model's.
    """
    result = {
        **selector(target.owner, target.name),
        "app.kubernetes.io/component": "model-runtime",
        "app.kubernetes.io/managed-by": "hubserve",
        f"{LABEL_PREFIX}/owner": label_value(target.owner),
        f"{LABEL_PREFIX}/deployment": target.name,
        f"{LABEL_PREFIX}/model-owner": label_value(target.model_owner),
        f"{LABEL_PREFIX}/model": target.model_name,
        f"{LABEL_PREFIX}/version": target.version,
        f"{LABEL_PREFIX}/generation": str(target.generation),
    }
    result.update(target.extra_labels)
    return result


def object_annotations(target: RuntimeTarget) -> dict[str, str]:
    """The exact values the labels had to mangle, and where the bundle comes from."""
    annotations = {
        f"{LABEL_PREFIX}/owner": target.owner,
        f"{LABEL_PREFIX}/deployment": target.name,
        f"{LABEL_PREFIX}/model-ref": target.model_ref,
        f"{LABEL_PREFIX}/store": target.store_uri,
        f"{LABEL_PREFIX}/generation": str(target.generation),
    }
    if not target.store_uri:  # a baked image made without a store
        del annotations[f"{LABEL_PREFIX}/store"]
    return annotations


def _pod_labels(target: RuntimeTarget) -> dict[str, str]:
    """Labels of the pod template: no generation (a new generation must not restart pods)."""
    return {k: v for k, v in labels(target).items() if k != f"{LABEL_PREFIX}/generation"}


def _metadata(target: RuntimeTarget, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or target.object_name,
        "namespace": target.namespace,
        "labels": labels(target),
        "annotations": object_annotations(target),
    }


# -- the objects -----------------------------------------------------------------------------


def _resources(target: RuntimeTarget) -> dict[str, dict[str, str]]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    cpu = target.cpu
    if cpu is None and target.autoscale is not None:
        cpu = DEFAULT_AUTOSCALE_CPU
    if cpu is not None:
        requests["cpu"] = cpu
    if target.memory is not None:
        requests["memory"] = target.memory
    if target.cpu_limit is not None:
        limits["cpu"] = target.cpu_limit
    if target.memory_limit is not None:
        limits["memory"] = target.memory_limit
    resources: dict[str, dict[str, str]] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def serve_args(bundle: str, env_root: str | None) -> list[str]:
    """``hubserve serve`` of a pod or an image: the bundle at ``bundle``, in its environment
    under ``env_root`` (``None``: in the image's own environment), on the container port."""
    env = ["--env", "auto", "--env-root", env_root] if env_root is not None else ["--env", "none"]
    return [
        "serve",
        bundle,
        *env,
        "--host",
        "0.0.0.0",  # noqa: S104 - inside the container: the Service must reach it
        "--port",
        str(CONTAINER_PORT),
    ]


def _runtime_env(target: RuntimeTarget) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # torch threads: the CPUs of the limit (rounded up), or of the node without one;
        # os.sched_getaffinity in a container sees the node's CPUs, not the quota.
        {"name": "HUBSERVE_RUNTIME_THREADS", "value": str(target.threads)}
        if target.threads is not None
        else {
            "name": "HUBSERVE_RUNTIME_THREADS",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": RUNTIME_CONTAINER,
                    "resource": "limits.cpu",
                    "divisor": "1",
                }
            },
        },
        {"name": "HUBSERVE_RUNTIME_WORK_DIR", "value": "/tmp/hubserve"},
    ]
    if not target.baked:
        env.append({"name": "HUBSERVE_CACHE", "value": BUNDLE_CACHE})
    env.append({"name": "HOME", "value": "/tmp"})
    if target.token_secret is not None:
        env.append(
            {
                "name": "HUBSERVE_RUNTIME_API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": target.token_secret, "key": "token"}},
            }
        )
    if target.batching:
        env.append(
            {
                "name": "HUBSERVE_RUNTIME_BATCHING",
                "value": json.dumps(
                    {api: dict(values) for api, values in sorted(target.batching.items())},
                    sort_keys=True,
                    separators=(",", ":"),
                ),
            }
        )
    if target.job_locations:
        env.append(
            {
                "name": "HUBSERVE_RUNTIME_JOB_LOCATIONS",
                "value": json.dumps(list(target.job_locations)),
            }
        )
    if target.environments:
        # the same policy as the env container: serve finds the environment it built by a
        # key that hashes the package sources
        env += target.env_policy.env()
    return env


def _probe(path: str, *, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def _init_containers(target: RuntimeTarget, resources: dict[str, Any]) -> list[dict[str, Any]]:
    """``hubserve pull`` of the bundle, then ``hubserve env build`` of its environment."""
    pull: dict[str, Any] = {
        "name": PULL_CONTAINER,
        "image": target.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["hubserve"],
        "args": ["pull", target.bundle_uri],
        "env": [
            {"name": "HUBSERVE_CACHE", "value": BUNDLE_CACHE},
            {"name": "HOME", "value": "/tmp"},
        ],
        "envFrom": [{"secretRef": {"name": target.s3_secret}}],
        "volumeMounts": [
            {"name": "bundle", "mountPath": BUNDLE_CACHE},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _CONTAINER_SECURITY,
    }
    if resources:
        pull["resources"] = resources
    if not target.environments:
        return [pull]
    env: dict[str, Any] = {
        "name": ENV_CONTAINER,
        "image": target.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["hubserve"],
        "args": ["env", "build", target.bundle_path],
        "env": [
            {"name": "HUBSERVE_ENV_ROOT", "value": ENV_ROOT},
            {"name": "HOME", "value": "/tmp"},
            *target.env_policy.env(),
        ],
        "volumeMounts": [
            {"name": "bundle", "mountPath": BUNDLE_CACHE, "readOnly": True},
            {"name": "envs", "mountPath": ENV_ROOT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "securityContext": _CONTAINER_SECURITY,
        # a failed build's one-line reason (its last output) becomes the container's
        # termination message, which the backend shows as the deployment's status
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        env["resources"] = resources
    return [pull, env]


def _volumes(target: RuntimeTarget) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [] if target.baked else [{"name": "bundle", "emptyDir": {}}]
    volumes.append({"name": "tmp", "emptyDir": {}})
    if target.environments and not target.baked:
        if target.env_cache_claim is not None:
            volumes.append(
                {"name": "envs", "persistentVolumeClaim": {"claimName": target.env_cache_claim}}
            )
        else:
            volumes.append({"name": "envs", "emptyDir": {}})
    return volumes


def _runtime_mounts(target: RuntimeTarget) -> list[dict[str, Any]]:
    if target.baked:
        return [{"name": "tmp", "mountPath": "/tmp"}]
    mounts: list[dict[str, Any]] = [
        {"name": "bundle", "mountPath": BUNDLE_CACHE, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if target.environments:
        # read-only: the init container built the environment and reusing it writes nothing;
        # model code must not alter what other pods (of other users, with a claim) run in
        mounts.append({"name": "envs", "mountPath": ENV_ROOT, "readOnly": True})
    return mounts


def build_deployment(target: RuntimeTarget) -> Manifest:
    """The Deployment: init containers pull the bundle and build its environment, the runtime
    serves it (a baked image: the runtime alone)."""
    resources = _resources(target)
    if target.baked:
        args = serve_args(IMAGE_BUNDLE, IMAGE_ENV_ROOT if target.environments else None)
    else:
        args = serve_args(target.bundle_path, ENV_ROOT if target.environments else None)
    runtime: dict[str, Any] = {
        "name": RUNTIME_CONTAINER,
        "image": target.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["hubserve"],
        "args": args,
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": _runtime_env(target),
        "startupProbe": _probe("/healthz", period=2, failures=90),
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        "livenessProbe": _probe("/healthz", period=10, failures=3, timeout=5),
        "volumeMounts": _runtime_mounts(target),
        "securityContext": _CONTAINER_SECURITY,
    }
    if resources:
        runtime["resources"] = resources
    security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if target.environments and target.env_cache_claim is not None:
        # without it, every pod start would chown every file of the shared cache
        security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: dict[str, Any] = {
        # The runtime never talks to the Kubernetes API, and the Service environment
        # variables (HUBSERVE_PORT=tcp://... for a Service named hubserve) only confuse it.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": security,
        # The runtime drains in-flight requests for up to 30 s after SIGTERM.
        "terminationGracePeriodSeconds": 45,
    }
    if not target.baked:
        pod_spec["initContainers"] = _init_containers(target, resources)
    pod_spec.update(
        {
            "containers": [runtime],
            "volumes": _volumes(target),
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": selector(target.owner, target.name)},
                }
            ],
        }
    )
    if target.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in target.image_pull_secrets]
    template_annotations = {f"{LABEL_PREFIX}/model-ref": target.model_ref}
    if target.store_uri:
        template_annotations[f"{LABEL_PREFIX}/store"] = target.store_uri
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(target.owner, target.name)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 600,
        "template": {
            "metadata": {"labels": _pod_labels(target), "annotations": template_annotations},
            "spec": pod_spec,
        },
    }
    if target.autoscale is None:
        spec = {"replicas": target.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(target),
        "spec": spec,
    }


def build_service(target: RuntimeTarget) -> Manifest:
    """The ClusterIP Service in front of the pods (the gateway's address)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(target),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(target.owner, target.name),
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_ingress(target: RuntimeTarget) -> Manifest | None:
    """The Ingress of a direct endpoint, or ``None`` without an ingress host."""
    if target.ingress_host is None:
        return None
    metadata = _metadata(target)
    spec: dict[str, Any] = {}
    if target.ingress_class is not None:
        spec["ingressClassName"] = target.ingress_class
    if target.tls_issuer is not None:
        metadata["annotations"]["cert-manager.io/cluster-issuer"] = target.tls_issuer
        spec["tls"] = [{"hosts": [target.ingress_host], "secretName": f"{target.object_name}-tls"}]
    spec["rules"] = [
        {
            "host": target.ingress_host,
            "http": {
                "paths": [
                    {
                        "path": "/",
                        "pathType": "Prefix",
                        "backend": {
                            "service": {"name": target.object_name, "port": {"name": "http"}}
                        },
                    }
                ]
            },
        }
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": metadata,
        "spec": spec,
    }


def build_autoscaler(target: RuntimeTarget) -> Manifest | None:
    """The HorizontalPodAutoscaler, or ``None`` without ``autoscale``."""
    scale = target.autoscale
    if scale is None:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(target),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": target.object_name,
            },
            "minReplicas": scale.min_replicas,
            "maxReplicas": scale.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": scale.cpu_percent},
                    },
                }
            ],
        },
    }


def build_manifests(target: RuntimeTarget) -> list[Manifest]:
    """All objects of ``target`` in the order to apply them (delete in reverse).

    Deployment, Service, then the Ingress and the HorizontalPodAutoscaler when asked for.
    """
    objects: list[Manifest | None] = [
        build_deployment(target),
        build_service(target),
        build_ingress(target),
        build_autoscaler(target),
    ]
    return [obj for obj in objects if obj is not None]
