"""The Kubernetes deploy backend against a recording fake of the Kubernetes REST API.

No API server can run here, so :class:`tests.k8s_fake.FakeKubernetes` plays the cluster: the
official ``kubernetes`` client talks HTTP to it (through a kubeconfig, as in production), it
stores and validates the objects, and the tests play the controllers and kubelets with its
``rollout`` / ``crash_pod`` / ``image_pull_error`` and inject API errors with ``fail_next``.
What these tests cannot show — real scheduling, probes, DNS, the init container pulling from
S3, cert-manager, the HPA controller — needs a cluster run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from starlette.testclient import TestClient

from hub_service._settings import HubServiceSettings
from hub_service.app import create_app, make_backend
from hub_service.backends import DeploymentSpec, DeploymentStatus, ReplicaState
from hub_service.backends._k8s_settings import KubernetesSettings
from hub_service.backends.kubernetes import (
    KubernetesBackend,
    _log_source,
    building_environment,
    deployment_problem,
    describe,
    pod_problem,
)
from model_runtime import S3Store
from model_runtime.k8s import ENV_CONTAINER, ENV_ROOT, PULL_CONTAINER, EnvPolicy, object_name
from model_runtime.naming import ModelRef
from model_runtime.store import LocalStore
from model_runtime.testing.s3server import S3Server
from tests.k8s_fake import FakeKubernetes

from .conftest import TestBundle

NS = "models"
V1 = "20260101T000000000Z-aaaaaaaa"
V2 = "20260202T000000000Z-bbbbbbbb"
OBJ = object_name("alice", "iris")
MANAGED = "app.kubernetes.io/managed-by=hubserve"
DEPLOYMENT_PATH = f"/apis/apps/v1/namespaces/{NS}/deployments/{OBJ}"
KINDS = ("deployments", "services", "ingresses", "horizontalpodautoscalers", "secrets")


def spec(
    version: str = V1, generation: int = 1, replicas: int = 1, name: str = "iris"
) -> DeploymentSpec:
    return DeploymentSpec(
        owner="alice",
        name=name,
        model=ModelRef("alice", "iris", version),
        generation=generation,
        replicas=replicas,
        secret="gateway-secret-of-" + name,
        threads=2,
        batching={"predict": {"max_batch_size": 8}},
    )


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


def k8s_settings(fake: FakeKubernetes, tmp_path: Path, **changes: Any) -> KubernetesSettings:
    values: dict[str, Any] = {
        "kubeconfig": fake.kubeconfig(tmp_path / "kubeconfig", namespace=NS),
        "namespace": NS,
        "poll_interval": 0.2,
        "progress_interval": 0.05,
        "backoff_max": 0.5,
        "request_timeout": 5.0,
        **changes,
    }
    return KubernetesSettings(**values)


def backend_for(fake: FakeKubernetes, tmp_path: Path, **changes: Any) -> KubernetesBackend:
    return KubernetesBackend(k8s_settings(fake, tmp_path, **changes), "s3://models/prefix")


@contextlib.asynccontextmanager
async def started_backend(
    fake: FakeKubernetes, tmp_path: Path, **changes: Any
) -> AsyncIterator[KubernetesBackend]:
    """A backend started with no deployments, closed on exit."""
    backend = backend_for(fake, tmp_path, **changes)
    await backend.start([])
    try:
        yield backend
    finally:
        await backend.aclose()


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def status_until(
    backend: KubernetesBackend,
    check: Callable[[DeploymentStatus], bool],
    name: str = "iris",
    timeout: float = 10.0,
) -> DeploymentStatus:
    await until(lambda: check(backend.status("alice", name)), timeout)
    return backend.status("alice", name)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def kube_client(fake: FakeKubernetes, tmp_path: Path) -> k8s.ApiClient:
    """A client of the fake of its own (what kubectl would do, from the outside)."""
    path = fake.kubeconfig(tmp_path / "outside-kubeconfig", namespace=NS)
    return k8s_config.new_client_from_config(config_file=str(path), persist_config=False)  # type: ignore[no-untyped-call, no-any-return]


def drop_connections(backend: KubernetesBackend) -> None:
    """Close the client's kept-alive connections, as a real API server going down would (the
    fake's handler threads would otherwise go on answering on them after ``stop()``)."""
    backend.api_client.rest_client.pool_manager.clear()


def objects(fake: FakeKubernetes, name: str = OBJ) -> dict[str, Any]:
    found = {kind: fake.get(kind, NS, name) for kind in KINDS[:-1]}
    found["secrets"] = fake.get("secrets", NS, f"{name}-token")
    return {kind: obj for kind, obj in found.items() if obj is not None}


def template_version(fake: FakeKubernetes) -> str:
    deployment = fake.get("deployments", NS, OBJ) or {}
    return str(deployment["spec"]["template"]["metadata"]["labels"]["hubserve.io/version"])


def pod_versions(fake: FakeKubernetes, name: str = OBJ) -> list[str]:
    return sorted(p["metadata"]["labels"]["hubserve.io/version"] for p in fake.pods_of(NS, name))


# -- create, roll out, choose ----------------------------------------------------------------------


def test_create_applies_labelled_objects(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec())
            found = objects(fake)
            assert set(found) == {"deployments", "services", "secrets"}
            deployment = found["deployments"]
            labels = deployment["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "hubserve"
            assert labels["app.kubernetes.io/instance"] == OBJ
            assert labels["hubserve.io/version"] == V1
            assert labels["hubserve.io/generation"] == "1"
            strategy = deployment["spec"]["strategy"]
            assert strategy["type"] == "RollingUpdate"
            assert strategy["rollingUpdate"]["maxUnavailable"] == 0
            assert deployment["spec"]["replicas"] == 1
            pod = deployment["spec"]["template"]["spec"]
            assert "s3://models/prefix" in json.dumps(pod["initContainers"])
            env = json.dumps(pod["containers"][0]["env"])
            assert f"{OBJ}-token" in env  # the gateway secret comes from the token Secret
            assert "gateway-secret-of-iris" not in json.dumps(deployment)
            secret = found["secrets"]
            assert base64.b64decode(secret["data"]["token"]) == b"gateway-secret-of-iris"
            assert secret["metadata"]["labels"]["app.kubernetes.io/instance"] == OBJ
            service = found["services"]
            assert service["spec"]["ports"][0]["port"] == 80
            assert (
                service["spec"]["selector"].items()
                <= deployment["spec"]["template"]["metadata"]["labels"].items()
            )
            # created (the patch found nothing) with a merge patch first
            patches = [r for r in fake.requests if r.method == "PATCH"]
            assert {r.content_type for r in patches} == {"application/merge-patch+json"}
            assert ("POST", f"/apis/apps/v1/namespaces/{NS}/deployments") in fake.record
            status = backend.status("alice", "iris")
            assert status.phase == "progressing"
            assert status.desired == 1
            assert backend.choose("alice", "iris") is None

    run(scenario)


def test_rollout_makes_it_ready_and_choose_returns_the_service(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec(replicas=2))
            fake.rollout(NS, OBJ)
            status = await status_until(backend, lambda s: s.phase == "ready")
            assert (status.desired, status.ready, status.updated) == (2, 2, 2)
            assert status.message is None
            assert [r.state for r in status.replicas] == [ReplicaState.READY] * 2
            assert {(r.version, r.generation) for r in status.replicas} == {(V1, 1)}
            endpoint = backend.choose("alice", "iris")
            assert endpoint is not None
            assert endpoint.address == f"http://{OBJ}.{NS}.svc.cluster.local:80"
            endpoint.acquire()
            again = backend.choose("alice", "iris", prefer="some-pod")
            assert again is endpoint
            assert again.in_flight == 1
            again.acquire()
            endpoint.release()
            assert endpoint.in_flight == 1
            assert backend.choose("alice", "other") is None

    run(scenario)


def test_scale_patches_the_replicas_only(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec())
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            before = fake.get("deployments", NS, OBJ)
            assert before is not None
            fake.requests.clear()
            await backend.apply(spec(replicas=3))  # same generation: a scale
            after = fake.get("deployments", NS, OBJ)
            assert after is not None
            assert after["spec"]["replicas"] == 3
            assert after["spec"]["template"] == before["spec"]["template"]
            patched = [r for r in fake.requests if (r.method, r.path) == ("PATCH", DEPLOYMENT_PATH)]
            assert patched and patched[0].body["spec"]["replicas"] == 3
            status = await status_until(backend, lambda s: s.desired == 3)
            assert status.phase == "progressing"
            assert status.ready == 1
            fake.rollout(NS, OBJ)
            status = await status_until(backend, lambda s: s.phase == "ready")
            assert status.ready == 3
            await backend.apply(spec(replicas=0))
            fake.rollout(NS, OBJ)
            status = await status_until(backend, lambda s: s.phase == "stopped")
            assert (status.desired, status.ready) == (0, 0)
            assert backend.choose("alice", "iris") is None

    run(scenario)


def test_roll_to_a_new_version_and_back(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec(replicas=2))
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            first = fake.get("deployments", NS, OBJ)
            assert first is not None
            old_pods = {p["metadata"]["name"] for p in fake.pods_of(NS, OBJ)}

            await backend.apply(spec(V2, generation=2, replicas=2))
            rolled = fake.get("deployments", NS, OBJ)
            assert rolled is not None
            assert rolled["spec"]["template"] != first["spec"]["template"]
            assert rolled["metadata"]["generation"] == first["metadata"]["generation"] + 1
            assert rolled["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
            template = rolled["spec"]["template"]["metadata"]
            assert template["labels"]["hubserve.io/version"] == V2
            assert template["annotations"]["hubserve.io/generation"] == "2"
            assert V2 in json.dumps(rolled["spec"]["template"]["spec"]["initContainers"])
            # not rolled yet: the old pods still serve, the deployment is progressing
            status = await status_until(backend, lambda s: s.updated == 0 and s.ready == 2)
            assert status.phase == "progressing"
            assert backend.choose("alice", "iris") is not None

            fake.rollout(NS, OBJ)  # the controller's rolling update
            status = await status_until(backend, lambda s: s.phase == "ready")
            assert (status.ready, status.updated) == (2, 2)
            assert {r.version for r in status.replicas} == {V2}
            assert not old_pods & {p["metadata"]["name"] for p in fake.pods_of(NS, OBJ)}
            assert pod_versions(fake) == [V2, V2]

            await backend.apply(spec(V1, generation=3, replicas=2))  # rollback
            fake.rollout(NS, OBJ)
            status = await status_until(backend, lambda s: s.phase == "ready")
            assert {(r.version, r.generation) for r in status.replicas} == {(V1, 3)}
            assert pod_versions(fake) == [V1, V1]

    run(scenario)


# -- logs, crashes, removal ------------------------------------------------------------------------


def test_logs_and_crash_loops(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            assert await backend.logs("alice", "iris", 10) == []
            await backend.apply(spec(replicas=2))
            pods = fake.rollout(NS, OBJ)
            for i, pod in enumerate(pods):
                lines = [f"pod {i} line {n}" for n in range(20)]
                fake.set_logs(NS, pod["metadata"]["name"], lines)
            chunks = await backend.logs("alice", "iris", 5)
            assert {c.replica for c in chunks} == {p["metadata"]["name"] for p in pods}
            for chunk in chunks:
                assert len(chunk.lines) == 5
                assert chunk.lines[-1].endswith("line 19")
            assert all(c.lines == [] for c in await backend.logs("alice", "iris", 0))

            fake.crash_pod(
                NS, OBJ, log="Traceback (most recent call last):\nRuntimeError: model refuses"
            )
            status = await status_until(backend, lambda s: s.phase == "failed")
            assert status.ready == 0
            assert status.message is not None
            assert "CrashLoopBackOff" in status.message
            assert "exit code 1" in status.message
            assert {r.state for r in status.replicas} == {ReplicaState.CRASHED}
            assert all(r.restarts >= 3 for r in status.replicas)
            assert backend.choose("alice", "iris") is None
            chunks = await backend.logs("alice", "iris", 50)
            assert all("RuntimeError: model refuses" in c.lines for c in chunks)

    run(scenario)


def test_remove_deletes_every_object(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(
            fake, tmp_path, ingress_host="{name}-{owner}.models.example.org", autoscale_max=3
        ) as backend:
            await backend.apply(spec())
            await backend.apply(spec(name="other"))
            fake.rollout(NS, OBJ)
            assert set(objects(fake)) == set(KINDS)
            await backend.remove("alice", "iris")
            assert objects(fake) == {}
            assert fake.pods_of(NS, OBJ) == []
            assert set(objects(fake, object_name("alice", "other"))) == set(KINDS)
            assert backend.status("alice", "iris").phase == "stopped"
            assert backend.choose("alice", "iris") is None
            await backend.remove("alice", "iris")  # again: nothing left, no error

    run(scenario)


def test_reconcile_on_start(fake: FakeKubernetes, tmp_path: Path) -> None:
    store_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hubserve-store", "namespace": NS},
        "stringData": {"HUBSERVE_S3_ENDPOINT": "minio:9000"},
    }
    fake.add(store_secret)  # the admin's: not labelled by hubserve, never touched

    async def scenario() -> None:
        first = backend_for(fake, tmp_path, autoscale_max=4)
        await first.start([])
        await first.apply(spec())
        await first.apply(spec(name="gone"))
        fake.rollout(NS, OBJ)
        await first.aclose()  # the service stops; its objects stay
        gone = object_name("alice", "gone")
        assert set(objects(fake, gone)) == {
            "deployments",
            "services",
            "horizontalpodautoscalers",
            "secrets",
        }
        fake.requests.clear()

        second = backend_for(fake, tmp_path)  # and autoscaling is now off
        await second.start([spec(replicas=2)])
        try:
            await until(lambda: objects(fake, gone) == {})
            await until(lambda: "horizontalpodautoscalers" not in objects(fake))
            deployment = fake.get("deployments", NS, OBJ)
            assert deployment is not None
            assert deployment["spec"]["replicas"] == 2
            assert set(objects(fake)) == {"deployments", "services", "secrets"}
            assert fake.get("secrets", NS, "hubserve-store") is not None
            methods = {(r.method, r.path) for r in fake.requests}
            assert ("PATCH", DEPLOYMENT_PATH) in methods
            fake.rollout(NS, OBJ)
            status = await status_until(second, lambda s: s.phase == "ready")
            assert status.ready == 2
        finally:
            await second.aclose()

    run(scenario)


def test_a_deployment_deleted_behind_its_back_comes_back(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec())
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            other = kube_client(fake, tmp_path)  # someone with kubectl
            await asyncio.to_thread(k8s.AppsV1Api(other).delete_namespaced_deployment, OBJ, NS)
            other.close()  # type: ignore[no-untyped-call]
            await until(lambda: fake.get("deployments", NS, OBJ) is not None)
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")

    run(scenario)


# -- ingress and autoscaling -----------------------------------------------------------------------


def test_ingress_with_tls_and_autoscaler(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(
            fake,
            tmp_path,
            ingress_host="{name}-{owner}.models.example.org",
            tls_issuer="letsencrypt",
            autoscale_max=5,
            autoscale_cpu=70,
        ) as backend:
            await backend.apply(spec(replicas=2))
            found = objects(fake)
            ingress = found["ingresses"]
            assert ingress["spec"]["rules"][0]["host"] == "iris-alice.models.example.org"
            assert ingress["spec"]["tls"][0]["hosts"] == ["iris-alice.models.example.org"]
            annotations = ingress["metadata"]["annotations"]
            assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
            hpa = found["horizontalpodautoscalers"]
            assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
            assert hpa["spec"]["scaleTargetRef"]["name"] == OBJ
            assert "70" in json.dumps(hpa["spec"]["metrics"])
            # scaling to zero: an autoscaler cannot hold zero replicas, so it goes
            await backend.apply(spec(replicas=0))
            assert "horizontalpodautoscalers" not in objects(fake)
            deployment = fake.get("deployments", NS, OBJ)
            assert deployment is not None
            assert deployment["spec"]["replicas"] == 0
            await backend.apply(spec(replicas=1))
            assert "horizontalpodautoscalers" in objects(fake)
            deployment = fake.get("deployments", NS, OBJ)
            assert deployment is not None
            assert deployment["spec"]["replicas"] == 1  # an autoscaler does not start from 0

    run(scenario)


# -- API errors ------------------------------------------------------------------------------------

QUOTA = (
    'deployments.apps "hs" is forbidden: exceeded quota: team-quota, requested:'
    " count/deployments.apps=1, used: count/deployments.apps=10, limited: count/deployments.apps=10"
)


def test_quota_on_create_fails_then_retries(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path, backoff_max=0.3) as backend:
            fake.fail_next("create", "deployments", 403, QUOTA, times=2)
            await backend.apply(spec())  # no exception: the status says it
            status = backend.status("alice", "iris")
            assert status.phase == "failed"
            assert status.message is not None
            assert "403 Forbidden" in status.message
            assert "exceeded quota: team-quota" in status.message
            assert f"Deployment {OBJ}" in status.message
            assert fake.get("deployments", NS, OBJ) is None
            # the fault clears after the second refusal; the backend retries by itself
            await until(lambda: fake.get("deployments", NS, OBJ) is not None)
            status = await status_until(backend, lambda s: s.message is None)
            assert status.phase == "progressing"
            creates = [
                r
                for r in fake.requests
                if (r.method, r.path) == ("POST", f"/apis/apps/v1/namespaces/{NS}/deployments")
            ]
            assert [r.status for r in creates] == [403, 403, 201]
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")

    run(scenario)


def test_invalid_and_conflicting_writes(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path, backoff_max=0.2) as backend:
            await backend.apply(spec(replicas=2))
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            invalid = f'Deployment.apps "{OBJ}" is invalid: spec.template.spec.containers[0].image'
            fake.fail_next("patch", "deployments", 422, invalid, times=3)
            await backend.apply(spec(V2, generation=2, replicas=2))
            status = backend.status("alice", "iris")
            assert status.phase == "degraded"  # the old pods still serve
            assert status.message is not None
            assert "422 Unprocessable Entity" in status.message
            assert "is invalid" in status.message
            assert backend.choose("alice", "iris") is not None
            await until(lambda: template_version(fake) == V2)
            # created by someone else between our patch (404) and our create: 409, then patch
            await backend.remove("alice", "iris")
            fake.fail_next("patch", "services", 404, f'services "{OBJ}" not found')
            fake.fail_next("create", "services", 409, f'services "{OBJ}" already exists')
            fake.add(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": OBJ, "namespace": NS},
                    "spec": {"ports": [{"port": 1234}]},
                }
            )
            await backend.apply(spec())
            assert backend.status("alice", "iris").message is None
            service = fake.get("services", NS, OBJ)
            assert service is not None
            assert service["spec"]["ports"][0]["port"] == 80

    run(scenario)


def test_image_pull_errors_surface(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec())
            fake.image_pull_error(NS, OBJ)
            status = await status_until(backend, lambda s: s.phase == "failed")
            assert status.message is not None
            assert "ImagePullBackOff" in status.message
            assert "Back-off pulling image" in status.message
            # a roll to a broken image while the old pods serve: degraded
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            await backend.apply(spec(V2, generation=2))
            fake.image_pull_error(NS, OBJ, reason="ErrImagePull")
            status = await status_until(backend, lambda s: s.phase == "degraded")
            assert status.message is not None
            assert "ErrImagePull" in status.message
            assert status.ready == 1
            assert backend.choose("alice", "iris") is not None
            fake.stall_rollout(NS, OBJ)
            await status_until(
                backend, lambda s: s.message is not None and "ErrImagePull" in s.message
            )

    run(scenario)


def test_api_server_unreachable(fake: FakeKubernetes, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with started_backend(fake, tmp_path) as backend:
            await backend.apply(spec())
            fake.rollout(NS, OBJ)
            await status_until(backend, lambda s: s.phase == "ready")
            fake.stop()  # connection refused from now on
            drop_connections(backend)
            status = await status_until(backend, lambda s: s.phase == "degraded")
            assert status.message is not None
            assert "cannot reach the Kubernetes API" in status.message
            assert "connection refused" in status.message
            assert status.ready == 1  # as last seen: the pods may well still serve
            assert backend.choose("alice", "iris") is not None
            await backend.apply(spec(V2, generation=2))  # no exception
            status = backend.status("alice", "iris")
            assert status.message is not None
            assert "cannot apply the Secret" in status.message
            assert status.phase == "degraded"
            await backend.apply(spec(name="new"))
            assert backend.status("alice", "new").phase == "failed"
            chunks = await backend.logs("alice", "iris", 10)
            assert "cannot reach the Kubernetes API" in chunks[0].lines[0]
            await backend.remove("alice", "new")  # left to the sweep, no exception

    run(scenario)


def test_start_while_the_api_is_down(fake: FakeKubernetes, tmp_path: Path) -> None:
    settings = k8s_settings(fake, tmp_path)
    fake.stop()

    async def scenario() -> None:
        backend = KubernetesBackend(settings, "s3://models")
        await backend.start([spec()])
        try:
            status = await status_until(backend, lambda s: s.message is not None)
            assert status.phase == "failed"
            assert "cannot reach the Kubernetes API" in (status.message or "")
        finally:
            await backend.aclose()

    run(scenario)


# -- settings, messages, wiring --------------------------------------------------------------------


def test_pods_build_environments_under_the_service_policy(
    fake: FakeKubernetes, tmp_path: Path
) -> None:
    policy = EnvPolicy(index_url="https://pypi.example.org/simple", deny=("tensorflow",))

    def pod_of(backend: KubernetesBackend) -> dict[str, Any]:
        deployment = backend.manifests(spec())[1]
        assert deployment["kind"] == "Deployment"
        pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
        return pod

    async def scenario() -> None:
        settings = k8s_settings(fake, tmp_path, env_cache_claim="hubserve-envs")
        backend = KubernetesBackend(settings, "s3://models", env_policy=policy)
        await backend.start([])
        try:
            await backend.apply(spec())
            stored = fake.get("deployments", NS, OBJ)
            assert stored is not None
            pod = stored["spec"]["template"]["spec"]
            assert pod == pod_of(backend)
            assert [c["name"] for c in pod["initContainers"]] == [PULL_CONTAINER, ENV_CONTAINER]
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["envs"]["persistentVolumeClaim"] == {"claimName": "hubserve-envs"}
            for container in (pod["initContainers"][1], pod["containers"][0]):
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["HUBSERVE_ENV_INDEX_URL"] == "https://pypi.example.org/simple"
                assert json.loads(env["HUBSERVE_ENV_DENY"]) == ["tensorflow"]
            assert pod["containers"][0]["args"][2:6] == ["--env", "auto", "--env-root", ENV_ROOT]
        finally:
            await backend.aclose()
        # environments off: the pods of before them, the claim unused
        off = KubernetesBackend(settings, "s3://models", env_policy=None)
        try:
            pod = pod_of(off)
            assert [c["name"] for c in pod["initContainers"]] == [PULL_CONTAINER]
            assert "envs" not in {v["name"] for v in pod["volumes"]}
            assert pod["containers"][0]["args"][2:4] == ["--env", "none"]
        finally:
            await off.aclose()

    run(scenario)


def test_a_bad_environment_setting_stops_the_start(fake: FakeKubernetes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="env cache claim"):
        KubernetesBackend(k8s_settings(fake, tmp_path, env_cache_claim="Envs"), "s3://models")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBSERVE_K8S_NAMESPACE", "team-a")
    monkeypatch.setenv("HUBSERVE_K8S_INGRESS_HOST", "{name}-{owner}.models.example.org")
    monkeypatch.setenv("HUBSERVE_K8S_AUTOSCALE_MAX", "4")
    monkeypatch.setenv("HUBSERVE_K8S_ENV_CACHE_CLAIM", "hubserve-envs")
    settings = KubernetesSettings()
    assert settings.namespace == "team-a"
    assert settings.autoscale_max == 4
    assert settings.env_cache_claim == "hubserve-envs"
    assert KubernetesSettings(env_cache_claim="").env_cache_claim is None
    assert settings.host_for("Bob", "iris") == "iris-bob.models.example.org"
    with pytest.raises(ValueError, match="only use"):
        KubernetesSettings(ingress_host="{name}.{namespace}.example.org")
    with pytest.raises(ValueError, match="AUTOSCALE_MAX"):
        KubernetesSettings(autoscale_min=5, autoscale_max=2)


def test_the_store_must_be_s3(fake: FakeKubernetes, tmp_path: Path) -> None:
    settings = k8s_settings(fake, tmp_path)
    for store in ("", "/srv/models", "file:///srv/models"):
        with pytest.raises(ValueError, match=r"needs an S3 model store.*HUBSERVE_STORE=s3://"):
            KubernetesBackend(settings, store)


def test_make_backend_builds_the_kubernetes_backend(
    fake: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUBSERVE_K8S_KUBECONFIG", str(fake.kubeconfig(tmp_path / "kc")))
    monkeypatch.setenv("HUBSERVE_K8S_NAMESPACE", NS)
    local = LocalStore(tmp_path / "store")
    settings = HubServiceSettings(data_dir=tmp_path / "data", backend="kubernetes")
    with pytest.raises(ValueError, match="S3 model store"):
        make_backend(settings, local)
    settings = HubServiceSettings(
        data_dir=tmp_path / "data", backend="kubernetes", store="s3://models/team"
    )
    monkeypatch.setenv("HUBSERVE_ENV_FIND_LINKS", '["/srv/wheels"]')
    monkeypatch.setenv("HUBSERVE_ENV_NO_INDEX", "true")
    monkeypatch.setenv("HUBSERVE_ENV_DENY", '["tensorflow"]')
    settings = HubServiceSettings(
        data_dir=tmp_path / "data", backend="kubernetes", store="s3://models/team"
    )
    backend = make_backend(settings, local)
    assert isinstance(backend, KubernetesBackend)
    assert backend.settings.namespace == NS
    assert backend.store_uri == "s3://models/team"
    assert backend.host == fake.url
    assert backend.env_policy == EnvPolicy(
        find_links=("/srv/wheels",),
        no_index=True,
        deny=("tensorflow",),
        max_env_bytes=settings.env_max_env_bytes,
    )
    asyncio.run(backend.aclose())
    monkeypatch.setenv("HUBSERVE_ENV_ENABLED", "false")
    settings = HubServiceSettings(
        data_dir=tmp_path / "data", backend="kubernetes", store="s3://models/team"
    )
    backend = make_backend(settings, local)
    assert isinstance(backend, KubernetesBackend)
    assert backend.env_policy is None
    asyncio.run(backend.aclose())


def test_messages_for_people() -> None:
    from kubernetes.client.exceptions import ApiException

    error = ApiException(status=403, reason="Forbidden")
    error.body = json.dumps({"kind": "Status", "message": QUOTA})
    assert describe(error) == f"403 Forbidden: {QUOTA}"
    assert "connection refused" in describe(ConnectionRefusedError(111, "Connection refused"))
    pending = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient cpu.",
                }
            ],
        }
    }
    assert pod_problem(pending) == "Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."
    pull = {
        "status": {
            "initContainerStatuses": [
                {
                    "name": "pull-bundle",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 1, "message": "version not found in s3"}
                    },
                }
            ]
        }
    }
    problem = pod_problem(pull)
    assert problem is not None
    assert problem.startswith("init container pull-bundle: CrashLoopBackOff")
    assert "version not found in s3" in problem
    # the logs to show: the failing bundle pull's last run, not the runtime that never ran
    pull["spec"] = {"containers": [{"name": "runtime"}]}
    assert _log_source(pull) == ("pull-bundle", True)
    quota = {
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'pods "x" is forbidden: exceeded quota: compute',
                }
            ]
        }
    }
    expected = 'FailedCreate: pods "x" is forbidden: exceeded quota: compute'
    assert deployment_problem(quota) == expected
    # a failed environment build: its last output line is the termination message
    build = {
        "spec": {"containers": [{"name": "runtime"}]},
        "status": {
            "initContainerStatuses": [
                {"name": "pull-bundle", "state": {"terminated": {"exitCode": 0}}},
                {
                    "name": "env",
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": "Error: tensorflow is on the deny list\n",
                        }
                    },
                },
            ]
        },
    }
    problem = pod_problem(build)
    assert problem is not None
    assert problem.startswith("init container env: CrashLoopBackOff")
    assert problem.endswith("tensorflow is on the deny list")
    assert _log_source(build) == ("env", True)
    assert not building_environment(build)
    running = {
        "status": {
            "initContainerStatuses": [
                {"name": "pull-bundle", "state": {"terminated": {"exitCode": 0}}},
                {"name": "env", "state": {"running": {"startedAt": "2026-12-07T20:00:00Z"}}},
            ]
        }
    }
    assert building_environment(running)
    assert pod_problem(running) is None


# -- the whole service -----------------------------------------------------------------------------

ALICE = {"Authorization": "token alice-token-123"}
PREFIX = "/services/hubserve"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.mark.slow
@pytest.mark.s3
def test_service_deploys_on_kubernetes(
    fake: FakeKubernetes,
    s3_server: S3Server,
    iris_bundles: tuple[TestBundle, TestBundle],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = f"k8s-{uuid.uuid4().hex[:8]}"
    store = S3Store(
        s3_server.endpoint,
        bucket,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        secure=False,
    )
    old, new = iris_bundles
    for bundle in iris_bundles:
        store.push(bundle.archive, owner="alice")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alice-token-123": {"name": "alice"}}))
    for key, value in {
        "HUBSERVE_STORE": f"s3://{bucket}",
        "HUBSERVE_S3_ENDPOINT": s3_server.endpoint,
        "HUBSERVE_S3_ACCESS_KEY": s3_server.access_key,
        "HUBSERVE_S3_SECRET_KEY": s3_server.secret_key,
        "HUBSERVE_BACKEND": "kubernetes",
        "HUBSERVE_K8S_KUBECONFIG": str(fake.kubeconfig(tmp_path / "kubeconfig")),
        "HUBSERVE_K8S_NAMESPACE": NS,
        "HUBSERVE_K8S_PROGRESS_INTERVAL": "0.05",
        "HUBSERVE_K8S_POLL_INTERVAL": "0.2",
    }.items():
        monkeypatch.setenv(key, value)
    settings = HubServiceSettings(static_token_file=tokens, data_dir=tmp_path / "data")
    assert settings.backend == "kubernetes"

    def status() -> dict[str, Any]:
        response = client.get(f"{PREFIX}/api/deployments/alice/iris", headers=ALICE)
        assert response.status_code == 200, response.text
        return dict(response.json()["status"])

    def wait(check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while not check(current := status()):
            assert time.monotonic() < deadline, current
            time.sleep(0.05)
        return current

    with TestClient(create_app(settings)) as client:
        response = client.post(
            f"{PREFIX}/api/deployments",
            json={"model": f"iris:{old.version}", "replicas": 2},
            headers=ALICE,
        )
        assert response.status_code == 201, response.text
        version = response.json()["version"]
        assert version == old.version
        assert response.json()["status"]["phase"] == "progressing"
        deployment = fake.get("deployments", NS, OBJ)
        assert deployment is not None
        assert deployment["spec"]["replicas"] == 2
        init = json.dumps(deployment["spec"]["template"]["spec"]["initContainers"])
        assert f"s3://{bucket}" in init
        assert version in init
        secret = fake.get("secrets", NS, f"{OBJ}-token")
        assert secret is not None
        fake.rollout(NS, OBJ)
        ready = wait(lambda s: s["phase"] == "ready")
        assert ready["ready"] == 2

        response = client.patch(
            f"{PREFIX}/api/deployments/alice/iris", json={"replicas": 3}, headers=ALICE
        )
        assert response.status_code == 200, response.text
        assert (fake.get("deployments", NS, OBJ) or {})["spec"]["replicas"] == 3
        fake.rollout(NS, OBJ)
        wait(lambda s: s["phase"] == "ready" and s["ready"] == 3)

        # roll to the newer version, then back
        response = client.patch(
            f"{PREFIX}/api/deployments/alice/iris", json={"version": new.version}, headers=ALICE
        )
        assert response.status_code == 200, response.text
        assert template_version(fake) == new.version
        assert wait(lambda s: s["phase"] == "progressing")["ready"] == 3  # old pods serve on
        fake.rollout(NS, OBJ)
        assert pod_versions(fake) == [new.version] * 3
        wait(lambda s: s["phase"] == "ready" and s["updated"] == 3)
        response = client.patch(
            f"{PREFIX}/api/deployments/alice/iris", json={"rollback": True}, headers=ALICE
        )
        assert response.status_code == 200, response.text
        assert response.json()["version"] == old.version
        assert template_version(fake) == old.version
        fake.rollout(NS, OBJ)
        assert pod_versions(fake) == [old.version] * 3
        wait(lambda s: s["phase"] == "ready" and s["updated"] == 3)

        pod = fake.pods_of(NS, OBJ)[0]["metadata"]["name"]
        fake.set_logs(NS, pod, ["serving iris on :8000"])
        logs = client.get(f"{PREFIX}/api/deployments/alice/iris/logs", headers=ALICE).json()
        assert {"replica": pod, "lines": ["serving iris on :8000"]} in logs

    # the service stops (its objects stay) and starts again: it re-applies from its database
    fake.record.clear()
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 10
        while ("PATCH", DEPLOYMENT_PATH) not in fake.record:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert wait(lambda s: s["phase"] == "ready")["ready"] == 3
        response = client.delete(f"{PREFIX}/api/deployments/alice/iris", headers=ALICE)
        assert response.status_code == 204
        assert objects(fake) == {}
