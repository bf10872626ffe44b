"""Batch jobs: run a *path API* over every file of an input location.

A path API is a user function ``fn(src: Path, out_dir: Path) -> Any`` that processes one local
input file ``src``, writes any output files into the local directory ``out_dir`` (fresh and
empty for each item) and returns a JSON-serialisable summary, or None. A *job* runs one path
API over every file of an input location (a directory, ``s3://`` or ``webdav://``, see
:mod:`._locations`) whose relative path matches an optional ``fnmatch`` pattern, and
publishes the results to an output location.

Output layout: the files that ``fn`` writes for the input ``a/img1.fits`` are published
under ``a/img1/`` (the input's relative path without its last suffix), e.g.
``a/img1/mask.fits``. When several inputs share that stem (``a/img1.fits`` and
``a/img1.png``), each of them keeps its full name instead (``a/img1.fits/mask.fits``), so no
two items write to the same place. Every file is published atomically. When the job ends,
its final :class:`JobStatus` is published as ``_job.json`` at the root of the output, just
before the job's state turns final, so a client that sees a final state (other than a queued
job cancelled, which never ran) finds the summary in place when the output was writable.

Lifecycle (:class:`JobState`): ``queued`` → ``running`` → ``succeeded`` (every item ok),
``completed_with_errors`` (some items failed), ``failed`` (every item failed, or a location
became unusable mid-way: unreachable, credentials refused, bucket gone; the job stops there
and records why in ``error``) or ``cancelled`` (by :meth:`JobManager.cancel` or
:meth:`JobManager.stop`; a running job stops after its current item). An item fails when its
input cannot be fetched, ``fn`` raises, its result is not JSON-serialisable or its outputs
cannot be written; the item records ``"ExceptionType: message"`` and the job goes on.

:class:`JobManager` validates a job synchronously in :meth:`JobManager.submit` (known API,
usable locations, at least one input file: listing happens there, so the job processes the
files that existed at submit time) and queues it; one worker thread runs jobs FIFO, items one
after another, while a second thread prefetches the next item's input so that remote I/O
overlaps compute. Each item runs in its own temporary directory under ``work_dir`` (``src``
keeps the input's file name), removed as soon as the item is done; nothing of a job is left
there once its state is final. Results go through pydantic's JSON conversion, with
``tolist()`` for NumPy values and tensors. Reads of job status are thread-safe and return
copies; the manager keeps the latest ``keep_finished`` finished jobs.

Jobs belong to the caller who submitted them when the runtime can tell who calls (the
gateway's ``x-hubserve-user``, trusted only with the gateway's secret): such a job is seen,
listed and cancelled by that caller alone — for anyone else it does not exist (404), so users
sharing a deployment do not see each other's paths and results. Jobs submitted without a
known caller (a standalone ``hubserve serve``) are everyone's.

Items are paginated: a job's results may add up to megabytes, and clients poll its status
every second or so, so a status read copies only a page of items (:meth:`JobManager.get`'s
``items_from`` and ``items_limit``) and says in ``items_next`` where the next page starts.
Items are only ever appended, never changed, so a client that asks each time for the items
from ``items_next`` on receives every item exactly once, also while the job still runs, and
polling costs in total what the items weigh once. Only the published summary holds them all.
"""

from __future__ import annotations

import builtins
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, Field, computed_field
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..errors import HubserveError, InvalidInput
from ._locations import Location, LocationError, LocationUnavailableError
from ._locations import open_location as _open_location

__all__ = [
    "ITEMS_PAGE",
    "MAX_ITEMS_FROM",
    "MAX_ITEMS_PAGE",
    "SUMMARY_NAME",
    "ItemResult",
    "JobError",
    "JobManager",
    "JobState",
    "JobStatus",
    "PathFunction",
]

logger = logging.getLogger(__name__)

#: Name of the job summary published at the root of the output location.
SUMMARY_NAME = "_job.json"
#: Longest error message kept per item: a whole log dumped into an exception stays out.
_MAX_ERROR_CHARS = 2000
#: Items in a status page unless the client asks otherwise: all of a small job's items, and
#: a bounded cost for a client that does not paginate.
ITEMS_PAGE = 100
#: Most items in one status page.
MAX_ITEMS_PAGE = 1000
#: Largest ``items_from`` accepted (a 32-bit integer, for clients in any language).
MAX_ITEMS_FROM = 2**31 - 1

PathFunction = Callable[[Path, Path], Any]


class JobError(HubserveError):
    """A job request cannot be honoured; ``status_code`` is the HTTP status to answer."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemResult(BaseModel):
    """The outcome of one input file; ``outputs`` are relative to the output location."""

    item: str
    ok: bool
    outputs: list[str] = Field(default_factory=list)
    result: Any = None
    error: str | None = None
    seconds: float


class JobStatus(BaseModel):
    """A job as clients see it; ``input`` and ``output`` never contain credentials."""

    id: str
    api: str
    input: str
    output: str
    pattern: str | None = None
    owner: str | None = Field(
        None, description="The hub user who submitted the job; only they see it."
    )
    state: JobState = JobState.QUEUED
    cancel_requested: bool = False
    items_total: int
    items_done: int = 0
    items_failed: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    items: list[ItemResult] = Field(
        default_factory=list,
        description="A page of the items processed so far, in order, from item items_from.",
    )
    items_from: int = Field(0, description="Index of the first item of the page.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def progress(self) -> float:
        """Fraction of the items processed (successfully or not), from 0 to 1."""
        return self.items_done / self.items_total if self.items_total else 1.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def items_next(self) -> int:
        """Where the next page of items starts; below ``items_done``, more items are ready."""
        return self.items_from + len(self.items)

    def page(self, items_from: int, items_limit: int) -> JobStatus:
        """A copy with only the items from ``items_from``, at most ``items_limit`` of them.

        Items never change once appended, so the copy shares them: its cost is the page's
        size, not the job's.
        """
        end = items_from + items_limit
        return self.model_copy(
            update={"items": self.items[items_from:end], "items_from": items_from}
        )


@dataclass
class _Job:
    status: JobStatus
    source: Location
    target: Location
    files: list[str]
    cancel: threading.Event = field(default_factory=threading.Event)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _describe_error(exc: BaseException) -> str:
    """The exception's message, after its type unless the API refused the input on purpose."""
    message = str(exc) if isinstance(exc, InvalidInput) else f"{type(exc).__name__}: {exc}"
    if len(message) > _MAX_ERROR_CHARS:
        return message[: _MAX_ERROR_CHARS - 3] + "..."
    return message


def _jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data; arrays and tensors go through ``tolist()``."""

    def fallback(obj: Any) -> Any:
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"the result is not JSON-serialisable ({type(obj).__name__})")

    try:
        return to_jsonable_python(value, fallback=fallback)
    except PydanticSerializationError as exc:
        raise TypeError(f"the result is not JSON-serialisable: {exc}") from None


def _output_prefixes(files: builtins.list[str]) -> dict[str, str]:
    """Where each input's outputs go: its path without suffix, or its full path on a clash."""
    stems = {rel: str(PurePosixPath(rel).with_suffix("")) for rel in files}
    counts = Counter(stems.values())
    return {rel: stem if counts[stem] == 1 else rel for rel, stem in stems.items()}


class JobManager:
    """Queues, runs and reports batch jobs over the path APIs in ``functions``.

    ``open_location`` turns a URI into a :class:`Location`; pass
    ``functools.partial(open_location, s3=..., webdav_auth=...)`` to give jobs credentials.
    """

    def __init__(
        self,
        functions: Mapping[str, PathFunction],
        *,
        work_dir: Path,
        max_queued_jobs: int = 16,
        keep_finished: int = 100,
        open_location: Callable[[str], Location] = _open_location,
    ) -> None:
        self._functions = dict(functions)
        self._work_dir = work_dir
        self._max_queued = max_queued_jobs
        self._keep_finished = keep_finished
        self._open_location = open_location
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}
        self._queue: deque[_Job] = deque()
        self._finished: deque[str] = deque()
        self._stopping = False
        self._worker: threading.Thread | None = None

    # -- API ------------------------------------------------------------------------------

    def submit(
        self,
        api: str,
        input: str,
        output: str,
        *,
        pattern: str | None = None,
        owner: str | None = None,
    ) -> JobStatus:
        """Validate and queue a job for ``owner``; bad locations fail here with a
        :class:`LocationError`."""
        if api not in self._functions:
            known = ", ".join(sorted(self._functions)) or "none"
            raise JobError(f"unknown path API {api!r} (path APIs: {known})", 404)
        with self._lock:
            self._check_accepting()
        source = self._open_location(input)
        target: Location | None = None
        try:
            files = source.list_files(pattern)
            if not files:
                matching = f" matching {pattern!r}" if pattern else ""
                raise JobError(f"no input files{matching} in {source.describe()}", 422)
            target = self._open_location(output)
            target.check()
            job = _Job(
                JobStatus(
                    id=uuid.uuid4().hex,
                    api=api,
                    input=source.describe(),
                    output=target.describe(),
                    pattern=pattern,
                    owner=owner,
                    items_total=len(files),
                    created_at=_now(),
                ),
                source,
                target,
                files,
            )
            with self._lock:
                self._check_accepting()
                self._jobs[job.status.id] = job
                self._queue.append(job)
                self._wakeup.notify()
                logger.info(
                    "job %s queued: %s over %d files of %s",
                    job.status.id,
                    api,
                    len(files),
                    job.status.input,
                )
                return job.status.model_copy(deep=True)
        except BaseException:
            source.close()
            if target is not None:
                target.close()
            raise

    def get(
        self,
        job_id: str,
        *,
        caller: str | None = None,
        items_from: int = 0,
        items_limit: int = ITEMS_PAGE,
    ) -> JobStatus:
        """``caller``'s job with a page of its items (see :meth:`JobStatus.page`)."""
        with self._lock:
            return self._job(job_id, caller).status.page(items_from, items_limit)

    def list(self, caller: str | None = None) -> builtins.list[JobStatus]:
        """Every job of ``caller`` kept, oldest first, without items (:meth:`get` pages
        them)."""
        with self._lock:
            return [
                job.status.page(0, 0)
                for job in self._jobs.values()
                if job.status.owner in (None, caller)
            ]

    def cancel(self, job_id: str, caller: str | None = None) -> JobStatus:
        """Cancel ``caller``'s job: a queued one at once, a running one after its current
        item; finished jobs are returned unchanged."""
        with self._lock:
            job = self._job(job_id, caller)
            if job.status.state is JobState.QUEUED:
                self._queue.remove(job)
                self._finish_queued(job)
            elif job.status.state is JobState.RUNNING:
                job.status.cancel_requested = True
                job.cancel.set()
            return job.status.page(0, ITEMS_PAGE)

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._lock:
            if self._worker is not None:
                return
            self._work_dir.mkdir(parents=True, exist_ok=True)
            self._worker = threading.Thread(
                target=self._run_worker, name="hubserve-jobs", daemon=True
            )
            self._worker.start()

    def stop(self, timeout: float = 30) -> None:
        """Refuse new jobs, cancel queued ones, and wait up to ``timeout`` seconds for the
        running job to stop after its current item."""
        with self._lock:
            self._stopping = True
            while self._queue:
                self._finish_queued(self._queue.popleft())
            for job in self._jobs.values():
                if job.status.state is JobState.RUNNING:
                    job.status.cancel_requested = True
                    job.cancel.set()
            self._wakeup.notify_all()
            worker = self._worker
        if worker is not None:
            worker.join(timeout)

    # -- bookkeeping (called with the lock held) --------------------------------------------

    def _check_accepting(self) -> None:
        if self._stopping:
            raise JobError("the runtime is shutting down and accepts no new jobs", 503)
        if len(self._queue) >= self._max_queued:
            raise JobError(
                f"too many queued jobs ({self._max_queued}): retry when some are done", 503
            )

    def _job(self, job_id: str, caller: str | None) -> _Job:
        job = self._jobs.get(job_id)
        if job is None or job.status.owner not in (None, caller):
            raise JobError(f"no job {job_id!r}", 404)
        return job

    def _finish_queued(self, job: _Job) -> None:
        job.status.state = JobState.CANCELLED
        job.status.cancel_requested = True
        job.status.finished_at = _now()
        job.source.close()
        job.target.close()
        self._remember_finished(job)

    def _remember_finished(self, job: _Job) -> None:
        self._finished.append(job.status.id)
        while len(self._finished) > self._keep_finished:
            self._jobs.pop(self._finished.popleft(), None)

    # -- the worker -------------------------------------------------------------------------

    def _run_worker(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                job.status.state = JobState.RUNNING
                job.status.started_at = _now()
            logger.info("job %s started", job.status.id)
            try:
                self._run_job(job)
            finally:
                job.source.close()
                job.target.close()

    def _run_job(self, job: _Job) -> None:
        """Run the items, publish the summary, remove the temporary directory, and only then
        make the final state visible."""
        try:
            with tempfile.TemporaryDirectory(
                prefix=f"job-{job.status.id}-", dir=self._work_dir, ignore_cleanup_errors=True
            ) as job_dir:
                error = self._run_items(job, Path(job_dir))
                state, error, finished_at = self._write_summary(job, Path(job_dir), error)
        except Exception as exc:  # a bug of ours: never leave a job running forever
            logger.exception("job %s crashed", job.status.id)
            state, error, finished_at = (
                JobState.FAILED,
                f"internal error: {_describe_error(exc)}",
                _now(),
            )
        with self._lock:
            job.status.state = state
            job.status.error = error
            job.status.finished_at = finished_at
            self._remember_finished(job)
        logger.info("job %s %s%s", job.status.id, state.value, f": {error}" if error else "")

    def _run_items(self, job: _Job, job_dir: Path) -> str | None:
        """Process the items in order; returns why the job stopped early, if a location
        became unusable."""
        function = self._functions[job.status.api]
        prefixes = _output_prefixes(job.files)
        with ThreadPoolExecutor(1, thread_name_prefix="hubserve-prefetch") as prefetcher:
            fetching = self._prefetch(prefetcher, job, 0, job_dir)
            for index, rel in enumerate(job.files):
                if job.cancel.is_set():
                    fetching.cancel()
                    break
                current = fetching
                if index + 1 < len(job.files):
                    fetching = self._prefetch(prefetcher, job, index + 1, job_dir)
                try:
                    item = self._run_item(
                        job, function, rel, current, job_dir / str(index), prefixes[rel]
                    )
                except LocationUnavailableError as exc:
                    fetching.cancel()
                    return f"stopped at {rel}: {exc}"
                finally:
                    shutil.rmtree(job_dir / str(index), ignore_errors=True)
                with self._lock:
                    job.status.items.append(item)
                    job.status.items_done += 1
                    job.status.items_failed += not item.ok
        return None

    @staticmethod
    def _prefetch(
        prefetcher: ThreadPoolExecutor, job: _Job, index: int, job_dir: Path
    ) -> Future[Path]:
        rel = job.files[index]

        def fetch() -> Path:
            inbox = job_dir / str(index) / "in"
            inbox.mkdir(parents=True)
            dest = inbox / PurePosixPath(rel).name
            job.source.fetch(rel, dest)
            return dest

        return prefetcher.submit(fetch)

    @staticmethod
    def _run_item(
        job: _Job,
        function: PathFunction,
        rel: str,
        fetching: Future[Path],
        item_dir: Path,
        prefix: str,
    ) -> ItemResult:
        """Process one input; raises only when a location became unusable."""
        started = time.monotonic()
        try:
            src = fetching.result()
            out_dir = item_dir / "out"
            out_dir.mkdir()
            result = _jsonable(function(src, out_dir))
            outputs = job.target.commit(out_dir, prefix)
        except LocationUnavailableError:
            raise
        except (Exception, SystemExit) as exc:  # the user's code may even call sys.exit()
            return ItemResult(
                item=rel,
                ok=False,
                error=_describe_error(exc),
                seconds=time.monotonic() - started,
            )
        return ItemResult(
            item=rel, ok=True, outputs=outputs, result=result, seconds=time.monotonic() - started
        )

    def _write_summary(
        self, job: _Job, job_dir: Path, error: str | None
    ) -> tuple[JobState, str | None, datetime]:
        """Decide the final state and publish the summary; returns state, error, end time."""
        status = job.status
        if error is not None:
            state = JobState.FAILED
        elif job.cancel.is_set() and status.items_done < status.items_total:
            state = JobState.CANCELLED
        elif status.items_failed == 0:
            state = JobState.SUCCEEDED
        elif status.items_failed == status.items_done:
            state, error = JobState.FAILED, "every item failed"
        else:
            state = JobState.COMPLETED_WITH_ERRORS
        finished_at = _now()
        with self._lock:
            summary = status.model_copy(
                deep=True, update={"state": state, "error": error, "finished_at": finished_at}
            )
        summary_dir = job_dir / "summary"
        summary_dir.mkdir()
        (summary_dir / SUMMARY_NAME).write_text(summary.model_dump_json(indent=2) + "\n")
        try:
            job.target.commit(summary_dir, "")
        except LocationError as exc:
            if state is not JobState.FAILED:
                state, error = JobState.FAILED, f"cannot write {SUMMARY_NAME}: {exc}"
        return state, error, finished_at
