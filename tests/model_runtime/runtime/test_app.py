"""The runtime over HTTP: every input kind, every error path, health, metrics, docs, jobs."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from model_runtime import BuiltBundle

from .conftest import make_client

ROWS = [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]]
EXPECTED = np.array(ROWS, dtype=np.float32) @ (np.arange(8, dtype=np.float32).reshape(4, 2) / 10)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_health_readiness_and_index(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"].startswith("sink:")
    index = client.get("/").json()
    assert {a["name"] for a in index["apis"]} >= {"predict", "double", "table", "invert"}


def test_ndarray_json_and_npy(client: TestClient) -> None:
    as_json = client.post("/predict", json=ROWS)
    assert as_json.status_code == 200
    np.testing.assert_allclose(as_json.json(), EXPECTED, rtol=1e-6)
    assert client.post("/predict", json={"inputs": ROWS}).status_code == 200

    as_npy = client.post(
        "/predict",
        content=npy(np.array(ROWS, dtype=np.float32)),
        headers={"content-type": "application/x-npy"},
    )
    assert as_npy.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(as_npy.content)), EXPECTED, rtol=1e-6)

    wants_npy = client.post("/predict", json=ROWS, headers={"accept": "application/x-npy"})
    assert wants_npy.headers["content-type"] == "application/x-npy"


def test_curl_style_body_works(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=json.dumps(ROWS),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


def test_tensor_dataframe_image_file_text_json(client: TestClient) -> None:
    assert client.post("/double", json=[[1, 2, 3]]).json() == [[2.0, 4.0, 6.0]]

    records = client.post("/table", json=[{"a": 1, "b": 2}, {"a": 3, "b": 4, "x": 0}])
    assert records.json() == [{"a": 1, "b": 2, "total": 3}, {"a": 3, "b": 4, "total": 7}]
    csv = client.post("/table", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == ["a,b,total", "1,2,3"]

    png = io.BytesIO()
    Image.fromarray(np.full((6, 10, 3), 200, dtype=np.uint8)).save(png, format="PNG")
    shown = client.post("/brightness", files={"file": ("img.png", png.getvalue(), "image/png")})
    assert shown.status_code == 200
    assert shown.json()["height"] == 6 and shown.json()["width"] == 10
    raw = client.post("/brightness", content=png.getvalue(), headers={"content-type": "image/png"})
    assert raw.json() == shown.json()

    uploaded = client.post("/digest", files={"file": ("w.bin", b"\x00\x01" * 100)})
    assert uploaded.json()["size"] == 200
    assert (
        client.post("/shout", content="hub", headers={"content-type": "text/plain"}).text == "HUB"
    )
    assert client.post("/echo", json={"a": [1, 2]}).json() == {"got": {"a": [1, 2]}}


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "message"),
    [
        ("/predict", {"json": [[1, 2, 3]]}, 422, "expected shape (-1, 4), got (1, 3)"),
        ("/predict", {"json": [["a", "b", "c", "d"]]}, 422, "dtype"),
        ("/predict", {"json": [[1, 2], [3]]}, 422, "ragged"),
        (
            "/predict",
            {"content": b"[[1, 2,", "headers": {"content-type": "application/json"}},
            400,
            "invalid JSON",
        ),
        (
            "/predict",
            {"content": b"a,b\n", "headers": {"content-type": "text/csv"}},
            415,
            "unsupported content type",
        ),
        ("/predict", {"json": []}, 422, "got (0,)"),
        ("/table", {"json": [{"a": 1}]}, 422, "b"),
        (
            "/brightness",
            {"content": b"not an image", "headers": {"content-type": "image/png"}},
            422,
            "not a PNG/JPEG image",
        ),
        (
            "/shout",
            {"content": b"\xff\xfe", "headers": {"content-type": "text/plain"}},
            400,
            "UTF-8",
        ),
        ("/nope", {"json": 1}, 404, "Not Found"),
    ],
)
def test_bad_inputs_get_clear_4xx(
    client: TestClient, path: str, kwargs: dict[str, object], status: int, message: str
) -> None:
    response = client.post(path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_wrong_method_is_405(client: TestClient) -> None:
    assert client.get("/predict").status_code == 405


def test_failures_in_user_code_are_500_without_traceback(client: TestClient) -> None:
    blew = client.post("/echo", json="explode")
    assert blew.status_code == 500
    assert blew.json() == {"detail": "API 'echo' failed: RuntimeError: the model blew up"}
    assert "Traceback" not in blew.text
    bad = client.post("/echo", json="unencodable")
    assert bad.status_code == 500 and "cannot encode" in bad.json()["detail"]


def test_one_bad_request_in_a_batch_fails_alone(client: TestClient) -> None:
    """``InvalidInput`` raised by the API: 422 with its message, for that request only."""
    import concurrent.futures

    bodies = [[[1.0, 1.0, 1.0, 1.0]]] * 6 + [[[-5000.0, 0.0, 0.0, 0.0]]]
    with concurrent.futures.ThreadPoolExecutor(7) as pool:
        responses = list(pool.map(lambda b: client.post("/predict", json=b), bodies))
    assert [r.status_code for r in responses] == [200] * 6 + [422]
    assert responses[-1].json() == {"detail": "row has a value below -1000"}
    assert all(np.allclose(r.json(), [[1.2, 1.6]]) for r in responses[:-1])


def test_invalid_input_raised_by_the_api_is_422_over_oip(client: TestClient) -> None:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-5000.0, 0, 0, 0]}
    response = client.post("/v2/models/predict/infer", json={"inputs": [tensor]})
    assert response.status_code == 422
    assert response.json() == {"error": "row has a value below -1000"}


def test_oversized_body_is_413(sink_bundle: BuiltBundle, tmp_path: Path) -> None:
    with make_client(sink_bundle, tmp_path, max_body_bytes=2048) as client:
        response = client.post("/predict", json=[[1.0, 2.0, 3.0, 4.0]] * 200)
        assert response.status_code == 413
        assert "larger than 2048 bytes" in response.json()["detail"]


def test_oversized_oip_body_is_413_before_it_is_read(
    sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    tensor = {"name": "x", "shape": [200, 4], "datatype": "FP32", "data": [0.5] * 800}
    with make_client(sink_bundle, tmp_path, max_body_bytes=2048) as client:
        response = client.post("/v2/models/predict/infer", json={"inputs": [tensor]})
        assert response.status_code == 413
        assert response.json() == {"error": "request body is larger than 2048 bytes"}


def test_a_model_slower_than_the_request_timeout_is_504(
    sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    """The caller stops waiting (REST and OIP); once the model thread has finished the calls
    that timed out (a thread cannot be interrupted), the runtime answers again."""
    with make_client(sink_bundle, tmp_path, request_timeout=0.05) as client:
        rest = client.post("/slow", json=[[1.0]])
        assert rest.status_code == 504
        assert rest.json() == {"detail": "slow did not answer within 0.05 s"}
        tensor = {"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}
        oip = client.post("/v2/models/slow/infer", json={"inputs": [tensor]})
        assert oip.status_code == 504
        assert oip.json() == {"error": "slow did not answer within 0.05 s"}
        deadline = time.monotonic() + 10
        while (answer := client.post("/predict", json=ROWS)).status_code == 504:
            assert time.monotonic() < deadline
        assert answer.status_code == 200


def test_overload_is_503_with_retry_after(sink_bundle: BuiltBundle, tmp_path: Path) -> None:
    import concurrent.futures

    with make_client(sink_bundle, tmp_path, max_queue_rows=4) as client:
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(lambda _: client.post("/slow", json=[[1.0]]), range(24)))
        statuses = {r.status_code for r in responses}
        assert statuses == {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert int(refused.headers["retry-after"]) >= 1
        too_big = client.post("/slow", json=[[1.0]] * 5)
        assert too_big.status_code == 413


def test_metrics_count_requests_batches_and_queue(client: TestClient) -> None:
    client.post("/predict", json=ROWS)
    client.post("/predict", json=[[1, 2]])
    text = client.get("/metrics").text
    assert 'hubserve_requests_total{api="predict",status="200"}' in text
    assert 'hubserve_requests_total{api="predict",status="422"} 1.0' in text
    assert "hubserve_batch_rows_bucket" in text and "hubserve_queue_rows" in text
    assert "hubserve_model_seconds_count" in text
    before = _counter(text, 'hubserve_requests_total{api="predict",status="200"}')
    client.post("/predict", json=ROWS)
    after = _counter(
        client.get("/metrics").text, 'hubserve_requests_total{api="predict",status="200"}'
    )
    assert after == before + 1


def _counter(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in metrics")


def test_openapi_documents_every_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    content = predict["requestBody"]["content"]
    assert set(content) == {"application/json", "application/x-npy", "application/x-npz"}
    assert content["application/x-npy"]["schema"] == {"type": "string", "format": "binary"}
    assert predict["summary"] == "Two scores per row."
    assert "/v2/models/{name}/infer" in schema["paths"]
    assert schema["paths"]["/invert"]["post"]["responses"]["202"]
    assert client.get("/docs").status_code == 200


def test_gateway_token(sink_bundle: BuiltBundle, tmp_path: Path) -> None:
    with make_client(sink_bundle, tmp_path, api_token="s3cret-token") as client:
        assert client.get("/healthz").status_code == 200  # probes need no token
        assert client.get("/readyz").status_code == 200
        missing = client.post("/echo", json=1)
        assert missing.status_code == 401
        wrong = client.post("/echo", json=1, headers={"x-hubserve-token": "guess"})
        assert wrong.status_code == 403 and "guess" not in wrong.text
        assert client.post(
            "/echo", json=1, headers={"x-hubserve-token": "s3cret-token"}
        ).json() == {"got": 1}
        bearer = client.post("/echo", json=1, headers={"authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200
        assert client.get("/metrics").status_code == 401


def test_batch_job_over_a_folder_with_a_corrupt_file(client: TestClient, tmp_path: Path) -> None:
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i in range(4):
        np.save(inbox / f"img{i}.npy", np.full((2, 2), i, dtype=np.float32))
    (inbox / "broken.npy").write_bytes(b"this is not numpy")

    started = client.post("/jobs/invert", json={"input": str(inbox), "output": str(outbox)})
    assert started.status_code == 202
    job_id = started.json()["id"]
    assert started.headers["location"] == f"/jobs/{job_id}"
    deadline = time.monotonic() + 30
    while True:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running") or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert status["state"] == "completed_with_errors"
    assert (status["items_total"], status["items_done"], status["items_failed"]) == (5, 5, 1)
    failed = [item for item in status["items"] if not item["ok"]]
    # InvalidInput raised by the API: the item's error is its message alone.
    assert [(item["item"], item["error"]) for item in failed] == [
        ("broken.npy", "broken.npy is not a .npy array")
    ]
    assert np.array_equal(np.load(outbox / "img3" / "inverted.npy"), -np.full((2, 2), 3))
    page = client.get(f"/jobs/{job_id}", params={"items_from": 3, "items_limit": 1}).json()
    assert [item["item"] for item in page["items"]] == [status["items"][3]["item"]]
    assert (page["items_from"], page["items_next"], page["items_done"]) == (3, 4, 5)
    (listed,) = client.get("/jobs").json()
    assert (listed["id"], listed["items"], listed["items_done"]) == (job_id, [], 5)
    # The API's own route starts a job too.
    again = client.post("/invert", json={"input": str(inbox), "output": str(tmp_path / "o2")})
    assert again.status_code == 202


def test_job_errors(client: TestClient, tmp_path: Path) -> None:
    assert (
        client.post("/jobs/invert", json={"input": "relative/dir", "output": "/tmp/x"}).status_code
        == 422
    )
    missing = client.post(
        "/jobs/invert", json={"input": str(tmp_path / "none"), "output": "/tmp/x"}
    )
    assert missing.status_code == 422
    assert (
        client.post("/jobs/predict", json={"input": "/tmp", "output": "/tmp/x"}).status_code == 404
    )
    assert (
        client.post(
            "/jobs/invert", content=b"{", headers={"content-type": "application/json"}
        ).status_code
        == 400
    )
    assert client.post("/jobs/invert", json={"input": "/tmp"}).status_code == 422
    assert client.get("/jobs/deadbeef").status_code == 404
    for query in (
        "items_limit=-1",
        "items_limit=1001",
        "items_limit=ten",
        "items_limit=",
        "items_from=-5",
        "items_from=2147483648",
        "items_from=" + "9" * 5000,
        "items_from=%EF%BC%91",  # a full-width digit: isdigit() but not ASCII
    ):
        refused = client.get(f"/jobs/deadbeef?{query}")
        assert refused.status_code == 422, query
        assert "must be an integer from 0 to" in refused.json()["detail"]


def test_jobs_stay_inside_the_allowed_locations(sink_bundle: BuiltBundle, tmp_path: Path) -> None:
    """``job_locations`` confines jobs: no other folder, no ``..``, no symlink out of it."""
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    for folder in (allowed / "in", elsewhere):
        folder.mkdir(parents=True)
        np.save(folder / "a.npy", np.zeros(2, dtype=np.float32))
    (allowed / "link").symlink_to(elsewhere)
    refused = [
        (str(elsewhere), str(allowed / "out")),
        (str(allowed / "in"), str(elsewhere / "out")),
        (f"{allowed}/../elsewhere", str(allowed / "out")),
        (str(allowed / "link"), str(allowed / "out")),
        (f"file://{elsewhere}", str(allowed / "out")),
        ("s3://bucket/data", str(allowed / "out")),
        ("webdav://user:hunter2@dav.example:8080/in", str(allowed / "out")),
    ]
    with make_client(sink_bundle, tmp_path, job_locations=[str(allowed)]) as client:
        for source, target in refused:
            response = client.post("/jobs/invert", json={"input": source, "output": target})
            assert response.status_code == 422, (source, target, response.text)
            assert "is not a location this runtime's jobs may use" in response.json()["detail"]
            assert "hunter2" not in response.text
        ok = client.post(
            "/jobs/invert", json={"input": str(allowed / "in"), "output": str(allowed / "out")}
        )
        assert ok.status_code == 202, ok.text


def test_user_job_locations_follow_the_gateways_user_header(
    sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    """With the gateway secret required, ``{user}`` is the name in ``x-hubserve-user``, on
    ``/jobs/<api>`` and on the path API itself; without the secret, the header counts for
    nothing."""
    home = tmp_path / "home"
    for user in ("alice", "bob"):
        (home / user / "in").mkdir(parents=True)
        np.save(home / user / "in" / "a.npy", np.zeros(2, dtype=np.float32))
    locations = [f"{home}/{{user}}"]

    def job(owner: str) -> dict[str, str]:
        return {"input": f"{home}/{owner}/in", "output": f"{home}/{owner}/out"}

    secret = {"x-hubserve-token": "s3cret-token"}
    with make_client(
        sink_bundle, tmp_path, api_token="s3cret-token", job_locations=locations
    ) as client:
        for route in ("/jobs/invert", "/invert"):
            as_alice = {**secret, "x-hubserve-user": "alice"}
            ok = client.post(route, json=job("alice"), headers=as_alice)
            assert ok.status_code == 202, ok.text
            theirs = client.post(route, json=job("bob"), headers=as_alice)
            assert theirs.status_code == 422
            assert theirs.json()["detail"] == (
                f"{home}/bob/in is not a location this runtime's jobs may use "
                f"(allowed for alice: {home}/alice)"
            )
            for headers, why in (
                (secret, "the call names no user"),
                ({**secret, "x-hubserve-user": "../bob"}, "'../bob' cannot name a folder"),
            ):
                refused = client.post(route, json=job("bob"), headers=headers)
                assert refused.status_code == 422 and why in refused.json()["detail"]
                assert "s3cret" not in refused.text
    with make_client(sink_bundle, tmp_path, job_locations=locations) as client:
        untrusted = client.post(
            "/jobs/invert", json=job("alice"), headers={"x-hubserve-user": "alice"}
        )
        assert untrusted.status_code == 422
        assert "does not require the gateway's secret" in untrusted.json()["detail"]


def test_jobs_belong_to_the_caller_who_submitted_them(
    sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    """Behind the gateway, a job is seen, listed and cancelled only by its submitter: to any
    other caller of the same deployment it does not exist. Without the secret (a standalone
    runtime) nobody is known, and jobs are everyone's."""
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", np.zeros(2, dtype=np.float32))
    body = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out")}
    secret = {"x-hubserve-token": "s3cret-token"}
    alice, bob = ({**secret, "x-hubserve-user": name} for name in ("alice", "bob"))
    with make_client(sink_bundle, tmp_path, api_token="s3cret-token") as client:
        job = client.post("/jobs/invert", json=body, headers=alice).json()
        assert job["owner"] == "alice"
        url = f"/jobs/{job['id']}"
        assert client.get(url, headers=alice).status_code == 200
        assert [j["id"] for j in client.get("/jobs", headers=alice).json()] == [job["id"]]
        for other in (bob, secret):  # another user; a call that names no user
            assert client.get(url, headers=other).status_code == 404
            assert client.delete(url, headers=other).status_code == 404
            assert client.get("/jobs", headers=other).json() == []
        assert client.delete(url, headers=alice).status_code == 200
    with make_client(sink_bundle, tmp_path) as client:
        job = client.post("/jobs/invert", json=body, headers={"x-hubserve-user": "alice"}).json()
        assert job["owner"] is None
        assert client.get(f"/jobs/{job['id']}").status_code == 200
