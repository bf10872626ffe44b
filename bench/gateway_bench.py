"""Gateway benchmark: what the hub service's gateway and JupyterHub's proxy add to a prediction.

One run on one machine, with a real model (``examples/iris/iris.py:service``, a 4-16-3 torch
MLP whose batchable ``predict`` API takes ``[[5.1, 3.5, 1.4, 0.2]]``) and real processes:

1. **Static-token service.** ``python -m hub_service`` runs standalone (no JupyterHub) in the
   development mode (``HUBSERVE_STATIC_TOKEN_FILE``), on its own data directory and a local
   store into which the script pushed the bundle (``LocalStore.push``, owner = the static
   token's user). Replicas are real runtime processes forked by the service's zygote.
2. **Deploy -> first prediction.** ``POST /api/deployments`` and then ``POST
   d/<owner>/iris/predict`` through the gateway every few ms until the first correct answer;
   ``DELETE`` and again, ``--deploys`` times. The first deploy also starts the zygote and is
   reported on its own. Each deploy is broken down into: the API's answer, the replica's
   launch (its state file appears), the replica's own ``/readyz`` (polled directly) and the
   first answer through the gateway.
3. **Overhead.** Closed-loop ``h2load --h1`` (C connections, one request in flight on each,
   ``-D`` seconds after a warm-up; latency percentiles from its per-request log) at C=1 and
   C=16, plus a serial ``httpx`` loop at C=1, against

   * ``direct``: the replica itself (port from ``<data_dir>/local/replicas/*.json``, the
     deployment secret from the service's SQLite DB, sent as ``x-hubserve-token``);
   * ``gateway``: the static-token service's gateway on 127.0.0.1 (uvicorn, no proxy);

   and, in a second phase with a real JupyterHub (configured like
   ``tests/live_hub.py``, which it uses; the hub starts configurable-http-proxy and the service,
   which resolves hub tokens through the hub API, cached 60 s), against

   * ``hub_direct``: the hub-managed deployment's replica (same-phase baseline);
   * ``hub_gateway``: the hub-managed service's port, with a hub token (no proxy);
   * ``hub_proxy``: the hub's public port: configurable-http-proxy -> service -> replica.

   During each run the CPU time of every process in the chain (replica, service, proxy, hub)
   is read from ``/proc``: CPU µs per request shows where the work goes.
4. **Profile** (``--profile``): the static-token service is restarted under cProfile (enabled
   only during one C=16 run) and its time is grouped by package.

All servers (and their children: zygote, replicas, proxy) are pinned to one core
(``--server-cpu``), h2load and this script to the other (``--client-cpu``), as in
``runtime_bench.py``: at C=16 the req/s then show the CPU cost of the whole chain per request.
Only 127.0.0.1 is used. Every process is stopped at the end (the services stop their
replicas on SIGTERM), also on errors and Ctrl-C.

Usage (from the repository root; see ``bench/README.md``)::

    .venv/bin/python bench/gateway_bench.py --profile    # ~2.5 minutes
    .venv/bin/python bench/gateway_bench.py --quick      # smoke run, ~1.5 minutes

Results are printed as Markdown tables and written to ``bench/results/gateway_<date>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib
import importlib.metadata
import json
import os
import platform
import pstats
import re
import resource
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common
from _common import REPO, RESULTS_DIR

sys.path.insert(0, str(REPO))
from tests.live_hub import HubStartError, chp_path, running_hub

PREFIX = "/services/hubserve"
USER = "bench"
MODEL = "iris"
SOURCE = REPO / "examples" / "iris" / "iris.py"
BODY = b"[[5.1,3.5,1.4,0.2]]"
#: Seconds between two polls while waiting for the first prediction.
POLL = 0.005
#: Processes whose CPU time each run records, in the order of the chain.
ROLES = ("replica", "gateway", "proxy", "hub")

#: Runs the service under cProfile, which SIGUSR1 enables and SIGUSR2 stops and dumps.
PROFILE_WRAPPER = """\
import cProfile, runpy, signal, sys
profile = cProfile.Profile()
def start(*_):
    profile.enable()
def stop(*_):
    profile.disable()
    profile.dump_stats(sys.argv[1])
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
runpy.run_module("hub_service", run_name="__main__", alter_sys=True)
"""

# ---------------------------------------------------------------------------- processes


def base_env() -> dict[str, str]:
    """This environment without hub or hubserve settings; the repository first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "HUBSERVE_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class Proc:
    """A process in its own session, output to a log file; stopped with its process group."""

    def __init__(
        self, name: str, command: list[str], log: Path, env: dict[str, str], cwd: Path = REPO
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the group, SIGKILL after 15 s (a service stops its replicas meanwhile)."""
        common.kill_group(self.pid, common.popen_waiter(self.popen))


def wait_until(check: Callable[[], bool], proc: Proc, timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        proc.check()
        with contextlib.suppress(OSError, http.client.HTTPException):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not reached in {timeout} s (see {proc.log})")


def pids_mentioning(marker: str) -> list[int]:
    """Processes (not this one) whose command line or environment mentions ``marker``.

    ``marker`` is this run's work directory, so these are processes the script started:
    services (data directory in their environment), zygotes and replicas (the zygote's
    socket path in their command line).
    """
    found = []
    needle = marker.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if needle in cmdline or needle in environ:
            found.append(int(proc.name))
    return found


def sweep(work: Path) -> list[int]:
    """SIGKILL whatever this run started and is still alive; return the pids it found."""
    left = pids_mentioning(str(work))
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def service_pid(data_dir: Path) -> int:
    """The hub service process that JupyterHub started (its environment names data_dir)."""
    needle = f"HUBSERVE_DATA_DIR={data_dir}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if b"hub_service" in (proc / "cmdline").read_bytes() and needle in (
                proc / "environ"
            ).read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no hub_service process with data dir {data_dir}")


# ------------------------------------------------------------------------------- HTTP


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_answer(body: bytes, reference: list[list[float]] | None = None) -> list[list[float]]:
    """The prediction in ``body``: one row of 3 class probabilities (= ``reference``)."""
    answer = json.loads(body)
    probabilities = np.asarray(answer, dtype=float)
    if probabilities.shape != (1, 3) or abs(probabilities.sum() - 1) > 1e-4:
        raise RuntimeError(f"not an iris prediction: {body[:200]!r}")
    if reference is not None and not np.allclose(probabilities, reference, atol=1e-6):
        raise RuntimeError(f"prediction {answer} differs from {reference}")
    return list(answer)


def replica_record(data_dir: Path) -> dict[str, Any]:
    """The state file of the deployment's (single) replica."""
    records = [json.loads(p.read_text()) for p in (data_dir / "local" / "replicas").glob("*.json")]
    records = [r for r in records if r["deployment"] == f"{USER}/{MODEL}"] or records
    if len(records) != 1:
        raise RuntimeError(f"expected one replica state file, found {records}")
    return records[0]


def deployment_secret(data_dir: Path, owner: str) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / "hubserve.sqlite")) as db:
        row = db.execute(
            "SELECT secret FROM deployments WHERE owner = ? AND name = ?", (owner, MODEL)
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no deployment {owner}/{MODEL} in the service's database")
    return str(row[0])


# ------------------------------------------------------------------------ deploy timing


def time_deploy(
    port: int, headers: dict[str, str], data_dir: Path, owner: str, timeout: float = 120.0
) -> dict[str, Any]:
    """``POST /api/deployments`` -> first correct prediction through ``port``, in parts."""
    state_dir = data_dir / "local" / "replicas"
    known = set(state_dir.glob("*.json"))
    predict = f"{PREFIX}/d/{owner}/{MODEL}/predict"
    body = json.dumps({"model": MODEL, "replicas": 1}).encode()
    started = time.perf_counter()
    status, answer = call(port, "POST", f"{PREFIX}/api/deployments", body, headers)
    api = time.perf_counter() - started
    if status != 201:
        raise RuntimeError(f"POST /api/deployments answered {status}: {answer[:300]!r}")
    launched = ready = None
    replica_port = 0
    polls = 0
    while True:
        elapsed = time.perf_counter() - started
        if elapsed > timeout:
            raise TimeoutError(f"no prediction {timeout} s after the deployment was created")
        if launched is None:
            for path in set(state_dir.glob("*.json")) - known:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    replica_port = int(json.loads(path.read_text())["port"])
                    launched = elapsed
        if launched is not None and ready is None:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if call(replica_port, "GET", "/readyz", timeout=1)[0] == 200:
                    ready = time.perf_counter() - started
        status, answer = call(port, "POST", predict, BODY, headers)
        polls += 1
        if status == 200:
            first = time.perf_counter() - started
            check_answer(answer)
            break
        if status != 503:
            raise RuntimeError(f"gateway answered {status} while deploying: {answer[:300]!r}")
        time.sleep(POLL)
    return {
        "api_s": api,
        "replica_launched_s": launched,
        "replica_ready_s": ready if ready is not None else first,
        "first_prediction_s": first,
        "routed_after_ready_s": first - (ready if ready is not None else first),
        "polls": polls,
    }


def delete_deployment(port: int, headers: dict[str, str], owner: str) -> float:
    started = time.perf_counter()
    status, answer = call(
        port, "DELETE", f"{PREFIX}/api/deployments/{owner}/{MODEL}", None, headers
    )
    if status != 204:
        raise RuntimeError(f"DELETE answered {status}: {answer[:300]!r}")
    return time.perf_counter() - started


# ------------------------------------------------------------------------------- load


@dataclass
class Target:
    """Where a run sends ``POST predict``, and which processes serve it."""

    name: str
    description: str
    port: int
    path: str
    headers: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"


def run_h2load(
    target: Target,
    concurrency: int,
    args: argparse.Namespace,
    work: Path,
    reference: list[list[float]],
    duration: float | None = None,
) -> dict[str, Any]:
    """One closed-loop h2load run; latencies from its log, CPU per process from /proc."""
    duration = args.duration if duration is None else duration
    log_path = work / f"h2load-{target.name}-c{concurrency}.tsv"
    log_path.unlink(missing_ok=True)  # h2load appends
    body_path = work / "body.json"
    command = [*args.client_pin, "h2load", "--h1", "-t", "1", "-c", str(concurrency), "-m", "1"]
    command += [
        "-D",
        f"{round(duration * 1000)}ms",
        "--warm-up-time",
        f"{round(args.warmup * 1000)}ms",
    ]
    command += ["-d", str(body_path), "-H", "content-type: application/json"]
    for key, value in target.headers.items():
        command += ["-H", f"{key}: {value}"]
    command += ["--log-file", str(log_path), target.url]

    result = common.LoadResult(concurrency, duration)
    core = int(args.server_cpu) if args.pin else None
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    launched = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # CPU is read around the measured phase only: after the warm-up, until h2load ends.
        time.sleep(args.warmup)
        cpu_before = {role: common.cpu_seconds(pid) for role, pid in target.pids.items()}
        busy_before = common.cores_busy_seconds([core]) if core is not None else 0.0
        started = time.perf_counter()
        stdout, _ = process.communicate(timeout=duration + 60)
        elapsed = time.perf_counter() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    cpu_used = {
        role: common.cpu_seconds(pid) - cpu_before[role] for role, pid in target.pids.items()
    }
    busy = common.cores_busy_seconds([core]) - busy_before if core is not None else 0.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total_wall = time.perf_counter() - launched
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}):\n{stdout[-2000:]}")
    common.parse_h2load(stdout, log_path, result)
    status, answer = call(target.port, "POST", target.path, BODY, target.headers)
    if status != 200:
        raise RuntimeError(f"{target.name} answered {status} after the run: {answer[:300]!r}")
    check_answer(answer, reference)
    requests = result.requests_ok
    run = asdict(result)
    for key in ("rss_before_mb", "rss_after_mb", "mean_batch", "model_ms_per_item"):
        run.pop(key)
    run["target"] = target.name
    run["wall_s"] = elapsed
    run["cpu_pct"] = {role: 100 * used / elapsed for role, used in cpu_used.items()}
    run["cpu_us_per_request"] = {
        role: 1e6 * used / requests if requests else None for role, used in cpu_used.items()
    }
    loadgen = (
        children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    )
    run["loadgen_cpu_pct"] = 100 * loadgen / total_wall  # warm-up included
    if core is not None:
        run["server_core_busy_pct"] = 100 * busy / elapsed
        run["noise_pct"] = 100 * max(0.0, busy - sum(cpu_used.values())) / elapsed
    else:
        run["server_core_busy_pct"] = run["noise_pct"] = None
    return run


def serial_latency(target: Target, requests: int, reference: list[list[float]]) -> dict[str, Any]:
    """A serial httpx loop (one keep-alive connection): latency percentiles at C=1."""
    import httpx

    latencies = []
    with httpx.Client(
        base_url=f"http://127.0.0.1:{target.port}",
        headers={**target.headers, "content-type": "application/json"},
        timeout=10,
    ) as client:
        for i in range(requests + max(20, requests // 10)):  # the first ones warm up
            started = time.perf_counter()
            response = client.post(target.path, content=BODY)
            took = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{target.name}: {response.status_code} {response.text[:300]}")
            if i == 0:
                check_answer(response.content, reference)
            latencies.append(took)
    measured = np.asarray(latencies[-requests:]) * 1000
    p50, p90, p99 = np.percentile(measured, [50, 90, 99])
    return {
        "target": target.name,
        "requests": requests,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(measured.mean()),
        "max_ms": float(measured.max()),
    }


def bench_targets(
    targets: list[Target], args: argparse.Namespace, work: Path, reference: list[list[float]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """h2load at each concurrency (targets interleaved), then the serial loop per target."""
    for target in targets:  # warm every path up (connections, caches, the batcher's estimates)
        run_h2load(target, max(args.concurrency), args, work, reference, duration=1.0)
    runs = []
    for concurrency in args.concurrency:
        for target in targets:
            run = run_h2load(target, concurrency, args, work, reference)
            runs.append(run)
            cpu = "  ".join(
                f"{role} {us:.0f}" for role, us in run["cpu_us_per_request"].items() if us
            )
            print(
                f"  {target.name:<12} C={concurrency:<3} {run['req_per_s']:8.1f} req/s  p50"
                f" {run['p50_ms']:6.2f} ms  p99 {run['p99_ms']:6.2f} ms  errors"
                f" {run['errors']}  CPU µs/req: {cpu}",
                flush=True,
            )
    serial = []
    for target in targets:
        result = serial_latency(target, args.serial, reference)
        serial.append(result)
        print(
            f"  {target.name:<12} httpx serial: p50 {result['p50_ms']:.2f} ms  p99"
            f" {result['p99_ms']:.2f} ms",
            flush=True,
        )
    return runs, serial


# ---------------------------------------------------------------------------- profile


def _profile_group(filename: str, function: str) -> str:
    """The package a profiled function belongs to (C functions by their type's module)."""
    if filename == "~":
        for name in ("uvloop", "httptools", "pydantic_core", "_socket", "_ssl"):
            if name in function:
                return f"{name} (C)"
        if "run_until_complete" in function or "run_forever" in function:
            return "uvloop (C)"
        return "builtins (C)"
    if "/site-packages/" in filename:
        return filename.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    path = Path(filename)
    with contextlib.suppress(ValueError):
        return "repo: " + path.relative_to(REPO).parts[0]
    parts = path.parts
    for i, part in enumerate(parts):
        if part.startswith("python3"):
            rest = parts[i + 1 :]
            return "stdlib: " + (rest[0].removesuffix(".py") if rest else "?")
    return filename


#: Stages of a gateway call in the profile: (label, pattern of ``file:line(function)``); the
#: outermost match (largest cumulative time) counts. Nested stages are indented.
STAGES = (
    ("the app, whole call (uvicorn run_asgi)", r"uvicorn/protocols/http/\w+\.py:\d+\(run_asgi\)"),
    (
        "  FastAPI dependencies (solve_dependencies)",
        r"fastapi/dependencies/utils\.py:\d+\(solve_dependencies\)",
    ),
    ("    require_user (static token table)", r"hub_service/auth\.py:\d+\(require_user\)"),
    ("  Gateway.forward (the endpoint)", r"hub_service/gateway\.py:\d+\(forward\)"),
    ("    read the request body", r"starlette/requests\.py:\d+\(body\)"),
    ("    httpx AsyncClient.send (to response headers)", r"httpx/_client\.py:\d+\(send\)"),
    (
        "      httpcore pool bookkeeping",
        r"connection_pool\.py:\d+\(_assign_requests_to_connections\)",
    ),
    ("  StreamingResponse (relay the body)", r"starlette/responses\.py:\d+\(stream_response\)"),
    ("  close upstream response (BackgroundTask)", r"starlette/background\.py:\d+\(__call__\)"),
    (
        "failed `import sniffio` (httpcore)",
        r"httpcore/_synchronization\.py:\d+\(current_async_library\)",
    ),
    ("access log (logging.Logger.handle)", r"logging/__init__\.py:\d+\(handle\)"),
)


def summarize_profile(path: Path, requests: int, top: int = 25) -> dict[str, Any]:
    """Time per package and the most expensive functions, per request (µs)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    groups: dict[str, float] = {}
    functions = []
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.items():
        group = _profile_group(filename, function)
        groups[group] = groups.get(group, 0.0) + tottime
        short = filename
        if "/site-packages/" in short:
            short = short.split("/site-packages/", 1)[1]
        with contextlib.suppress(ValueError):
            short = str(Path(short).relative_to(REPO))
        functions.append(
            {
                "function": f"{short}:{line}({function})",
                "calls_per_request": calls / requests,
                "tottime_us_per_request": 1e6 * tottime / requests,
                "cumtime_us_per_request": 1e6 * cumtime / requests,
            }
        )
    total = sum(groups.values())
    stages = []
    for label, pattern in STAGES:
        matches = [f for f in functions if re.search(pattern, f["function"])]
        if matches:
            outer = max(matches, key=lambda f: f["cumtime_us_per_request"])
            stages.append({"stage": label, **outer})
    by_group = sorted(groups.items(), key=lambda item: -item[1])
    return {
        "requests": requests,
        "profiled_s": total,
        "us_per_request": 1e6 * total / requests,
        "groups": [
            {"group": g, "us_per_request": 1e6 * t / requests, "share": t / total}
            for g, t in by_group
        ],
        "stages": stages,
        "top_tottime": sorted(functions, key=lambda f: -f["tottime_us_per_request"])[:top],
        "top_cumtime": sorted(functions, key=lambda f: -f["cumtime_us_per_request"])[:top],
    }


# ---------------------------------------------------------------------------- phases


def start_static_service(
    root: Path, tokens: Path, port: int, args: argparse.Namespace, profile: Path | None = None
) -> Proc:
    env = base_env() | {
        "HUBSERVE_STATIC_TOKEN_FILE": str(tokens),
        "HUBSERVE_SERVICE_URL": f"http://127.0.0.1:{port}",
        "HUBSERVE_DATA_DIR": str(root / "service"),
        "HUBSERVE_STORE": str(root / "store"),
        "HUBSERVE_GATEWAY_RATE_LIMIT": "0",  # the runs measure the gateway, not its limit
    }
    if profile is None:
        command = [sys.executable, "-m", "hub_service"]
    else:
        command = [sys.executable, "-c", PROFILE_WRAPPER, str(profile)]
    proc = Proc("hub_service", [*args.server_pin, *command], root / "service.log", env)
    wait_until(
        lambda: call(port, "GET", f"{PREFIX}/healthz")[0] == 200, proc, 60, "service healthz"
    )
    return proc


def static_phase(
    archive: Path, args: argparse.Namespace, work: Path, results: dict[str, Any]
) -> None:
    """Deploy timings, then direct vs gateway, on a standalone static-token service."""
    from model_runtime.store import LocalStore

    root = work / "static"
    root.mkdir()
    LocalStore(root / "store").push(archive, owner=USER)
    token = secrets.token_hex(24)
    tokens = root / "tokens.json"
    tokens.write_text(json.dumps({token: {"name": USER}}))
    headers = {"authorization": f"token {token}"}
    data_dir = root / "service"
    port = common.free_port()
    print("static-token service (no JupyterHub)", flush=True)
    service = start_static_service(root, tokens, port, args)
    try:
        deploys = []
        for i in range(args.deploys + 1):
            deploy = time_deploy(port, headers, data_dir, USER)
            if i < args.deploys:
                deploy["delete_s"] = delete_deployment(port, headers, USER)
            deploys.append(deploy)
            print(
                f"  deploy #{i}{' (zygote start)' if i == 0 else ''}: first prediction"
                f" {deploy['first_prediction_s']:.3f} s (API {1000 * deploy['api_s']:.0f} ms,"
                f" replica launched {deploy['replica_launched_s']:.3f} s, ready"
                f" {deploy['replica_ready_s']:.3f} s)",
                flush=True,
            )
        warm = deploys[1:]
        results["deploy"] = {
            "cold": deploys[0],
            "warm": warm,
            "warm_median": {
                key: float(np.median([d[key] for d in warm]))
                for key in ("api_s", "replica_launched_s", "replica_ready_s", "first_prediction_s")
            }
            if warm
            else {},
        }
        record = replica_record(data_dir)
        secret = deployment_secret(data_dir, USER)
        reference = check_answer(
            call(record["port"], "POST", "/predict", BODY, {"x-hubserve-token": secret})[1]
        )
        results["reference_answer"] = reference
        pids = {"replica": int(record["pid"]), "gateway": service.pid}
        targets = [
            Target(
                "direct",
                "the replica itself, with the deployment secret",
                record["port"],
                "/predict",
                {"x-hubserve-token": secret},
                {"replica": pids["replica"]},
            ),
            Target(
                "gateway",
                "static-token hub_service gateway (uvicorn, no proxy)",
                port,
                f"{PREFIX}/d/{USER}/{MODEL}/predict",
                headers,
                pids,
            ),
        ]
        runs, serial = bench_targets(targets, args, work, reference)
        results["runs"] += runs
        results["serial"] += serial
        results["targets"] += [
            {"name": t.name, "description": t.description, "url": t.url} for t in targets
        ]
    finally:
        service.stop()
    if args.profile:
        profile_phase(root, tokens, headers, args, work, results)


def profile_phase(
    root: Path,
    tokens: Path,
    headers: dict[str, str],
    args: argparse.Namespace,
    work: Path,
    results: dict[str, Any],
) -> None:
    """Restart the static-token service under cProfile; profile one C=16 run of the gateway."""
    profile_file = work / "gateway.prof"
    port = common.free_port()
    print("profile: static-token service under cProfile", flush=True)
    started = time.perf_counter()
    service = start_static_service(root, tokens, port, args, profile=profile_file)
    try:
        path = f"{PREFIX}/d/{USER}/{MODEL}/predict"
        wait_until(lambda: call(port, "POST", path, BODY, headers)[0] == 200, service, 120, "ready")
        restart = time.perf_counter() - started
        reference = results["reference_answer"]
        record = replica_record(root / "service")
        target = Target(
            "gateway+cProfile",
            "the static-token gateway under cProfile",
            port,
            path,
            headers,
            {"replica": int(record["pid"]), "gateway": service.pid},
        )
        if args.pin:  # the service gets its core to itself: wall time = its own CPU time
            subprocess.run(
                ["taskset", "-a", "-p", "-c", args.client_cpu, str(record["pid"])],
                check=True,
                capture_output=True,
            )
        run_h2load(target, max(args.concurrency), args, work, reference, duration=1.0)
        os.kill(service.pid, signal.SIGUSR1)
        time.sleep(0.2)
        run = run_h2load(target, max(args.concurrency), args, work, reference, duration=6.0)
        os.kill(service.pid, signal.SIGUSR2)
        deadline = time.perf_counter() + 10
        while not profile_file.exists() and time.perf_counter() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # dump_stats writes the file in one go, but give it a moment
    finally:
        service.stop()
    requests = round(run["req_per_s"] * (6.0 + args.warmup))
    summary = summarize_profile(profile_file, requests)
    summary["run"] = {
        k: run[k] for k in ("concurrency", "req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request")
    }
    summary["service_restart_to_first_prediction_s"] = restart
    results["profile"] = summary
    print(
        f"  {summary['us_per_request']:.0f} µs profiled per request (with cProfile's overhead):"
        + ", ".join(f" {g['group']} {100 * g['share']:.0f}%" for g in summary["groups"][:8]),
        flush=True,
    )


def hub_phase(archive: Path, args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
    """A real JupyterHub: direct vs the hub-managed service vs configurable-http-proxy."""
    from model_runtime.store import LocalStore

    root = work / "hub"
    root.mkdir()
    # Long auth caches as in production, and no rate limit: the runs measure the chain's cost.
    env = {
        "HUBSERVE_POSITIVE_TTL": "60",
        "HUBSERVE_NEGATIVE_TTL": "5",
        "HUBSERVE_GATEWAY_RATE_LIMIT": "0",
    }
    print("JupyterHub + configurable-http-proxy + hub-managed service", flush=True)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        own = os.sched_getaffinity(0)
        if args.pin:  # the hub inherits it, and the proxy, service and replicas from the hub
            os.sched_setaffinity(0, {int(args.server_cpu)})
        try:
            hub = stack.enter_context(running_hub(root, extra_env=env))
        finally:
            os.sched_setaffinity(0, own)
        results["hub_start_s"] = time.perf_counter() - started
        proxy_port = int(urlsplit(hub.url).port or 80)
        response = hub.api.post("/users", json={"usernames": [USER]})
        if response.status_code != 201:
            raise RuntimeError(f"creating the hub user answered {response.status_code}")
        headers = {"authorization": f"token {hub.create_token(USER)[0]}"}
        LocalStore(root / "store").push(archive, owner=USER)
        data_dir = root / "service"
        deploy = time_deploy(proxy_port, headers, data_dir, USER)
        results["hub_deploy"] = deploy
        print(
            f"  deploy through the proxy (zygote start): first prediction"
            f" {deploy['first_prediction_s']:.3f} s",
            flush=True,
        )
        record = replica_record(data_dir)
        secret = deployment_secret(data_dir, USER)
        reference = results["reference_answer"]
        check_answer(
            call(record["port"], "POST", "/predict", BODY, {"x-hubserve-token": secret})[1],
            reference,
        )
        chp_pid = int((root / "jupyterhub-proxy.pid").read_text().strip())
        pids = {
            "replica": int(record["pid"]),
            "gateway": service_pid(data_dir),
            "proxy": chp_pid,
            "hub": hub.pid,
        }
        path = f"{PREFIX}/d/{USER}/{MODEL}/predict"
        targets = [
            Target(
                "hub_direct",
                "the hub-managed deployment's replica, with the deployment secret",
                record["port"],
                "/predict",
                {"x-hubserve-token": secret},
                {"replica": pids["replica"]},
            ),
            Target(
                "hub_gateway",
                "the hub-managed service's own port, hub token (no proxy)",
                hub.service_port,
                path,
                headers,
                {k: pids[k] for k in ("replica", "gateway", "hub")},
            ),
            Target(
                "hub_proxy",
                "JupyterHub's public port: configurable-http-proxy -> service -> replica",
                proxy_port,
                path,
                headers,
                pids,
            ),
        ]
        runs, serial = bench_targets(targets, args, work, reference)
        results["runs"] += runs
        results["serial"] += serial
        results["targets"] += [
            {"name": t.name, "description": t.description, "url": t.url} for t in targets
        ]


# ---------------------------------------------------------------------------- reporting

COMPARISONS = (
    ("gateway", "direct", "static-token gateway vs replica"),
    ("hub_gateway", "hub_direct", "hub-auth gateway vs replica"),
    ("hub_proxy", "hub_gateway", "configurable-http-proxy alone"),
    ("hub_proxy", "hub_direct", "proxy + gateway vs replica"),
)


def overheads(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = {(r["target"], r["concurrency"]): r for r in results["runs"]}
    serial = {s["target"]: s for s in results["serial"]}
    rows = []
    for slow, fast, label in COMPARISONS:
        for concurrency in results["meta"]["concurrency"]:
            a, b = runs.get((slow, concurrency)), runs.get((fast, concurrency))
            if a is None or b is None:
                continue
            rows.append(
                {
                    "comparison": f"{slow} - {fast}",
                    "label": label,
                    "concurrency": concurrency,
                    "delta_p50_ms": a["p50_ms"] - b["p50_ms"],
                    "delta_p99_ms": a["p99_ms"] - b["p99_ms"],
                    "p50_ratio": a["p50_ms"] / b["p50_ms"],
                    "p99_ratio": a["p99_ms"] / b["p99_ms"],
                    "req_per_s_ratio": a["req_per_s"] / b["req_per_s"],
                    "source": "h2load",
                }
            )
        if slow in serial and fast in serial:
            a, b = serial[slow], serial[fast]
            rows.append(
                {
                    "comparison": f"{slow} - {fast}",
                    "label": label,
                    "concurrency": 1,
                    "delta_p50_ms": a["p50_ms"] - b["p50_ms"],
                    "delta_p99_ms": a["p99_ms"] - b["p99_ms"],
                    "p50_ratio": a["p50_ms"] / b["p50_ms"],
                    "p99_ratio": a["p99_ms"] / b["p99_ms"],
                    "req_per_s_ratio": b["mean_ms"] / a["mean_ms"],
                    "source": "httpx serial",
                }
            )
    return rows


def _fmt(value: float | None, digits: int = 2) -> str:
    return common.fmt(value, digits)


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"## Gateway benchmark, {meta['date']}", ""]
    pin = (
        f"servers pinned to core {meta['server_cpu']}, h2load to core {meta['client_cpu']}"
        if meta["pinned"]
        else "not pinned"
    )
    lines.append(
        f"{meta['cpu']} ({meta['cpus']} cores), {pin}; h2load --h1 closed loop,"
        f" {meta['duration_s']:g} s per run after {meta['warmup_s']:g} s warm-up; Python"
        f" {meta['python']}, JupyterHub {meta['versions'].get('jupyterhub')},"
        f" configurable-http-proxy {meta['versions'].get('configurable-http-proxy')}."
    )
    deploy = results.get("deploy")
    if deploy:
        lines += ["", "### POST /api/deployments -> first prediction through the gateway", ""]
        lines += [
            "| deploy | API answer ms | replica launched s | replica ready s"
            " | first prediction s | delete s |",
            "|---|---|---|---|---|---|",
        ]
        for i, d in enumerate([deploy["cold"], *deploy["warm"]]):
            label = "#0 (starts the zygote)" if i == 0 else f"#{i}"
            lines.append(
                f"| {label} | {1000 * d['api_s']:.0f} | {d['replica_launched_s']:.3f}"
                f" | {d['replica_ready_s']:.3f} | {d['first_prediction_s']:.3f}"
                f" | {_fmt(d.get('delete_s'), 3)} |"
            )
        median = deploy["warm_median"]
        if median:
            lines.append(
                f"| median #1..#{len(deploy['warm'])} | {1000 * median['api_s']:.0f}"
                f" | {median['replica_launched_s']:.3f} | {median['replica_ready_s']:.3f}"
                f" | **{median['first_prediction_s']:.3f}** | |"
            )
    if "hub_deploy" in results:
        d = results["hub_deploy"]
        lines += [
            "",
            f"Through JupyterHub's proxy (a fresh service: zygote start included): first"
            f" prediction {d['first_prediction_s']:.3f} s (replica ready"
            f" {d['replica_ready_s']:.3f} s). Hub start-up: {results['hub_start_s']:.1f} s.",
        ]
    lines += ["", "### Load (h2load)", ""]
    lines += [
        "| target | C | req/s | p50 ms | p99 ms | errors | CPU µs/req: replica / gateway"
        " / proxy / hub | server core busy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in sorted(results["runs"], key=lambda r: (r["concurrency"], _order(r["target"]))):
        cpu = run["cpu_us_per_request"]
        lines.append(
            f"| {run['target']} | {run['concurrency']} | {_fmt(run['req_per_s'], 0)}"
            f" | {_fmt(run['p50_ms'])} | {_fmt(run['p99_ms'])} | {run['errors']}"
            f" | {' / '.join(_fmt(cpu.get(role), 0) for role in ROLES)}"
            f" | {_fmt(run['server_core_busy_pct'], 0)} |"
        )
    lines += ["", "### C=1, serial httpx loop", ""]
    lines += ["| target | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---|---|---|---|"]
    for s in results["serial"]:
        lines.append(
            f"| {s['target']} | {_fmt(s['p50_ms'])} | {_fmt(s['p90_ms'])}"
            f" | {_fmt(s['p99_ms'])} | {_fmt(s['mean_ms'])} |"
        )
    lines += ["", "### Overhead", ""]
    lines += [
        "| comparison | C | source | Δp50 ms | Δp99 ms | p50 ratio | p99 ratio | req/s ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in results["overhead"]:
        lines.append(
            f"| {o['label']} (`{o['comparison']}`) | {o['concurrency']} | {o['source']}"
            f" | {o['delta_p50_ms']:+.2f} | {o['delta_p99_ms']:+.2f} | {o['p50_ratio']:.2f}x"
            f" | {o['p99_ratio']:.2f}x | {o['req_per_s_ratio']:.2f}x |"
        )
    profile = results.get("profile")
    if profile:
        lines += [
            "",
            f"### Gateway profile (cProfile, C={profile['run']['concurrency']},"
            f" {profile['requests']} requests; cProfile roughly doubles the Python time)",
            "",
            "| package | µs/request | share |",
            "|---|---|---|",
        ]
        for group in profile["groups"][:14]:
            lines.append(
                f"| {group['group']} | {group['us_per_request']:.0f}"
                f" | {100 * group['share']:.1f}% |"
            )
        lines += ["", "| stage | cumulative µs/request |", "|---|---|"]
        for stage in profile["stages"]:
            label = stage["stage"]
            indent = (len(label) - len(label.lstrip())) // 2
            us = stage["cumtime_us_per_request"]
            lines.append(f"| {'&nbsp;' * 4 * indent}{label.strip()} | {us:.0f} |")
        lines += ["", "| function (self time) | µs/request | calls/request |", "|---|---|---|"]
        for f in profile["top_tottime"][:15]:
            lines.append(
                f"| `{f['function']}` | {f['tottime_us_per_request']:.0f}"
                f" | {f['calls_per_request']:.1f} |"
            )
    return "\n".join(lines)


def _order(target: str) -> int:
    names = ("direct", "gateway", "hub_direct", "hub_gateway", "hub_proxy")
    return names.index(target) if target in names else len(names)


# ---------------------------------------------------------------------------- main


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    cpu = common.cpu_model()
    versions = {
        name: _version(name)
        for name in ("jupyterhub", "fastapi", "starlette", "uvicorn", "httpx", "httpcore", "torch")
    }
    with contextlib.suppress(HubStartError, OSError, ValueError, KeyError):
        package = chp_path().resolve().parent.parent / "package.json"
        versions["configurable-http-proxy"] = json.loads(package.read_text())["version"]
    with contextlib.suppress(OSError):
        versions["node"] = subprocess.run(
            ["node", "--version"], capture_output=True, text=True
        ).stdout.strip()
    versions["h2load"] = subprocess.run(
        ["h2load", "--version"], capture_output=True, text=True
    ).stdout.strip()
    commit = common.git_commit()
    # httpcore imports sniffio on every request when it can; without it each attempt is a
    # failed import (a sys.path search): it changes the gateway's cost, so record it.
    sniffio = subprocess.run([sys.executable, "-c", "import sniffio"], env=base_env()).returncode
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "pinned": args.pin,
        "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "concurrency": args.concurrency,
        "deploys": args.deploys,
        "serial_requests": args.serial,
        "body": BODY.decode(),
        "python": platform.python_version(),
        "versions": versions,
        "sniffio_importable": sniffio == 0,
        "commit": commit,
        # Others may be editing the service: identify the code that was measured.
        "hub_service_sources_sha256": common.sources_digest(REPO / "hub_service"),
        "runtime_sources_sha256": common.sources_digest(REPO / "model_runtime"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Gateway and proxy overhead of the hub service (see bench/README.md)."
    )
    parser.add_argument("--concurrency", default="1,16", help="h2load connections per run")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="h2load warm-up per run (s)")
    parser.add_argument("--deploys", type=int, default=5, help="deploys after the first (cold)")
    parser.add_argument("--serial", type=int, default=1000, help="requests of the httpx loop")
    parser.add_argument("--no-hub", action="store_true", help="skip the JupyterHub phase")
    parser.add_argument("--profile", action="store_true", help="also profile the gateway")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    parser.add_argument("--server-cpu", default="0", help="core of the servers")
    parser.add_argument("--client-cpu", default="1", help="core of h2load and this script")
    parser.add_argument("--output", type=Path, help="JSON results file [bench/results/...]")
    parser.add_argument("--keep-work", action="store_true", help="keep logs and data dirs")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    if args.quick:
        args.duration, args.warmup, args.deploys, args.serial = 3.0, 0.5, 2, 300
    args.server_pin = ["taskset", "-c", args.server_cpu] if args.pin else []
    args.client_pin = ["taskset", "-c", args.client_cpu] if args.pin else []
    return args


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: processes stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tools = ["h2load", *(["taskset"] if args.pin else [])]
    for tool in tools:
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(":")):
            sys.exit(f"{tool} is required (Debian: apt install nghttp2-client util-linux)")
    if not args.no_hub:
        try:
            chp_path()
        except HubStartError as exc:
            sys.exit(str(exc))
    signal.signal(signal.SIGTERM, _raise_exit)
    if args.pin:
        os.sched_setaffinity(0, {int(args.client_cpu)})

    from model_runtime import build_bundle

    work = Path(tempfile.mkdtemp(prefix="hubserve-gateway-bench-"))
    (work / "body.json").write_bytes(BODY)
    results: dict[str, Any] = {
        "meta": _meta(args),
        "targets": [],
        "runs": [],
        "serial": [],
    }
    started = time.perf_counter()
    try:
        archive = build_bundle(f"{SOURCE}:service", output_dir=work / "dist").archive
        static_phase(archive, args, work, results)
        if not args.no_hub:
            hub_phase(archive, args, work, results)
    finally:
        left = sweep(work)
        if left:
            print(f"killed processes left behind: {left}", file=sys.stderr)
        results["meta"]["leftover_pids_killed"] = left
        results["meta"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        results["meta"]["total_s"] = time.perf_counter() - started
        if args.keep_work:
            print(f"work files kept in {work}")
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    results["overhead"] = overheads(results)
    print()
    print(report(results))
    output = args.output or RESULTS_DIR / f"gateway_{datetime.now():%Y-%m-%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(common.json_safe(results), indent=2) + "\n")
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
