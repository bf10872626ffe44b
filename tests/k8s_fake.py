"""A recording fake of the Kubernetes REST API, for tests on machines without a cluster.

No Kubernetes API server can run on the test machines, so the code that talks to one (the
``kubernetes`` deploy backend through the official Python client, and the ``kubectl`` lines
of the exported ``.gitlab-ci.yml``) is tested against this fake: a real HTTP server on
127.0.0.1 (a thread per request) that speaks enough of the API for those clients.

What it implements, and how faithfully:

* **Discovery**: ``/version``, ``/api``, ``/apis``, ``/api/v1``, ``/apis/apps/v1``,
  ``/apis/networking.k8s.io/v1``, ``/apis/autoscaling/v2`` (legacy discovery documents, which
  both the Python client and kubectl accept). ``/openapi/*`` answers 404, as a server
  without published schemas would.
* **Namespaced CRUD** of deployments, services, ingresses, horizontalpodautoscalers, secrets,
  configmaps, pods and events: create (201, 409 ``AlreadyExists``), get, list (with
  ``labelSelector`` - equality, ``!=``, ``in``, ``notin``, existence - and ``fieldSelector``
  on dotted paths such as ``metadata.name``), replace (optimistic concurrency on
  ``metadata.resourceVersion``: 409 ``Conflict``), patch, delete, deletecollection, and the
  cluster-wide lists (``/apis/apps/v1/deployments``). Deleting a Deployment deletes its pods.
* **PATCH** with ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902), ``application/strategic-merge-patch+json`` (approximated: JSON merge patch, but
  lists of containers/env/volumes/ports/... merge by their Kubernetes merge keys, and the
  ``$patch``/``$setElementOrder``/``$retainKeys`` directives kubectl sends are honoured) and
  ``application/apply-patch+yaml`` (server-side apply, approximated as create-or-strategic-
  merge; field ownership is not modelled).
* **Watch** (``?watch=true``): chunked JSON lines ``{"type": "ADDED"|"MODIFIED"|"DELETED",
  "object": ...}``, from ``resourceVersion`` (or, without one, the current objects as
  ``ADDED`` first), filtered by the selectors (an object that stops matching is sent as
  ``DELETED``), ending after ``timeoutSeconds``; ``sendInitialEvents=true`` (the streaming
  lists of newer clients, kubectl 1.35+) sends the current objects and then the
  ``BOOKMARK`` that marks the end of them.
* **Pod logs** (``pods/<name>/log``, with ``container``, ``tailLines``, ``previous`` and
  ``follow``) and the Deployment ``scale`` subresource.
* **Bookkeeping**: ``uid``, ``creationTimestamp``, a cluster-wide ``resourceVersion`` counter,
  ``generation`` (bumped when the ``spec`` changes) for Deployments, Ingresses and HPAs,
  ``status`` kept across updates of the main resource (as the real API does), Secret
  ``stringData`` folded into base64 ``data``, Service ``clusterIP`` assignment, and default
  ``spec.replicas``.
* **Errors** are ``Status`` objects with the reason the code implies (404 ``NotFound``, 409
  ``AlreadyExists``/``Conflict``, 403 ``Forbidden``, 422 ``Invalid``...). Names must be DNS
  subdomains and label keys/values must be valid (422, as the real API). With
  ``validate=True`` (the default when ``kubernetes-validate`` is installed) every written
  object is checked against the official OpenAPI schema of ``schema_version``: a test cannot
  pass by sending the fake something a real cluster would refuse.
* **Authentication**: every request must carry ``Authorization: Bearer <token>`` (401).

No controller runs: a new Deployment has no pods and no status until the test says what the
cluster does, with :meth:`FakeKubernetes.rollout` (pods created, ready, status updated, old
pods removed one by one - a rolling update), :meth:`~FakeKubernetes.crash_pod`
(CrashLoopBackOff), :meth:`~FakeKubernetes.image_pull_error` (ImagePullBackOff) or
:meth:`~FakeKubernetes.stall_rollout` (ProgressDeadlineExceeded); or with
``auto_rollout=True``, which rolls every Deployment out as soon as it is created, changed or
scaled (for kubectl's ``rollout status``).

Every request is recorded: ``fake.record`` holds ``(method, path)`` pairs, ``fake.requests``
the details (query, content type, parsed body). Errors are injected with
:meth:`~FakeKubernetes.fail_next`.

Usage::

    with FakeKubernetes() as fake:
        config = fake.kubeconfig(tmp_path / "kubeconfig", namespace="hubserve")
        ...  # kubernetes.config.load_kube_config(str(config)) or KUBECONFIG=... kubectl
        fake.rollout("hubserve", "hs-alice-iris-1a2b3c")
        assert ("POST", "/apis/apps/v1/namespaces/hubserve/deployments") in fake.record
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]

__all__ = ["FakeKubernetes", "RecordedRequest", "Resource"]


# -- the resources the fake serves -----------------------------------------------------------


@dataclass(frozen=True)
class Resource:
    """One REST resource: ``/api[s]/<group>/<version>/namespaces/<ns>/<plural>``."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    #: Kinds whose ``metadata.generation`` is bumped on a change of ``spec``.
    generation: bool = False
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``deployments.apps``: how Status messages name the resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
    Resource("", "v1", "pods", "Pod", short_names=("po",), subresources=("log", "status")),
    Resource("", "v1", "services", "Service", short_names=("svc",), subresources=("status",)),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    Resource("", "v1", "events", "Event", short_names=("ev",)),
    Resource(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        generation=True,
        short_names=("deploy",),
        subresources=("scale", "status"),
    ),
    Resource(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        generation=True,
        short_names=("ing",),
        subresources=("status",),
    ),
    Resource(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        generation=True,
        short_names=("hpa",),
        subresources=("status",),
    ),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_GROUP_VERSIONS = sorted({(r.group, r.version) for r in RESOURCES})

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "AlreadyExists",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

#: Strategic-merge keys of the lists that clients patch (the rest are replaced whole).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "tls": None,
    "rules": None,
}


class ApiError(Exception):
    """Raised inside a handler; answered as a ``Status`` object."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, details: Obj | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or _REASONS.get(code, "Unknown")
        self.details = details or {}

    def status(self) -> Obj:
        return status_object(self.code, self.message, self.reason, self.details)


def status_object(code: int, message: str, reason: str, details: Obj | None = None) -> Obj:
    """A ``meta/v1 Status`` as the API server sends for errors."""
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


@dataclass
class RecordedRequest:
    """One request the fake answered (see ``FakeKubernetes.requests``)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    status: int = 0


@dataclass
class _Failure:
    verb: str
    resource: str
    code: int
    message: str
    reason: str | None
    name: str | None
    namespace: str | None
    times: int


@dataclass
class _Event:
    rv: int
    resource: Resource
    type: str
    obj: Obj
    old: Obj | None


@dataclass
class _Request:
    method: str
    resource: Resource | None
    namespace: str | None
    name: str | None
    subresource: str | None
    query: dict[str, str]
    body: Any
    content_type: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verb(self) -> str:
        if self.method == "GET":
            if self.name is None:
                return "watch" if self.query.get("watch") in ("true", "1") else "list"
            return "get"
        if self.method == "DELETE" and self.name is None:
            return "deletecollection"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            self.method, self.method.lower()
        )


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- merge helpers ---------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(field_name: str, items: list[Any]) -> str | None:
    if field_name == "ports":  # container ports merge by containerPort, Service ports by port
        if all(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        if all(isinstance(i, dict) and "port" in i for i in items):
            return "port"
        return None
    return _MERGE_KEYS.get(field_name)


def strategic_merge(target: Any, patch: Any) -> Any:
    """An approximation of Kubernetes' strategic merge patch (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    removals = {
        k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$deleteFromPrimitiveList/")
    }
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in removals.items():
        if isinstance(result.get(key), list):
            result[key] = [v for v in result[key] if v not in values]
    for key, order in orders.items():
        items = result.get(key)
        if isinstance(items, list):
            result[key] = _reorder(key, items, order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field_name: str, current: Any, patch: list[Any]) -> list[Any]:
    if patch and isinstance(patch[0], dict) and patch[0].get("$patch") == "replace":
        return [copy.deepcopy(p) for p in patch[1:]]
    key = _merge_key(field_name, [p for p in patch if not (isinstance(p, dict) and "$patch" in p)])
    if key is None or not isinstance(current, list):
        return [copy.deepcopy(p) for p in patch if not (isinstance(p, dict) and p.get("$patch"))]
    result = [copy.deepcopy(c) for c in current]
    for item in patch:
        if not isinstance(item, dict):
            continue
        index = next(
            (
                i
                for i, c in enumerate(result)
                if isinstance(c, dict) and c.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
        elif index is None:
            result.append(strategic_merge({}, item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def _reorder(field_name: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field_name, items)
    if key is None:
        return [v for v in order if v in items] + [v for v in items if v not in order]
    wanted = [o.get(key) for o in order if isinstance(o, dict)]
    ranked = sorted(
        items,
        key=lambda i: wanted.index(i.get(key)) if i.get(key) in wanted else len(wanted),
    )
    return ranked


def json_patch(target: Any, operations: list[Obj]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test)."""
    doc = copy.deepcopy(target)

    def parts(pointer: str) -> list[str]:
        if not pointer.startswith("/"):
            raise ApiError(422, f"invalid JSON pointer {pointer!r}")
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]

    def parent(pointer: str) -> tuple[Any, str]:
        path = parts(pointer)
        node = doc
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, path[-1]

    def get(pointer: str) -> Any:
        node, last = parent(pointer)
        return node[int(last)] if isinstance(node, list) else node[last]

    def add(pointer: str, value: Any) -> None:
        node, last = parent(pointer)
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value

    def remove(pointer: str) -> Any:
        node, last = parent(pointer)
        return node.pop(int(last)) if isinstance(node, list) else node.pop(last)

    try:
        for op in operations:
            kind, path = op["op"], op["path"]
            if kind == "add":
                add(path, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(path)
            elif kind == "replace":
                remove(path)
                add(path, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(path, remove(op["from"]))
            elif kind == "copy":
                add(path, copy.deepcopy(get(op["from"])))
            elif kind == "test":
                if get(path) != op["value"]:
                    raise ApiError(422, f"the test of {path} failed")
            else:
                raise ApiError(422, f"unknown JSON patch operation {kind!r}")
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise ApiError(422, f"the JSON patch does not apply: {exc!r}") from None
    return doc


# -- selectors -------------------------------------------------------------------------------

_SET_RE = re.compile(r"^\s*(!?)([^\s!=<>()]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(text: str) -> list[str]:
    """Split on the commas that are not inside ``in (a, b)``."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p.strip() for p in parts if p.strip()]


def label_matcher(selector: str) -> Callable[[Mapping[str, str]], bool]:
    """A predicate for a ``labelSelector`` string (all requirement kinds of the API)."""
    tests: list[Callable[[Mapping[str, str]], bool]] = []
    for requirement in _split_selector(selector):
        if "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        else:
            match = _SET_RE.match(requirement)
            if match is None:
                raise ApiError(400, f"unable to parse requirement: {requirement!r}")
            negated, key, operator, values = match.groups()
            if operator:
                options = {v.strip() for v in values.split(",") if v.strip()}
                if operator == "in":
                    tests.append(lambda labels, k=key, o=options: labels.get(k) in o)
                else:
                    tests.append(lambda labels, k=key, o=options: labels.get(k) not in o)
            elif negated:
                tests.append(lambda labels, k=key: k not in labels)
            else:
                tests.append(lambda labels, k=key: k in labels)
    return lambda labels: all(test(labels) for test in tests)


def _dotted(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def field_matcher(selector: str) -> Callable[[Obj], bool]:
    """A predicate for a ``fieldSelector`` (``path=value``, ``path==value``, ``path!=value``)."""
    tests: list[Callable[[Obj], bool]] = []
    for requirement in _split_selector(selector):
        if "!=" in requirement:
            key, value = (s.strip() for s in requirement.split("!=", 1))
            tests.append(lambda o, k=key, v=value: _dotted(o, k) != v)
        elif "=" in requirement:
            key, value = (s.strip() for s in requirement.replace("==", "=").split("=", 1))
            tests.append(lambda o, k=key, v=value: _dotted(o, k) == v)
        else:
            raise ApiError(400, f"invalid field selector {requirement!r}")
    return lambda obj: all(test(obj) for test in tests)


# -- the fake --------------------------------------------------------------------------------


class FakeKubernetes:
    """The fake API server. Use as a context manager, or call :meth:`start` / :meth:`stop`.

    ``token``: the bearer token clients must send (random by default).
    ``auto_rollout``: roll every Deployment out at once when it is created, changed or scaled.
    ``validate``: check written objects against the Kubernetes schemas of ``schema_version``
    (needs ``kubernetes-validate``; ``None`` = when it is installed).
    ``tls``: serve HTTPS with a throw-away CA (in the kubeconfig). kubectl sends no bearer
    token over plain HTTP, so it needs this; the Python client works either way.
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        auto_rollout: bool = False,
        validate: bool | None = None,
        schema_version: str = "1.32",
        tls: bool = True,
    ) -> None:
        self.token = token or secrets.token_urlsafe(16)
        self.auto_rollout = auto_rollout
        if validate is None:
            try:
                import kubernetes_validate  # noqa: F401
            except ImportError:
                validate = False
            else:
                validate = True
        self.validate = validate
        self.schema_version = schema_version
        #: ``(method, path)`` of every request, in order (the path without the query).
        self.record: list[tuple[str, str]] = []
        #: Every request with its query, content type and parsed body.
        self.requests: list[RecordedRequest] = []
        self._objects: dict[tuple[str, str, str, str], Obj] = {}
        self._events: list[_Event] = []
        self._rv = 0
        self._ips = 0
        self._failures: list[_Failure] = []
        self._logs: dict[tuple[str, str, str], list[str]] = {}
        self._previous_logs: dict[tuple[str, str, str], list[str]] = {}
        self._pod_owner: dict[tuple[str, str], str] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.tls = tls
        self._ca_pem = b""
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            self._ca_pem, cert_pem, key_pem = _make_certificates()
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-kubernetes-")
            cert_file = Path(self._tmp.name) / "server.pem"
            cert_file.write_bytes(cert_pem + key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file)
            # The handshake happens in the request's thread, not in the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-kubernetes", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeKubernetes:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``https://127.0.0.1:<port>`` (``http://`` without TLS), the API server's address."""
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host!s}:{port}"

    @property
    def ca_pem(self) -> bytes:
        """The PEM certificate of the CA that signed the server's certificate (TLS only)."""
        return self._ca_pem

    def kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """Write a kubeconfig (token auth, current context ``fake``) and return its path.

        It works for ``kubernetes.config.load_kube_config(config_file=...)`` and for
        ``KUBECONFIG=<path> kubectl ...``. It is JSON, which is YAML too.
        """
        cluster: Obj = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self._ca_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
            "preferences": {},
        }
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config, indent=2))
        target.chmod(0o600)
        return target

    # -- injecting errors --------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        resource: str,
        code: int,
        message: str,
        *,
        name: str | None = None,
        namespace: str | None = None,
        reason: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with an error ``Status``.

        ``method``: an HTTP method (``GET`` matches get, list and watch) or a Kubernetes verb
        (``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``,
        ``deletecollection``) or ``*``. ``resource``: the plural (``deployments``), a
        subresource (``pods/log``, ``deployments/scale``) or ``*``. ``reason`` defaults to the
        code's (403 ``Forbidden``, 409 ``AlreadyExists``, 422 ``Invalid``, ...).
        """
        with self._lock:
            self._failures.append(
                _Failure(method, resource, code, message, reason, name, namespace, times)
            )

    def _take_failure(self, request: _Request) -> ApiError | None:
        if request.resource is None:
            return None
        plural = request.resource.plural
        target = f"{plural}/{request.subresource}" if request.subresource else plural
        verb = request.verb
        with self._lock:
            for failure in self._failures:
                method_ok = failure.verb in ("*", request.method, verb)
                resource_ok = failure.resource in ("*", target)
                name_ok = failure.name in (None, request.name)
                ns_ok = failure.namespace in (None, request.namespace)
                if method_ok and resource_ok and name_ok and ns_ok:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return ApiError(failure.code, failure.message, failure.reason)
        return None

    # -- reading and seeding state -----------------------------------------------------------

    def get(self, plural: str, namespace: str | None, name: str) -> Obj | None:
        """A copy of the stored object, or ``None``."""
        resource = _resource(plural)
        with self._lock:
            obj = self._objects.get(self._key(resource, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None, selector: str = "") -> list[Obj]:
        """Copies of the stored objects of a kind (in a namespace, matching a label selector)."""
        resource = _resource(plural)
        matches = label_matcher(selector)
        with self._lock:
            return [
                copy.deepcopy(obj)
                for (group, plural_, ns, _), obj in sorted(self._objects.items())
                if (group, plural_) == (resource.group, resource.plural)
                and (namespace is None or ns == namespace)
                and matches(obj.get("metadata", {}).get("labels") or {})
            ]

    def add(self, obj: Obj) -> Obj:
        """Store an object as if a client had created it (e.g. a pre-existing Secret)."""
        resource = _resource_for_kind(obj["apiVersion"], obj["kind"])
        namespace = obj.get("metadata", {}).get("namespace") or (
            "default" if resource.namespaced else None
        )
        with self._lock:
            return self._create(resource, namespace, copy.deepcopy(obj))

    def pods_of(self, namespace: str, deployment: str) -> list[Obj]:
        """The pods the fake controller made for a Deployment."""
        with self._lock:
            return [
                copy.deepcopy(self._objects[self._key(_PODS, namespace, pod)])
                for (ns, pod), owner in sorted(self._pod_owner.items())
                if ns == namespace
                and owner == deployment
                and self._key(_PODS, namespace, pod) in self._objects
            ]

    def set_logs(
        self,
        namespace: str,
        pod: str,
        lines: list[str] | str,
        *,
        container: str | None = None,
        previous: bool = False,
    ) -> None:
        """Set what ``pods/<pod>/log`` answers (appending wakes ``follow`` readers)."""
        with self._changed:
            obj = self._objects.get(self._key(_PODS, namespace, pod))
            if container is None:
                containers = (obj or {}).get("spec", {}).get("containers") or [{"name": ""}]
                container = containers[0]["name"]
            text = lines.splitlines() if isinstance(lines, str) else list(lines)
            store = self._previous_logs if previous else self._logs
            store[(namespace, pod, container or "")] = text
            self._changed.notify_all()

    def append_log(self, namespace: str, pod: str, line: str, *, container: str = "") -> None:
        with self._changed:
            key = (namespace, pod, container or self._first_container(namespace, pod))
            self._logs.setdefault(key, []).append(line)
            self._changed.notify_all()

    # -- the simulated controller ------------------------------------------------------------

    def rollout(self, namespace: str, name: str, *, ready: bool = True) -> list[Obj]:
        """Do what the Deployment controller and the kubelets would, up to a settled state.

        Pods for the current pod template are created one at a time (``maxSurge`` 1) and,
        once each is ready, one pod of an older template is removed (``maxUnavailable`` 0);
        the Deployment's ``status`` follows every step, so a watcher sees a rolling update.
        With ``ready=False`` the new pods run but never pass their readiness probe: the old
        ones stay and the rollout does not complete. Returns the Deployment's pods.
        """
        with self._changed:
            deployment = self._deployment(namespace, name)
            desired = int(deployment["spec"].get("replicas", 1))
            template_hash = _template_hash(deployment)
            current = [p for p in self._owned_pods(namespace, name) if _hash_of(p) == template_hash]
            old = [p for p in self._owned_pods(namespace, name) if _hash_of(p) != template_hash]
            for pod in current:
                if ready and not _pod_ready(pod):
                    self._set_pod_state(pod, ready=True)
            while len(current) > desired:
                self._delete_pod(namespace, current.pop()["metadata"]["name"])
            self._update_deployment_status(namespace, name)
            while len(current) < desired:
                pod = self._create_pod(deployment, template_hash, ready=ready)
                current.append(pod)
                self._update_deployment_status(namespace, name)
                if ready and old:
                    self._delete_pod(namespace, old.pop(0)["metadata"]["name"])
                    self._update_deployment_status(namespace, name)
            if ready:
                while old:
                    self._delete_pod(namespace, old.pop(0)["metadata"]["name"])
                self._update_deployment_status(namespace, name, complete=True)
            return self.pods_of(namespace, name)

    def crash_pod(
        self,
        namespace: str,
        name: str,
        *,
        restarts: int = 3,
        message: str = "back-off 40s restarting failed container",
        exit_code: int = 1,
        log: str | None = None,
    ) -> None:
        """Put a pod (``name`` is a pod) or all the pods of a Deployment into CrashLoopBackOff.

        ``log`` becomes the ``previous=true`` log of the crashed container.
        """
        with self._changed:
            pods = self._target_pods(namespace, name)
            for pod in pods:
                container = pod["spec"]["containers"][0]["name"]
                statuses = pod["status"]["containerStatuses"]
                status = statuses[0]
                status["restartCount"] = status.get("restartCount", 0) + restarts
                status["ready"] = False
                status["started"] = False
                status["state"] = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
                status["lastState"] = {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Error",
                        "startedAt": _now(),
                        "finishedAt": _now(),
                    }
                }
                _set_condition(pod["status"], "Ready", "False", "ContainersNotReady")
                _set_condition(pod["status"], "ContainersReady", "False", "ContainersNotReady")
                if log is not None:
                    key = (namespace, pod["metadata"]["name"], container)
                    self._previous_logs[key] = log.splitlines()
                self._modified(_PODS, pod)
                self._add_event(
                    namespace, "Pod", pod["metadata"]["name"], "BackOff", message, "Warning"
                )
            for deployment in {
                self._pod_owner.get((namespace, p["metadata"]["name"])) for p in pods
            }:
                if deployment:
                    self._update_deployment_status(namespace, deployment)

    def image_pull_error(
        self,
        namespace: str,
        name: str,
        *,
        reason: str = "ImagePullBackOff",
        message: str | None = None,
    ) -> list[Obj]:
        """The kubelets cannot pull the image of Deployment ``name``'s current template.

        Its pods for that template (created if the controller had not yet) stay ``Pending``
        with the container waiting for ``reason``; older pods keep serving.
        """
        with self._changed:
            deployment = self._deployment(namespace, name)
            template_hash = _template_hash(deployment)
            image = deployment["spec"]["template"]["spec"]["containers"][0].get("image", "")
            text = message or (
                f'Back-off pulling image "{image}": ErrImagePull: failed to pull and unpack'
                f' image "{image}": not found'
            )
            pods = [p for p in self._owned_pods(namespace, name) if _hash_of(p) == template_hash]
            if not pods:
                pods = [
                    self._create_pod(deployment, template_hash, ready=False)
                    for _ in range(max(1, int(deployment["spec"].get("replicas", 1))))
                ]
            for pod in pods:
                pod["status"]["phase"] = "Pending"
                for status in pod["status"]["containerStatuses"]:
                    status["ready"] = False
                    status["started"] = False
                    status["state"] = {"waiting": {"reason": reason, "message": text}}
                _set_condition(pod["status"], "Ready", "False", "ContainersNotReady")
                self._modified(_PODS, pod)
                self._add_event(
                    namespace, "Pod", pod["metadata"]["name"], "Failed", text, "Warning"
                )
            self._update_deployment_status(namespace, name)
            return [copy.deepcopy(p) for p in pods]

    def stall_rollout(self, namespace: str, name: str, message: str | None = None) -> None:
        """Mark a Deployment's rollout failed (``Progressing=False``, ProgressDeadlineExceeded)."""
        with self._changed:
            deployment = self._deployment(namespace, name)
            status = deployment.setdefault("status", {})
            status["observedGeneration"] = deployment["metadata"].get("generation", 1)
            _set_condition(
                status,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                message or f'ReplicaSet "{name}" has timed out progressing.',
            )
            self._modified(_DEPLOYMENTS, deployment)

    # -- internals: storage ------------------------------------------------------------------

    @staticmethod
    def _key(resource: Resource, namespace: str | None, name: str) -> tuple[str, str, str, str]:
        return (resource.group, resource.plural, namespace or "", name)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _emit(self, resource: Resource, kind: str, obj: Obj, old: Obj | None = None) -> None:
        self._events.append(
            _Event(int(obj["metadata"]["resourceVersion"]), resource, kind, copy.deepcopy(obj), old)
        )
        self._changed.notify_all()

    def _check(self, resource: Resource, obj: Obj) -> None:
        """The admission checks a real API server would make (names, labels, schema)."""
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        pattern = _DNS_LABEL if resource.plural in ("services", "namespaces") else _DNS_SUBDOMAIN
        what = f'{resource.kind}{"." + resource.group if resource.group else ""} "{name}"'
        if not pattern.match(name) or len(name) > (63 if pattern is _DNS_LABEL else 253):
            raise ApiError(
                422,
                f"{what} is invalid: metadata.name: Invalid value: {name!r}: a lowercase RFC 1123"
                f" {'label' if pattern is _DNS_LABEL else 'subdomain'} must consist of lower case"
                " alphanumeric characters, '-' or '.'",
                details={"name": name, "group": resource.group, "kind": resource.plural},
            )
        for key, value in (meta.get("labels") or {}).items():
            _, _, base = key.rpartition("/")
            if not _LABEL_NAME.match(base) or len(base) > 63:
                raise ApiError(422, f"{what} is invalid: metadata.labels: Invalid value: {key!r}")
            if not isinstance(value, str) or not _LABEL_VALUE.match(value) or len(value) > 63:
                raise ApiError(422, f"{what} is invalid: metadata.labels: Invalid value: {value!r}")
        if self.validate and resource.plural != "events":
            self._schema_check(resource, obj, what)

    def _schema_check(self, resource: Resource, obj: Obj, what: str) -> None:
        import jsonschema
        import kubernetes_validate

        body = copy.deepcopy(obj)
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        try:
            kubernetes_validate.validate(body, self.schema_version, strict=True)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            raise ApiError(422, f"{what} is invalid: {where}: {exc.message}") from None

    def _create(self, resource: Resource, namespace: str | None, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise ApiError(422, f"{resource.kind} is invalid: metadata.name: Required value")
        if resource.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace"
                    " sent on the request",
                )
            meta["namespace"] = namespace
        obj["apiVersion"] = resource.api_version
        obj["kind"] = resource.kind
        key = self._key(resource, namespace, meta["name"])
        if key in self._objects:
            raise ApiError(
                409,
                f'{resource.qualified} "{meta["name"]}" already exists',
                "AlreadyExists",
                {"name": meta["name"], "group": resource.group, "kind": resource.plural},
            )
        self._defaults(resource, obj, None)
        self._check(resource, obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("deletionTimestamp", None)
        if resource.generation:
            meta["generation"] = 1
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = obj
        self._emit(resource, "ADDED", obj)
        return obj

    def _update(self, resource: Resource, namespace: str | None, name: str, new: Obj) -> Obj:
        key = self._key(resource, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise self._not_found(resource, name)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "the name of the object does not match the name on the URL")
        sent_rv = meta.get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {resource.qualified} "{name}": the object has'
                " been modified; please apply your changes to the latest version and try again",
                "Conflict",
                {"name": name, "group": resource.group, "kind": resource.plural},
            )
        for stable in ("name", "namespace", "uid", "creationTimestamp"):
            if stable in old["metadata"]:
                meta[stable] = old["metadata"][stable]
        new["apiVersion"] = resource.api_version
        new["kind"] = resource.kind
        if "status" in old and resource.plural != "namespaces":
            new["status"] = copy.deepcopy(old["status"])  # status belongs to the controllers
        self._defaults(resource, new, old)
        self._check(resource, new)
        if resource.generation:
            generation = old["metadata"].get("generation", 1)
            if new.get("spec") != old.get("spec"):
                generation += 1
            meta["generation"] = generation
        if _comparable(new) == _comparable(old):
            return old  # a no-op write does not change the resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self._objects[key] = new
        self._emit(resource, "MODIFIED", new, old)
        if resource is _DEPLOYMENTS and self.auto_rollout and new.get("spec") != old.get("spec"):
            self.rollout(namespace or "", name)
        return new

    def _delete(self, resource: Resource, namespace: str | None, name: str) -> Obj:
        key = self._key(resource, namespace, name)
        obj = self._objects.pop(key, None)
        if obj is None:
            raise self._not_found(resource, name)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        obj["metadata"]["deletionTimestamp"] = _now()
        self._emit(resource, "DELETED", obj)
        if resource is _DEPLOYMENTS:  # garbage collection of the pods
            for pod in self._owned_pods(namespace or "", name):
                self._delete_pod(namespace or "", pod["metadata"]["name"])
        if resource is _PODS:
            self._pod_owner.pop((namespace or "", name), None)
        return obj

    def _defaults(self, resource: Resource, obj: Obj, old: Obj | None) -> None:
        if resource is _DEPLOYMENTS:
            spec = obj.setdefault("spec", {})
            spec.setdefault("replicas", 1)
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
        elif resource.plural == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            old_ip = (old or {}).get("spec", {}).get("clusterIP")
            if spec.get("clusterIP") != "None":
                if old_ip:
                    spec["clusterIP"] = old_ip
                elif not spec.get("clusterIP"):
                    self._ips += 1
                    spec["clusterIP"] = f"10.96.{self._ips // 250}.{self._ips % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
        elif resource.plural == "secrets":
            data = obj.setdefault("data", {})
            for key, value in (obj.pop("stringData", None) or {}).items():
                data[key] = base64.b64encode(str(value).encode()).decode()
            obj.setdefault("type", "Opaque")
        elif resource.plural == "namespaces":
            obj.setdefault("status", {"phase": "Active"})

    def _not_found(self, resource: Resource, name: str) -> ApiError:
        return ApiError(
            404,
            f'{resource.qualified} "{name}" not found',
            "NotFound",
            {"name": name, "group": resource.group, "kind": resource.plural},
        )

    def _modified(self, resource: Resource, obj: Obj) -> None:
        """Store a change made by the simulated controllers (status) and emit it."""
        key = self._key(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        old = self._objects.get(key)
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._objects[key] = obj
        self._emit(resource, "MODIFIED", obj, old)

    # -- internals: the controller -----------------------------------------------------------

    def _deployment(self, namespace: str, name: str) -> Obj:
        deployment = self._objects.get(self._key(_DEPLOYMENTS, namespace, name))
        if deployment is None:
            raise KeyError(f"no Deployment {namespace}/{name}")
        return copy.deepcopy(deployment)

    def _owned_pods(self, namespace: str, deployment: str) -> list[Obj]:
        return [
            copy.deepcopy(self._objects[self._key(_PODS, namespace, pod)])
            for (ns, pod), owner in sorted(self._pod_owner.items())
            if ns == namespace
            and owner == deployment
            and self._key(_PODS, namespace, pod) in self._objects
        ]

    def _target_pods(self, namespace: str, name: str) -> list[Obj]:
        pod = self._objects.get(self._key(_PODS, namespace, name))
        if pod is not None:
            return [copy.deepcopy(pod)]
        pods = self._owned_pods(namespace, name)
        if not pods:
            raise KeyError(f"no pod or Deployment with pods named {namespace}/{name}")
        return pods

    def _first_container(self, namespace: str, pod: str) -> str:
        obj = self._objects.get(self._key(_PODS, namespace, pod)) or {}
        containers = obj.get("spec", {}).get("containers") or [{"name": ""}]
        return str(containers[0]["name"])

    def _create_pod(self, deployment: Obj, template_hash: str, *, ready: bool) -> Obj:
        namespace = deployment["metadata"]["namespace"]
        name = deployment["metadata"]["name"]
        template = copy.deepcopy(deployment["spec"]["template"])
        pod_meta = template.get("metadata") or {}
        labels = dict(pod_meta.get("labels") or {})
        labels["pod-template-hash"] = template_hash
        replica_set = f"{name}-{template_hash}"
        pod_name = f"{replica_set}-{secrets.token_hex(3)[:5]}"
        spec = template.get("spec") or {}
        spec.setdefault("nodeName", "fake-node")
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict(pod_meta.get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": replica_set,
                        "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{replica_set}")),
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
            "status": {"phase": "Pending", "conditions": [], "containerStatuses": []},
        }
        if not pod["metadata"]["annotations"]:
            del pod["metadata"]["annotations"]
        created = self._create(_PODS, namespace, pod)
        self._pod_owner[(namespace, pod_name)] = name
        obj = copy.deepcopy(created)
        self._set_pod_state(obj, ready=ready)
        return copy.deepcopy(self._objects[self._key(_PODS, namespace, pod_name)])

    def _set_pod_state(self, pod: Obj, *, ready: bool) -> None:
        containers = pod["spec"].get("containers") or []
        status = pod["status"]
        status.update(
            {
                "phase": "Running",
                "hostIP": "192.168.0.10",
                "podIP": f"10.244.0.{(self._rv % 250) + 1}",
                "startTime": status.get("startTime") or _now(),
                "qosClass": "Burstable",
            }
        )
        status["containerStatuses"] = [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": f"{c.get('image', '')}@sha256:{'0' * 64}",
                "containerID": f"containerd://{secrets.token_hex(32)}",
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _now()}},
            }
            for c in containers
        ]
        for kind in ("PodScheduled", "Initialized"):
            _set_condition(status, kind, "True")
        value = "True" if ready else "False"
        _set_condition(status, "ContainersReady", value, None if ready else "ContainersNotReady")
        _set_condition(status, "Ready", value, None if ready else "ContainersNotReady")
        self._modified(_PODS, pod)

    def _delete_pod(self, namespace: str, name: str) -> None:
        if self._key(_PODS, namespace, name) in self._objects:
            self._delete(_PODS, namespace, name)

    def _update_deployment_status(self, namespace: str, name: str, complete: bool = False) -> None:
        deployment = self._deployment(namespace, name)
        template_hash = _template_hash(deployment)
        pods = self._owned_pods(namespace, name)
        updated = [p for p in pods if _hash_of(p) == template_hash]
        ready = [p for p in pods if _pod_ready(p)]
        desired = int(deployment["spec"].get("replicas", 1))
        status = deployment.get("status") or {}
        status.update(
            {
                "observedGeneration": deployment["metadata"].get("generation", 1),
                "replicas": len(pods),
                "updatedReplicas": len(updated),
                "readyReplicas": len(ready),
                "availableReplicas": len(ready),
            }
        )
        unavailable = max(0, max(desired, len(pods)) - len(ready))
        if unavailable:
            status["unavailableReplicas"] = unavailable
        else:
            status.pop("unavailableReplicas", None)
        for key in ("readyReplicas", "availableReplicas", "replicas", "updatedReplicas"):
            if not status[key]:
                del status[key]  # the API omits zero counts
        available = len(ready) >= desired
        _set_condition(
            status,
            "Available",
            "True" if available else "False",
            "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
            "Deployment has minimum availability."
            if available
            else "Deployment does not have minimum availability.",
        )
        rs = f"{name}-{template_hash}"
        done = complete and len(updated) == desired == len(pods) == len(ready)
        _set_condition(
            status,
            "Progressing",
            "True",
            "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
            f'ReplicaSet "{rs}" has successfully progressed.'
            if done
            else f'ReplicaSet "{rs}" is progressing.',
        )
        deployment["status"] = status
        stored = self._objects[self._key(_DEPLOYMENTS, namespace, name)]
        if stored.get("status") != status:
            self._modified(_DEPLOYMENTS, deployment)

    def _add_event(
        self, namespace: str, kind: str, name: str, reason: str, message: str, type_: str
    ) -> None:
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
            "reason": reason,
            "message": message,
            "type": type_,
            "count": 1,
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "source": {"component": "kubelet"},
        }
        self._create(_EVENTS, namespace, event)

    # -- internals: request handling ---------------------------------------------------------

    def handle(self, request: _Request) -> tuple[int, Any]:
        """Answer one API request: ``(status code, JSON body)``."""
        failure = self._take_failure(request)
        if failure is not None:
            raise failure
        resource = request.resource
        assert resource is not None
        with self._changed:
            if request.subresource == "scale":
                return self._scale(request)
            if request.subresource == "status":
                return self._status_subresource(request)
            if request.subresource:
                raise ApiError(404, "the server could not find the requested resource")
            verb = request.verb
            if verb == "get":
                obj = self._objects.get(self._key(resource, request.namespace, request.name or ""))
                if obj is None:
                    raise self._not_found(resource, request.name or "")
                return 200, obj
            if verb == "list":
                return 200, self._list_body(resource, request)
            if verb == "create":
                body = self._body_object(request)
                self._kind_matches(resource, body)
                created = self._create(resource, request.namespace, body)
                if resource is _DEPLOYMENTS and self.auto_rollout:
                    self.rollout(request.namespace or "", created["metadata"]["name"])
                    created = self._objects[
                        self._key(resource, request.namespace, created["metadata"]["name"])
                    ]
                return 201, created
            name = request.name or ""
            if verb == "update":
                body = self._body_object(request)
                self._kind_matches(resource, body)
                return 200, self._update(resource, request.namespace, name, body)
            if verb == "patch":
                return self._patch(resource, request, name)
            if verb == "delete":
                self._delete(resource, request.namespace, name)
                return 200, {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": resource.group, "kind": resource.plural},
                }
            if verb == "deletecollection":
                listing = self._list_body(resource, request)
                for item in listing["items"]:
                    self._delete(resource, request.namespace, item["metadata"]["name"])
                return 200, listing
        raise ApiError(405, f"{request.method} is not supported here")

    def _body_object(self, request: _Request) -> Obj:
        if not isinstance(request.body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return copy.deepcopy(request.body)

    @staticmethod
    def _kind_matches(resource: Resource, body: Obj) -> None:
        kind = body.get("kind")
        if kind and kind != resource.kind:
            raise ApiError(400, f"the body is a {kind}, not a {resource.kind}")
        api_version = body.get("apiVersion")
        if api_version and api_version != resource.api_version:
            raise ApiError(
                400, f"the body is {api_version}, but this endpoint serves {resource.api_version}"
            )

    def _patch(self, resource: Resource, request: _Request, name: str) -> tuple[int, Obj]:
        key = self._key(resource, request.namespace, name)
        current = self._objects.get(key)
        content_type = request.content_type
        if content_type == "application/apply-patch+yaml":
            body = self._body_object(request)
            self._kind_matches(resource, body)
            if current is None:
                return 201, self._create(resource, request.namespace, body)
            patched = strategic_merge(copy.deepcopy(current), body)
            patched["metadata"].pop("resourceVersion", None)
            if "resourceVersion" in body.get("metadata", {}):
                patched["metadata"]["resourceVersion"] = body["metadata"]["resourceVersion"]
            return 200, self._update(resource, request.namespace, name, patched)
        if current is None:
            raise self._not_found(resource, name)
        base = copy.deepcopy(current)
        if content_type == "application/json-patch+json":
            if not isinstance(request.body, list):
                raise ApiError(400, "a JSON patch is a list of operations")
            patched = json_patch(base, request.body)
        elif content_type == "application/merge-patch+json":
            patched = merge_patch(base, self._body_object(request))
        elif content_type == "application/strategic-merge-patch+json":
            patched = strategic_merge(base, self._body_object(request))
        else:
            raise ApiError(415, f"the patch content type {content_type!r} is not supported")
        if not isinstance(patched, dict):
            raise ApiError(422, "the patched object is not an object")
        sent_rv = _sent_resource_version(request.body)
        patched.setdefault("metadata", {})
        if sent_rv is None:
            patched["metadata"].pop("resourceVersion", None)
        return 200, self._update(resource, request.namespace, name, patched)

    def _scale(self, request: _Request) -> tuple[int, Obj]:
        if request.resource is not _DEPLOYMENTS:
            raise ApiError(404, "the server could not find the requested resource")
        name = request.name or ""
        namespace = request.namespace or ""
        key = self._key(_DEPLOYMENTS, namespace, name)
        if key not in self._objects:
            raise self._not_found(_DEPLOYMENTS, name)
        if request.method in ("PUT", "PATCH"):
            body = request.body
            if request.method == "PATCH" and request.content_type == "application/json-patch+json":
                body = json_patch(self._scale_object(self._objects[key]), body)
            replicas = (
                (body or {}).get("spec", {}).get("replicas") if isinstance(body, dict) else None
            )
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(422, "spec.replicas: Invalid value: must be a non-negative integer")
            deployment = copy.deepcopy(self._objects[key])
            deployment["spec"]["replicas"] = replicas
            deployment["metadata"].pop("resourceVersion", None)
            self._update(_DEPLOYMENTS, namespace, name, deployment)
        elif request.method != "GET":
            raise ApiError(405, f"{request.method} is not supported on scale")
        return 200, self._scale_object(self._objects[key])

    @staticmethod
    def _scale_object(deployment: Obj) -> Obj:
        selector = deployment["spec"].get("selector", {}).get("matchLabels", {})
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: deployment["metadata"][k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": deployment["spec"].get("replicas", 1)},
            "status": {
                "replicas": deployment.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            },
        }

    def _status_subresource(self, request: _Request) -> tuple[int, Obj]:
        resource = request.resource
        assert resource is not None
        key = self._key(resource, request.namespace, request.name or "")
        current = self._objects.get(key)
        if current is None:
            raise self._not_found(resource, request.name or "")
        if request.method == "GET":
            return 200, current
        body = request.body
        if request.method == "PATCH":
            body = merge_patch(copy.deepcopy(current), body)
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        updated = copy.deepcopy(current)
        updated["status"] = body.get("status", {})
        self._modified(resource, updated)
        return 200, updated

    def _list_body(self, resource: Resource, request: _Request) -> Obj:
        labels = label_matcher(request.query.get("labelSelector", ""))
        fields = field_matcher(request.query.get("fieldSelector", ""))
        items = []
        for (group, plural, ns, _), obj in sorted(self._objects.items()):
            if (group, plural) != (resource.group, resource.plural):
                continue
            if request.namespace is not None and ns != request.namespace:
                continue
            if labels(obj["metadata"].get("labels") or {}) and fields(obj):
                item = copy.deepcopy(obj)
                item.pop("kind", None)  # the API leaves these out of list items
                item.pop("apiVersion", None)
                items.append(item)
        return {
            "kind": f"{resource.kind}List",
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    def watch(self, request: _Request) -> Iterator[Obj]:
        """Yield watch events (``{"type", "object"}``) until the timeout or the server stops."""
        resource = request.resource
        assert resource is not None
        labels = label_matcher(request.query.get("labelSelector", ""))
        fields = field_matcher(request.query.get("fieldSelector", ""))
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout

        def matches(obj: Obj | None) -> bool:
            if obj is None:
                return False
            if request.namespace is not None and obj["metadata"].get("namespace") != (
                request.namespace
            ):
                return False
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        initial_events = request.query.get("sendInitialEvents") in ("true", "1")
        with self._changed:
            start = request.query.get("resourceVersion") or ""
            if start in ("", "0") or initial_events:
                initial = [
                    copy.deepcopy(o)
                    for (g, p, _, _), o in sorted(self._objects.items())
                    if (g, p) == (resource.group, resource.plural) and matches(o)
                ]
                position = self._rv
            else:
                initial = []
                position = int(start)
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        if initial_events:  # a streaming list ("WatchList") ends its initial part so
            yield {
                "type": "BOOKMARK",
                "object": {
                    "kind": resource.kind,
                    "apiVersion": resource.api_version,
                    "metadata": {
                        "resourceVersion": str(position),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                },
            }
        while True:
            with self._changed:
                pending = [e for e in self._events if e.rv > position]
                while not pending and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._changed.wait(min(left, 0.5))
                    pending = [e for e in self._events if e.rv > position]
                if self._stopping:
                    return
            for event in pending:
                position = event.rv
                if event.resource is not resource:
                    continue
                now, before = matches(event.obj), matches(event.old)
                if event.type == "MODIFIED" and before and not now:
                    yield {"type": "DELETED", "object": event.obj}
                elif event.type == "MODIFIED" and now and not before and event.old is not None:
                    yield {"type": "ADDED", "object": event.obj}
                elif now:
                    yield {"type": event.type, "object": event.obj}

    def pod_log(self, request: _Request) -> Iterator[str]:
        """The log lines of a pod's container (following appends while ``follow=true``)."""
        namespace, name = request.namespace or "", request.name or ""
        with self._lock:
            pod = self._objects.get(self._key(_PODS, namespace, name))
            if pod is None:
                raise self._not_found(_PODS, name)
            names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
            names += [c["name"] for c in pod.get("spec", {}).get("initContainers") or []]
            container = request.query.get("container")
            if container is None:
                if len(pod.get("spec", {}).get("containers", [])) > 1:
                    raise ApiError(
                        400,
                        f"a container name must be specified for pod {name}, choose one of:"
                        f" [{' '.join(names)}]",
                    )
                container = names[0] if names else ""
            elif container not in names:
                raise ApiError(400, f"container {container} is not valid for pod {name}")
            previous = request.query.get("previous") in ("true", "1")
            store = self._previous_logs if previous else self._logs
            if previous and (namespace, name, container) not in store:
                raise ApiError(
                    400, f'previous terminated container "{container}" in pod "{name}" not found'
                )
            lines = list(store.get((namespace, name, container), []))
        tail = request.query.get("tailLines")
        start = max(0, len(lines) - int(tail)) if tail is not None else 0
        yield from (line + "\n" for line in lines[start:])
        if request.query.get("follow") not in ("true", "1") or previous:
            return
        sent = len(lines)
        while True:
            with self._changed:
                key = (namespace, name, container)
                while (
                    len(self._logs.get(key, [])) <= sent
                    and not self._stopping
                    and self._key(_PODS, namespace, name) in self._objects
                ):
                    self._changed.wait(0.5)
                more = list(self._logs.get(key, []))[sent:]
                gone = self._stopping or self._key(_PODS, namespace, name) not in self._objects
            yield from (line + "\n" for line in more)
            sent += len(more)
            if gone:
                return


_PODS = _BY_PATH[("", "v1", "pods")]
_EVENTS = _BY_PATH[("", "v1", "events")]
_DEPLOYMENTS = _BY_PATH[("apps", "v1", "deployments")]


def _resource(plural: str) -> Resource:
    for resource in RESOURCES:
        if plural in (resource.plural, resource.kind, resource.kind.lower(), *resource.short_names):
            return resource
    raise KeyError(f"the fake does not serve {plural!r}")


def _resource_for_kind(api_version: str, kind: str) -> Resource:
    for resource in RESOURCES:
        if resource.api_version == api_version and resource.kind == kind:
            return resource
    raise KeyError(f"the fake does not serve {api_version} {kind}")


def _template_hash(deployment: Obj) -> str:
    template = json.dumps(deployment["spec"]["template"], sort_keys=True)
    digest = hashlib.sha256(template.encode()).hexdigest()
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the controller's "safe" encoding
    return "".join(alphabet[int(digest[i : i + 2], 16) % len(alphabet)] for i in range(0, 20, 2))


def _hash_of(pod: Obj) -> str:
    return str(pod["metadata"].get("labels", {}).get("pod-template-hash", ""))


def _pod_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def _set_condition(
    status: Obj, kind: str, value: str, reason: str | None = None, message: str | None = None
) -> None:
    conditions = status.setdefault("conditions", [])
    condition = next((c for c in conditions if c.get("type") == kind), None)
    if condition is None:
        condition = {"type": kind}
        conditions.append(condition)
    if condition.get("status") != value:
        condition["lastTransitionTime"] = _now()
    condition["status"] = value
    if "lastUpdateTime" in condition or kind in ("Available", "Progressing"):
        condition["lastUpdateTime"] = _now()
    for key, text in (("reason", reason), ("message", message)):
        if text is None:
            condition.pop(key, None)
        else:
            condition[key] = text


def _comparable(obj: Obj) -> Obj:
    clean = copy.deepcopy(obj)
    clean.get("metadata", {}).pop("resourceVersion", None)
    return clean


def _sent_resource_version(body: Any) -> str | None:
    if isinstance(body, dict):
        value = body.get("metadata", {}).get("resourceVersion")
        return str(value) if value else None
    return None


# -- HTTP ------------------------------------------------------------------------------------


def _discovery(group: str, version: str) -> Obj:
    resources = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        resources.append(
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": verbs,
                **({"shortNames": list(r.short_names)} if r.short_names else {}),
            }
        )
        for sub in r.subresources:
            kind = {"scale": "Scale", "log": "Pod"}.get(sub, r.kind)
            entry: Obj = {
                "name": f"{r.plural}/{sub}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": ["get"] if sub == "log" else ["get", "patch", "update"],
            }
            if sub == "scale":
                entry.update({"group": "autoscaling", "version": "v1"})
            resources.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


def _api_groups() -> Obj:
    groups = []
    for group in sorted({g for g, _ in _GROUP_VERSIONS if g}):
        versions = [
            {"groupVersion": f"{group}/{v}", "version": v} for g, v in _GROUP_VERSIONS if g == group
        ]
        groups.append({"name": group, "versions": versions, "preferredVersion": versions[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def _openapi_v3_index() -> Obj:
    """``/openapi/v3``: where the document of each group-version is."""
    paths = {}
    for group, version in _GROUP_VERSIONS:
        key = f"apis/{group}/{version}" if group else f"api/{version}"
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash=fake"}
    return {"paths": paths}


def _openapi_v3_document(group: str, version: str) -> Obj:
    """A skeleton OpenAPI v3 document of one group-version, without schemas.

    kubectl reads it to learn that the server validates fields itself (the ``fieldValidation``
    query parameter of each PATCH): it then sends ``fieldValidation=Strict`` and does no
    client-side schema validation, which would need the full OpenAPI v2 document. The fake
    does validate (see ``validate``), so nothing is lost.
    """
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    paths: Obj = {}
    params = [
        {"name": name, "in": "query", "schema": {"type": "string"}}
        for name in ("dryRun", "fieldManager", "fieldValidation", "force")
    ]
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        base = (
            f"{prefix}/namespaces/{{namespace}}/{r.plural}"
            if r.namespaced
            else (f"{prefix}/{r.plural}")
        )
        operation = {
            "operationId": f"patch{r.kind}",
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
        }
        paths[f"{base}/{{name}}"] = {
            "parameters": params,
            "patch": operation,
            "put": {**operation, "operationId": f"replace{r.kind}"},
        }
        paths[base] = {
            "parameters": params,
            "post": {**operation, "operationId": f"create{r.kind}"},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (fake)", "version": "unversioned"},
        "paths": paths,
        "components": {"schemas": {}},
    }


_PATH_RE = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<namespace>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?/?$"
)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive and chunked streaming (watches, followed logs)."""

    protocol_version = "HTTP/1.1"
    server_fake: FakeKubernetes

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the record is in fake.requests

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        fake = self.server_fake
        raw = self._read_body()
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        body: Any = None
        recorded = RecordedRequest(method, parts.path, query, content_type, None)
        with fake._lock:
            fake.record.append((method, parts.path))
            fake.requests.append(recorded)
        try:
            if raw:
                body = _parse_body(raw, content_type)
                recorded.body = body
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                raise ApiError(401, "Unauthorized")
            self._route(method, parts.path, query, body, content_type, recorded)
        except ApiError as exc:
            recorded.status = exc.code
            self._send_json(exc.code, exc.status())
        except OSError:
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: say so, in the API's words
            recorded.status = 500
            self._send_json(500, status_object(500, f"fake: {exc!r}", "InternalError"))

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        content_type: str,
        recorded: RecordedRequest,
    ) -> None:
        fake = self.server_fake
        static = {
            "/version": {
                "major": "1",
                "minor": fake.schema_version.split(".")[1],
                "gitVersion": f"v{fake.schema_version}.0-fake",
                "platform": "linux/amd64",
            },
            "/api": {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                ],
            },
            "/apis": _api_groups(),
            "/api/v1": _discovery("", "v1"),
            "/openapi/v3": _openapi_v3_index(),
            "/openapi/v3/api/v1": _openapi_v3_document("", "v1"),
        }
        for group, version in _GROUP_VERSIONS:
            if group:
                static[f"/apis/{group}/{version}"] = _discovery(group, version)
                static[f"/openapi/v3/apis/{group}/{version}"] = _openapi_v3_document(group, version)
        clean = path.rstrip("/") or "/"
        if method == "GET" and clean in static:
            recorded.status = 200
            self._send_json(200, static[clean])
            return
        match = _PATH_RE.match(path)
        if match is None:
            raise ApiError(404, "the server could not find the requested resource")
        group = match["group"] or ""
        version = match["core"] or match["version"]
        plural, name, sub = match["plural"], match["name"], match["sub"]
        namespace = match["namespace"]
        resource = _BY_PATH.get((group, version, plural))
        if resource is None:
            raise ApiError(404, "the server could not find the requested resource")
        if resource.plural == "namespaces":
            namespace = None
        elif namespace is None and method != "GET":
            raise ApiError(404, "the server could not find the requested resource")
        request = _Request(method, resource, namespace, name, sub, query, body, content_type)
        if sub == "log" and resource is _PODS and method == "GET":
            failure = fake._take_failure(request)
            if failure is not None:
                raise failure
            lines = fake.pod_log(request)
            first = next(lines, None)  # raises ApiError before any byte is sent
            self._stream("text/plain", ([first] if first is not None else []), lines, recorded)
            return
        if request.verb == "watch":
            failure = fake._take_failure(request)
            if failure is not None:
                raise failure
            events = (json.dumps(e) + "\n" for e in fake.watch(request))
            self._stream("application/json", [], events, recorded)
            return
        if resource.plural == "namespaces" and method == "GET" and name is not None:
            with fake._lock:
                exists = fake._objects.get(fake._key(resource, None, name))
                if exists is None:  # every namespace a test names exists
                    fake._create(resource, None, {"metadata": {"name": name}})
        code, answer = fake.handle(request)
        recorded.status = code
        self._send_json(code, answer)

    def _send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client went away (TLS errors are OSErrors too)
            self.close_connection = True

    def _stream(
        self,
        content_type: str,
        head: list[str],
        rest: Iterator[str],
        recorded: RecordedRequest,
    ) -> None:
        recorded.status = 200
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            for chunk in _chain(head, rest):
                data = chunk.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client went away (TLS errors are OSErrors too)
            self.close_connection = True


def _make_certificates() -> tuple[bytes, bytes, bytes]:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost: (CA, cert, key) PEM."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubernetes-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), cert.public_bytes(pem), key_pem


def _chain(head: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from head
    yield from rest


def _parse_body(raw: bytes, content_type: str) -> Any:
    if content_type == "application/apply-patch+yaml":
        import yaml

        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ApiError(400, f"the body is not YAML: {exc}") from None
    if content_type.startswith("application/vnd.kubernetes.protobuf"):
        raise ApiError(415, "the fake speaks JSON only")
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"the body is not JSON: {exc}") from None
