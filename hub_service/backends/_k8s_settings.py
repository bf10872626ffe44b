"""Settings of the Kubernetes deploy backend, read from ``HUBSERVE_K8S_*`` variables.

They say *where* deployments run (namespace, cluster credentials) and *how* every runtime pod
looks (image, store credentials, resources, direct endpoints, autoscaling, the cache of the
bundles' environments); the per-deployment part (model version, replicas, threads, batching)
comes from each deployment. What environments may install is the service's policy
(``HUBSERVE_ENV_*``, shared with the local backend), which the pods get as it is. JupyterHub
passes them to the service through ``configure_jupyterhub(..., extra_env={...})``, e.g.::

    hub_service.configure_jupyterhub(
        c,
        store="s3://models",
        backend="kubernetes",
        extra_env={
            "HUBSERVE_K8S_NAMESPACE": "models",
            "HUBSERVE_K8S_INGRESS_HOST": "{name}-{owner}.models.example.org",
            "HUBSERVE_K8S_TLS_ISSUER": "letsencrypt",
            "HUBSERVE_K8S_AUTOSCALE_MAX": "4",
        },
    )

Cluster credentials: ``kubeconfig`` (a file, with an optional ``context``) when given;
otherwise the pod's service account when the service runs in the cluster
(``KUBERNETES_SERVICE_HOST`` is set), else the default kubeconfig (``$KUBECONFIG`` or
``~/.kube/config``).
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOST_FIELDS = frozenset({"owner", "name"})


class KubernetesSettings(BaseSettings):
    """Where and how the Kubernetes backend runs deployments (``HUBSERVE_K8S_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="HUBSERVE_K8S_", extra="ignore")

    namespace: str = Field(
        "hubserve",
        min_length=1,
        max_length=63,
        description="Namespace of every runtime object; one hubserve service per namespace "
        "(objects there labelled managed-by=hubserve that belong to no deployment are deleted).",
    )
    image: str | None = Field(
        None, description="Runtime container image (default: the runtime image of this version)."
    )
    s3_secret: str = Field(
        "hubserve-store",
        description="Secret with HUBSERVE_S3_ENDPOINT/ACCESS_KEY/SECRET_KEY/SECURE that the init "
        "container uses to pull bundles (created by the cluster admin).",
    )
    ingress_host: str | None = Field(
        None,
        description="Host template of a direct endpoint per deployment, with {owner} and {name} "
        "(e.g. '{name}-{owner}.models.example.org'); unset: no Ingress.",
    )
    tls_issuer: str | None = Field(
        None, description="cert-manager ClusterIssuer for the Ingress TLS certificate."
    )
    autoscale_min: int | None = Field(
        None, ge=1, description="HPA minimum replicas (default: the deployment's replica count)."
    )
    autoscale_max: int | None = Field(
        None, ge=1, description="HPA maximum replicas; unset: no autoscaling."
    )
    autoscale_cpu: int = Field(80, ge=1, le=1000, description="HPA target CPU utilisation, %.")
    cpu: str | None = Field(None, description="CPU request of each runtime container.")
    memory: str | None = Field(None, description="Memory request of each runtime container.")
    cpu_limit: str | None = None
    memory_limit: str | None = None
    env_cache_claim: str | None = Field(
        None,
        description="PersistentVolumeClaim (in the namespace; ReadWriteMany when pods run on "
        "several nodes) that keeps the bundles' environments for every pod: each requirement "
        "set is built once and reused; unset: an emptyDir, so every new pod builds its own.",
    )
    kubeconfig: Path | None = Field(
        None, description="kubeconfig file (default: in-cluster config, else ~/.kube/config)."
    )
    context: str | None = Field(None, description="kubeconfig context (default: the current).")
    cluster_domain: str = Field(
        "cluster.local", description="DNS domain of the cluster (for Service addresses)."
    )
    request_timeout: float = Field(10.0, gt=0, description="Seconds per Kubernetes API call.")
    poll_interval: float = Field(
        5.0, gt=0, description="Seconds between status reads while nothing changes."
    )
    progress_interval: float = Field(
        1.0, gt=0, description="Seconds between status reads while a deployment converges."
    )
    backoff_max: float = Field(
        60.0, gt=0, description="Longest wait before retrying a failed API call (1 s, 2 s, ...)."
    )

    @field_validator("env_cache_claim")
    @classmethod
    def _no_empty_claim(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("ingress_host")
    @classmethod
    def _host_template(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"bad ingress host template {value!r}: {exc}") from None
        unknown = fields - _HOST_FIELDS
        if unknown:
            raise ValueError(
                f"ingress host template {value!r} may only use {{owner}} and {{name}},"
                f" not {', '.join(sorted(unknown))}"
            )
        return value

    @model_validator(mode="after")
    def _autoscale_range(self) -> KubernetesSettings:
        if self.autoscale_min is not None and self.autoscale_max is None:
            raise ValueError("HUBSERVE_K8S_AUTOSCALE_MIN needs HUBSERVE_K8S_AUTOSCALE_MAX")
        if (
            self.autoscale_min is not None
            and self.autoscale_max is not None
            and self.autoscale_min > self.autoscale_max
        ):
            raise ValueError("HUBSERVE_K8S_AUTOSCALE_MIN is above HUBSERVE_K8S_AUTOSCALE_MAX")
        return self

    def host_for(self, owner: str, name: str) -> str | None:
        """The Ingress host of a deployment (owner and name made DNS-safe), or ``None``."""
        if self.ingress_host is None:
            return None
        return self.ingress_host.format(owner=_dns(owner), name=_dns(name))


def _dns(text: str) -> str:
    """A name part as DNS allows it: lower case, runs of other characters than ``[a-z0-9]``
    turned into '-' (``Bob.Smith@uni`` → ``bob-smith-uni``)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
