"""Launching runtimes by forking a pre-warmed zygote."""

from __future__ import annotations

import contextlib
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


def _ready(port: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.post(f"http://127.0.0.1:{port}/predict", json=ROWS.tolist()).is_success:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_warm_launcher_per_environment(
    zygote: Path, sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    """The first launch for an overlay forks from the zygote and starts a warm launcher with
    the overlay's modules imported; later launches for that key come from it."""
    site = tmp_path / "site"
    (site / "hubserve_warmtest").mkdir(parents=True)
    imports = tmp_path / "imports.txt"
    (site / "hubserve_warmtest" / "__init__.py").write_text(
        f"import os\nwith open({str(imports)!r}, 'a') as f:\n    f.write(f'{{os.getpid()}}\\n')\n"
    )
    launch = {"sys_path": [str(site)], "warm_key": "k" * 24, "preload": ["hubserve_warmtest"]}
    pids = []
    for attempt in range(2):
        port = free_port()
        log = tmp_path / f"{attempt}.log"
        pids.append(
            spawn(zygote, str(sink_bundle.archive), log_file=log, settings={"port": port}, **launch)
        )
        _ready(port, log)
        if attempt == 0:
            warm_socket = zygote.parent / "zygote-warm" / f"{'k' * 24}.sock"
            deadline = time.monotonic() + 30
            while not warm_socket.exists():
                assert time.monotonic() < deadline, "no warm launcher"
                time.sleep(0.05)
    warm_pid = int(imports.read_text().split()[0])
    assert imports.read_text().split() == [str(warm_pid)]  # imported once, in the launcher
    assert _parent(pids[0]) != warm_pid
    assert _parent(pids[1]) == warm_pid
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
        assert _gone(pid)
    os.kill(warm_pid, 0)  # alive until the zygote stops (the fixture checks the rest)


def test_zygote_exits_when_its_parent_died_during_its_imports(tmp_path: Path) -> None:
    """A supervisor killed while its zygote still imports torch (here: gone at once) leaves
    no zygote behind: ``--parent-pid`` names it, so even a parent gone before the zygote
    asked is noticed."""
    socket_path = tmp_path / "orphan.sock"
    command = " ".join(hubserve("zygote", "--socket", str(socket_path), "--parent-pid", "$$"))
    started = subprocess.run(
        ["sh", "-c", f"{command} >/dev/null 2>&1 & echo $!"],  # sh exits at once
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(started.stdout)
    try:
        assert _gone(pid, timeout=60), "the zygote outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zygote_pid(socket_path: Path) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if str(socket_path).encode() in (entry / "cmdline").read_bytes():
                    return int(entry.name)
    raise AssertionError("no zygote process")


def _memory_holds(pid: int, needle: bytes) -> bool:
    """Whether ``needle`` is anywhere in the readable memory of ``pid`` (root reads it)."""
    with Path(f"/proc/{pid}/maps").open() as maps, Path(f"/proc/{pid}/mem").open("rb") as mem:
        for line in maps:
            bounds, perms = line.split()[:2]
            if not perms.startswith("r"):
                continue
            start, end = (int(x, 16) for x in bounds.split("-"))
            with contextlib.suppress(OSError, OverflowError, ValueError):
                mem.seek(start)
                if needle in mem.read(end - start):
                    return True
    return False


@pytest.mark.skipif(os.geteuid() != 0, reason="reads another process's memory")
def test_the_token_stays_out_of_the_zygotes_memory(
    zygote: Path, sink_bundle: BuiltBundle, tmp_path: Path
) -> None:
    """Runtimes forked later copy the zygote's memory: a token named by ``token_file`` is read
    by the child only, and the runtime requires it."""
    token = "tok-" + os.urandom(16).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    port = free_port()
    pid = spawn(
        zygote,
        str(sink_bundle.archive),
        log_file=tmp_path / "runtime.log",
        settings={"port": port, "threads": 1},
        token_file=token_file,
    )
    url = f"http://127.0.0.1:{port}/predict"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.post(url, json=ROWS.tolist(), timeout=2).status_code == 401:
                break
        assert time.monotonic() < deadline, (tmp_path / "runtime.log").read_text()
        time.sleep(0.02)
    answer = httpx.post(url, json=ROWS.tolist(), headers={"x-hubserve-token": token}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert _memory_holds(pid, token.encode())  # the check can see it where it is
    assert not _memory_holds(_zygote_pid(zygote), token.encode())
    os.kill(pid, signal.SIGTERM)
    assert _gone(pid)
