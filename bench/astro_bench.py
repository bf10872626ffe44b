"""Astro benchmark: ``segment_folder`` served by hubserve against the bare model, 1 and 2 cores.

The astronomy example's path API turns a folder of FITS images into masks, previews and
catalogues. This script measures how many images per second that reaches through the
runtime's batch-job API, and how that compares with the network alone, on the same images:

1. writes N synthetic 256x256 FITS fields (``examples/astro/skygen.py``, fixed seed) to a
   local folder, and packages the service as the notebook does
   (``build_bundle("examples/astro/service.py:service")``), unpacked into a directory;
2. for each core count C (1: ``taskset -c 0``, 2: ``taskset -c 0,1``; torch threads = C),
   in fresh processes pinned to those cores:

   * **model**: the bare network in-process (``train.load_model()``, ``inference_mode``) on
     the images already read and normalised, forward + argmax, one image per call (what the
     path API does per file; the ratio's reference) and, on the first 64 images, in batches
     of 8 (whether batching would help the network on these cores);
   * **function**: the service's ``segment_folder`` function called in a loop in-process
     (read the FITS file, normalise, segment, write mask FITS + PNG preview + catalogue to a
     local folder): the same work per image as the server, without any serving machinery;
   * **served**: ``hubserve serve BUNDLE --threads C`` under ``taskset``, one
     ``POST /jobs/segment_folder {"input": <folder>, "output": <folder>}``, polled every
     0.25 s until it ends. Throughput = images / (``finished_at`` - ``started_at``) of the
     job status (the server's own clock), also reported from the client's side (POST to
     the final state seen);

3. reports images/s per mode and core count, ``served / model`` (the issue's ratio: what the
   whole path costs next to the network) and ``served / function`` (what the job machinery
   costs next to the same work done in-process), and writes everything to
   ``bench/results/astro_<date>.json``.

Each mode runs ``--rounds`` times, interleaved, and the median is reported. The host is shared:
every measurement records the CPU the measured process used and the CPU that *other*
processes took on the same cores meanwhile (``noise``); above a few percent, rerun.

Usage (from the repository root; see ``bench/README.md``)::

    .venv/bin/python bench/astro_bench.py               # 200 images, 1 and 2 cores, 3 rounds
    .venv/bin/python bench/astro_bench.py --quick       # 40 images, 1 round
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS_DIR,
    cores_busy_seconds,
    cpu_model,
    cpu_seconds,
    free_port,
    git_commit,
    kill_group,
    popen_waiter,
)

ASTRO = REPO / "examples" / "astro"
POLL_SECONDS = 0.25
MODES = ("model", "function", "served")
#: Images of the batch-8 measurement (a reference point, not the ratio: it is kept short).
BATCH8_IMAGES = 64


# -- CPU accounting (Linux) -------------------------------------------------------------------


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- child processes: the in-process measurements ---------------------------------------------


def _child_model(data: Path, threads: int) -> dict[str, Any]:
    """The bare network on pre-read, normalised images: batch 1 and batch 8."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ASTRO))
    from skygen import normalise, read_image
    from train import load_model

    torch.set_num_threads(threads)
    model = load_model()
    files = sorted(data.glob("*.fits"))
    images = np.stack([normalise(read_image(path)[0]) for path in files])[:, None]
    tensors = torch.from_numpy(images)
    results: dict[str, Any] = {"images": len(files), "torch_threads": torch.get_num_threads()}
    with torch.inference_mode():
        for _ in range(3):
            model(tensors[:8]).argmax(dim=1)
        for batch, count in ((1, len(tensors)), (8, min(len(tensors), BATCH8_IMAGES))):
            started = time.perf_counter()
            for start in range(0, count, batch):
                model(tensors[start : start + batch]).argmax(dim=1).numpy()
            seconds = time.perf_counter() - started
            results[f"batch{batch}_images_per_s"] = count / seconds
    results["images_per_s"] = results["batch1_images_per_s"]
    return results


def _child_function(data: Path, bundle: Path, threads: int) -> dict[str, Any]:
    """The packaged ``segment_folder`` called in a loop, outputs to a local folder."""
    import torch

    from model_runtime import load_bundle

    torch.set_num_threads(threads)
    service = load_bundle(bundle)
    files = sorted(data.glob("*.fits"))
    with tempfile.TemporaryDirectory(prefix="astro-bench-fn-") as tmp:
        warm = Path(tmp) / "warm"
        warm.mkdir()
        service.call("segment_folder", files[0], warm)
        started = time.perf_counter()
        for index, path in enumerate(files):
            out = Path(tmp) / str(index)
            out.mkdir()
            service.call("segment_folder", path, out)
        seconds = time.perf_counter() - started
    return {
        "images": len(files),
        "images_per_s": len(files) / seconds,
        "torch_threads": torch.get_num_threads(),
    }


def run_child(mode: str, cpus: list[int], data: Path, bundle: Path) -> dict[str, Any]:
    """Run one in-process measurement in a fresh process pinned to ``cpus``."""
    command = [
        "taskset",
        "-c",
        ",".join(map(str, cpus)),
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--data",
        str(data),
        "--bundle",
        str(bundle),
        "--threads",
        str(len(cpus)),
    ]
    busy, own = cores_busy_seconds(cpus), children_cpu_seconds()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    own_cpu = children_cpu_seconds() - own
    result["process_cpu_s"] = round(own_cpu, 2)
    result["noise_pct"] = _noise(cores_busy_seconds(cpus) - busy, own_cpu, wall, len(cpus))
    return result


def _noise(busy: float, own: float, wall: float, n_cores: int) -> float:
    """Share (%) of the cores' time that other processes used during ``wall`` seconds."""
    return round(max(0.0, busy - own) / (wall * n_cores) * 100, 1)


# -- the served measurement -------------------------------------------------------------------


def http_json(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        connection.close()


@contextlib.contextmanager
def served(bundle: Path, cpus: list[int], work: Path) -> Iterator[tuple[int, int]]:
    """``hubserve serve`` pinned to ``cpus``; yields (port, pid) once ready."""
    port = free_port()
    log = work / f"serve-{port}.log"
    env = {**os.environ, "HUBSERVE_HOME": str(work / "home"), "TMPDIR": str(work)}
    command = [
        "taskset",
        "-c",
        ",".join(map(str, cpus)),
        str(Path(sys.executable).with_name("hubserve")),
        "serve",
        str(bundle),
        "--port",
        str(port),
        "--threads",
        str(len(cpus)),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-4000:]}")
            with contextlib.suppress(OSError):
                if http_json(port, "GET", "/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {log.read_text()[-4000:]}")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        kill_group(proc.pid, popen_waiter(proc))


def run_served(
    bundle: Path, cpus: list[int], data: Path, work: Path, poll: float = POLL_SECONDS
) -> dict[str, Any]:
    """One ``segment_folder`` job over ``data`` on a fresh server; images/s and costs."""
    output = work / f"out-{time.monotonic_ns()}"
    with served(bundle, cpus, work) as (port, pid):
        # One warm-up job of one image: the first call pays lazy initialisation.
        warm = work / "warm-in"
        warm.mkdir(exist_ok=True)
        first = min(data.glob("*.fits"))
        shutil.copyfile(first, warm / first.name)
        _wait(port, _submit(port, warm, work / f"warm-out-{time.monotonic_ns()}"), poll)
        busy, own = cores_busy_seconds(cpus), cpu_seconds(pid)
        started = time.perf_counter()
        status = _wait(port, _submit(port, data, output), poll)
        wall = time.perf_counter() - started
        own_cpu = cpu_seconds(pid) - own
        noise = _noise(cores_busy_seconds(cpus) - busy, own_cpu, wall, len(cpus))
    if status["state"] != "succeeded":
        raise RuntimeError(f"job ended {status['state']}: {status.get('error')}")
    job_seconds = (
        datetime.fromisoformat(status["finished_at"]) - datetime.fromisoformat(status["started_at"])
    ).total_seconds()
    items = status["items_total"]
    shutil.rmtree(output, ignore_errors=True)
    return {
        "images": items,
        "images_per_s": items / job_seconds,
        "client_images_per_s": items / wall,
        "job_seconds": round(job_seconds, 2),
        "mean_item_seconds": round(statistics.fmean(i["seconds"] for i in status["items"]), 4),
        "process_cpu_s": round(own_cpu, 2),
        "noise_pct": noise,
    }


def _submit(port: int, source: Path, target: Path) -> str:
    code, body = http_json(
        port, "POST", "/jobs/segment_folder", {"input": str(source), "output": str(target)}
    )
    if code != 202:
        raise RuntimeError(f"job refused: {code} {body}")
    return str(body["id"])


def _wait(port: int, job_id: str, poll: float) -> dict[str, Any]:
    """Poll the summary alone (``items_limit=0``: polls stay off the measured work), then read
    every item, a page at a time."""
    while True:
        code, status = http_json(port, "GET", f"/jobs/{job_id}?items_limit=0")
        if code != 200:
            raise RuntimeError(f"job status: {code} {status}")
        if status["state"] not in ("queued", "running"):
            break
        time.sleep(poll)
    items: list[dict[str, Any]] = []
    while len(items) < status["items_done"]:
        code, page = http_json(
            port, "GET", f"/jobs/{job_id}?items_from={len(items)}&items_limit=1000"
        )
        if code != 200:
            raise RuntimeError(f"job status: {code} {page}")
        items += page["items"]
    return {**status, "items": items}


# -- main -------------------------------------------------------------------------------------


def prepare(work: Path, images: int, size: int) -> tuple[Path, Path]:
    """The input folder and the unpacked bundle directory."""
    sys.path.insert(0, str(ASTRO))
    from skygen import write_dataset

    from model_runtime import build_bundle
    from model_runtime.bundle import unpack_bundle

    data = work / "in"
    started = time.perf_counter()
    write_dataset(data, images, size=size, seed=11, truth_dir=work / "truth")
    print(f"wrote {images} fields of {size}x{size} in {time.perf_counter() - started:.1f} s")
    built = build_bundle(f"{ASTRO / 'service.py'}:service", output_dir=work / "builds")
    bundle = unpack_bundle(built.archive, cache_dir=work / "cache")
    print(f"packaged {built.ref}")
    return data, bundle


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    cpu = cpu_model()
    commit = git_commit()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "images": args.images,
        "size": args.size,
        "rounds": args.rounds,
        "poll_seconds": args.poll,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def summarise(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Median images/s per core count and mode, and the ratios."""
    summary: dict[str, dict[str, Any]] = {}
    for cores, modes in runs.items():
        row: dict[str, Any] = {}
        for mode, results in modes.items():
            row[mode] = statistics.median(r["images_per_s"] for r in results)
            row[f"{mode}_noise_pct_max"] = max(r["noise_pct"] for r in results)
        row["model_batch8"] = statistics.median(r["batch8_images_per_s"] for r in modes["model"])
        row["served/model"] = row["served"] / row["model"]
        row["served/function"] = row["served"] / row["function"]
        row["served/model_batch8"] = row["served"] / row["model_batch8"]
        summary[cores] = row
    return summary


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    print()
    print(
        "| cores | model b=1 img/s | model b=8 img/s | function img/s | served img/s |"
        " served/model | served/function | noise % (max) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cores, row in summary.items():
        noise = max(row[f"{m}_noise_pct_max"] for m in MODES)
        print(
            f"| {cores} | {row['model']:.1f} | {row['model_batch8']:.1f} | {row['function']:.1f}"
            f" | {row['served']:.1f} | {row['served/model']:.2f} | {row['served/function']:.2f}"
            f" | {noise:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--cores", default="1,2", help="core counts to measure, e.g. 1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="modes to measure")
    parser.add_argument(
        "--poll", type=float, default=POLL_SECONDS, help="seconds between job status polls"
    )
    parser.add_argument("--quick", action="store_true", help="40 images, 1 round")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--keep-work", action="store_true")
    # internal: the in-process measurements run in pinned child processes
    parser.add_argument("--child", choices=("model", "function"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.child == "model":
            result = _child_model(args.data, args.threads)
        else:
            result = _child_function(args.data, args.bundle, args.threads)
        print(json.dumps(result))
        return 0
    if args.quick:
        args.images, args.rounds = 40, 1
    core_counts = [int(c) for c in args.cores.split(",")]
    modes_wanted = [m for m in MODES if m in args.modes.split(",")]
    available = sorted(os.sched_getaffinity(0))
    if max(core_counts) > len(available):
        parser.error(f"only {len(available)} cores available")

    work = Path(tempfile.mkdtemp(prefix="astro-bench-"))
    meta = _meta(args)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        data, bundle = prepare(work, args.images, args.size)
        for round_index in range(args.rounds):
            for cores in core_counts:
                cpus = available[:cores]
                modes = runs.setdefault(str(cores), {m: [] for m in modes_wanted})
                for mode in modes_wanted:
                    if mode == "served":
                        result = run_served(bundle, cpus, data, work, args.poll)
                    else:
                        result = run_child(mode, cpus, data, bundle)
                    modes[mode].append(result)
                    print(
                        f"round {round_index + 1}/{args.rounds}  {cores} core(s)  {mode:8s}"
                        f" {result['images_per_s']:7.1f} images/s"
                        f"  (noise {result['noise_pct']:.1f}%)",
                        flush=True,
                    )
        summary = summarise(runs) if modes_wanted == list(MODES) else {}
        if summary:
            print_table(summary)
        meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M%S")
        output = args.output or RESULTS_DIR / f"astro_{stamp}.json"
        output.write_text(
            json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n"
        )
        print(f"\nresults written to {output}")
    finally:
        if args.keep_work:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
