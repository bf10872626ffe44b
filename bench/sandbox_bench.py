"""What the local backend's sandbox costs: replica start, per-request time, memory.

The iris example is pushed to a local store and unpacked as the backend does (readable by the
models' user). Replicas are then started four ways, interleaved run by run so that the
machine's drift hits each alike:

* **zygote**: forked from a zygote (``hubserve zygote``), as the backend launches them;
* **zygote+sandbox**: the same fork, then the sandbox (namespaces, mounts, the
  ``hubserve-models`` user) made in the child before the bundle loads;
* **serve**: a plain ``hubserve serve`` process (no zygote);
* **serve+sandbox**: the same behind ``python -m model_runtime.sandbox``.

Each start is timed from the launch request to the first ``/readyz`` 200 (polled every 5 ms).
One replica of each zygote kind then answers ``classify`` (one row, one connection kept
alive) in alternating blocks, for the per-request cost; and the memory of each replica is
read from ``/proc`` (RSS; PSS, which shares the zygote's copy-on-write pages out), with the
wrapper process that waits beside a sandboxed ``serve`` replica.

Needs root (sandboxes) and the ``hubserve-models`` user (``make models-user``)::

    .venv/bin/python bench/sandbox_bench.py               # ~1 minute
    .venv/bin/python bench/sandbox_bench.py --runs 10 --requests 4000

Results: a table and ``bench/results/sandbox_<date>.json`` (or ``$HUBSERVE_BENCH_OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

sys.path.insert(0, str(common.REPO))
from model_runtime import LocalStore, build_bundle
from model_runtime.runtime._zygote import spawn
from model_runtime.sandbox import PROFILE_ENV, Account, Profile

SECRET = "bench-secret"  # noqa: S105 - the replicas' token in this run
MODES = ("zygote", "zygote+sandbox", "serve", "serve+sandbox")
ROW = [[5.1, 3.5, 1.4, 0.2]]


@dataclass
class Replica:
    mode: str
    pid: int
    port: int
    wait: Callable[[float], bool]
    wrapper: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Bench:
    def __init__(self, work: Path, profile: Profile) -> None:
        self.work = work
        self.profile = profile
        self.logs = work / "logs"
        self.logs.mkdir()
        self.socket = work / "zygote.sock"
        self.zygote = subprocess.Popen(
            [sys.executable, "-m", "model_runtime.cli", "zygote", "--socket", str(self.socket)],
            stdout=(self.logs / "zygote.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not self.socket.exists():
            if time.monotonic() > deadline or self.zygote.poll() is not None:
                raise SystemExit(f"the zygote did not start: see {self.logs / 'zygote.log'}")
            time.sleep(0.05)

    def launch(self, mode: str, bundle: Path) -> Replica:
        port = common.free_port()
        log = self.logs / f"{mode}-{port}.log"
        sandbox = self.profile if mode.endswith("+sandbox") else None
        if mode.startswith("zygote"):
            settings = {"host": "127.0.0.1", "port": port, "api_token": SECRET, "threads": 1}
            pid = spawn(self.socket, str(bundle), log_file=log, settings=settings, sandbox=sandbox)
            return Replica(mode, pid, port, common.pid_waiter(pid))
        command = [sys.executable, "-m", "model_runtime.cli", "serve", str(bundle)]
        command += ["--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--env", "none"]
        env = {**os.environ, "HUBSERVE_RUNTIME_API_TOKEN": SECRET}
        if sandbox is not None:
            command = [sys.executable, "-m", "model_runtime.sandbox", "--", *command]
            env[PROFILE_ENV] = sandbox.dumps()
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        replica = Replica(mode, process.pid, port, common.popen_waiter(process))
        if sandbox is not None:  # the runtime is the wrapper's child; the wrapper waits
            replica.wrapper, replica.pid = process.pid, _child_of(process.pid)
        return replica

    def stop(self, replica: Replica) -> None:
        common.kill_group(replica.wrapper or replica.pid, replica.wait)

    def close(self) -> None:
        common.kill_group(self.zygote.pid, common.popen_waiter(self.zygote))


def _child_of(parent: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = [pid for pid, ppid in common.parent_pids().items() if ppid == parent]
        if children:
            return children[0]
        time.sleep(0.005)
    raise RuntimeError(f"process {parent} started no child")


def _wait_ready(client: httpx.Client, replica: Replica, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(f"{replica.url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{replica.mode} replica on port {replica.port} never got ready")


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _latencies(client: httpx.Client, replica: Replica, count: int) -> list[float]:
    headers = {"x-hubserve-token": SECRET}
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post(f"{replica.url}/classify", json=ROW, headers=headers)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="starts of each kind")
    parser.add_argument("--requests", type=int, default=2000, help="requests to each replica")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("sandboxes need root")
    work = Path(tempfile.mkdtemp(prefix="hubserve-sandbox-bench-"))
    try:
        built = build_bundle(f"{common.REPO / 'examples/iris/iris.py'}:service", output_dir=work)
        store = LocalStore(work / "store")
        ref = store.push(built.archive, owner="bench")
        bundle = store.pull(ref, cache_dir=work / "cache").path
        for folder, _, files in os.walk(bundle):  # as the backend does for its sandboxes
            Path(folder).chmod(0o755)
            for name in files:
                (Path(folder) / name).chmod(0o644)
        profile = Profile(
            Account.named("hubserve-models"),
            read_only=(str(bundle),),
            hidden=(str(work),),
            tmp_size=64 << 20,
        )
        bench = Bench(work, profile)
        results = run(bench, bundle, args)
        bench.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results)


def run(bench: Bench, bundle: Path, args: argparse.Namespace) -> dict[str, Any]:
    starts: dict[str, list[float]] = {mode: [] for mode in MODES}
    kept: dict[str, Replica] = {}
    with httpx.Client() as client:
        for run_index in range(args.runs):
            for mode in MODES:
                started = time.perf_counter()
                replica = bench.launch(mode, bundle)
                _wait_ready(client, replica)
                starts[mode].append(time.perf_counter() - started)
                if run_index == args.runs - 1:
                    kept[mode] = replica
                else:
                    bench.stop(replica)
        latencies: dict[str, list[float]] = {"zygote": [], "zygote+sandbox": []}
        block = max(1, args.requests // 10)
        for mode in latencies:  # warm both first
            _latencies(client, kept[mode], 50)
        for _ in range(10):
            for mode in latencies:
                latencies[mode] += _latencies(client, kept[mode], block)
        memory = {
            mode: {"rss_mb": common.rss_mb(r.pid), "pss_mb": _pss_mb(r.pid)}
            for mode, r in kept.items()
        }
        wrapper = kept["serve+sandbox"].wrapper
        assert wrapper is not None
        memory["serve+sandbox"]["wrapper_rss_mb"] = common.rss_mb(wrapper)
        memory["serve+sandbox"]["wrapper_pss_mb"] = _pss_mb(wrapper)
        for replica in kept.values():
            bench.stop(replica)
    return {
        "date": datetime.now(timezone.utc).isoformat(),
        "cpu": common.cpu_model(),
        "commit": common.git_commit(),
        "runs": args.runs,
        "requests": args.requests,
        "start_s": {mode: statistics.median(values) for mode, values in starts.items()},
        "start_all_s": starts,
        "request_ms": {
            mode: {
                "median": 1000 * statistics.median(values),
                "p99": 1000 * common.percentiles(values, (99,))[0],
            }
            for mode, values in latencies.items()
        },
        "memory": memory,
    }


def report(results: dict[str, Any]) -> None:
    start = results["start_s"]
    print(f"replica start to ready (median of {results['runs']}), iris, 1 torch thread:")
    for mode in MODES:
        print(f"  {mode:15} {start[mode]:.3f} s")
    print(
        f"  sandbox adds {1000 * (start['zygote+sandbox'] - start['zygote']):+.0f} ms forked,"
        f" {1000 * (start['serve+sandbox'] - start['serve']):+.0f} ms plain"
    )
    request = results["request_ms"]
    plain, boxed = request["zygote"], request["zygote+sandbox"]
    print(f"per request (classify, one row, {results['requests']} each, interleaved):")
    for mode, values in request.items():
        print(f"  {mode:15} median {values['median']:.3f} ms  p99 {values['p99']:.3f} ms")
    print(f"  ratio sandbox/plain (median) {boxed['median'] / plain['median']:.3f}")
    print("memory per replica (MiB):")
    for mode, values in results["memory"].items():
        extra = ""
        if "wrapper_rss_mb" in values:
            extra = (
                f"  + wrapper RSS {values['wrapper_rss_mb']:.1f} PSS {values['wrapper_pss_mb']:.1f}"
            )
        print(f"  {mode:15} RSS {values['rss_mb']:.1f}  PSS {values['pss_mb']:.1f}{extra}")
    out = common.results_dir() / f"sandbox_{datetime.now(timezone.utc):%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps(common.json_safe(results), indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
