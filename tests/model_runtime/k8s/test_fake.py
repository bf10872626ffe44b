"""The recording fake Kubernetes API (tests/k8s_fake.py) behaves like an API server where
the backend and kubectl depend on it: selectors, patches, optimistic concurrency, errors as
Status objects, watches, logs and the simulated controller."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.k8s_fake import FakeKubernetes, json_patch, label_matcher, strategic_merge

NS = "models"


def deployment(name: str = "web", image: str = "img:1", replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": image,
                            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        },
                        {"name": "side", "image": "side:1"},
                    ]
                },
            },
        },
    }


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes() as server:
        yield server


@pytest.fixture
def api(fake: FakeKubernetes, tmp_path: Path) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(str(fake.kubeconfig(tmp_path / "kubeconfig")))
    yield api_client
    api_client.close()


def status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("app=web", True),
        ("app==web,tier=front", True),
        ("app!=web", False),
        ("app in (web, api)", True),
        ("app notin (web)", False),
        ("tier", True),
        ("!tier", False),
        ("!missing,app in (x,web)", True),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert label_matcher(selector)({"app": "web", "tier": "front"}) is matches


def test_strategic_merge_merges_lists_by_their_keys() -> None:
    current = deployment()["spec"]["template"]["spec"]
    patch = {
        "$setElementOrder/containers": [{"name": "side"}, {"name": "main"}],
        "containers": [
            {"name": "main", "image": "img:2", "env": [{"name": "B", "$patch": "delete"}]},
        ],
    }
    merged = strategic_merge(current, patch)
    assert [c["name"] for c in merged["containers"]] == ["side", "main"]
    main = merged["containers"][1]
    assert main["image"] == "img:2"
    assert main["env"] == [{"name": "A", "value": "1"}]
    assert strategic_merge({"a": 1, "b": 2}, {"a": None}) == {"b": 2}
    assert strategic_merge({"x": [1, 2]}, {"x": [3]}) == {"x": [3]}  # no merge key: replaced


def test_json_patch() -> None:
    doc = {"spec": {"replicas": 1, "list": [1, 2]}}
    patched = json_patch(
        doc,
        [
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/-", "value": 9},
            {"op": "remove", "path": "/spec/list/0"},
            {"op": "test", "path": "/spec/replicas", "value": 3},
        ],
    )
    assert patched == {"spec": {"replicas": 3, "list": [2, 9]}}


def test_crud_errors_and_bookkeeping(fake: FakeKubernetes, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    created = apps.create_namespaced_deployment(NS, deployment())
    assert created.metadata.generation == 1 and created.metadata.uid
    with pytest.raises(ApiException) as exists:
        apps.create_namespaced_deployment(NS, deployment())
    assert exists.value.status == 409
    assert status_of(exists.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("nope", NS)
    assert status_of(missing.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'deployments.apps "nope" not found',
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "nope", "group": "apps", "kind": "deployments"},
    }

    stale = created.metadata.resource_version
    patched = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:2"}]}}}},
    )
    assert patched.metadata.generation == 2
    assert [c.image for c in patched.spec.template.spec.containers] == ["img:2", "side:1"]
    same = apps.patch_namespaced_deployment("web", NS, {"metadata": {"labels": {"app": "web"}}})
    assert same.metadata.resource_version == patched.metadata.resource_version  # no-op
    body = deployment(image="img:3")
    body["metadata"]["resourceVersion"] = stale
    with pytest.raises(ApiException) as conflict:
        apps.replace_namespaced_deployment("web", NS, body)
    assert status_of(conflict.value)["reason"] == "Conflict"

    fake.fail_next("patch", "deployments", 403, "deployments.apps is forbidden: quota", times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as forbidden:
            apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 1}})
        assert status_of(forbidden.value)["reason"] == "Forbidden"
    apps.patch_namespaced_deployment("web", NS, {"spec": {"replicas": 1}})  # the third works

    bad = deployment("Bad_Name")
    with pytest.raises(ApiException) as invalid:
        apps.create_namespaced_deployment(NS, bad)
    assert invalid.value.status == 422 and status_of(invalid.value)["reason"] == "Invalid"
    assert ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/web") in fake.record


def test_requests_without_the_token_are_refused(fake: FakeKubernetes, tmp_path: Path) -> None:
    path = fake.kubeconfig(tmp_path / "kubeconfig")
    config_data = json.loads(path.read_text())
    config_data["users"][0]["user"]["token"] = "wrong"
    path.write_text(json.dumps(config_data))
    api_client = config.new_client_from_config(str(path))
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(api_client).list_namespaced_pod(NS)
    api_client.close()
    assert refused.value.status == 401


def test_watch_follows_a_rolling_update(fake: FakeKubernetes, api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NS, deployment())
    events: list[tuple[str, str]] = []

    def watch_pods() -> None:
        stream = watch.Watch().stream(
            core.list_namespaced_pod, NS, label_selector="app=web", timeout_seconds=3
        )
        for event in stream:
            events.append((event["type"], event["object"].metadata.name))

    watcher = threading.Thread(target=watch_pods)
    watcher.start()
    # The watch must be open before the first rollout. Free: the test lasts the watch's 3 s
    # anyway, and an idle machine opens it in a few hundredths of a second.
    time.sleep(1.0)
    first = {p["metadata"]["name"] for p in fake.rollout(NS, "web")}
    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "img:2"}]}}}},
    )
    second = {p["metadata"]["name"] for p in fake.rollout(NS, "web")}
    watcher.join()
    assert len(first) == len(second) == 2 and not first & second
    added = {name for kind, name in events if kind == "ADDED"}
    deleted = {name for kind, name in events if kind == "DELETED"}
    assert added == first | second and deleted == first
    # one new pod comes before each old one goes (maxUnavailable 0, maxSurge 1)
    order = [(kind, name) for kind, name in events if kind in ("ADDED", "DELETED")]
    live = 0
    for kind, _ in order:
        live += 1 if kind == "ADDED" else -1
        assert live <= 3
    status = apps.read_namespaced_deployment("web", NS).status
    assert (status.observed_generation, status.updated_replicas, status.ready_replicas) == (2, 2, 2)


def test_crash_loop_image_pull_error_and_logs(fake: FakeKubernetes, api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(NS, deployment(replicas=1))
    (pod,) = fake.rollout(NS, "web")
    name = pod["metadata"]["name"]
    fake.set_logs(NS, name, ["one", "two", "three"], container="main")
    assert core.read_namespaced_pod_log(name, NS, container="main", tail_lines=2) == "two\nthree\n"
    with pytest.raises(ApiException) as which:
        core.read_namespaced_pod_log(name, NS)  # two containers: the API asks which
    assert "a container name must be specified" in status_of(which.value)["message"]

    fake.crash_pod(NS, "web", restarts=4, log="Traceback: boom")
    state = core.read_namespaced_pod(name, NS).status.container_statuses[0]
    assert state.state.waiting.reason == "CrashLoopBackOff" and state.restart_count == 4
    previous = core.read_namespaced_pod_log(name, NS, container="main", previous=True)
    assert previous == "Traceback: boom\n"
    assert apps.read_namespaced_deployment("web", NS).status.ready_replicas is None

    apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "nope:1"}]}}}},
    )
    (stuck,) = fake.image_pull_error(NS, "web")
    waiting = core.read_namespaced_pod(stuck["metadata"]["name"], NS).status.container_statuses[0]
    assert waiting.state.waiting.reason == "ImagePullBackOff"
    assert "nope:1" in waiting.state.waiting.message

    follower: list[str] = []

    def follow() -> None:
        response = core.read_namespaced_pod_log(
            name, NS, container="main", follow=True, _preload_content=False
        )
        for line in response.stream():
            follower.append(line.decode())

    reader = threading.Thread(target=follow)
    reader.start()
    time.sleep(1.0)  # the follow must have started before the pod goes, even on a busy machine
    fake.append_log(NS, name, "four", container="main")
    time.sleep(0.3)
    apps.delete_namespaced_deployment("web", NS)  # its pods go, the follow ends
    reader.join(timeout=10)
    assert "four" in "".join(follower)
    assert fake.list("pods", NS) == []


def test_scale_subresource(fake: FakeKubernetes, api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, deployment())
    apps.patch_namespaced_deployment_scale("web", NS, {"spec": {"replicas": 5}})
    stored = fake.get("deployments", NS, "web")
    assert stored is not None
    assert stored["spec"]["replicas"] == 5 and stored["metadata"]["generation"] == 2
