"""What the benchmark scripts share: ``/proc`` readers, process groups, ports, percentiles.

Every benchmark measures real processes from the outside, so the same few readings recur:
a process's resident memory (``VmRSS``) and CPU time, a core's busy time (to tell how much
*other* processes took from a measured core), the processes a server started (a service's
zygote and replicas, JupyterHub's proxy), and latency percentiles. Servers run in their own
process group so that one signal stops a server with everything it started. Closed-loop load
comes from h2load, whose summary and per-request log :func:`parse_h2load` reads into a
:class:`LoadResult`; results are written as strict JSON (:func:`json_safe`) with a digest of
the sources that were measured (:func:`sources_digest`).

The scripts import this module as ``_common`` (``bench/`` is on ``sys.path`` when a script in
it runs); it depends on nothing outside the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"


def cpu_model() -> str:
    """The CPU's model name, for the results' metadata."""
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )


def git_commit() -> str:
    """The checkout's short commit hash ('' outside a git checkout)."""
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def results_dir() -> Path:
    """Where results go: ``$HUBSERVE_BENCH_OUT`` if set, else ``bench/results/``."""
    configured = os.environ.get("HUBSERVE_BENCH_OUT")
    path = Path(configured) if configured else RESULTS_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores_busy_seconds(cpus: Sequence[int]) -> float:
    """Time the cores ``cpus`` spent on processes (user, nice, system) or lost to steal.

    Interrupt and softirq time is left out: on loopback, much of it is the servers' own network
    traffic, which the kernel does not charge to the process.
    """
    wanted = {f"cpu{cpu}" for cpu in cpus}
    total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in wanted:
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, values[:8])
            total += user + nice + system + steal
            wanted.discard(name)
    if wanted:
        raise RuntimeError(f"no {', '.join(sorted(wanted))} in /proc/stat")
    return total / os.sysconf("SC_CLK_TCK")


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def parent_pids() -> dict[int, int]:
    """pid → parent pid of every process visible in ``/proc``."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, IndexError, ValueError):
            continue
    return parents


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, their children, ...), parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def kill_group(pid: int, wait: Callable[[float], bool]) -> None:
    """SIGTERM the process group ``pid`` leads, then SIGKILL it if ``wait(seconds)`` fails."""
    for sig, seconds in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if wait(seconds):
            return


def popen_waiter(process: subprocess.Popen[bytes]) -> Callable[[float], bool]:
    def wait(seconds: float) -> bool:
        try:
            process.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    return wait


def pid_waiter(pid: int) -> Callable[[float], bool]:
    """For processes that are not our children (zygote launches): watch ``/proc``."""

    def wait(seconds: float) -> bool:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            if not is_alive(pid):
                return True
            time.sleep(0.05)
        return False

    return wait


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 99)) -> list[float]:
    """The ``points`` percentiles of ``values`` (NaN when there are none)."""
    if not values:
        return [float("nan")] * len(points)
    return [float(v) for v in np.percentile(np.asarray(values), points)]


# ------------------------------------------------------------------------------- h2load


@dataclass
class LoadResult:
    """One closed-loop h2load run against one server."""

    concurrency: int
    duration_s: float
    requests_ok: int = 0
    errors: int = 0
    req_per_s: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    h2load_req_per_s: float = 0.0
    h2load_summary: dict[str, int] = field(default_factory=dict)
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    server_cpu_pct: float = 0.0
    noise_pct: float = 0.0
    loadgen_cpu_pct: float = 0.0
    mean_batch: float | None = None
    #: Model-thread time per row (hubserve only): compare with the model-only figure to tell
    #: a model that runs slower in the server from overhead outside the model.
    model_ms_per_item: float | None = None
    correct_after: bool = True


_SUMMARY_PATTERNS = {
    "requests": r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout",
    "status": r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx",
    "rate": r"finished in [\d.]+\w*, ([\d.]+) req/s",
}


def parse_h2load(stdout: str, log_path: Path, result: LoadResult) -> None:
    """Fill ``result`` from h2load's summary (counters) and per-request log (latencies).

    The log holds the requests of the main phase only (the warm-up is not logged): column 2
    is the status (-1 for a failed stream), column 3 the microseconds until the response ended.
    """
    summary: dict[str, int] = {}
    if match := re.search(_SUMMARY_PATTERNS["requests"], stdout):
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        summary |= dict(zip(keys, map(int, match.groups()), strict=True))
    if match := re.search(_SUMMARY_PATTERNS["status"], stdout):
        summary |= dict(zip(("2xx", "3xx", "4xx", "5xx"), map(int, match.groups()), strict=True))
    if match := re.search(_SUMMARY_PATTERNS["rate"], stdout):
        result.h2load_req_per_s = float(match.group(1))
    result.h2load_summary = summary

    rows = np.loadtxt(log_path, dtype=np.int64, ndmin=2) if log_path.stat().st_size else None
    if rows is None or rows.size == 0:
        result.errors = summary.get("total", 0)
        return
    status, micros = rows[:, 1], rows[:, 2]
    ok = (status >= 200) & (status < 300)
    latencies = micros[ok] / 1000.0
    result.requests_ok = int(ok.sum())
    # Everything h2load counted that did not end in a 2xx: non-2xx answers, failed, errored
    # and timed-out streams (whether the log lists the latter depends on the h2load version).
    not_ok = summary.get("total", 0) - summary.get("2xx", 0)
    result.errors = max(int((~ok).sum()), not_ok)
    result.req_per_s = result.requests_ok / result.duration_s
    if latencies.size:
        p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
        result.p50_ms, result.p90_ms, result.p99_ms = float(p50), float(p90), float(p99)
        result.max_ms = float(latencies.max())


# ------------------------------------------------------------------------------ reporting


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def json_safe(value: Any) -> Any:
    """``value`` with NaN as ``null`` and paths as strings: strict JSON for any reader."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def sources_digest(root: Path) -> str:
    """A short digest of the Python sources under ``root``: which code a result measured."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes())
    return digest.hexdigest()[:16]
