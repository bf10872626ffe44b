"""Batch jobs of path APIs, end to end against real locations.

Local directories, a real S3 server (SeaweedFS, from the ``s3`` and ``private_s3`` fixtures)
and a real WebDAV server (WsgiDAV served by cheroot on loopback, with a user and a password)
hold the inputs and receive the outputs; the path APIs are plain functions that write files.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from minio import Minio
from pydantic import ValidationError

from model_runtime.runtime import RuntimeSettings
from model_runtime.runtime._jobs import ITEMS_PAGE, JobError, JobManager, JobState, JobStatus
from model_runtime.runtime._locations import (
    JobCaller,
    Location,
    LocationError,
    LocationUnavailableError,
    S3Credentials,
    check_allowed,
    check_allowed_entry,
    open_location,
)
from model_runtime.testing.s3server import S3Server
from tests.webdav_server import WebDAVServer, webdav

from ..conftest import S3Target

__all__ = ["webdav"]  # the fixture, used by tests below

FINAL_STATES = {
    JobState.SUCCEEDED,
    JobState.COMPLETED_WITH_ERRORS,
    JobState.FAILED,
    JobState.CANCELLED,
}
CORRUPT = b"CORRUPT"


# -- path APIs and helpers ------------------------------------------------------------------


def segment(src: Path, out_dir: Path) -> dict[str, Any]:
    """A toy segmentation: a mask and a preview per image, or an error on a bad header."""
    data = src.read_bytes()
    if data.startswith(CORRUPT):
        raise ValueError(f"{src.name}: corrupt header")
    (out_dir / "mask.bin").write_bytes(data[::-1])
    (out_dir / "preview.txt").write_text(f"preview of {src.name}\n")
    return {"bytes": len(data), "objects": len(data) % 7}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def wait_for(
    manager: JobManager,
    job_id: str,
    until: Callable[[JobStatus], bool],
    timeout: float = 20,
) -> JobStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = manager.get(job_id)
        if until(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job never reached the expected state: {status}")
        time.sleep(0.01)


def wait_finished(manager: JobManager, job_id: str, timeout: float = 20) -> JobStatus:
    return wait_for(manager, job_id, lambda status: status.state in FINAL_STATES, timeout)


def files_under(root: Path) -> set[str]:
    """Every file below ``root``, hidden ones included."""
    return {
        Path(dirpath, name).relative_to(root).as_posix()
        for dirpath, _dirnames, names in os.walk(root)
        for name in names
    }


class Gate:
    """A path API whose items each wait until the test lets them through."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.passes = threading.Semaphore(0)

    def __call__(self, src: Path, out_dir: Path) -> str:
        self.entered.release()
        if not self.passes.acquire(timeout=20):
            raise TimeoutError("the test never let this item through")
        (out_dir / "done.txt").write_text(src.name)
        return src.name

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=20), "no item started"

    def let_through(self, items: int = 1) -> None:
        self.passes.release(items)


@pytest.fixture
def managers(tmp_path: Path) -> Iterator[Callable[..., JobManager]]:
    """Build started job managers; every one is stopped at teardown."""
    started: list[JobManager] = []

    def make(functions: dict[str, Callable[[Path, Path], Any]], **kwargs: Any) -> JobManager:
        kwargs.setdefault("work_dir", tmp_path / f"work{len(started)}")
        manager = JobManager(functions, **kwargs)
        manager.start()
        started.append(manager)
        return manager

    yield make
    for manager in started:
        manager.stop(timeout=10)


# -- local directories ----------------------------------------------------------------------


def test_local_job_commits_outputs_and_records_failures(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    good = {f"night{n % 2}/img{n}.fits": bytes(range(n, n + 40)) for n in range(5)}
    write_tree(tmp_path / "in", {**good, "night1/bad.fits": CORRUPT + b"junk"})
    write_tree(tmp_path / "in", {".DS_Store": b"x", ".cache/img9.fits": b"x"})
    manager = managers({"segment": segment})

    queued = manager.submit("segment", str(tmp_path / "in"), str(tmp_path / "out"))
    assert queued.items_total == 6
    assert queued.input == str(tmp_path / "in")
    status = wait_finished(manager, queued.id)

    assert status.state is JobState.COMPLETED_WITH_ERRORS
    assert (status.items_done, status.items_failed, status.progress) == (6, 1, 1.0)
    assert status.error is None
    (bad,) = [item for item in status.items if not item.ok]
    assert bad.item == "night1/bad.fits"
    assert bad.error == "ValueError: bad.fits: corrupt header"
    assert bad.outputs == []
    for rel, data in good.items():
        stem = rel.removesuffix(".fits")
        (item,) = [item for item in status.items if item.item == rel]
        assert item.ok
        assert item.outputs == [f"{stem}/mask.bin", f"{stem}/preview.txt"]
        assert item.result == {"bytes": 40, "objects": 40 % 7}
        assert item.seconds >= 0
        assert (tmp_path / "out" / stem / "mask.bin").read_bytes() == data[::-1]
    expected = {
        f"{rel.removesuffix('.fits')}/{name}"
        for rel in good
        for name in ("mask.bin", "preview.txt")
    }
    assert files_under(tmp_path / "out") == expected | {"_job.json"}

    summary = JobStatus.model_validate_json((tmp_path / "out" / "_job.json").read_text())
    assert summary == status
    assert json.loads((tmp_path / "out" / "_job.json").read_text())["progress"] == 1.0
    assert list((tmp_path / "work0").iterdir()) == [], "temporary directories are removed"
    assert [job.id for job in manager.list()] == [status.id]


def test_outputs_of_inputs_with_the_same_stem_do_not_collide(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {"x.fits": b"1", "x.png": b"2", "y.fits": b"3", "z": b"4"})
    manager = managers({"segment": segment})

    job = manager.submit("segment", f"file://{tmp_path}/in", str(tmp_path / "out"))
    status = wait_finished(manager, job.id)

    assert status.state is JobState.SUCCEEDED
    assert {item.item: item.outputs[0] for item in status.items} == {
        "x.fits": "x.fits/mask.bin",
        "x.png": "x.png/mask.bin",
        "y.fits": "y/mask.bin",
        "z": "z/mask.bin",
    }
    assert (tmp_path / "out" / "x.png" / "mask.bin").read_bytes() == b"2"


def test_results_are_json_and_any_item_failure_is_recorded(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    def odd(src: Path, out_dir: Path) -> Any:
        kind = src.stem
        if kind == "exit":
            sys.exit(3)
        if kind == "object":
            return object()
        if kind == "array":
            return {"mean": np.float32(0.5), "hist": np.arange(3)}
        return None

    write_tree(tmp_path / "in", {f"{kind}.dat": b"" for kind in ("exit", "object", "array")})
    manager = managers({"odd": odd})
    status = wait_finished(
        manager, manager.submit("odd", str(tmp_path / "in"), str(tmp_path / "out")).id
    )

    assert status.state is JobState.COMPLETED_WITH_ERRORS
    results = {item.item: (item.ok, item.result, item.error) for item in status.items}
    assert results["array.dat"] == (True, {"mean": 0.5, "hist": [0, 1, 2]}, None)
    assert results["exit.dat"] == (False, None, "SystemExit: 3")
    assert results["object.dat"][0] is False
    assert "TypeError: the result is not JSON-serialisable" in str(results["object.dat"][2])
    assert not (tmp_path / "out" / "object").exists(), "a failed item publishes nothing"


def test_a_job_where_every_item_fails_has_failed(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {"a.fits": CORRUPT, "b.fits": CORRUPT})
    manager = managers({"segment": segment})
    status = wait_finished(
        manager, manager.submit("segment", str(tmp_path / "in"), str(tmp_path / "out")).id
    )

    assert (status.state, status.error, status.items_failed) == (
        JobState.FAILED,
        "every item failed",
        2,
    )
    assert files_under(tmp_path / "out") == {"_job.json"}


def test_submit_rejects_bad_requests(tmp_path: Path, managers: Callable[..., JobManager]) -> None:
    write_tree(tmp_path / "in", {"a.fits": b"1"})
    (tmp_path / "a-file").write_text("")
    manager = managers({"segment": segment})
    inputs, outputs = str(tmp_path / "in"), str(tmp_path / "out")

    with pytest.raises(JobError, match=r"unknown path API 'nope'.*segment") as unknown:
        manager.submit("nope", inputs, outputs)
    assert unknown.value.status_code == 404
    with pytest.raises(LocationError, match="relative path 'data/in' refused"):
        manager.submit("segment", "data/in", outputs)
    with pytest.raises(LocationError, match="relative path"):
        manager.submit("segment", inputs, "out")
    with pytest.raises(LocationError, match=r"input directory .*missing does not exist"):
        manager.submit("segment", str(tmp_path / "missing"), outputs)
    with pytest.raises(LocationError, match="is not a directory"):
        manager.submit("segment", inputs, str(tmp_path / "a-file"))
    with pytest.raises(LocationError, match="unsupported location scheme 'ftp'"):
        manager.submit("segment", "ftp://host/in", outputs)
    with pytest.raises(LocationError, match="no S3 settings"):
        manager.submit("segment", "s3://bucket/in", outputs)
    with pytest.raises(JobError, match=r"no input files matching '\*\.png'") as empty:
        manager.submit("segment", inputs, outputs, pattern="*.png")
    assert empty.value.status_code == 422
    with pytest.raises(JobError, match="no job 'nope'") as missing:
        manager.get("nope")
    assert missing.value.status_code == 404
    with pytest.raises(JobError):
        manager.cancel("nope")
    assert manager.list() == []


def test_status_pages_cover_every_item_once_while_the_job_runs(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    """A client that asks each time for the items from ``items_next`` on gets every item
    exactly once and in order, whether it polls between items or while they pour in."""
    names = [f"{n:02}.fits" for n in range(12)]
    write_tree(tmp_path / "in", dict.fromkeys(names, b"x"))
    gate = Gate()
    manager = managers({"gate": gate})
    job = manager.submit("gate", str(tmp_path / "in"), str(tmp_path / "out"))
    seen: list[str] = []

    def poll() -> JobStatus:
        status = manager.get(job.id, items_from=len(seen), items_limit=2)
        assert status.items_from == len(seen) and len(status.items) <= 2
        assert status.items_next == len(seen) + len(status.items) <= status.items_done
        seen.extend(item.item for item in status.items)
        return status

    for _ in range(4):  # one item at a time: each poll catches up, in pages of two
        gate.wait_entered()
        while poll().items_next < manager.get(job.id, items_limit=0).items_done:
            pass
        gate.let_through()
    gate.let_through(len(names))  # the rest at once, appended while the client pages
    while True:
        status = poll()
        if status.state in FINAL_STATES and status.items_next == status.items_done:
            break
    assert seen == names
    assert poll().items == []  # caught up: a poll costs the summary alone

    assert [item.item for item in manager.get(job.id, items_from=10).items] == names[10:]
    assert manager.get(job.id, items_from=99).items == []
    summary = manager.get(job.id, items_limit=0)
    assert (summary.items, summary.items_next, summary.items_done) == ([], 0, len(names))
    (listed,) = manager.list()
    assert (listed.id, listed.items, listed.items_done) == (job.id, [], len(names))
    published = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert [item["item"] for item in published["items"]] == names
    assert published["items_next"] == len(names)


def test_a_status_holds_a_bounded_page_of_items_by_default(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    """A client that does not paginate pays for at most ``ITEMS_PAGE`` items per poll."""
    write_tree(tmp_path / "in", {f"{n:03}.txt": b"x" for n in range(ITEMS_PAGE + 20)})
    manager = managers({"name": lambda src, out_dir: src.name})
    job = manager.submit("name", str(tmp_path / "in"), str(tmp_path / "out"))
    status = wait_finished(manager, job.id)
    assert (len(status.items), status.items_next) == (ITEMS_PAGE, ITEMS_PAGE)
    assert status.items_done == ITEMS_PAGE + 20
    rest = manager.get(job.id, items_from=status.items_next)
    assert [item.result for item in rest.items] == [f"{n:03}.txt" for n in range(100, 120)]


def test_progress_is_observable_and_a_running_job_can_be_cancelled(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {f"{n}.fits": b"x" for n in range(3)})
    gate = Gate()
    manager = managers({"gate": gate})
    job = manager.submit("gate", str(tmp_path / "in"), str(tmp_path / "out"))

    gate.wait_entered()
    running = manager.get(job.id)
    assert (running.state, running.items_done, running.progress) == (JobState.RUNNING, 0, 0.0)
    assert running.started_at is not None
    gate.let_through()
    gate.wait_entered()
    second = manager.get(job.id)
    assert second.items_done == 1
    assert second.progress == pytest.approx(1 / 3)
    assert second.items[0].result == "0.fits"

    cancelling = manager.cancel(job.id)
    assert (cancelling.state, cancelling.cancel_requested) == (JobState.RUNNING, True)
    gate.let_through()
    status = wait_finished(manager, job.id)

    assert (status.state, status.items_done) == (JobState.CANCELLED, 2)
    assert files_under(tmp_path / "out") == {"0/done.txt", "1/done.txt", "_job.json"}
    summary = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert summary["state"] == "cancelled"


def test_the_next_input_is_fetched_while_an_item_runs(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    work_dir = tmp_path / "work"
    prefetched: list[bool] = []

    def wait_for_next_input(src: Path, out_dir: Path) -> None:
        if src.name == "0.fits":
            deadline = time.monotonic() + 10
            while not any(work_dir.rglob("1.fits")) and time.monotonic() < deadline:
                time.sleep(0.005)
            prefetched.append(any(work_dir.rglob("1.fits")))

    write_tree(tmp_path / "in", {"0.fits": b"0", "1.fits": b"1"})
    manager = managers({"wait": wait_for_next_input}, work_dir=work_dir)
    status = wait_finished(
        manager, manager.submit("wait", str(tmp_path / "in"), str(tmp_path / "out")).id
    )

    assert status.state is JobState.SUCCEEDED
    assert prefetched == [True]


def test_queued_jobs_cancel_at_once_and_stop_ends_everything(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {"a.fits": b"a", "b.fits": b"b"})
    gate = Gate()
    manager = managers({"gate": gate}, max_queued_jobs=1)
    inputs = str(tmp_path / "in")
    running = manager.submit("gate", inputs, str(tmp_path / "out-running"))
    gate.wait_entered()

    queued = manager.submit("gate", inputs, str(tmp_path / "out-queued"))
    assert queued.state is JobState.QUEUED
    with pytest.raises(JobError, match="too many queued jobs") as full:
        manager.submit("gate", inputs, str(tmp_path / "out-full"))
    assert full.value.status_code == 503
    cancelled = manager.cancel(queued.id)
    assert (cancelled.state, cancelled.started_at) == (JobState.CANCELLED, None)
    assert cancelled.finished_at is not None
    assert manager.cancel(queued.id) == cancelled, "cancelling again changes nothing"
    left_queued = manager.submit("gate", inputs, str(tmp_path / "out-left"))

    stopper = threading.Thread(target=manager.stop)
    stopper.start()
    wait_for(manager, running.id, lambda status: status.cancel_requested)
    assert manager.get(left_queued.id).state is JobState.CANCELLED
    gate.let_through()
    stopper.join(10)
    assert not stopper.is_alive(), "stop() waits for the running item only"

    assert manager.get(running.id).state is JobState.CANCELLED
    assert manager.get(running.id).items_done == 1
    assert not (tmp_path / "out-queued").exists()
    assert not (tmp_path / "out-left").exists()
    with pytest.raises(JobError, match="shutting down") as stopped:
        manager.submit("gate", inputs, str(tmp_path / "out-late"))
    assert stopped.value.status_code == 503


def test_only_the_latest_finished_jobs_are_kept(
    tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {"a.fits": b"a"})
    manager = managers({"segment": segment}, keep_finished=2)
    ids = []
    for n in range(3):
        ids.append(manager.submit("segment", str(tmp_path / "in"), str(tmp_path / f"o{n}")).id)
        wait_finished(manager, ids[-1])

    assert [job.id for job in manager.list()] == ids[1:]
    with pytest.raises(JobError, match="no job"):
        manager.get(ids[0])


@pytest.mark.parametrize("output", ["local", "webdav"])
def test_readers_never_see_a_partial_output_file(
    output: str, request: pytest.FixtureRequest, managers: Callable[..., JobManager]
) -> None:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    size = 8 * 1024 * 1024

    def big(src: Path, out_dir: Path) -> None:
        with (out_dir / "big.bin").open("wb") as out:
            for _ in range(size // (1024 * 1024)):
                out.write(b"\xab" * (1024 * 1024))

    write_tree(tmp_path / "in", {f"{n}.fits": b"x" for n in range(4)})
    if output == "webdav":
        dav: WebDAVServer = request.getfixturevalue("webdav")
        target, visible = dav.uri("out", with_password=True), dav.root / "out"
    else:
        target, visible = str(tmp_path / "out"), tmp_path / "out"
    manager = managers({"big": big})
    job = manager.submit("big", str(tmp_path / "in"), target)

    seen: dict[str, int] = {}
    while manager.get(job.id).state not in FINAL_STATES:
        for rel in files_under(visible) if visible.exists() else ():
            if rel.endswith("big.bin"):
                try:
                    seen[rel] = (visible / rel).stat().st_size
                except FileNotFoundError:
                    continue
                assert seen[rel] == size, f"{rel} seen with {seen[rel]} of {size} bytes"

    assert manager.get(job.id).state is JobState.SUCCEEDED
    assert seen, "the reader ran while outputs were committed"
    names = files_under(visible)
    assert names == {f"{n}/big.bin" for n in range(4)} | {"_job.json"}, "no temporary file left"
    assert all((visible / name).stat().st_size == size for name in names if "big" in name)


# -- S3 ---------------------------------------------------------------------------------------


def s3_client(endpoint: str, access_key: str, secret_key: str, secure: bool = False) -> Minio:
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure)


def put_objects(client: Minio, bucket: str, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        client.put_object(bucket, key, io.BytesIO(data), len(data))


def object_keys(client: Minio, bucket: str, prefix: str) -> set[str]:
    return {
        str(obj.object_name) for obj in client.list_objects(bucket, prefix=prefix, recursive=True)
    }


def read_object(client: Minio, bucket: str, key: str) -> bytes:
    response = client.get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


@pytest.fixture
def s3_bucket(s3: S3Target) -> tuple[Minio, str, S3Credentials]:
    client = s3_client(s3.endpoint, s3.access_key, s3.secret_key, s3.secure)
    bucket = f"jobs-{os.urandom(6).hex()}"
    client.make_bucket(bucket)
    return client, bucket, S3Credentials(s3.endpoint, s3.access_key, s3.secret_key, s3.secure)


@pytest.mark.s3
def test_s3_to_s3_job(
    s3_bucket: tuple[Minio, str, S3Credentials], managers: Callable[..., JobManager]
) -> None:
    client, bucket, credentials = s3_bucket
    images = {f"in/field{n}/img.fits": os.urandom(1000 + n) for n in range(3)}
    put_objects(client, bucket, {**images, "in/notes.txt": b"skip", "in/.hidden.fits": b"x"})
    manager = managers({"segment": segment}, open_location=partial(open_location, s3=credentials))

    job = manager.submit(
        "segment", f"s3://{bucket}/in", f"s3://{bucket}/out/run1", pattern="*.fits"
    )
    assert job.input == f"s3://{bucket}/in/ at {credentials.endpoint}"
    status = wait_finished(manager, job.id)

    assert status.state is JobState.SUCCEEDED, status
    assert [item.item for item in status.items] == [f"field{n}/img.fits" for n in range(3)]
    keys = object_keys(client, bucket, "out/")
    assert keys == {
        f"out/run1/field{n}/img/{name}" for n in range(3) for name in ("mask.bin", "preview.txt")
    } | {"out/run1/_job.json"}
    for rel, data in images.items():
        key = rel.replace("in/", "out/run1/").replace(".fits", "/mask.bin")
        assert read_object(client, bucket, key) == data[::-1]
    summary = json.loads(read_object(client, bucket, "out/run1/_job.json"))
    assert summary["state"] == "succeeded"
    assert summary["id"] == job.id


@pytest.mark.s3
def test_s3_errors_at_submit_are_clear_and_hold_no_secret(
    s3_bucket: tuple[Minio, str, S3Credentials], tmp_path: Path
) -> None:
    client, bucket, credentials = s3_bucket
    put_objects(client, bucket, {"in/a.fits": b"a"})
    wrong = S3Credentials(credentials.endpoint, credentials.access_key, "not-the-secret", False)
    refusing = JobManager(
        {"segment": segment},
        work_dir=tmp_path / "work",
        open_location=partial(open_location, s3=wrong),
    )
    with pytest.raises(LocationUnavailableError, match="refused our credentials") as refused:
        refusing.submit("segment", f"s3://{bucket}/in", str(tmp_path / "out"))
    assert "not-the-secret" not in str(refused.value)
    assert "not-the-secret" not in repr(wrong)

    manager = JobManager(
        {"segment": segment},
        work_dir=tmp_path / "work",
        open_location=partial(open_location, s3=credentials),
    )
    with pytest.raises(LocationError, match="bucket 'no-such-bucket' does not exist"):
        manager.submit("segment", "s3://no-such-bucket/in", str(tmp_path / "out"))
    with pytest.raises(LocationError, match="bucket 'missing-out' does not exist"):
        manager.submit("segment", f"s3://{bucket}/in", "s3://missing-out/x")
    with pytest.raises(JobError, match="no input files"):
        manager.submit("segment", f"s3://{bucket}/nothing-here", str(tmp_path / "out"))
    with pytest.raises(LocationError, match="must not carry credentials"):
        manager.submit("segment", f"s3://key:secret@{bucket}/in", str(tmp_path / "out"))


@pytest.mark.s3
@pytest.mark.slow
def test_a_job_whose_s3_server_dies_fails_and_keeps_only_committed_items(
    private_s3: S3Server, managers: Callable[..., JobManager]
) -> None:
    client = s3_client(private_s3.endpoint, private_s3.access_key, private_s3.secret_key)
    client.make_bucket("jobs")
    images = {f"in/img{n}.fits": bytes([n]) * 2000 for n in range(5)}
    put_objects(client, "jobs", images)
    size = 2 * 1024 * 1024

    def segment_until_crash(src: Path, out_dir: Path) -> None:
        (out_dir / "mask.bin").write_bytes(src.read_bytes()[:1] * size)
        if src.name == "img2.fits":
            private_s3.kill()

    credentials = S3Credentials(
        private_s3.endpoint, private_s3.access_key, private_s3.secret_key, secure=False
    )
    manager = managers(
        {"segment": segment_until_crash}, open_location=partial(open_location, s3=credentials)
    )
    job = manager.submit("segment", "s3://jobs/in", "s3://jobs/out")
    status = wait_finished(manager, job.id)

    assert status.state is JobState.FAILED
    assert status.error is not None
    assert status.error.startswith("stopped at img2.fits: cannot reach S3 at ")
    assert private_s3.secret_key not in status.error
    assert (status.items_done, status.items_failed) == (2, 0)
    private_s3.restart()
    assert object_keys(client, "jobs", "out/") == {"out/img0/mask.bin", "out/img1/mask.bin"}
    for n in range(2):
        assert read_object(client, "jobs", f"out/img{n}/mask.bin") == bytes([n]) * size


# -- WebDAV -----------------------------------------------------------------------------------


def test_webdav_to_local_job(
    webdav: WebDAVServer, tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    images = {f"in/set {n}/img.fits": os.urandom(500) for n in range(3)}
    write_tree(webdav.root, {**images, "in/.hidden/x.fits": b"x"})
    manager = managers({"segment": segment})

    job = manager.submit("segment", webdav.uri("in", with_password=True), str(tmp_path / "out"))
    assert job.input == f"webdav://127.0.0.1:{webdav.port}/in/"
    status = wait_finished(manager, job.id)

    assert status.state is JobState.SUCCEEDED, status
    assert webdav.password not in status.model_dump_json()
    for rel, data in images.items():
        stem = rel.removeprefix("in/").removesuffix(".fits")
        assert (tmp_path / "out" / stem / "mask.bin").read_bytes() == data[::-1]


def test_webdav_credentials_can_come_from_the_runtime(
    webdav: WebDAVServer, tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(tmp_path / "in", {"a/b.fits": b"ab"})
    manager = managers(
        {"segment": segment},
        open_location=partial(open_location, webdav_auth=(webdav.user, webdav.password)),
    )
    status = wait_finished(
        manager, manager.submit("segment", str(tmp_path / "in"), webdav.uri("results")).id
    )

    assert status.state is JobState.SUCCEEDED
    assert files_under(webdav.root / "results") == {"a/b/mask.bin", "a/b/preview.txt", "_job.json"}


def test_webdav_errors_hold_no_password(
    webdav: WebDAVServer, tmp_path: Path, managers: Callable[..., JobManager]
) -> None:
    write_tree(webdav.root, {"in/a.fits": b"a"})
    manager = managers({"segment": segment})
    bad_uri = f"webdav://alice:Wr0ng-Passw0rd@127.0.0.1:{webdav.port}/in"

    with pytest.raises(
        LocationUnavailableError, match=r"refused our credentials \(HTTP 401\)"
    ) as bad:
        manager.submit("segment", bad_uri, str(tmp_path / "out"))
    assert "Wr0ng-Passw0rd" not in str(bad.value)

    with pytest.raises(LocationError, match="the directory not found at webdav://") as missing:
        manager.submit("segment", webdav.uri("nope", with_password=True), str(tmp_path / "out"))
    assert webdav.password not in str(missing.value)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(LocationUnavailableError, match="is unavailable: ConnectError") as down:
        manager.submit(
            "segment", f"webdav://u:Secret-99@127.0.0.1:{closed_port}/in", str(tmp_path / "out")
        )
    assert "Secret-99" not in str(down.value)


# -- locations on their own -------------------------------------------------------------------

TREE = {
    "a.txt": b"a",
    "sub/b.txt": b"bb",
    "sub/deeper/c.fits": b"ccc",
    ".hidden.txt": b"h",
    ".hid/d.txt": b"d",
    "sub/.e.txt": b"e",
}


@pytest.fixture(params=["local", "s3", "webdav"])
def populated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Location]:
    """A location of each kind holding ``TREE`` below its root."""
    if request.param == "local":
        write_tree(tmp_path / "tree", TREE)
        location = open_location(str(tmp_path / "tree"))
    elif request.param == "s3":
        client, bucket, credentials = request.getfixturevalue("s3_bucket")
        put_objects(client, bucket, {f"tree/{rel}": data for rel, data in TREE.items()})
        location = open_location(f"s3://{bucket}/tree", s3=credentials)
    else:
        dav: WebDAVServer = request.getfixturevalue("webdav")
        write_tree(dav.root / "tree", TREE)
        location = open_location(dav.uri("tree"), webdav_auth=(dav.user, dav.password))
    yield location
    location.close()


def test_locations_list_fetch_and_commit_alike(populated: Location, tmp_path: Path) -> None:
    assert populated.list_files() == ["a.txt", "sub/b.txt", "sub/deeper/c.fits"]
    assert populated.list_files("sub/*") == ["sub/b.txt", "sub/deeper/c.fits"]
    assert populated.list_files("*.fits") == ["sub/deeper/c.fits"]
    populated.check()

    populated.fetch("sub/deeper/c.fits", tmp_path / "c.fits")
    assert (tmp_path / "c.fits").read_bytes() == b"ccc"
    with pytest.raises(LocationError, match="not found") as missing:
        populated.fetch("sub/none.txt", tmp_path / "none")
    assert not isinstance(missing.value, LocationUnavailableError)

    write_tree(tmp_path / "results", {"r.txt": b"r", "deep/s.txt": b"s", ".meta/m.txt": b"m"})
    assert populated.commit(tmp_path / "results", "new/x") == [
        "new/x/.meta/m.txt",
        "new/x/deep/s.txt",
        "new/x/r.txt",
    ]
    assert populated.list_files("new/*") == ["new/x/deep/s.txt", "new/x/r.txt"]
    populated.fetch("new/x/deep/s.txt", tmp_path / "s.txt")
    assert (tmp_path / "s.txt").read_bytes() == b"s"
    with pytest.raises(LocationError, match="outside the output location"):
        populated.commit(tmp_path / "results", "../escape")


@pytest.mark.parametrize(
    ("uri", "allowed"),
    [
        ("s3://bucket/jobs", True),
        ("s3://bucket/jobs/run1", True),
        ("s3://bucket/jobsx", False),
        ("s3://bucket/jobs/../other", False),
        ("s3://other/jobs", False),
        ("webdav://alice:secret@dav:8080/share/in", True),
        ("webdav://dav:8081/share/in", False),
        ("webdav://dav:notaport/share", False),
        ("/srv/data/in", True),
        ("/srv/data/../etc", False),
        ("file:///srv/data/x", True),
        ("/srv/data\x00/x", False),
    ],
)
def test_allowed_locations_are_prefixes_after_normalisation(uri: str, allowed: bool) -> None:
    roots = ["s3://bucket/jobs", "webdav://dav:8080/share", "/srv/data"]
    if allowed:
        check_allowed(uri, roots)
    else:
        with pytest.raises(LocationError) as refused:
            check_allowed(uri, roots)
        assert "secret" not in str(refused.value)
    check_allowed(uri, [])  # no roots: anything goes


@pytest.mark.s3
def test_a_full_local_disk_is_not_blamed_on_s3(
    s3_bucket: tuple[Minio, str, S3Credentials],
) -> None:
    """Fetching an input onto a full disk (``/dev/full``: every write is ENOSPC) names the
    local disk, not the server."""
    client, bucket, credentials = s3_bucket
    put_objects(client, bucket, {"in/a.fits": b"a" * 100_000})
    location = open_location(f"s3://{bucket}/in", s3=credentials)
    with pytest.raises(LocationError, match=r"cannot write a\.fits locally: No space left") as err:
        location.fetch("a.fits", Path("/dev/full"))
    assert not isinstance(err.value, LocationUnavailableError)
    assert "S3" not in str(err.value)


def test_user_entries_give_each_caller_their_own_locations(tmp_path: Path) -> None:
    """``{user}`` is the caller's name: alice gets her folder and prefixes, not bob's, also
    not through ``..``, a longer name, or a symbolic link; refusals list what alice may use,
    without the WebDAV password."""
    home = tmp_path / "home"
    (home / "alice").mkdir(parents=True)
    (home / "bob").mkdir()
    (home / "alice" / "to-bob").symlink_to(home / "bob")
    roots = [f"{home}/{{user}}", "s3://jobs/{user}", "webdav://u:pw@dav:8080/share/{user}"]
    alice = JobCaller("alice")
    for uri in (
        f"{home}/alice",
        f"{home}/alice/in/run1",
        "s3://jobs/alice/run1",
        "webdav://dav:8080/share/alice/in",
    ):
        check_allowed(uri, roots, alice)
    for uri in (
        f"{home}/bob/in",
        f"{home}/alice2",
        f"{home}/alice/../bob",
        f"{home}/alice/to-bob",
        f"{home}/{{user}}",
        "s3://jobs/bob",
        "s3://jobs/alice-x",
        "webdav://dav:8080/share/bob",
    ):
        with pytest.raises(LocationError) as refused:
            check_allowed(uri, roots, alice)
        assert str(refused.value).endswith(
            "is not a location this runtime's jobs may use (allowed for alice: "
            f"{home}/alice, s3://jobs/alice, webdav://dav:8080/share/alice)"
        ), uri
        assert "pw" not in str(refused.value)


@pytest.mark.parametrize(
    ("caller", "why"),
    [
        (JobCaller.from_header("alice", trusted=False), "cannot tell who calls"),
        (JobCaller.from_header(None, trusted=True), "the call names no user"),
        (None, "the call names no user"),
        (JobCaller.from_header("../bob", trusted=True), "'../bob' cannot name a folder"),
    ],
)
def test_user_entries_allow_nothing_without_a_trusted_user_name(
    caller: JobCaller | None, why: str
) -> None:
    """Without a name the runtime can trust, ``{user}`` entries allow nothing (and the
    refusal says why), while the other entries still apply."""
    roots = ["/srv/home/{user}", "/srv/shared"]
    check_allowed("/srv/shared/in", roots, caller)
    for uri in ("/srv/home/alice", "/srv/home/bob", "/srv/home/{user}", "/srv/bob"):
        with pytest.raises(LocationError) as refused:
            check_allowed(uri, roots, caller)
        message = str(refused.value)
        assert "this runtime's jobs may use (allowed: /srv/shared); /srv/home/{user}" in message
        assert why in message
    with pytest.raises(LocationError, match=r"no location is allowed for this call.*" + why):
        check_allowed("/srv/home/alice", ["/srv/home/{user}"], caller)


@pytest.mark.parametrize(
    "name",
    ["alice", "Bob42", "alice@example.org", "a.b-c+d_e", "7", "x" * 128],
)
def test_plain_user_names_fill_user_entries(name: str) -> None:
    assert JobCaller.from_header(name, trusted=True) == JobCaller(name)
    check_allowed(f"/srv/home/{name}/in", ["/srv/home/{user}"], JobCaller(name))


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../bob",
        "a/b",
        "a..b",
        ".hidden",
        "-rf",
        "a\x00b",
        "a%2fb",
        "a b",
        "a?b",
        "a#b",
        "a\\b",
        "jos\u00e9",
        "x" * 129,
    ],
)
def test_other_user_names_are_refused_not_escaped(name: str) -> None:
    """Names that could leave their folder, or need escaping, get nothing from ``{user}``."""
    caller = JobCaller.from_header(name, trusted=True)
    assert caller.name is None
    assert "cannot name a folder" in caller.unknown


@pytest.mark.parametrize(
    ("entry", "ok"),
    [
        ("/home/{user}", True),
        ("/data/{user}/jobs", True),
        ("file:///home/{user}", True),
        ("s3://jobs/{user}", True),
        ("webdav://u:pw@dav:8080/home/{user}", True),
        ("s3://{user}/in", False),
        ("s3://jobs-{user}/in", False),
        ("webdav://{user}.dav.example/in", False),
        ("webdav://{user}:pw@dav/in", False),
    ],
)
def test_user_may_only_stand_in_the_path_of_an_entry(entry: str, ok: bool) -> None:
    """In a host or bucket, a user named ``x@other`` would pick the host ``other``."""
    if ok:
        check_allowed_entry(entry)
        RuntimeSettings(job_locations=[entry])
        return
    with pytest.raises(LocationError, match="may only stand in the path") as refused:
        check_allowed_entry(entry)
    assert "pw" not in str(refused.value)
    with pytest.raises(ValidationError, match="may only stand in the path"):
        RuntimeSettings(job_locations=[entry])
    with pytest.raises(LocationError, match="may only stand in the path"):
        check_allowed("s3://jobs/in", [entry], JobCaller("alice"))


def test_confined_local_locations_never_follow_a_link_out_of_them(tmp_path: Path) -> None:
    """Confinement holds inside the folder too: a symbolic link in alice's input or output
    that leads to bob's folder, made before or after the job was checked, fails its item;
    links that stay inside work, and unconfined jobs follow every link."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    write_tree(alice / "in", {"own.npy": b"alice's"})
    write_tree(bob, {"secret.npy": b"bob's"})
    (alice / "in" / "stolen.npy").symlink_to(bob / "secret.npy")
    (alice / "in" / "alias.npy").symlink_to(alice / "in" / "own.npy")
    source = open_location(str(alice / "in"), confine_links=True)
    assert source.list_files() == ["alias.npy", "own.npy", "stolen.npy"]
    source.fetch("alias.npy", tmp_path / "alias.npy")
    assert (tmp_path / "alias.npy").read_bytes() == b"alice's"
    with pytest.raises(LocationError, match=r"stolen\.npy in .* is a symbolic link out of it"):
        source.fetch("stolen.npy", tmp_path / "stolen.npy")

    (alice / "out").mkdir()
    (alice / "out" / "escape").symlink_to(bob)
    target = open_location(str(alice / "out"), confine_links=True)
    write_tree(tmp_path / "results", {"r.txt": b"r"})
    for prefix in ("escape", "escape/deeper"):
        with pytest.raises(LocationError, match="leads out of it"):
            target.commit(tmp_path / "results", prefix)
    assert target.commit(tmp_path / "results", "fine") == ["fine/r.txt"]

    swapped = open_location(
        str(alice / "in"), confine_links=True
    )  # checked, then the folder becomes a link
    (alice / "in").rename(alice / "old")
    (alice / "in").symlink_to(bob)
    with pytest.raises(LocationError, match="symbolic link out of it"):
        swapped.fetch("secret.npy", tmp_path / "secret.npy")
    assert sorted(path.name for path in bob.iterdir()) == ["secret.npy"]

    (alice / "loop").symlink_to(alice / "loop")
    with pytest.raises(LocationError, match="symbolic link loop"):
        open_location(str(alice / "loop"), confine_links=True)
    unconfined = open_location(str(alice / "in"))
    unconfined.fetch("secret.npy", tmp_path / "secret.npy")
    assert (tmp_path / "secret.npy").read_bytes() == b"bob's"
