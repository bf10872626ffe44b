"""``hubserve serve`` as a real process: OIP clients, SIGTERM draining, ``hubserve predict``."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from model_runtime import BuiltBundle

from ..conftest import S3Target

ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
EXPECTED = ROWS @ (np.arange(8, dtype=np.float32).reshape(4, 2) / 10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hubserve(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("hubserve")), *args]


class Server:
    """``serve`` of ``bundle`` on a free port (``launcher``: how to run the CLI)."""

    def __init__(
        self, bundle: Path | str, tmp_path: Path, *extra: str, launcher: list[str] | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"serve-{self.port}.log"
        env = {**os.environ, "HUBSERVE_CACHE": str(tmp_path / "cache")}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(launcher or hubserve()),
                    "serve",
                    str(bundle),
                    *("--port", str(self.port), "--threads", "1", *extra),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"server not ready: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def server(sink_bundle: BuiltBundle, tmp_path: Path) -> Iterator[Server]:
    srv = Server(sink_bundle.archive, tmp_path)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_tritonclient_round_trip(server: Server) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("predict")
    metadata = client.get_model_metadata("predict")
    assert metadata["inputs"][0]["shape"] == [-1, 4]
    assert metadata["inputs"][0]["datatype"] == "FP32"

    for binary in (True, False):
        tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary)
        wanted = triton.InferRequestedOutput("output", binary_data=binary)
        result = client.infer("predict", [tensor], outputs=[wanted])
        np.testing.assert_allclose(result.as_numpy("output"), EXPECTED, rtol=1e-6)
    # The bundle's own name addresses its first array API.
    tensor = triton.InferInput("input", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    np.testing.assert_allclose(
        client.infer("sink", [tensor]).as_numpy("output"), EXPECTED, rtol=1e-6
    )
    client.close()


def test_oip_errors(server: Server) -> None:
    infer = f"{server.url}/v2/models/predict/infer"
    tensor = {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}
    wrong_shape = httpx.post(infer, json={"inputs": [tensor]})
    assert wrong_shape.status_code == 422
    assert "expected shape (-1, 4)" in wrong_shape.json()["error"]
    assert httpx.post(infer, json={"inputs": [{**tensor, "datatype": "FP99"}]}).status_code == 400
    assert httpx.post(infer, json={"inputs": [{**tensor, "shape": [5, 5]}]}).status_code == 400
    assert httpx.post(infer, content=b"{").status_code == 400
    assert httpx.post(f"{server.url}/v2/models/nope/infer", json={"inputs": []}).status_code == 404
    assert httpx.get(f"{server.url}/v2").json()["extensions"] == ["binary_tensor_data"]


def test_sigterm_drains_in_flight_requests(server: Server) -> None:
    def call(_: int) -> int:
        return httpx.post(f"{server.url}/slow", json=[[1.0]], timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, i) for i in range(12)]
        deadline = time.monotonic() + 10
        while _in_flight(server) < 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)  # 3 batches of 0.15 s are still to run
        statuses = [f.result() for f in futures]
    assert statuses == [200] * 12
    assert server.proc.wait(timeout=30) == 0
    log = server.log.read_text()
    assert "Traceback" not in log


def _in_flight(server: Server) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith("hubserve_requests_in_flight "):
            return float(line.split()[1])
    return 0.0


def test_predict_command(server: Server, tmp_path: Path) -> None:
    out = subprocess.run(
        hubserve("predict", server.url, "predict", "--data", json.dumps(ROWS.tolist())),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    np.testing.assert_allclose(json.loads(out.stdout), EXPECTED, rtol=1e-6)
    npy = tmp_path / "rows.npy"
    np.save(npy, ROWS)
    result = tmp_path / "out.npy"
    subprocess.run(
        hubserve("predict", server.url, "predict", "--file", str(npy), "-o", str(result)),
        check=True,
        timeout=60,
    )
    np.testing.assert_allclose(np.load(result), EXPECTED, rtol=1e-6)
    bad = subprocess.run(
        hubserve("predict", server.url, "predict", "--data", "[[1, 2]]"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "422: input: expected shape (-1, 4)" in bad.stderr


def test_serve_with_gateway_token_and_bad_sources(sink_bundle: BuiltBundle, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("gateway-secret\n")
    srv = Server(sink_bundle.archive, tmp_path, "--api-token-file", str(token))
    try:
        srv.wait_ready()
        assert httpx.post(f"{srv.url}/echo", json=1).status_code == 401
        ok = httpx.post(f"{srv.url}/echo", json=1, headers={"x-hubserve-token": "gateway-secret"})
        assert ok.json() == {"got": 1}
    finally:
        assert srv.stop() == 0

    missing = subprocess.run(
        hubserve("serve", str(tmp_path / "nothing.tar.gz")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 1
    assert "Traceback" not in missing.stderr and "no bundle at" in missing.stderr


@pytest.mark.s3
def test_serve_straight_from_the_s3_store(
    sink_bundle: BuiltBundle, s3: S3Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = s3.store()
    store.push(sink_bundle.archive, owner="alice")
    monkeypatch.setenv(
        "HUBSERVE_S3_ENDPOINT", ("https://" if s3.secure else "http://") + s3.endpoint
    )
    monkeypatch.setenv("HUBSERVE_S3_ACCESS_KEY", s3.access_key)
    monkeypatch.setenv("HUBSERVE_S3_SECRET_KEY", s3.secret_key)

    srv = Server(f"s3://{store.bucket}/alice/sink:latest", tmp_path)
    try:
        srv.wait_ready()
        response = httpx.post(f"{srv.url}/predict", json=ROWS.tolist())
        np.testing.assert_allclose(response.json(), EXPECTED, rtol=1e-6)
    finally:
        assert srv.stop() == 0
