"""The Kubernetes objects of a deployment (:mod:`model_runtime.k8s`).

No API server can run here, so the objects are checked three ways: against the official
OpenAPI schemas of every supported Kubernetes version (``kubernetes-validate``, offline,
strict: unknown fields fail), against golden files of their exact shape, and by creating them
with the official ``kubernetes`` client in the recording fake API server (tests/k8s_fake.py),
which applies the same schema check and the API server's name and label rules.

Golden files live in ``golden/``. After an intended change of the objects, regenerate them
and review the diff::

    HUBSERVE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/model_runtime/k8s -p no:cacheprovider -q
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.k8s import (
    BUNDLE_CACHE,
    ENV_CONTAINER,
    ENV_ROOT,
    IMAGE_BUNDLE,
    IMAGE_ENV_ROOT,
    PULL_CONTAINER,
    SUPPORTED_KUBERNETES_VERSIONS,
    Autoscale,
    EnvPolicy,
    ManifestError,
    RuntimeTarget,
    build_manifests,
    label_value,
    labels,
    object_name,
    selector,
    selector_string,
    to_yaml,
)
from model_runtime.k8s._names import is_label_value
from model_runtime.naming import MODEL_NAME_RE, OWNER_RE
from tests.k8s_fake import FakeKubernetes

GOLDEN = Path(__file__).parent / "golden"
VERSION = "20261125T161745123Z-3f2a9c1e"
IMAGE = "registry.example.org/hubserve/runtime:1.0"


def minimal_target(**changes: Any) -> RuntimeTarget:
    base: dict[str, Any] = {
        "owner": "alice",
        "name": "iris",
        "model_owner": "alice",
        "model_name": "iris",
        "version": VERSION,
        "store_uri": "s3://models",
        "image": IMAGE,
    }
    base.update(changes)
    return RuntimeTarget(**base)


def full_target(**changes: Any) -> RuntimeTarget:
    """Every option set, and a deployment of a model another user shared."""
    base: dict[str, Any] = {
        "owner": "bob@example.org",
        "name": "iris-prod",
        "model_owner": "alice",
        "model_name": "iris_v2.1",
        "version": VERSION,
        "store_uri": "s3://models/team-a",
        "replicas": 3,
        "namespace": "ml-serving",
        "image": IMAGE,
        "s3_secret": "store-keys",
        "token_secret": "hs-iris-token",
        "threads": 2,
        "cpu": "500m",
        "memory": "1Gi",
        "cpu_limit": "2",
        "memory_limit": "2Gi",
        "batching": {"predict": {"max_batch_size": 32, "max_latency_ms": 2.5}},
        "ingress_host": "iris-bob.models.example.org",
        "tls_issuer": "letsencrypt-prod",
        "ingress_class": "nginx",
        "autoscale": Autoscale(min_replicas=2, max_replicas=6, cpu_percent=65),
        "generation": 4,
        "extra_labels": {"team": "astro", "example.org/cost-center": "42"},
        "image_pull_secrets": ("registry-creds",),
        "env_cache_claim": "hubserve-envs",
        "env_policy": POLICY,
    }
    base.update(changes)
    return RuntimeTarget(**base)


POLICY = EnvPolicy(
    index_url="https://pypi.example.org/simple",
    extra_index_urls=("https://download.pytorch.org/whl/cpu", "https://x.example.org/s"),
    find_links=("/srv/wheels",),
    allow_sdist=True,
    allow=("scikit-learn", "pandas"),
    deny=("tensorflow",),
    max_env_bytes=2 * 1024**3,
)


def baked_target(**changes: Any) -> RuntimeTarget:
    """An image made by ``hubserve containerize``: bundle and environment inside."""
    return minimal_target(baked=True, image="registry.example.org/models/iris:v1", **changes)


def plain_target(**changes: Any) -> RuntimeTarget:
    """Environments off: the pods of before environments existed (with ``--env none``)."""
    return minimal_target(environments=False, **changes)


VARIANTS = {
    "minimal": minimal_target,
    "full": full_target,
    "baked": baked_target,
    "no-environments": plain_target,
}


def by_kind(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in manifests}


# -- schemas and golden files ----------------------------------------------------------------


@pytest.mark.parametrize("kube_version", SUPPORTED_KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_manifests_are_valid_for_every_supported_kubernetes(
    variant: str, kube_version: str
) -> None:
    manifests = build_manifests(VARIANTS[variant]())
    for manifest in manifests:
        # strict: additionalProperties are errors, so a misspelt field cannot slip through
        used = kubernetes_validate.validate(manifest, kube_version, strict=True)
        assert used == kube_version  # the schemas of exactly this version were used


def test_validation_catches_a_broken_object() -> None:
    """The schema check has teeth: a misspelt field or a wrong type is refused."""
    deployment = build_manifests(minimal_target())[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.32", strict=True)
    service = build_manifests(minimal_target())[1]
    service["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, "1.32", strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_golden_files(variant: str) -> None:
    text = to_yaml(build_manifests(VARIANTS[variant]()))
    golden = GOLDEN / f"{variant}.yaml"
    if os.environ.get("HUBSERVE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), (
        f"{golden.name} differs: if the change is intended, regenerate with"
        " HUBSERVE_UPDATE_GOLDEN=1 (see this module's docstring) and review the diff"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_yaml_reads_back_as_the_objects(variant: str) -> None:
    manifests = build_manifests(VARIANTS[variant]())
    assert list(yaml.safe_load_all(to_yaml(manifests))) == manifests
    json.dumps(manifests)  # plain JSON-able data


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_yaml_writer_round_trips_any_json_data(data: Any) -> None:
    from model_runtime.k8s._yaml import dump

    assert yaml.safe_load(dump(data)) == data


@pytest.mark.parametrize(
    "text",
    ["yes", "No", "on", "OFF", "y", "null", "~", "true", "1.5", "0x1f", "1e3", "2026-01-01",
     "012", "-", "- x", "a: b", "a #b", "#x", "@x", "*x", "&x", "!x", "|", ">", "%x", "`x",
     "'x", '"x', "x:", "{a}", "[a]", " x", "x ", "", "\t", "a\nb", "a\n", "\n", "é",
     ".inf", ".nan", "=", "?x", ",x"],
)  # fmt: skip
def test_yaml_writer_quotes_what_yaml_would_misread(text: str) -> None:
    from model_runtime.k8s._yaml import dump

    assert yaml.safe_load(dump({"k": text, text: [text]})) == {"k": text, text: [text]}


# -- names and labels ------------------------------------------------------------------------

owners = st.from_regex(OWNER_RE, fullmatch=True)
model_names = st.from_regex(MODEL_NAME_RE, fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(owners, model_names, owners, model_names)
def test_object_names_are_dns_labels_stable_and_distinct(
    owner: str, name: str, other_owner: str, other_name: str
) -> None:
    first = object_name(owner, name)
    assert first == object_name(owner, name)
    assert len(first) <= 63
    assert first.startswith("hs-")  # a Service name must start with a letter
    assert all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in first)
    assert not first.endswith("-")
    if (owner, name) != (other_owner, other_name):
        assert first != object_name(other_owner, other_name)


def test_object_names_are_readable() -> None:
    name = object_name("alice", "iris")
    assert name.startswith("hs-alice-iris-") and len(name) == len("hs-alice-iris-") + 6
    assert object_name("Alice", "iris") != object_name("alice", "iris")
    assert object_name("a", "b.c") != object_name("a", "b-c")
    assert object_name("bob@example.org", "m").startswith("hs-bob-example-org-m-")
    long = object_name("x" * 128, "y" * 63)
    assert len(long) == 63 and "-xxxxxxxxxxxxxxxxxxxx-" in long  # the owner is cut first


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.text(max_size=200))
def test_label_values_are_valid_and_keep_values_apart(text: str, other: str) -> None:
    value = label_value(text)
    assert is_label_value(value) and len(value) <= 63
    if is_label_value(text):
        assert value == text
    if text != other:
        assert value != label_value(other)


def test_labels_tie_every_object_to_owner_model_and_version() -> None:
    target = full_target()
    expected_selector = selector(target.owner, target.name)
    for manifest in build_manifests(target):
        meta = manifest["metadata"]
        assert meta["name"] == target.object_name
        assert meta["namespace"] == "ml-serving"
        assert meta["labels"] == labels(target)
        assert expected_selector.items() <= meta["labels"].items()
        assert meta["labels"]["hubserve.io/model"] == "iris_v2.1"
        assert meta["labels"]["hubserve.io/model-owner"] == "alice"
        assert meta["labels"]["hubserve.io/version"] == VERSION
        assert meta["labels"]["hubserve.io/generation"] == "4"
        assert meta["labels"]["team"] == "astro"
        # the owner is mangled in the label, exact in the annotation
        assert meta["labels"]["hubserve.io/owner"] == label_value("bob@example.org")
        assert meta["annotations"]["hubserve.io/owner"] == "bob@example.org"
        assert meta["annotations"]["hubserve.io/model-ref"] == f"alice/iris_v2.1:{VERSION}"
    assert selector_string("a", "b") == ",".join(f"{k}={v}" for k, v in selector("a", "b").items())


# -- what the objects do ---------------------------------------------------------------------


def test_deployment_pulls_then_serves_the_pinned_version() -> None:
    target = full_target()
    deployment = by_kind(build_manifests(target))["Deployment"]
    spec = deployment["spec"]
    assert spec["selector"]["matchLabels"] == selector(target.owner, target.name)
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    pull, _ = pod["initContainers"]
    (runtime,) = pod["containers"]
    assert pull["args"] == ["pull", f"s3://models/team-a/alice/iris_v2.1:{VERSION}"]
    assert pull["envFrom"] == [{"secretRef": {"name": "store-keys"}}]
    assert runtime["args"][:2] == ["serve", target.bundle_path]
    assert target.bundle_path.startswith(BUNDLE_CACHE + "/")
    assert runtime["args"][2:] == [
        *("--env", "auto", "--env-root", ENV_ROOT),
        *("--host", "0.0.0.0", "--port", "8000"),  # noqa: S104
    ]
    env = {e["name"]: e for e in runtime["env"]}
    assert env["HUBSERVE_RUNTIME_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "hs-iris-token", "key": "token"}
    }
    assert env["HUBSERVE_RUNTIME_THREADS"]["value"] == "2"
    assert runtime["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert runtime["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert runtime["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert runtime["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}]
    assert "replicas" not in spec  # the autoscaler owns the replica count


def test_batching_threads_and_job_locations_reach_the_runtime_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment the pod gets is what RuntimeSettings parses back."""
    from model_runtime.runtime import RuntimeSettings

    target = dataclasses.replace(full_target(), job_locations=("/data/jobs", "s3://jobs/in"))
    runtime = by_kind(build_manifests(target))["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    for item in runtime["env"]:
        if "value" in item and item["name"].startswith("HUBSERVE_RUNTIME_"):
            monkeypatch.setenv(item["name"], item["value"])
    parsed = RuntimeSettings()
    assert parsed.threads == 2
    assert parsed.batching["predict"].max_batch_size == 32
    assert parsed.batching["predict"].max_latency_ms == 2.5
    assert parsed.job_locations == ["/data/jobs", "s3://jobs/in"]


def test_threads_default_to_the_cpu_limit() -> None:
    runtime = by_kind(build_manifests(minimal_target()))["Deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    threads = next(e for e in runtime["env"] if e["name"] == "HUBSERVE_RUNTIME_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert "HUBSERVE_RUNTIME_API_TOKEN" not in {e["name"] for e in runtime["env"]}


def test_minimal_deployment_has_no_ingress_or_autoscaler() -> None:
    manifests = build_manifests(minimal_target(replicas=2))
    assert [m["kind"] for m in manifests] == ["Deployment", "Service"]
    assert manifests[0]["spec"]["replicas"] == 2
    service = manifests[1]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    assert minimal_target().service_url == f"http://{object_name('alice', 'iris')}.hubserve.svc:80"


def test_ingress_tls_and_autoscaler() -> None:
    objects = by_kind(build_manifests(full_target()))
    assert [m["kind"] for m in build_manifests(full_target())] == [
        "Deployment",
        "Service",
        "Ingress",
        "HorizontalPodAutoscaler",
    ]
    ingress = objects["Ingress"]
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == (
        "letsencrypt-prod"
    )
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["hosts"] == ["iris-bob.models.example.org"]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "iris-bob.models.example.org"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == full_target().object_name
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == full_target().object_name
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 65
    no_tls = by_kind(build_manifests(full_target(tls_issuer=None)))["Ingress"]
    assert "tls" not in no_tls["spec"]
    assert "cert-manager.io/cluster-issuer" not in no_tls["metadata"]["annotations"]


def test_autoscaling_without_a_cpu_request_gets_a_default_one() -> None:
    target = minimal_target(autoscale=Autoscale(1, 3))
    container = build_manifests(target)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "250m"


def test_pod_template_changes_only_when_replicas_must_restart() -> None:
    """A new generation or replica count must not roll the pods; a new version must."""

    def template(target: RuntimeTarget) -> Any:
        return build_manifests(target)[0]["spec"]["template"]

    base = template(minimal_target())
    assert template(minimal_target(generation=7, replicas=5)) == base
    assert template(minimal_target(version="20270101T000000000Z-00000000")) != base
    assert template(minimal_target(cpu="1")) != base
    assert template(minimal_target(env_policy=EnvPolicy(deny=("torch",)))) != base
    assert template(minimal_target(env_cache_claim="envs")) != base


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"owner": "bad owner"}, "invalid owner"),
        ({"name": "Iris"}, "invalid model name"),
        ({"version": "latest"}, "invalid version"),
        ({"store_uri": "/srv/models"}, "pulls bundles from S3"),
        ({"replicas": -1}, "replicas"),
        ({"namespace": "Bad_NS"}, "namespace"),
        ({"image": ""}, "image"),
        ({"s3_secret": "Bad Secret"}, "s3_secret"),
        ({"token_secret": "x/y"}, "token_secret"),
        ({"threads": 0}, "threads"),
        ({"cpu": "lots"}, "cpu 'lots' is not a Kubernetes quantity"),
        ({"memory_limit": "1GB"}, "memory_limit"),
        ({"batching": {"predict": {"max_batch_size": 0}}}, "max_batch_size"),
        ({"batching": {"predict": {"max_batch_size": 2.5}}}, "integer"),
        ({"batching": {"predict": {"max_delay": 1}}}, "unknown setting"),
        ({"batching": {"bad api": {"max_batch_size": 2}}}, "not an API name"),
        ({"ingress_host": "not a host"}, "ingress host"),
        ({"tls_issuer": "le"}, "needs an ingress host"),
        ({"generation": 0}, "generation"),
        ({"extra_labels": {"bad key!": "x"}}, "extra label"),
        ({"extra_labels": {"app.kubernetes.io/name": "x"}}, "replace one of hubserve's"),
        ({"image_pull_secrets": ("Bad",)}, "image pull secret"),
        ({"env_cache_claim": "Bad_Claim"}, "env cache claim 'Bad_Claim'"),
        ({"environments": False, "env_cache_claim": "envs"}, "needs environments"),
        ({"environments": False, "env_policy": EnvPolicy(deny=("x",))}, "needs environments"),
        ({"baked": True, "env_cache_claim": "envs"}, "baked image holds its environment"),
        ({"baked": True, "env_policy": EnvPolicy(allow_sdist=True)}, "hubserve containerize"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        minimal_target(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"index_url": ""}, "index URL '' is not a location"),
        ({"extra_index_urls": ("https://a\tb",)}, "extra index URL"),
        ({"find_links": ("/srv/wheels\n",)}, "find-links location"),
        ({"allow": ("scikit learn",)}, "allow 'scikit learn' is not a package name"),
        ({"deny": ("-torch",)}, "deny '-torch'"),
        ({"max_env_bytes": 0}, "max_env_bytes"),
        ({"no_index": True}, "no index needs find-links"),
    ],
)
def test_bad_environment_policies_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        EnvPolicy(**changes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [((0, 2, 50), "min_replicas"), ((3, 2, 50), "max_replicas"), ((1, 2, 0), "cpu_percent")],
)
def test_bad_autoscale_is_refused(kwargs: tuple[int, int, int], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        Autoscale(*kwargs)


# -- environments ----------------------------------------------------------------------------


def pod_of(target: RuntimeTarget) -> dict[str, Any]:
    spec: dict[str, Any] = build_manifests(target)[0]["spec"]["template"]["spec"]
    return spec


def test_an_init_container_builds_the_environment_the_runtime_serves_in() -> None:
    target = full_target()
    pod = pod_of(target)
    pull, env = pod["initContainers"]
    (runtime,) = pod["containers"]
    assert (pull["name"], env["name"]) == (PULL_CONTAINER, ENV_CONTAINER)
    assert env["command"] == ["hubserve"]
    assert env["args"] == ["env", "build", target.bundle_path]
    assert {"name": "HUBSERVE_ENV_ROOT", "value": ENV_ROOT} in env["env"]
    assert runtime["args"][:5] == ["serve", target.bundle_path, "--env", "auto", "--env-root"]
    assert runtime["args"][5] == ENV_ROOT
    # the same image, limits and confinement as the pull; the bundle only read
    for key in ("image", "imagePullPolicy", "resources", "securityContext"):
        assert env[key] == pull[key], key
    assert "envFrom" not in env  # the store's keys stay with the pull
    mounts = {m["name"]: m for m in env["volumeMounts"]}
    assert mounts["bundle"] == {"name": "bundle", "mountPath": BUNDLE_CACHE, "readOnly": True}
    assert mounts["envs"] == {"name": "envs", "mountPath": ENV_ROOT}
    # model code cannot alter an environment (shared, with a claim, by other users' pods)
    assert {"name": "envs", "mountPath": ENV_ROOT, "readOnly": True} in runtime["volumeMounts"]
    # a failed build's reason reaches the pod status (and so the deployment's message)
    assert env["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # the cache claim is shared by every pod, without a chown of it at each start
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["envs"]["persistentVolumeClaim"] == {"claimName": "hubserve-envs"}
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"


def test_the_policy_reaches_both_containers_as_the_cli_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both containers get the same ``HUBSERVE_ENV_*`` (the environment's key depends on the
    package sources), in the format the service's own settings read them."""
    from hub_service._settings import HubServiceSettings

    target = full_target(env_policy=dataclasses.replace(POLICY, no_index=True))
    pull, env = pod_of(target)["initContainers"]
    runtime = pod_of(target)["containers"][0]
    policy = [
        e
        for e in env["env"]
        if e["name"].startswith("HUBSERVE_ENV_") and e["name"] != "HUBSERVE_ENV_ROOT"
    ]
    assert len(policy) == 8
    assert [e for e in runtime["env"] if e["name"].startswith("HUBSERVE_ENV_")] == policy
    assert not any(e["name"].startswith("HUBSERVE_ENV_") for e in pull["env"])
    for name in [v for v in os.environ if v.startswith("HUBSERVE_")]:
        monkeypatch.delenv(name)
    for item in policy:
        monkeypatch.setenv(item["name"], item["value"])
    parsed = HubServiceSettings()
    assert parsed.env_index_url == POLICY.index_url
    assert tuple(parsed.env_extra_index_urls) == POLICY.extra_index_urls
    assert tuple(parsed.env_find_links) == POLICY.find_links
    assert parsed.env_no_index is True
    assert parsed.env_allow_sdist is True
    assert tuple(parsed.env_allow) == POLICY.allow
    assert tuple(parsed.env_deny) == POLICY.deny
    assert parsed.env_max_env_bytes == POLICY.max_env_bytes


def test_environments_default_to_an_empty_dir_and_no_policy() -> None:
    pod = pod_of(minimal_target())
    assert [c["name"] for c in pod["initContainers"]] == [PULL_CONTAINER, ENV_CONTAINER]
    assert {"name": "envs", "emptyDir": {}} in pod["volumes"]
    assert "fsGroupChangePolicy" not in pod["securityContext"]
    for container in [*pod["initContainers"], *pod["containers"]]:
        assert not any(
            e["name"].startswith("HUBSERVE_ENV_") and e["name"] != "HUBSERVE_ENV_ROOT"
            for e in container["env"]
        )


def test_without_environments_the_pod_is_the_one_before_them() -> None:
    pod = pod_of(plain_target())
    before = pod_of(minimal_target())
    (pull,) = pod["initContainers"]
    assert pull == before["initContainers"][0]
    assert pod["volumes"] == [{"name": "bundle", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    runtime = pod["containers"][0]
    assert runtime["args"] == [
        *("serve", plain_target().bundle_path, "--env", "none"),
        *("--host", "0.0.0.0", "--port", "8000"),  # noqa: S104
    ]
    assert [m["name"] for m in runtime["volumeMounts"]] == ["bundle", "tmp"]


def test_a_baked_image_runs_alone() -> None:
    """No init container, no store access: the image holds bundle and environment."""
    target = baked_target(store_uri="")
    deployment = build_manifests(target)[0]
    pod = deployment["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    (runtime,) = pod["containers"]
    assert runtime["image"] == "registry.example.org/models/iris:v1"
    assert runtime["args"][:5] == ["serve", IMAGE_BUNDLE, "--env", "auto", "--env-root"]
    assert runtime["args"][5] == IMAGE_ENV_ROOT
    assert runtime["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "HUBSERVE_CACHE" not in {e["name"] for e in runtime["env"]}
    assert "hubserve.io/store" not in deployment["metadata"]["annotations"]
    assert "hubserve.io/store" not in deployment["spec"]["template"]["metadata"]["annotations"]
    off = pod_of(baked_target(environments=False))["containers"][0]
    assert off["args"][:4] == ["serve", IMAGE_BUNDLE, "--env", "none"]


# -- the objects in an API server (the recording fake) ---------------------------------------


def test_the_official_client_creates_every_object_in_the_fake(tmp_path: Path) -> None:
    """The objects go through the official client, the API's admission rules and schemas."""
    from kubernetes import config, utils

    target = full_target()
    with FakeKubernetes() as fake:
        client = config.new_client_from_config(str(fake.kubeconfig(tmp_path / "kubeconfig")))
        for manifest in build_manifests(target):
            utils.create_from_dict(client, manifest, namespace=target.namespace)
        client.close()
        assert fake.record[-4:] == [
            ("POST", "/apis/apps/v1/namespaces/ml-serving/deployments"),
            ("POST", "/api/v1/namespaces/ml-serving/services"),
            ("POST", "/apis/networking.k8s.io/v1/namespaces/ml-serving/ingresses"),
            ("POST", "/apis/autoscaling/v2/namespaces/ml-serving/horizontalpodautoscalers"),
        ]
        assert all(r.status == 201 for r in fake.requests[-4:])
        stored = fake.get("deployments", "ml-serving", target.object_name)
        assert stored is not None
        assert stored["spec"]["template"] == build_manifests(target)[0]["spec"]["template"]
        fake.rollout("ml-serving", target.object_name)
        pods = fake.pods_of("ml-serving", target.object_name)
        assert len(pods) == 1  # no replicas field: the Deployment default, until the HPA acts
        assert pods[0]["metadata"]["labels"]["hubserve.io/version"] == VERSION


# -- boundaries ------------------------------------------------------------------------------


def test_model_runtime_imports_no_kubernetes_and_no_service_code() -> None:
    code = (
        "import sys, model_runtime, model_runtime.k8s, model_runtime.cli\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in"
        " ('kubernetes', 'yaml', 'hub_service', 'jupyter_extension')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
