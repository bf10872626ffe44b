"""Launching runtimes by forking a pre-warmed zygote."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_runtime import BuiltBundle
from model_runtime.runtime._zygote import ZygoteError, spawn

from .test_serve import ROWS, free_port, hubserve


@pytest.fixture
def zygote(tmp_path: Path) -> Iterator[Path]:
    socket_path = tmp_path / "zygote.sock"
    env = {**os.environ, "HUBSERVE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        hubserve("zygote", "--socket", str(socket_path)), stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert "zygote ready" in proc.stdout.readline()
        yield socket_path
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not socket_path.exists()


def _gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_replicas_launch_fast_and_stop_cleanly(
    zygote: Path, sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    assert oct(zygote.stat().st_mode & 0o777) == "0o600"
    pids = []
    for _ in range(2):
        port = free_port()
        started = time.monotonic()
        pid = spawn(
            zygote,
            str(sink_bundle.archive),
            log_file=tmp_path / f"{port}.log",
            settings={"port": port, "threads": 1},
        )
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/predict", json=ROWS.tolist(), timeout=2
                )
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - started < 30, (tmp_path / f"{port}.log").read_text()
            time.sleep(0.01)
        pids.append(pid)
    assert len(set(pids)) == 2
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        assert _gone(pid)


def test_a_bad_source_is_reported_in_the_log(zygote: Path, tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    pid = spawn(
        zygote, str(tmp_path / "missing.tar.gz"), log_file=log, settings={"port": free_port()}
    )
    assert _gone(pid)
    assert "Error: no bundle at" in log.read_text()


def test_unreachable_zygote_and_malformed_requests(zygote: Path, tmp_path: Path) -> None:
    with pytest.raises(ZygoteError, match="cannot reach the zygote"):
        spawn(tmp_path / "nope.sock", "x", log_file=tmp_path / "x.log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(zygote))
        conn.sendall(b'{"nope": 1}\n')
        reply = json.loads(conn.recv(4096))
    assert "launch request" in reply["error"]
