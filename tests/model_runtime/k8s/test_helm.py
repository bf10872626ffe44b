"""The Helm chart of the hub service (deploy/helm/hubserve), without helm.

helm is not installable on the test machines, so the chart is rendered with
:mod:`.gotemplate` (the subset of Go templates and Helm functions the chart uses; anything
else fails loudly) for several sets of values, and the objects are checked: against the
Kubernetes schemas of every supported version, for consistency (selectors, the Role's
namespace and rules, the Secrets and ConfigMap the pod refers to), and for the settings the
service will read (every variable the chart sets is parsed by hubserve's own settings
classes). What ``helm lint`` / ``helm install`` would add is verified only on paper.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from model_runtime.k8s import SUPPORTED_KUBERNETES_VERSIONS

from .gotemplate import TemplateError, documents, render_chart

CHART = Path(__file__).parents[3] / "deploy" / "helm" / "hubserve"

BASIC = {
    "jupyterhub": {"apiToken": "hub-service-token"},
    "store": {
        "s3": {"endpoint": "https://minio.example.org", "accessKey": "ak", "secretKey": "sk"}
    },
}
EXTERNAL = {
    "jupyterhub": {
        "existingSecret": {"name": "hub", "key": "hub.services.hubserve.apiToken"},
        "host": "https://hub.example.org",
    },
    "store": {"existingSecret": "store-keys"},
    "database": {"existingSecret": {"name": "pg", "key": "url"}},
    "persistence": {"existingClaim": "hubserve-data"},
    "publicUrl": "https://hub.example.org",
    "kubernetes": {
        "namespace": "models",
        "image": "registry.example.org/hubserve/runtime:1.0",
        "createS3Secret": False,
        "ingressHost": "{name}-{owner}.models.example.org",
        "tlsIssuer": "letsencrypt",
        "autoscale": {"min": 1, "max": 4, "cpuPercent": 70},
        "resources": {"cpu": "500m", "memory": "1Gi", "cpuLimit": "2", "memoryLimit": "2Gi"},
        "envCacheClaim": "hubserve-envs",
    },
    "networkPolicy": {"enabled": True},
    "extraEnv": {"HUBSERVE_POSITIVE_TTL": "30", "HUBSERVE_ENV_DENY": '["tensorflow"]'},
    "imagePullSecrets": [{"name": "registry"}],
}
POSTGRES = {
    "jupyterhub": {"apiToken": "t"},
    "database": {"url": "postgresql+psycopg://hubserve:pw@postgres/hubserve"},
    "cookieSecret": "cookie-key",
    "persistence": {"enabled": False},
    "store": {
        "s3": {"endpoint": "minio:9000", "accessKey": "ak", "secretKey": "sk", "region": "eu"}
    },
}
VALUE_SETS = {"basic": BASIC, "external": EXTERNAL, "postgres": POSTGRES}


def objects(
    values: dict[str, Any], namespace: str = "jhub"
) -> dict[tuple[str, str], dict[str, Any]]:
    docs = documents(render_chart(CHART, values, namespace=namespace))
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def the(found: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = [o for (k, _), o in found.items() if k == kind]
    return obj


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_rendered_objects_are_valid(values: str, kube_version: str) -> None:
    for obj in objects(VALUE_SETS[values]).values():
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_basic_release() -> None:
    found = objects(BASIC)
    assert sorted(found) == [
        ("ConfigMap", "hubserve"),
        ("Deployment", "hubserve"),
        ("PersistentVolumeClaim", "hubserve"),
        ("Role", "hubserve"),
        ("RoleBinding", "hubserve"),
        ("Secret", "hubserve-secrets"),
        ("Secret", "hubserve-store"),
        ("Service", "hubserve"),
        ("ServiceAccount", "hubserve"),
    ]
    deployment = the(found, "Deployment")
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    assert (
        the(found, "Service")["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    )
    assert pod["metadata"]["labels"]["hub.jupyter.org/network-access-hub"] == "true"
    assert re.fullmatch(r"[0-9a-f]{64}", pod["metadata"]["annotations"]["checksum/config"])
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "hubserve"
    assert spec["securityContext"]["runAsUser"] == 10001
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/hubserve/service:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/services/hubserve/healthz"
    assert {v["name"]: v for v in spec["volumes"]}["data"]["persistentVolumeClaim"] == {
        "claimName": "hubserve"
    }
    secret = found[("Secret", "hubserve-secrets")]
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["JUPYTERHUB_API_TOKEN"] == "hub-service-token"
    assert data["HUBSERVE_S3_SECURE"] == "false"
    assert data["HUBSERVE_S3_ENDPOINT"] == "https://minio.example.org"
    store = found[("Secret", "hubserve-store")]
    assert store["metadata"]["namespace"] == "jhub"  # runtimes in the release's namespace


def test_rbac_grants_exactly_what_the_backend_needs() -> None:
    found = objects(EXTERNAL)
    role, binding = the(found, "Role"), the(found, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "models"
    manage = ["create", "get", "list", "watch", "patch", "delete"]
    grants = {
        (group, resource): rule["verbs"]
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    assert grants == {
        ("apps", "deployments"): manage,
        ("", "services"): manage,
        ("", "secrets"): manage,
        ("networking.k8s.io", "ingresses"): manage,
        ("autoscaling", "horizontalpodautoscalers"): manage,
        ("", "pods"): ["get", "list", "watch"],
        ("", "pods/log"): ["get", "list", "watch"],
    }
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = the(found, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "jhub"}
    ]
    assert (
        objects({**BASIC, "rbac": {"create": False}})
        .keys()
        .isdisjoint({("Role", "hubserve"), ("RoleBinding", "hubserve")})
    )


def test_existing_secrets_and_external_database() -> None:
    found = objects(EXTERNAL)
    assert ("PersistentVolumeClaim", "hubserve") not in found
    assert not [name for kind, name in found if kind == "Secret"]  # all from existing ones
    container = the(found, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "JUPYTERHUB_API_TOKEN": {"name": "hub", "key": "hub.services.hubserve.apiToken"},
        "HUBSERVE_DATABASE_URL": {"name": "pg", "key": "url"},
    }
    assert {"secretRef": {"name": "store-keys"}} in container["envFrom"]
    volumes = the(found, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"] == {"claimName": "hubserve-data"}
    policy = the(found, "NetworkPolicy")
    assert (
        policy["spec"]["podSelector"]["matchLabels"]
        == (the(found, "Deployment")["spec"]["selector"]["matchLabels"])
    )


def test_postgres_url_and_cookie_secret_go_into_the_secret() -> None:
    found = objects(POSTGRES)
    data = {
        k: base64.b64decode(v).decode()
        for k, v in found[("Secret", "hubserve-secrets")]["data"].items()
    }
    assert data["HUBSERVE_DATABASE_URL"] == "postgresql+psycopg://hubserve:pw@postgres/hubserve"
    assert data["HUBSERVE_COOKIE_SECRET"] == "cookie-key"
    assert data["HUBSERVE_S3_REGION"] == "eu"
    assert ("PersistentVolumeClaim", "hubserve") not in found
    volumes = the(found, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "data", "emptyDir": {}}


def test_the_api_token_and_the_store_are_required() -> None:
    with pytest.raises(TemplateError, match=r"jupyterhub.apiToken or jupyterhub.existingSecret"):
        render_chart(CHART, {"store": BASIC["store"]})
    with pytest.raises(TemplateError, match=r"store.s3.endpoint \(or store.existingSecret\)"):
        render_chart(CHART, {"jupyterhub": BASIC["jupyterhub"]})


def _environment(found: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    env = dict(the(found, "ConfigMap")["data"])
    for (kind, name), obj in found.items():
        if kind == "Secret" and name.endswith("-secrets"):
            env.update({k: base64.b64decode(v).decode() for k, v in obj["data"].items()})
    return env


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_setting_is_one_the_service_reads(
    values: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each variable the chart sets is a field (or alias) of hubserve's settings, and the
    values parse: the service would start with this configuration."""
    from hub_service._settings import HubServiceSettings
    from hub_service.backends._k8s_settings import KubernetesSettings
    from model_runtime.store import StoreSettings

    known = set()
    for settings_class in (HubServiceSettings, StoreSettings, KubernetesSettings):
        prefix = settings_class.model_config.get("env_prefix", "")
        for name, info in settings_class.model_fields.items():
            known.add(f"{prefix}{name}".upper())
            alias = info.validation_alias
            for choice in getattr(alias, "choices", []):
                known.add(str(choice).upper())
    env = _environment(objects(VALUE_SETS[values]))
    unknown = sorted(set(env) - known)
    assert not unknown, f"the chart sets variables nothing reads: {unknown}"

    for name in [v for v in os.environ if v.startswith(("HUBSERVE_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if values == "external":  # from existing Secrets at run time
        monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "from-the-hub-secret")
    service = HubServiceSettings()
    assert service.backend == "kubernetes"
    assert service.service_name == "hubserve"
    assert service.base_url == "/services/hubserve/"
    assert (service.bind_host, service.bind_port) == ("0.0.0.0", 10101)  # noqa: S104
    assert service.hub_api_url == "http://hub:8081/hub/api"
    assert service.client_id == "service-hubserve"
    assert service.redirect_uri.endswith("/services/hubserve/oauth_callback")
    assert service.store == "s3://models"
    assert service.api_token is not None
    k8s = KubernetesSettings()
    assert k8s.namespace == ("models" if values == "external" else "jhub")
    if values == "external":
        assert (k8s.autoscale_min, k8s.autoscale_max, k8s.autoscale_cpu) == (1, 4, 70)
        assert k8s.host_for("alice", "iris") == "iris-alice.models.example.org"
        assert k8s.env_cache_claim == "hubserve-envs"
        assert service.env_deny == ["tensorflow"]
        assert service.public_url == "https://hub.example.org"
        assert service.hub_host == "https://hub.example.org"
    else:
        store = StoreSettings()
        assert store.s3_secure is False


def test_every_value_is_used_by_a_template() -> None:
    """values.yaml documents nothing that the templates ignore."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())

    def leaves(node: Any, path: str) -> list[str]:
        if isinstance(node, dict) and node:
            return [leaf for key, value in node.items() for leaf in leaves(value, f"{path}.{key}")]
        return [path]

    def used(path: str) -> bool:
        """The exact path, or a parent used whole (``toYaml .Values.podLabels``)."""
        parts = path.split(".")
        return any(
            re.search(re.escape(".".join(parts[:n])) + r"(?![.\w])", text)
            for n in range(len(parts), 2, -1)
        )

    unused = [leaf for leaf in leaves(values, ".Values") if not used(leaf)]
    assert not unused, unused


def test_notes_render() -> None:
    notes = render_chart(CHART, BASIC)["hubserve/templates/NOTES.txt"]
    assert "http://hubserve.jhub.svc:10101/services/hubserve/" in notes
    assert "access:services!service=hubserve" in notes
