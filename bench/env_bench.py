"""Deploy -> first prediction for a bundle that needs packages the service lacks.

The stack is the tests' hub (:func:`tests.live_hub.running_hub`: JupyterHub + proxy + the
service with the local backend), whose environment has no scikit-learn. A scikit-learn
classifier (saved with skops) is packaged in a subprocess that has scikit-learn
(``tests/extra_packages.py``), pushed, and deployed again and again under new names, each
time measuring from the ``POST`` of the deployment until the first prediction through the
proxy succeeds (the status polled every 20 ms), in three states of the environment root
(``HUBSERVE_ENV_ROOT``):

* **(a) cold**: the root removed: uv's cache is empty, every wheel is fetched again (from
  this machine's indexes, most of them local);
* **(b) warm cache**: the environments removed, uv's cache kept: resolve and link;
* **(c) built**: everything kept: the environment is found by its key, the replica is
  forked from the zygote with the overlay on its path.

Then a bundle pinning another pandas (a *full* environment: its own interpreter) once, and the
disk each kind of environment takes (allocated blocks, hard links counted once; uv links
files from its cache, so the cache is reported too).

    .venv/bin/python bench/env_bench.py            # ~3 minutes
    .venv/bin/python bench/env_bench.py --runs 5

Results: a table and ``bench/results/env_<date>.json`` (or ``$HUBSERVE_BENCH_OUT``).
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

sys.path.insert(0, str(common.REPO))
import hubserve
from tests.extra_packages import SKLEARN, extra_site
from tests.live_hub import running_hub

PACKAGE = """
import sys
import numpy as np
from sklearn.linear_model import LogisticRegression
from model_runtime import Service, build_bundle

rng = np.random.default_rng(0)
X = rng.normal(size=(80, 4)).astype("float32")
clf = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))
svc = Service("skbench", models={"clf": clf})


@svc.api(input="ndarray", output="ndarray")
def proba(x: np.ndarray) -> np.ndarray:
    return clf.predict_proba(x)


print(build_bundle(svc, output_dir=sys.argv[1]).archive)
"""

PANDAS = """
import sys
from model_runtime import Service, build_bundle

svc = Service("pdbench")


@svc.api(input="json", output="json")
def version(_: object) -> str:
    import pandas

    return pandas.__version__


print(build_bundle(svc, output_dir=sys.argv[1], requirements=["pandas==2.2.3"]).archive)
"""


def package(script: str, out: Path, pythonpath: list[Path]) -> Path:
    """Build a bundle in a subprocess (which may have packages this process lacks)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [common.REPO, *pythonpath]))}
    source = out / f"package_{abs(hash(script))}.py"  # packaging reads the functions' source
    out.mkdir(parents=True, exist_ok=True)
    source.write_text(script)
    done = subprocess.run(
        [sys.executable, str(source), str(out)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return Path(done.stdout.strip().splitlines()[-1])


def deploy_to_first_answer(
    api: httpx.Client, owner: str, model: str, name: str, api_name: str, body: Any
) -> tuple[float, dict[str, Any]]:
    """Seconds from the deployment's POST to its first successful prediction; its status."""
    started = time.perf_counter()
    response = api.post("/api/deployments", json={"model": model, "name": name})
    response.raise_for_status()
    deadline = started + 600
    while True:
        status = api.get(f"/api/deployments/{owner}/{name}").json()["status"]
        if status["phase"] == "ready":
            answer = api.post(f"/d/{owner}/{name}/{api_name}", json=body)
            if answer.status_code == 200:
                return time.perf_counter() - started, status
        if status["phase"] == "failed":
            raise RuntimeError(f"{name} failed: {status['message']}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{name} not ready: {status}")
        time.sleep(0.02)


def undeploy(api: httpx.Client, owner: str, name: str) -> None:
    api.delete(f"/api/deployments/{owner}/{name}").raise_for_status()


def du(path: Path) -> int:
    """Allocated bytes below ``path``, hard links once."""
    done = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True)
    return int(done.stdout.split()[0]) if done.returncode == 0 else 0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    site = extra_site(SKLEARN)
    sk_archive = package(PACKAGE, work / "dist", [site])
    pd_archive = package(PANDAS, work / "dist", [])
    env_root = work / "envs"
    results: dict[str, Any] = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": common.cpu_model(),
        "cpus": os.cpu_count(),
        "commit": common.git_commit(),
        "runs": {},
    }
    (work / "hub").mkdir()
    with running_hub(work / "hub", extra_env={"HUBSERVE_ENV_ROOT": str(env_root)}) as hub:
        owner = hub.create_user("bench")
        token = hub.create_token(owner)[0]
        headers = {"Authorization": f"token {token}"}
        with hubserve.Client(hub.service_url + "/", token) as client:
            for archive in (sk_archive, pd_archive):
                client.push(archive, progress=False)
        with httpx.Client(base_url=hub.service_url, headers=headers, timeout=120) as api:
            row = np.zeros((1, 4)).tolist()
            count = 0
            cases = {"a_cold": "root", "b_warm_cache": "envs", "c_built": None}
            for _ in range(args.runs):
                for case, remove in cases.items():
                    if remove == "root":
                        shutil.rmtree(env_root, ignore_errors=True)
                    elif remove == "envs":
                        shutil.rmtree(env_root / "envs", ignore_errors=True)
                    count += 1
                    name = f"sk{count}"
                    seconds, status = deploy_to_first_answer(
                        api, owner, "skbench", name, "proba", row
                    )
                    results["runs"].setdefault(case, []).append(seconds)
                    results["overlay"] = status["environment"]
                    print(f"{case:<13} {seconds:6.2f} s  {status['environment']['kind']}")
                    undeploy(api, owner, name)
            seconds, status = deploy_to_first_answer(api, owner, "pdbench", "pd", "version", {})
            results["runs"]["full_environment_cold"] = [seconds]
            results["full"] = status["environment"]
            print(f"{'full, cold':<13} {seconds:6.2f} s  {status['environment']['kind']}")
    records = {r["kind"]: r for r in _records(env_root)}
    results["disk"] = {
        "overlay_bytes": records.get("overlay", {}).get("bytes"),
        "full_bytes": records.get("full", {}).get("bytes"),
        "uv_cache_bytes": du(env_root / "uv-cache"),
        "root_bytes": du(env_root),
    }
    results["median_s"] = {case: statistics.median(v) for case, v in results["runs"].items()}
    return results


def _records(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (root / "envs").glob("*/env.json")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="deploys per case")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hubserve-env-bench-"))
    try:
        results = run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mib = 2**20
    disk = results["disk"]
    print()
    print("| case | deploy -> first prediction, median s | runs |")
    print("|---|---|---|")
    for case, seconds in results["median_s"].items():
        print(f"| {case} | {seconds:.2f} | {len(results['runs'][case])} |")
    print()
    for key, value in disk.items():
        print(f"{key}: {(value or 0) / mib:,.1f} MiB")
    out = common.results_dir() / f"env_{datetime.now(timezone.utc):%Y-%m-%d-%H%M%S}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
