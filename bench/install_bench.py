"""What ``pip install hubserve`` costs: before and after the runtime / hub / jupyter split.

Two fresh virtual environments under ``/tmp``, each with a wheel of this checkout:

* **before**: the wheel (``--no-deps``) plus the core dependencies of ``pyproject.toml`` at
  ``--before-ref`` (default ``HEAD``), which held JupyterHub, JupyterLab, SQLAlchemy, ...;
* **after**: ``pip install <wheel>``, the core dependencies of the working tree.

For each: the size on disk (``du``: allocated blocks, hard links once) of the environment and
of what the install added to an empty one, and the number of distributions the install added,
without torch and again after ``pip install torch==2.13.0`` (which the iris example needs).
Then ``hubserve serve`` of the iris example (``examples/iris/iris.py``, built once with
``model_runtime.build_bundle``) in each environment: the time from the process start until
``GET /readyz`` answers 200, ``--runs`` launches per environment, interleaved, each with an
empty bundle cache. pip runs with the machine's own configuration (indexes, find-links,
constraints). The environments are deleted at the end (``--keep-work`` keeps them).

    .venv/bin/python bench/install_bench.py               # ~4 minutes, mostly pip
    .venv/bin/python bench/install_bench.py --runs 9 --before-ref main

Results: a table, and JSON in ``bench/results/install_<date>.json`` (or ``--output``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomllib
from _common import REPO, RESULTS_DIR, cpu_model, free_port, git_commit, kill_group, popen_waiter

TORCH = "torch==2.13.0"
#: What the wheel is built from: what deploy/Containerfile copies into its wheel stage.
WHEEL_SOURCES = (
    "pyproject.toml",
    "setup.cfg",
    "README.md",
    "model_runtime/",
    "hub_service/",
    "jupyter_extension/",
    "jupyter-config/",
    "hubserve/",
)
#: Distributions of the hub and notebook stacks: counted in each environment, as a check.
STACKS = (
    "jupyterhub",
    "jupyterlab",
    "jupyter-server",
    "ipywidgets",
    "ipython",
    "sqlalchemy",
    "alembic",
    "cryptography",
    "aiohttp",
)
READY_TIMEOUT_S = 120.0
POLL_S = 0.005


def log(message: str) -> None:
    print(message, flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def pip(venv: Path, *args: str) -> float:
    """``pip install ...`` in ``venv``; returns its wall time in seconds."""
    started = time.perf_counter()
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *args])
    return time.perf_counter() - started


def build_wheel(work: Path) -> Path:
    """A wheel of the working tree, built from a copy (so no build/ or egg-info lands here)."""
    listed = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"]).stdout
    source = work / "source"
    for name in listed.splitlines():
        wanted = any(name == s or name.startswith(s) for s in WHEEL_SOURCES)
        if wanted and (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    built_lab = REPO / "jupyter_extension" / "labextension"
    if built_lab.is_dir():  # the prebuilt Lab panel, shipped as data files when built
        shutil.copytree(built_lab, source / "jupyter_extension" / "labextension")
    wheels = work / "wheels"
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "."]
    run(cmd, cwd=source)
    (wheel,) = wheels.glob("hubserve-*.whl")
    return wheel


def core_requirements(ref: str | None) -> list[str]:
    """``project.dependencies`` of pyproject.toml at git ``ref``, or of the working tree."""
    if ref is None:
        text = (REPO / "pyproject.toml").read_text()
    else:
        text = run(["git", "-C", str(REPO), "show", f"{ref}:pyproject.toml"]).stdout
    requirements: list[str] = tomllib.loads(text)["project"]["dependencies"]
    return requirements


def disk_usage(root: Path) -> int:
    """Bytes allocated under ``root``, as ``du`` counts them (each inode once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            stat = (Path(directory) / name).lstat()
            key = (stat.st_dev, stat.st_ino)
            if key not in seen:
                seen.add(key)
                total += stat.st_blocks * 512
    return total + root.lstat().st_blocks * 512


def distributions(venv: Path) -> set[str]:
    code = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps(sorted({d.metadata['Name'].lower().replace('_', '-')"
        " for d in m.distributions()})))"
    )
    # -I: not the current directory (a checkout's *.egg-info would count as installed)
    return set(json.loads(run([str(venv / "bin" / "python"), "-I", "-c", code]).stdout))


def make_venv(path: Path) -> None:
    run([sys.executable, "-m", "venv", str(path)])


def measure(venv: Path, empty_size: int, empty_dists: set[str]) -> dict[str, Any]:
    dists = distributions(venv) - empty_dists
    size = disk_usage(venv)
    return {
        "venv_bytes": size,
        "installed_bytes": size - empty_size,
        "distributions": len(dists),
        "distribution_names": sorted(dists),
        "hub_and_notebook_stack": sorted(set(STACKS) & dists),
    }


def readyz(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status
    finally:
        connection.close()


def time_to_ready(venv: Path, bundle: Path, work: Path) -> float:
    """Seconds from starting ``hubserve serve`` until ``/readyz`` answers 200."""
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="serve-", dir=work))
    env = {
        **os.environ,
        "HUBSERVE_CACHE": str(run_dir / "cache"),
        "HUBSERVE_HOME": str(run_dir / "home"),
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    env.pop("VIRTUAL_ENV", None)
    cmd = [str(venv / "bin" / "hubserve"), "serve", str(bundle), "--port", str(port)]
    with (run_dir / "serve.log").open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*cmd, "--threads", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=run_dir,
            start_new_session=True,
        )
    try:
        while True:
            elapsed = time.perf_counter() - started
            if process.poll() is not None or elapsed > READY_TIMEOUT_S:
                raise RuntimeError(f"not ready: {(run_dir / 'serve.log').read_text()[-3000:]}")
            try:
                if readyz(port) == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(POLL_S)
    finally:
        kill_group(process.pid, popen_waiter(process))


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def print_table(results: dict[str, Any]) -> None:
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("venv, no torch (MiB)", lambda r: mib(r["no_torch"]["venv_bytes"])),
        ("installed, no torch (MiB)", lambda r: mib(r["no_torch"]["installed_bytes"])),
        ("distributions, no torch", lambda r: str(r["no_torch"]["distributions"])),
        ("venv, with torch (MiB)", lambda r: mib(r["torch"]["venv_bytes"])),
        ("installed, with torch (MiB)", lambda r: mib(r["torch"]["installed_bytes"])),
        ("distributions, with torch", lambda r: str(r["torch"]["distributions"])),
        ("pip install, no torch (s)", lambda r: f"{r['pip_seconds']:.1f}"),
        ("serve to ready, median (s)", lambda r: f"{r['serve_ready_s']['median']:.3f}"),
        ("serve to ready, min (s)", lambda r: f"{r['serve_ready_s']['min']:.3f}"),
    ]
    before, after = results["before"], results["after"]
    log(f"\n{'':30} {'before':>10} {'after':>10}")
    for label, cell in rows:
        log(f"{label:30} {cell(before):>10} {cell(after):>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="serve launches per environment")
    parser.add_argument("--before-ref", default="HEAD", help="git ref of the old dependencies")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--keep-work", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hubserve-install-bench-", dir="/tmp"))
    meta: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": git_commit(),
        "before_ref": args.before_ref,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": TORCH,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "size": "allocated blocks (du), each inode once; installed = venv minus an empty venv",
        "serve": "hubserve serve <iris bundle> --threads 1: process start -> GET /readyz 200",
    }
    try:
        log(f"work directory: {work}")
        wheel = build_wheel(work)
        log(f"wheel: {wheel.name}")
        from model_runtime import build_bundle  # this checkout's, with torch (the .venv)

        bundle = build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=work)
        log(f"bundle: {bundle.archive.name}")

        make_venv(work / "empty")
        empty_size, empty_dists = disk_usage(work / "empty"), distributions(work / "empty")
        meta["empty_venv_bytes"] = empty_size
        meta["empty_venv_distributions"] = sorted(empty_dists)
        meta["pip"] = run(
            [str(work / "empty/bin/python"), "-m", "pip", "--version"]
        ).stdout.split()[1]

        old, new = core_requirements(args.before_ref), core_requirements(None)
        results: dict[str, Any] = {
            "before": {"requirements": old},
            "after": {"requirements": new},
        }
        for name, result in results.items():
            venv = work / name
            make_venv(venv)
            if name == "before":
                seconds = pip(venv, *old)
                seconds += pip(venv, "--no-deps", str(wheel))
            else:
                seconds = pip(venv, str(wheel))
            result["pip_seconds"] = seconds
            result["no_torch"] = measure(venv, empty_size, empty_dists)
            log(
                f"{name}: {mib(result['no_torch']['installed_bytes'])} MiB installed,"
                f" {result['no_torch']['distributions']} distributions, pip {seconds:.0f} s"
            )
        for name, result in results.items():
            venv = work / name
            result["torch_pip_seconds"] = pip(venv, TORCH)
            result["torch"] = measure(venv, empty_size, empty_dists)
            log(f"{name} + torch: {mib(result['torch']['installed_bytes'])} MiB installed")

        for name in results:  # one launch each first: warms the page cache for both alike
            time_to_ready(work / name, bundle.archive, work)
        times: dict[str, list[float]] = {name: [] for name in results}
        for i in range(args.runs):
            for name in results:
                seconds = time_to_ready(work / name, bundle.archive, work)
                times[name].append(seconds)
                log(f"serve run {i + 1}/{args.runs} {name}: ready in {seconds:.3f} s")
        for name, result in results.items():
            result["serve_ready_s"] = {
                "median": statistics.median(times[name]),
                "min": min(times[name]),
                "max": max(times[name]),
                "runs": times[name],
            }
        meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        print_table(results)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M%S")
        output = args.output or RESULTS_DIR / f"install_{stamp}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        log(f"\nresults written to {output}")
    finally:
        if args.keep_work:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
