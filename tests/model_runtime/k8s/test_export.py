"""``hubserve export k8s`` and ``hubserve export gitlab-ci``.

The generated ``.gitlab-ci.yml`` is validated against GitLab's JSON schema (the copy that
``check-jsonschema`` vendors, offline), checked structurally, and its deploy and destroy
scripts are run with a real ``kubectl`` against the recording fake Kubernetes API of
tests/k8s_fake.py: apply, rollout status, a rolling update to a new version, a failed
rollout, and the clean-up. Those tests need ``kubectl``: ``$HUBSERVE_TEST_KUBECTL``, the
virtual environment's ``bin/`` or ``PATH`` (they are skipped without one). The GitLab golden
file is regenerated like the others: ``HUBSERVE_UPDATE_GOLDEN=1`` (see test_manifests.py).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner, Result

from model_runtime._version import __version__
from model_runtime.cli import cli
from model_runtime.cli._export_commands import target_args
from model_runtime.k8s import (
    ManifestError,
    RuntimeTarget,
    build_manifests,
    gitlab_ci,
    gitlab_files,
    object_name,
    to_yaml,
)
from tests.k8s_fake import FakeKubernetes

from .test_manifests import (
    GOLDEN,
    IMAGE,
    VERSION,
    baked_target,
    full_target,
    minimal_target,
    plain_target,
)

OTHER_VERSION = "20261201T090000000Z-0badcafe"
REF = f"alice/iris:{VERSION}"


def invoke(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


# -- export k8s ------------------------------------------------------------------------------


def test_export_k8s_prints_the_manifests_as_yaml() -> None:
    out = invoke("export", "k8s", REF, "--store", "s3://models", "--image", IMAGE).stdout
    assert out == to_yaml(build_manifests(minimal_target()))


def test_export_k8s_options_reach_the_target() -> None:
    target = full_target()
    args = ["export", "k8s", f"alice/iris_v2.1:{VERSION}", *target_args(target), "--json"]
    manifests = json.loads(invoke(*args).stdout)
    assert manifests == build_manifests(target)


def test_export_k8s_accepts_a_store_uri_and_the_default_owner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HUBSERVE_OWNER", "alice")
    by_uri = invoke("export", "k8s", f"s3://models/alice/iris:{VERSION}", "--image", IMAGE)
    monkeypatch.setenv("HUBSERVE_STORE", "s3://models")
    by_env = invoke("export", "k8s", f"iris:{VERSION}", "--image", IMAGE)
    assert by_uri.stdout == by_env.stdout == to_yaml(build_manifests(minimal_target()))


def test_export_k8s_writes_files_and_replaces_stale_ones(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    common = ["export", "k8s", REF, "--store", "s3://models", "--output-dir", str(out)]
    invoke(*common, "--ingress-host", "iris.example.org", "--autoscale", "1:3")
    assert sorted(p.name for p in out.iterdir()) == [
        "01-deployment.yaml",
        "02-service.yaml",
        "03-ingress.yaml",
        "04-autoscaler.yaml",
    ]
    (out / "notes.txt").write_text("mine")
    result = json.loads(invoke(*common, "--omit-namespace", "--json").stdout)
    # the Ingress and the autoscaler are gone from the export, so their files go too
    assert sorted(p.name for p in out.iterdir()) == [
        "01-deployment.yaml",
        "02-service.yaml",
        "notes.txt",
    ]
    assert result["object_name"] == object_name("alice", "iris")
    deployment = yaml.safe_load((out / "01-deployment.yaml").read_text())
    assert "namespace" not in deployment["metadata"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--store", "/srv/models"], 2, "pulls the bundle from S3"),
        ([], 2, "pulls the bundle from S3"),
        (["--store", "s3://m", "--cpu", "lots"], 1, "Error: cpu 'lots' is not a Kubernetes"),
        (["--store", "s3://m", "--autoscale", "5"], 2, "use MIN:MAX"),
        (["--store", "s3://m", "--autoscale", "5:2"], 1, "max_replicas"),
        (["--store", "s3://m", "--batching", "{"], 2, "not JSON"),
        (["--store", "s3://m", "--batching", "[1]"], 2, "expected"),
        (["--store", "s3://m", "--batching", '{"p": {"max_batch_size": 0}}'], 1, "batching"),
        (["--store", "s3://m", "--label", "nokey"], 2, "KEY=VALUE"),
        (["--store", "s3://m", "--namespace", "Bad"], 1, "namespace 'Bad'"),
        (["--store", "s3://m", "--tls-issuer", "le"], 1, "needs an ingress host"),
        (["--store", "s3://m", "--env-cache-claim", "Envs"], 1, "env cache claim 'Envs'"),
        (
            ["--store", "s3://m", "--no-environments", "--env-cache-claim", "envs"],
            1,
            "needs environments",
        ),
        (["--store", "s3://m", "--no-environments", "--deny", "x"], 1, "needs environments"),
        (["--store", "s3://m", "--deny", "a b"], 1, "deny 'a b' is not a package name"),
        (["--store", "s3://m", "--max-env-size", "0"], 2, "--max-env-size"),
        (["--store", "s3://m", "--baked", "--index-url", "https://x"], 1, "containerize"),
    ],
)
def test_export_k8s_errors_are_one_clean_line(
    args: list[str], code: int, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HUBSERVE_STORE", raising=False)
    result = invoke("export", "k8s", REF, *args, ok=False)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_tag_needs_the_store_to_pin_its_version(tmp_path: Path) -> None:
    # No S3 endpoint configured: resolving "latest" must say so, not write unpinned pods.
    result = invoke("export", "k8s", "alice/iris:latest", "--store", "s3://models", ok=False)
    assert result.exit_code == 1 and "HUBSERVE_S3_ENDPOINT" in result.output


@pytest.mark.s3
def test_tags_are_pinned_and_the_init_container_unpacks_where_serve_looks(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real S3 server: `export` resolves a tag to its version, and the init
    container's exact command (``hubserve pull`` with the pod's HUBSERVE_CACHE) leaves the
    bundle at the path the runtime container serves."""
    from tests.model_runtime.conftest import make_bundle

    monkeypatch.setenv(
        "HUBSERVE_S3_ENDPOINT", ("https://" if s3.secure else "http://") + s3.endpoint
    )
    monkeypatch.setenv("HUBSERVE_S3_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("HUBSERVE_S3_SECRET_KEY", s3.secret_key)
    bucket = f"s3://k8s-export-{os.getpid()}"
    built = make_bundle(tmp_path)
    pushed = json.loads(invoke("push", str(built.archive), "--store", bucket, "--json").stdout)
    version = pushed["version"]

    manifests = json.loads(
        invoke("export", "k8s", "alice/adder:latest", "--store", bucket, "--json").stdout
    )
    pod = manifests[0]["spec"]["template"]["spec"]
    pull_args, serve_args = pod["initContainers"][0]["args"], pod["containers"][0]["args"]
    assert pull_args == ["pull", f"{bucket}/alice/adder:{version}"]

    cache = tmp_path / "pod-cache"
    pull_env = {e["name"]: e["value"] for e in pod["initContainers"][0]["env"]}
    monkeypatch.setenv("HUBSERVE_CACHE", str(cache))
    assert pull_env["HUBSERVE_CACHE"] == "/var/cache/hubserve"
    invoke(*pull_args)
    served = Path(serve_args[1].replace("/var/cache/hubserve", str(cache), 1))
    assert (served / "bundle.json").is_file()


def test_target_args_rebuild_the_same_target() -> None:
    for target in (
        minimal_target(),
        full_target(),
        full_target(autoscale=None, replicas=0),
        baked_target(),
        baked_target(store_uri="", environments=False),
        plain_target(),
    ):
        ref = f"{target.model_owner}/{target.model_name}:{target.version}"
        rebuilt = json.loads(invoke("export", "k8s", ref, *target_args(target), "--json").stdout)
        assert rebuilt == build_manifests(target)


# -- export gitlab-ci: files, schema, structure ----------------------------------------------


def gitlab_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("gitlab-ci.json").read_text())
    return schema


def check_gitlab_schema(config: dict[str, Any]) -> None:
    validator = jsonschema.Draft7Validator(gitlab_schema())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)
    ]
    assert not errors, errors


def test_gitlab_schema_check_has_teeth() -> None:
    config = gitlab_ci(minimal_target())
    config["destroy"]["when"] = "sometimes"
    with pytest.raises(AssertionError):
        check_gitlab_schema(config)


@pytest.mark.parametrize("build", [False, True])
@pytest.mark.parametrize("make", [minimal_target, full_target])
def test_gitlab_ci_is_valid_and_deploys_then_destroys(make: Any, build: bool) -> None:
    target: RuntimeTarget = make()
    files = gitlab_files(
        target,
        build_source="service.py" if build else None,
        export_args=target_args(target),
    )
    config = yaml.safe_load(files[".gitlab-ci.yml"])
    assert config == gitlab_ci(
        target, build_source="service.py" if build else None, export_args=target_args(target)
    )
    check_gitlab_schema(config)

    assert config["stages"] == (["build"] if build else []) + ["deploy", "destroy"]
    jobs = {k: v for k, v in config.items() if k not in ("stages", "variables")}
    assert set(jobs) == ({"build"} if build else set()) | {"deploy", "destroy"}
    for name, job in jobs.items():
        assert job["stage"] == name
        assert job["script"], name
    environment = f"hubserve/{target.object_name}"
    deploy, destroy = jobs["deploy"], jobs["destroy"]
    assert deploy["environment"]["name"] == destroy["environment"]["name"] == environment
    assert deploy["environment"]["on_stop"] == "destroy"
    assert deploy["environment"]["action"] == "start"
    assert destroy["environment"]["action"] == "stop"
    assert destroy["when"] == "manual"
    assert destroy["variables"]["GIT_STRATEGY"] == "none"
    assert deploy["resource_group"] == destroy["resource_group"] == environment
    assert "when" not in deploy
    if target.ingress_host:
        assert deploy["environment"]["url"] == f"https://{target.ingress_host}/"
    assert any(line.startswith("kubectl apply --namespace") for line in deploy["script"])
    assert any(
        f"kubectl rollout status deployment/{target.object_name}" in line
        for line in deploy["script"]
    )
    assert any(line.startswith("kubectl delete ") for line in destroy["script"])

    variables = config["variables"]
    for name in ("KUBE_NAMESPACE", "KUBE_CONTEXT", "KUBECTL_IMAGE", "ROLLOUT_TIMEOUT"):
        assert variables[name]["description"]
    assert variables["KUBE_NAMESPACE"]["value"] == target.namespace
    # secrets are never written into the file, only referred to
    header = files[".gitlab-ci.yml"].split("\nstages:")[0]
    for documented in ("KUBECONFIG", "HUBSERVE_S3_ACCESS_KEY", "HUBSERVE_S3_SECRET_KEY"):
        assert documented in header
    assert ("HUBSERVE_RUNTIME_TOKEN" in header) == (target.token_secret is not None)

    manifests = [
        yaml.safe_load(text) for name, text in sorted(files.items()) if name.startswith("k8s/")
    ]
    expected = build_manifests(target)
    for manifest in expected:
        del manifest["metadata"]["namespace"]
    assert manifests == expected

    if build:
        build_job = jobs["build"]
        assert build_job["artifacts"]["paths"] == ["k8s/"]
        push, export = build_job["script"]
        assert push.startswith(f"hubserve push service.py --store {target.store_uri}")
        assert '--tag "$MODEL_TAG"' in push
        assert export.startswith(
            f'hubserve export k8s "{target.model_owner}/{target.model_name}:$MODEL_TAG"'
        )
        assert export.endswith("--omit-namespace --output-dir k8s")


def test_gitlab_ci_deploys_a_baked_image_but_builds_none(tmp_path: Path) -> None:
    target = baked_target()
    files = gitlab_files(target, export_args=target_args(target))
    check_gitlab_schema(yaml.safe_load(files[".gitlab-ci.yml"]))
    deployment = yaml.safe_load(files["k8s/01-deployment.yaml"])
    assert "initContainers" not in deployment["spec"]["template"]["spec"]
    with pytest.raises(ManifestError, match="hubserve containerize"):
        gitlab_ci(target, build_source="service.py")
    result = invoke(
        "export",
        "gitlab-ci",
        REF,
        "--baked",
        "--dir",
        str(tmp_path / "r"),
        "--build",
        "x.py",
        ok=False,
    )
    assert result.exit_code == 1 and "baked image serves the one built" in result.output
    assert not (tmp_path / "r").exists()


def test_gitlab_golden_file() -> None:
    target = full_target()
    text = gitlab_files(target, build_source="service.py", export_args=target_args(target))[
        ".gitlab-ci.yml"
    ].replace(f"(hubserve {__version__})", "(hubserve VERSION)")
    golden = GOLDEN / "gitlab-ci.yml"
    if os.environ.get("HUBSERVE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), "regenerate with HUBSERVE_UPDATE_GOLDEN=1 and review"


def test_export_gitlab_ci_writes_the_repository_files(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    args = ["export", "gitlab-ci", REF, "--store", "s3://models", "--dir", str(repo)]
    written = json.loads(invoke(*args, "--token-secret", "iris-token", "--json").stdout)
    assert sorted(Path(p).relative_to(repo).as_posix() for p in written["files"]) == [
        ".gitlab-ci.yml",
        "k8s/01-deployment.yaml",
        "k8s/02-service.yaml",
    ]
    check_gitlab_schema(yaml.safe_load((repo / ".gitlab-ci.yml").read_text()))

    again = invoke(*args, ok=False)
    assert again.exit_code == 1 and "exists: use --force" in again.output
    invoke(*args, "--force", "--ingress-host", "iris.example.org", "--rollout-timeout", "90s")
    assert (repo / "k8s" / "03-ingress.yaml").is_file()
    config = yaml.safe_load((repo / ".gitlab-ci.yml").read_text())
    assert config["variables"]["ROLLOUT_TIMEOUT"]["value"] == "90s"
    bad = invoke(*args, "--force", "--rollout-timeout", "soon", ok=False)
    assert bad.exit_code == 2 and "duration" in bad.output


# -- the pipeline's scripts, run with kubectl against the fake -------------------------------


def find_kubectl() -> str | None:
    candidates = [
        os.environ.get("HUBSERVE_TEST_KUBECTL"),
        str(Path(sys.executable).with_name("kubectl")),
        shutil.which("kubectl"),
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


KUBECTL = find_kubectl()
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


def kubectl_minor(kubectl: str) -> int:
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    ).stdout
    return int(re.sub(r"\D", "", json.loads(out)["clientVersion"]["minor"]))


@pytest.fixture
def kubectl_dir(tmp_path: Path) -> Path:
    """A directory with ``kubectl`` for PATH.

    kubectl before 1.27 validates objects itself with the protobuf OpenAPI v2 document, which
    the fake does not serve; for those, ``apply`` gets ``--validate=false`` (the fake still
    validates every object against the schemas, as a server would).
    """
    assert KUBECTL is not None
    directory = tmp_path / "kubectl-bin"
    directory.mkdir()
    wrapper = directory / "kubectl"
    if kubectl_minor(KUBECTL) >= 27:
        wrapper.symlink_to(KUBECTL)
    else:
        wrapper.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = apply ]; then shift; exec {KUBECTL} apply --validate=false "$@"; fi\n'
            f'exec {KUBECTL} "$@"\n'
        )
        wrapper.chmod(0o755)
    return directory


def job_script(config: dict[str, Any], job: str, part: str = "script") -> str:
    return "\n".join(["set -eo pipefail", *config[job][part]])


def run_job(
    repo: Path,
    config: dict[str, Any],
    job: str,
    env: dict[str, str],
    part: str = "script",
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a job's lines as the GitLab runner would (bash, stop at the first failure)."""
    return subprocess.run(
        ["bash", "-c", job_script(config, job, part)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pipeline_env(
    config: dict[str, Any], fake: FakeKubernetes, kubectl_dir: Path, tmp_path: Path
) -> dict[str, str]:
    env = {
        "PATH": f"{kubectl_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path / "home"),  # kubectl's discovery cache
        "KUBECONFIG": str(fake.kubeconfig(tmp_path / "kubeconfig")),
        "CI_COMMIT_SHORT_SHA": "0a1b2c3d",
        "HUBSERVE_S3_ENDPOINT": "https://s3.example.org",
        "HUBSERVE_S3_ACCESS_KEY": "AKIA-TEST",
        "HUBSERVE_S3_SECRET_KEY": "s3cr3t=with/odd+chars",
        "HUBSERVE_RUNTIME_TOKEN": "runtime-token-123",
    }
    for name, variable in config["variables"].items():
        env[name] = variable["value"]
    env["ROLLOUT_TIMEOUT"] = "60s"
    return env


def secret_data(fake: FakeKubernetes, namespace: str, name: str) -> dict[str, str]:
    secret = fake.get("secrets", namespace, name)
    assert secret is not None, name
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def write_repo(repo: Path, target: RuntimeTarget) -> dict[str, Any]:
    for name, text in gitlab_files(target).items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config: dict[str, Any] = yaml.safe_load((repo / ".gitlab-ci.yml").read_text())
    return config


@needs_kubectl
def test_deploy_update_and_destroy_jobs_with_kubectl(kubectl_dir: Path, tmp_path: Path) -> None:
    target = full_target(autoscale=None, replicas=2)
    namespace, name = target.namespace, target.object_name
    repo = tmp_path / "repo"
    config = write_repo(repo, target)
    with FakeKubernetes(auto_rollout=True) as fake:
        fake.add(  # something else in the namespace that must survive the destroy job
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "other", "namespace": namespace},
            }
        )
        env = pipeline_env(config, fake, kubectl_dir, tmp_path)
        deployed = run_job(repo, config, "deploy", env)
        assert deployed.returncode == 0, deployed.stderr
        assert f'deployment "{name}" successfully rolled out' in deployed.stdout

        for manifest in build_manifests(target):
            plural = {"Deployment": "deployments", "Service": "services", "Ingress": "ingresses"}
            stored = fake.get(plural[manifest["kind"]], namespace, name)
            assert stored is not None
            assert manifest["metadata"]["labels"].items() <= stored["metadata"]["labels"].items()
            assert (
                stored["spec"].items()
                >= {k: v for k, v in manifest["spec"].items() if k != "clusterIP"}.items()
            )
        assert secret_data(fake, namespace, "store-keys") == {
            "HUBSERVE_S3_ENDPOINT": "https://s3.example.org",
            "HUBSERVE_S3_ACCESS_KEY": "AKIA-TEST",
            "HUBSERVE_S3_SECRET_KEY": "s3cr3t=with/odd+chars",
            "HUBSERVE_S3_SECURE": "false",
        }
        assert secret_data(fake, namespace, "hs-iris-token") == {"token": "runtime-token-123"}
        pods = fake.pods_of(namespace, name)
        assert len(pods) == 2
        assert all(p["metadata"]["labels"]["hubserve.io/version"] == VERSION for p in pods)

        # A new version: the re-exported files patch the Deployment, pods roll over.
        calls = len(fake.record)
        write_repo(repo, full_target(autoscale=None, replicas=2, version=OTHER_VERSION))
        updated = run_job(repo, config, "deploy", env)
        assert updated.returncode == 0, updated.stderr
        assert ("PATCH", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") in fake.record[
            calls:
        ]
        pods = fake.pods_of(namespace, name)
        assert len(pods) == 2
        assert {p["metadata"]["labels"]["hubserve.io/version"] for p in pods} == {OTHER_VERSION}
        deployment = fake.get("deployments", namespace, name)
        assert deployment is not None and deployment["metadata"]["generation"] == 2

        destroyed = run_job(repo, config, "destroy", env)
        assert destroyed.returncode == 0, destroyed.stderr
        for plural in ("deployments", "services", "ingresses", "pods"):
            assert fake.list(plural, namespace, f"app.kubernetes.io/instance={name}") == []
        assert fake.get("services", namespace, "other") is not None
        assert fake.get("secrets", namespace, "hs-iris-token") is None
        assert fake.get("secrets", namespace, "store-keys") is not None  # shared: kept

        again = run_job(repo, config, "destroy", env)  # nothing left: still succeeds
        assert again.returncode == 0, again.stderr


@needs_kubectl
def test_secrets_made_by_an_administrator_are_left_alone(kubectl_dir: Path, tmp_path: Path) -> None:
    target = minimal_target()
    repo = tmp_path / "repo"
    config = write_repo(repo, target)
    with FakeKubernetes(auto_rollout=True) as fake:
        env = pipeline_env(config, fake, kubectl_dir, tmp_path)
        for variable in (
            "HUBSERVE_S3_ENDPOINT",
            "HUBSERVE_S3_ACCESS_KEY",
            "HUBSERVE_S3_SECRET_KEY",
        ):
            del env[variable]
        deployed = run_job(repo, config, "deploy", env)
        assert deployed.returncode == 0, deployed.stderr
        assert not any(path.endswith("/secrets") for _, path in fake.record)


@needs_kubectl
def test_a_failed_rollout_fails_the_job_and_shows_the_pods(
    kubectl_dir: Path, tmp_path: Path
) -> None:
    target = minimal_target()
    name = target.object_name
    repo = tmp_path / "repo"
    config = write_repo(repo, target)
    with FakeKubernetes() as fake:  # no controller: the test plays the cluster
        env = {**pipeline_env(config, fake, kubectl_dir, tmp_path), "ROLLOUT_TIMEOUT": "4s"}

        def cluster() -> None:
            deadline = time.monotonic() + 30
            while fake.get("deployments", "hubserve", name) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            pods = fake.image_pull_error("hubserve", name)
            fake.set_logs("hubserve", pods[0]["metadata"]["name"], ["waiting for the image"])

        controller = threading.Thread(target=cluster)
        controller.start()
        failed = run_job(repo, config, "deploy", env)
        controller.join()
        assert failed.returncode != 0
        assert "timed out" in failed.stderr or "exceeded its progress deadline" in failed.stderr

        diagnosis = run_job(
            repo, config, "deploy", {**env, "CI_JOB_STATUS": "failed"}, "after_script"
        )
        assert diagnosis.returncode == 0, diagnosis.stderr
        assert name in diagnosis.stdout  # the pods are listed
        assert "waiting for the image" in diagnosis.stdout  # and their logs shown
