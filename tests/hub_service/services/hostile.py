"""A hostile model for the sandbox tests: its APIs try to escape, and report what happened.

Each attempt answers ``"denied: <error>"`` when the operating system refused it (what a
sandboxed replica must see), or ``"allowed: ..."`` when it worked. The test names the
targets (pids and paths of the machine) in the request, as an attacker who knows the
machine's layout would.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_runtime import Service

service = Service("hostile", description="tries every escape it knows")


def _attempt(action: Callable[[], object]) -> str:
    try:
        return f"allowed: {action()!r}"[:200]
    except (OSError, RuntimeError) as exc:
        return f"denied: {type(exc).__name__}: {exc}"[:200]


def _read(path: str) -> Callable[[], object]:
    return lambda: len(Path(path).read_bytes())


def _write(path: str) -> Callable[[], object]:
    return lambda: Path(path).write_text("pwned")


@service.api(input="json", output="json")
def escape(targets: dict[str, Any]) -> dict[str, Any]:
    """``targets``: ``{"pids": [...], "read": [...], "list": [...], "write": [...]}``."""
    report: dict[str, Any] = {
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "processes": sorted(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()),
        "status": {
            key: value.strip()
            for key, _, value in (
                line.partition(":") for line in Path("/proc/self/status").read_text().splitlines()
            )
            if key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")
        },
    }
    for pid in targets.get("pids", []):
        report[f"environ {pid}"] = _attempt(_read(f"/proc/{pid}/environ"))
        report[f"signal {pid}"] = _attempt(lambda pid=pid: os.kill(pid, signal.SIGTERM))
        report[f"memory {pid}"] = _attempt(_read(f"/proc/{pid}/mem"))
    for path in targets.get("read", []):
        report[f"read {path}"] = _attempt(_read(path))
    for path in targets.get("list", []):
        report[f"list {path}"] = _attempt(
            lambda path=path: sorted(p.name for p in Path(path).iterdir())
        )
    for path in targets.get("write", []):
        report[f"write {path}"] = _attempt(_write(path))
    report["write /tmp"] = _attempt(_write("/tmp/mine"))
    report["other /tmp"] = sorted(p.name for p in Path("/tmp").iterdir())
    report["device"] = _attempt(lambda: os.mknod("/tmp/disk", 0o600 | 0o060000, os.makedev(8, 0)))
    report["setuid"] = _attempt(lambda: Path("/tmp/mine").chmod(0o4755))
    libc = ctypes.CDLL(None, use_errno=True)
    for name, call in (
        ("user namespace", lambda: libc.unshare(0x10000000)),  # capabilities in a new userns
        ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        ("keyring", lambda: libc.syscall(250 if os.uname().machine == "x86_64" else 219, 0)),
    ):
        report[name] = os.strerror(ctypes.get_errno()) if call() != 0 else "allowed"
    return report


@service.api(input="json", output="json")
def bomb(_: object) -> dict[str, Any]:
    """Start threads (tasks, like processes, for the cgroup's cap) until refused."""
    threading.stack_size(64 * 1024)
    release = threading.Event()
    started = 0
    error = ""
    try:
        while started < 100_000:
            threading.Thread(target=release.wait, daemon=True).start()
            started += 1
    except RuntimeError as exc:
        error = str(exc)
    finally:
        release.set()
    return {"started": started, "error": error}


@service.api(input="json", output="json")
def fill_tmp(_: object) -> dict[str, Any]:
    """Write to the private /tmp until it is full; then free it again."""
    written = 0
    chunk = b"x" * (1 << 20)
    error = ""
    path = Path("/tmp/fill")
    try:
        with path.open("wb") as out:
            while written < 1 << 34:
                out.write(chunk)
                out.flush()
                written += len(chunk)
    except OSError as exc:
        error = exc.strerror or str(exc)
    finally:
        path.unlink(missing_ok=True)
    return {"written": written, "error": error}


@service.api(input="json", output="json")
def hog(_: object) -> dict[str, Any]:
    """Allocate (and touch) memory far past any limit the test sets."""
    blocks = [bytearray(64 << 20) for _ in range(64)]
    return {"allocated": sum(len(b) for b in blocks)}
