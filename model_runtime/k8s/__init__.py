"""hubserve deployments as Kubernetes objects: pure functions, no cluster access.

The ``kubernetes`` deploy backend of the hub service and ``hubserve export k8s`` /
``hubserve export gitlab-ci`` build the same objects here, from a :class:`RuntimeTarget`
(what to run, where, with which resources)::

    from model_runtime.k8s import RuntimeTarget, build_manifests, to_yaml

    target = RuntimeTarget(
        owner="alice", name="iris", model_owner="alice", model_name="iris",
        version="20261125T161745123Z-3f2a9c1e", store_uri="s3://models",
    )
    print(to_yaml(build_manifests(target)))   # Deployment, Service [, Ingress, HPA]

The objects are plain JSON-able dicts (no Kubernetes library is imported), valid for
Kubernetes 1.29 to 1.33. See :mod:`model_runtime.k8s._manifests` for what each holds and
why, :mod:`model_runtime.k8s._gitlab` for the GitLab pipeline, and
:mod:`model_runtime.k8s._containerize` for the image build context of ``hubserve
containerize`` (bundle and environment in the image, for clusters that install nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _yaml
from ._containerize import containerize_files
from ._env_policy import EnvPolicy
from ._errors import ManifestError
from ._gitlab import DEFAULT_KUBECTL_IMAGE, gitlab_ci, gitlab_files, object_files
from ._manifests import (
    BUNDLE_CACHE,
    CONTAINER_PORT,
    DEFAULT_IMAGE,
    ENV_CONTAINER,
    ENV_ROOT,
    IMAGE_BUNDLE,
    IMAGE_ENV_ROOT,
    PULL_CONTAINER,
    RUNTIME_CONTAINER,
    SERVICE_PORT,
    Autoscale,
    Manifest,
    RuntimeTarget,
    build_autoscaler,
    build_deployment,
    build_ingress,
    build_manifests,
    build_service,
    labels,
    object_annotations,
    selector,
    serve_args,
)
from ._names import label_value, object_name

#: Kubernetes versions whose OpenAPI schemas the generated objects are tested against.
SUPPORTED_KUBERNETES_VERSIONS = ("1.29", "1.30", "1.31", "1.32", "1.33")


def to_yaml(manifests: Iterable[Any]) -> str:
    """Objects as one multi-document YAML text (``---`` between them), for ``kubectl apply``."""
    return _yaml.dump_all(manifests)


def selector_string(owner: str, name: str) -> str:
    """:func:`selector` as a ``labelSelector`` query value (``k=v,k=v``)."""
    return ",".join(f"{k}={v}" for k, v in selector(owner, name).items())


__all__ = [
    "BUNDLE_CACHE",
    "CONTAINER_PORT",
    "DEFAULT_IMAGE",
    "DEFAULT_KUBECTL_IMAGE",
    "ENV_CONTAINER",
    "ENV_ROOT",
    "IMAGE_BUNDLE",
    "IMAGE_ENV_ROOT",
    "PULL_CONTAINER",
    "RUNTIME_CONTAINER",
    "SERVICE_PORT",
    "SUPPORTED_KUBERNETES_VERSIONS",
    "Autoscale",
    "EnvPolicy",
    "Manifest",
    "ManifestError",
    "RuntimeTarget",
    "build_autoscaler",
    "build_deployment",
    "build_ingress",
    "build_manifests",
    "build_service",
    "containerize_files",
    "gitlab_ci",
    "gitlab_files",
    "label_value",
    "labels",
    "object_annotations",
    "object_files",
    "object_name",
    "selector",
    "selector_string",
    "serve_args",
    "to_yaml",
]
