"""model_runtime.sandbox on this machine: what a sandboxed process sees, may write and is.

Real namespaces and mounts (the tests run as root, as the service does); the account is
``nobody``, which every Linux machine has. The hostile-model tests against the live hub are
in ``tests/hub_service/test_sandbox.py``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

from hub_service._settings import HubServiceSettings
from hub_service.backends._isolation import job_folders
from model_runtime.sandbox import (
    PROFILE_ENV,
    Account,
    Profile,
    SandboxError,
    fork_sandboxed,
    probe,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="sandboxes need root")


@pytest.fixture
def nobody() -> Account:
    return Account.named("nobody")


def _wait_for(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text().endswith("\n"):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


def test_forked_process_sees_only_what_its_profile_shows(tmp_path: Path, nobody: Account) -> None:
    secret = tmp_path / "data" / "secret.db"
    bundle = tmp_path / "data" / "cache" / "mine"
    other = tmp_path / "data" / "cache" / "theirs"
    jobs, elsewhere = tmp_path / "jobs" / "me", tmp_path / "jobs" / "you"
    for folder in (bundle, other, jobs, elsewhere):
        folder.mkdir(parents=True)
    secret.write_text("s3cret")
    (bundle / "model.txt").write_text("weights")
    (bundle / "model.txt").chmod(0o644)
    jobs.chmod(0o777)
    private = jobs / "private"  # hidden, though inside a job folder
    private.mkdir()
    (private / "key").write_text("k")
    credentials = jobs / "credentials.env"  # a hidden file, in a folder it sees
    credentials.write_text("S3_SECRET=x")
    credentials.chmod(0o644)
    profile = Profile(
        nobody,
        read_only=(str(bundle),),
        writable=(str(jobs),),
        hidden=(str(tmp_path / "data"), str(private), str(credentials)),
        tmp_size=4 << 20,
    )
    report_file = jobs / "report.json"
    sneaky = tmp_path / "jobs" / "sneaky"  # a job folder that is a link into hidden files
    sneaky.symlink_to(other)
    profile = dataclasses.replace(profile, writable=(*profile.writable, str(sneaky)))
    libc = ctypes.CDLL(None, use_errno=True)

    def run() -> NoReturn:
        def attempt(action: object) -> str:
            try:
                return f"ok {action()!r}"  # type: ignore[operator]
            except OSError as exc:
                return f"{type(exc).__name__} {exc.errno}"

        report = {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "procs": [p.name for p in Path("/proc").iterdir() if p.name.isdigit()],
            "bundle": attempt(lambda: (bundle / "model.txt").read_text()),
            "bundle write": attempt(lambda: (bundle / "x").write_text("x")),
            "secret": attempt(secret.read_text),
            "other bundle": attempt(lambda: list(other.iterdir())),
            "other jobs": attempt(lambda: list(elsewhere.iterdir())),
            "hidden in jobs": attempt((private / "key").read_text),
            "hidden file": attempt(credentials.read_text),
            "linked job folder": attempt(lambda: list(sneaky.iterdir())),
            "user namespace": _errno_of(lambda: libc.unshare(0x10000000)),  # CLONE_NEWUSER
            "mount": _errno_of(lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
            "setuid bit": attempt(lambda: Path("/tmp/big").chmod(0o4755)),
            "setuid file": attempt(lambda: os.open("/tmp/suid", os.O_CREAT | os.O_WRONLY, 0o4755)),
            "plain file": attempt(lambda: os.close(os.open("/tmp/plain", os.O_CREAT, 0o755))),
            "threads": attempt(lambda: _run_thread()),
            "etc write": attempt(lambda: Path("/etc/hubserve-test").write_text("x")),
            "tmp": attempt(lambda: Path("/tmp/big").write_bytes(b"x" * (8 << 20))),
            "null": attempt(lambda: Path("/dev/null").write_text("x")),
            "devices": sorted(p.name for p in Path("/dev").iterdir()),
            "home": os.environ.get("HOME"),
        }
        report_file.write_text(json.dumps(report) + "\n")
        os._exit(0)

    pid = fork_sandboxed(profile, run)
    report = json.loads(_wait_for(report_file))
    assert pid != os.getpid()
    assert report["pid"] == 1 and report["procs"] == ["1"]
    assert report["uid"] == nobody.uid
    assert report["bundle"] == "ok 'weights'"
    assert report["bundle write"] == "OSError 30"  # EROFS
    assert report["secret"] == "FileNotFoundError 2"
    assert report["other bundle"] == "FileNotFoundError 2"
    assert report["other jobs"] == "FileNotFoundError 2"
    assert report["hidden in jobs"] == "FileNotFoundError 2"
    assert report["linked job folder"] == "FileNotFoundError 2"  # not shown at all
    assert report["hidden file"] == "PermissionError 13"  # a device node on a nodev mount
    assert report["user namespace"] == report["mount"] == 1  # EPERM, from the seccomp filter
    assert report["setuid bit"] == report["setuid file"] == "PermissionError 1"
    assert report["plain file"] == "ok None"
    assert report["threads"] == "ok 'ran'"  # clone3 refused: glibc falls back to clone
    assert report["etc write"] == "OSError 30"
    assert report["tmp"] == "OSError 28"  # ENOSPC: its /tmp is 4 MiB
    assert report["null"] == "ok 1"
    assert set(report["devices"]) == {
        *("null", "zero", "full", "random", "urandom", "tty", "shm"),
        *("fd", "stdin", "stdout", "stderr"),
    }
    assert report["home"] == "/tmp"
    assert not Path("/etc/hubserve-test").exists()


def _errno_of(call: Callable[[], int]) -> int:
    return 0 if call() == 0 else ctypes.get_errno()


def _run_thread() -> str:
    result = []
    thread = threading.Thread(target=lambda: result.append("ran"))
    thread.start()
    thread.join()
    return result[0]


def test_wrapper_runs_a_command_sandboxed_and_passes_signals(
    tmp_path: Path, nobody: Account
) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    script = (
        "import os, signal, sys, time, pathlib\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        f"pathlib.Path('{out}/who').write_text(f'{{os.getpid()}} {{os.getuid()}}\\n')\n"
        "time.sleep(60)\n"
    )
    profile = Profile(nobody, writable=(str(out),), tmp_size=1 << 20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "model_runtime.sandbox", "--", sys.executable, "-c", script],
        env={**os.environ, PROFILE_ENV: profile.dumps()},
    )
    pid, uid = _wait_for(out / "who").split()
    assert (int(pid), int(uid)) == (1, nobody.uid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 7  # its own status, after its own handler ran


def test_wrapper_refuses_without_a_profile() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "model_runtime.sandbox", "--", "true"],
        env={k: v for k, v in os.environ.items() if k != PROFILE_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"no valid sandbox profile in {PROFILE_ENV}" in result.stderr


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("root", "models never run as root"),
        ("no-such-user-here", "there is no OS user 'no-such-user-here'"),
    ],
)
def test_accounts_that_are_refused(name: str, reason: str) -> None:
    with pytest.raises(SandboxError, match=reason):
        Account.named(name)


def test_probe_passes_here(nobody: Account) -> None:
    probe(Profile(nobody, tmp_size=1 << 20))


def test_service_refuses_to_start_without_a_sandbox_in_one_line() -> None:
    with pytest.raises(ValueError, match="cannot sandbox models here") as refused:
        HubServiceSettings(local_user="no-such-user-here").isolation()
    message = str(refused.value)
    assert "\n" not in message
    assert "HUBSERVE_LOCAL_ISOLATION=none" in message
    assert HubServiceSettings(local_isolation="none").isolation() is None
    with pytest.raises(ValueError, match="less than 1Mi"):
        HubServiceSettings(local_tmp_size="100k")


def test_service_exits_with_that_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hub_service"],
        env={
            **os.environ,
            "HUBSERVE_LOCAL_USER": "no-such-user-here",
            "HUBSERVE_DATA_DIR": str(tmp_path),
            "HUBSERVE_STORE": str(tmp_path / "store"),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("hubserve: the local backend cannot sandbox models here: there is no OS user")
    ), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("alice", ("/jobs/shared", "/srv/alice/out")),
        ("..", ("/jobs/shared",)),
    ],
)
def test_job_folders_are_the_owners_own(owner: str, expected: tuple[str, ...]) -> None:
    """Never another user's folder: an owner shares a deployment without their say."""
    locations = ["/jobs/shared/", "/srv/{user}/out", "s3://bucket/{user}"]
    assert job_folders(locations, owner) == expected
