"""Store benchmark: package + push + pull of a 100 MB model, and listing 1,000 versions.

Runs against a SeaweedFS S3 server it starts on 127.0.0.1 (or the S3 server named by
``HUBSERVE_S3_ENDPOINT``/``_ACCESS_KEY``/``_SECRET_KEY``) and against a local directory, and
prints one table. Usage::

    .venv/bin/python bench/store_bench.py [--size-mb 100] [--versions 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_runtime import LocalStore, S3Store, Service, Store, build_bundle, load_bundle
from model_runtime.testing.s3server import S3Server


class Wide(nn.Module):
    def __init__(self, width: int = 1024, depth: int = 24) -> None:
        super().__init__()
        self.width = width
        self.depth = depth
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


_net: Wide | None = None


def forward(x: np.ndarray) -> np.ndarray:
    assert _net is not None
    with torch.no_grad():
        return _net(torch.from_numpy(x)).numpy()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_big_model(store: Store, work: Path, size_mb: int) -> dict[str, float]:
    depth = max(1, round(size_mb * 1024**2 / (4 * (1024 * 1024 + 1024))))
    global _net
    _net = Wide(depth=depth).eval()
    svc = Service("big", models={"net": _net})
    svc.add_api(forward)
    result: dict[str, float] = {}
    built = None

    def package() -> None:
        nonlocal built
        built = build_bundle(svc, output_dir=work / "builds")

    result["package_s"] = timed(package)
    assert built is not None
    result["archive_mb"] = built.archive.stat().st_size / 1024**2
    result["push_s"] = timed(lambda: store.push(built.archive, owner="bench"))
    cache = work / "cache"
    pulled: list[Path] = []
    result["pull_s"] = timed(lambda: pulled.append(store.pull("bench/big", cache_dir=cache).path))
    result["load_s"] = timed(lambda: load_bundle(pulled[0]))
    result["total_s"] = result["package_s"] + result["push_s"] + result["pull_s"]
    return result


def bench_listing(store: Store, work: Path, versions: int) -> dict[str, float]:
    source = work / "tiny.py"
    for i in tqdm(range(versions), desc="push versions", file=sys.stderr, leave=False):
        source.write_text(
            "from model_runtime import Service\n"
            f"service = Service('many')\nN = {i}\n"
            "@service.api\ndef f(x: int) -> int:\n    return x + N\n"
        )
        built = build_bundle(f"{source}:service", output_dir=work / "tiny")
        store.push(built.archive, owner="bench")
        built.archive.unlink()
    samples = []
    for _ in range(10):
        start = time.perf_counter()
        listed = store.list_versions("bench", "many")
        samples.append(time.perf_counter() - start)
    assert len(listed) == versions
    resolve = [timed(lambda: store.resolve("bench/many:latest")) for _ in range(10)]
    return {
        "list_p50_ms": statistics.median(samples) * 1000,
        "list_max_ms": max(samples) * 1000,
        "resolve_latest_p50_ms": statistics.median(resolve) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--versions", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hubserve-bench-") as tmp:
        work = Path(tmp)
        server = None
        if os.environ.get("HUBSERVE_S3_ENDPOINT"):
            s3 = S3Store(
                os.environ["HUBSERVE_S3_ENDPOINT"].split("://")[-1],
                "bench",
                access_key=os.environ.get("HUBSERVE_S3_ACCESS_KEY"),
                secret_key=os.environ.get("HUBSERVE_S3_SECRET_KEY"),
                secure=False,
            )
        else:
            server = S3Server(work / "seaweedfs")
            server.start()
            s3 = S3Store(
                server.endpoint,
                "bench",
                access_key=server.access_key,
                secret_key=server.secret_key,
                secure=False,
            )
        try:
            rows = []
            for label, store in (
                ("s3 (seaweedfs)" if server else "s3", s3),
                ("local dir", LocalStore(work / "local")),
            ):
                big = bench_big_model(store, work / label.split()[0], args.size_mb)
                listing = bench_listing(store, work / label.split()[0], args.versions)
                rows.append((label, {**big, **listing}))
        finally:
            if server is not None:
                server.stop()
    keys = list(rows[0][1])
    print(f"{'metric':<24}" + "".join(f"{label:>18}" for label, _ in rows))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{values[key]:>18.2f}" for _, values in rows))


if __name__ == "__main__":
    main()
