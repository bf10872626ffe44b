"""What polling a batch job's status costs the runtime, by how the client asks for its items.

A job's status carries every processed item's result, and clients poll it while the job runs.
This script runs a job of ``--items`` items (each returning a result of about 3 KB, like the
astronomy example's catalogue rows) in a :class:`~model_runtime.runtime._jobs.JobManager`
and polls it once after every item, doing what ``GET /jobs/<id>`` does for each poll (read
the status under the manager's lock, serialise it) the way three clients ask:

* **whole**: every item at each poll (``items_from=0&items_limit=1000``): the cost of a
  client that does not page, which grows with the job (quadratic over it);
* **default**: no parameters, the first ``ITEMS_PAGE`` items: bounded;
* **incremental**: from the last answer's ``items_next`` on, as the Python client does: each
  item crosses once, so the whole job costs what its items weigh once.

It prints, per client, the polls, the bytes and milliseconds of the mean and the last poll,
and the totals over the job. HTTP and the event loop add the same small constant per poll
to each client, so they are left out.

Usage (from the repository root)::

    .venv/bin/python bench/job_poll_bench.py              # 200 items
    .venv/bin/python bench/job_poll_bench.py --items 1000
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from model_runtime.runtime._jobs import JobManager, JobState

RESULT = {
    "sources": [
        {"x": i * 1.5, "y": i * 2.5, "flux": i * 0.125, "label": f"s{i}"} for i in range(40)
    ]
}
CLIENTS = ("whole", "default", "incremental")


def poll_job(client: str, items: int, work: Path) -> dict[str, float]:
    """Run one job, polled by ``client`` once after each item; the costs it measured."""
    polled = threading.Semaphore(0)

    def api(src: Path, out_dir: Path) -> dict[str, Any]:
        polled.acquire()  # one poll per item: the same schedule for every client
        return {"file": src.name, **RESULT}

    source, target = work / client / "in", work / client / "out"
    source.mkdir(parents=True)
    target.mkdir()
    for n in range(items):
        (source / f"{n:05}.fits").write_bytes(b"x")
    manager = JobManager({"api": api}, work_dir=work / client / "work")
    manager.start()
    job = manager.submit("api", str(source), str(target))
    seen, total_bytes, total_s, last_bytes, last_s = 0, 0, 0.0, 0, 0.0
    polls = items + 1  # after 0, 1, ..., items - 1 items done, and once the job is over
    try:
        for done in range(polls):
            if done == items:
                while manager.get(job.id, items_limit=0).state is JobState.RUNNING:
                    time.sleep(0.001)
            started = time.perf_counter()
            if client == "whole":
                status = manager.get(job.id, items_limit=1000)
            elif client == "default":
                status = manager.get(job.id)
            else:
                status = manager.get(job.id, items_from=seen, items_limit=1000)
            body = status.model_dump_json().encode()
            last_s = time.perf_counter() - started
            last_bytes = len(body)
            seen = status.items_next
            total_bytes += last_bytes
            total_s += last_s
            polled.release()
            while done < items and manager.get(job.id, items_limit=0).items_done <= done:
                time.sleep(0.0005)
        if seen != items and client == "incremental":
            raise AssertionError(f"the client received {seen} items of {items}")
    finally:
        manager.stop()
    return {
        "polls": polls,
        "mean_kb": total_bytes / polls / 1e3,
        "mean_ms": total_s / polls * 1e3,
        "last_kb": last_bytes / 1e3,
        "last_ms": last_s * 1e3,
        "total_mb": total_bytes / 1e6,
        "total_ms": total_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="items in the job (200)")
    args = parser.parse_args()
    print(f"a job of {args.items} items, one status poll after each item")
    columns = ("polls", "mean_kb", "mean_ms", "last_kb", "last_ms", "total_mb", "total_ms")
    print(f"{'client':<12}" + "".join(f"{c:>10}" for c in columns))
    with tempfile.TemporaryDirectory(prefix="job-poll-bench-") as work:
        for client in CLIENTS:
            costs = poll_job(client, args.items, Path(work))
            print(f"{client:<12}" + "".join(f"{costs[c]:>10.3g}" for c in columns))


if __name__ == "__main__":
    main()
