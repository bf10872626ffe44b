"""Adaptive micro-batching: merge concurrent requests of one API into few model calls.

Concepts
--------
*Request*
    One call of a batchable API. Its input has a leading batch axis of ``n >= 1`` *rows*
    (counted by the injected ``rows`` callable). A request is never split across two batches.
*Batch*
    Consecutive queued requests (first in, first out) merged along axis 0 by ``concat``,
    passed to the model in **one** call, whose output ``split`` cuts back into one slice per
    request. A batch holds at most ``max_batch_size`` rows, except a single request that is
    larger on its own: it runs alone.
*Model thread*
    The executor the model runs on (one worker: running two calls at once only makes them
    fight over the same cores). The event loop never runs the model, ``concat`` or ``split``.
    The batcher keeps at most one batch on it at a time, so requests that arrive meanwhile
    accumulate into the next batch.
*Latency model*
    The model's time per call is estimated as ``fixed + per_row * rows``, an exponentially
    weighted least-squares fit over recent ``(rows, seconds)`` observations (recent batches
    weigh most, so the estimate follows a model that warms up or a machine that gets busier).
    ``fixed`` is what batching saves: it is paid once per call whatever the batch size.
*Arrival model*
    An exponentially weighted mean of the gap between consecutive requests (``gap``) and of
    their size in rows. Gaps count for at most the larger of ``max_latency_ms`` and the
    model's fixed cost: any longer gap only means "nobody else is coming soon", and the mean
    must recover within a few requests when a burst starts after a quiet period.

Dispatch policy
---------------
One dispatcher coroutine per API decides when to send a batch to the model thread:

1. **Model busy**: nothing to decide; requests queue up. As soon as the model is free, the
   dispatcher takes everything queued, up to ``max_batch_size`` rows, and runs it at once.
2. **Model idle, a request arrives**: it is dispatched at once unless *waiting for the next
   arrival pays*. Waiting stops and the batch fires as soon as any of these holds:

   * the queue holds ``max_batch_size`` rows, or the next request (of the mean size) would not
     fit in the batch anyway;
   * the oldest queued request has waited ``max_latency_ms`` (a hard bound, for any traffic);
   * the expected gap to the next arrival exceeds the *waiting budget* below, or the budget
     runs out with no arrival.

   The budget comes from a one-step look-ahead. With ``k`` requests queued (``n`` rows) and one
   more of ``m`` rows expected after ``g`` seconds, firing now costs the newcomer a whole
   extra call (it must wait for ours, then pay ``fixed`` again); waiting delays each of the
   ``k`` queued requests by ``g`` plus the newcomer's ``per_row * m``. Summing the latencies
   of all ``k + 1`` requests, waiting wins exactly when
   ``(k + 1) * g + k * per_row * m < fixed``, that is when ``g`` is below the budget
   ``(fixed - k * per_row * m) / (k + 1)``. The dispatcher waits only if the expected gap is
   below the budget, and never longer than the budget: an arrival after that could not pay
   for the wait any more. Each arrival re-evaluates the rule with ``k + 1`` (time already
   spent waiting is sunk), so the budget shrinks as the batch grows.

   A lone client therefore does not wait: each of its requests follows the answer to the
   previous one, so its gaps are longer than a model call, above the budget (at most
   ``fixed / 2``). Nobody waits before the first batch has been timed either (``fixed`` is 0).
   Under steady traffic the batch grows until one more request would cost the queued ones
   more than it saves.

Queue, errors, cancellation
---------------------------
* The queue is bounded in rows: :meth:`AdaptiveBatcher.submit` raises :class:`Overloaded` (the
  app answers 503 with ``Retry-After``) when a request would take it past
  ``max_queue_rows``. ``retry_after`` is the time the model needs to work through the queue
  at its observed speed.
* If the batched call fails (or ``concat`` refuses the inputs) and ``retry_items`` is set, each
  request of the batch is run again alone, so only the requests that cause the failure get
  the exception; the others get their results. If the output cannot be split back (it has a
  different number of rows than the input: ``split`` raises), every request of the batch gets
  that error: the model itself is broken.
* A request whose caller goes away (its coroutine is cancelled) while queued leaves the queue
  and frees its rows; after dispatch, its result is dropped.
* :meth:`AdaptiveBatcher.stop` refuses new requests, then either finishes all queued work
  (``drain=True``) or fails the queued requests with :class:`Overloaded` (the server is
  shutting down: another replica may serve them) and only finishes the batch in flight.

Costs per request: one future and one small record; no task, no timer, no lock. The dispatcher
is woken by an arrival only while it is idle or waiting for a batch to fill up, and uses one
timer per wait, not per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import HubserveError

# Weight of the newest inter-arrival gap and request size in their running means: the means
# follow a change of traffic within a few requests.
_ARRIVAL_SMOOTHING = 0.3
# Weight kept by older latency observations at each new batch (about 20 batches of memory).
_LATENCY_DECAY = 0.95
# What a request refused because the batcher is stopping should wait before trying again.
_STOPPING_RETRY_AFTER = 1.0


class Overloaded(HubserveError):
    """The batcher cannot take this request now: its queue is full or it is shutting down.

    ``retry_after`` is the number of seconds after which a retry has a fair chance to succeed.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchStats(Protocol):
    """A metrics sink: called once per batch, on the event loop; must be cheap."""

    def observe_batch(self, api: str, rows: int, requests: int, seconds: float) -> None:
        """A batch of ``rows`` rows from ``requests`` requests took ``seconds`` on the model."""

    def set_queue_depth(self, api: str, rows: int) -> None:
        """``rows`` rows are waiting for the model."""


class _Request:
    """One queued request; ``result`` / ``error`` are written by the model thread."""

    __slots__ = ("enqueued", "error", "future", "queued", "result", "rows", "value")

    def __init__(self, value: Any, rows: int, future: asyncio.Future[Any], enqueued: float) -> None:
        self.value = value
        self.rows = rows
        self.future = future
        self.enqueued = enqueued
        self.queued = True
        self.result: Any = None
        self.error: Exception | None = None


class _LatencyModel:
    """``seconds = fixed + per_row * rows``, fitted by exponentially weighted least squares.

    Until two batches of different sizes have been seen the slope is unknown: the cost is then
    taken as fixed. Both coefficients are kept non-negative.
    """

    __slots__ = ("_sw", "_sx", "_sxx", "_sxy", "_sy", "fixed", "per_row")

    def __init__(self) -> None:
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.fixed = 0.0
        self.per_row = 0.0

    def observe(self, rows: int, seconds: float) -> None:
        d = _LATENCY_DECAY
        self._sw = d * self._sw + 1.0
        self._sx = d * self._sx + rows
        self._sy = d * self._sy + seconds
        self._sxx = d * self._sxx + rows * rows
        self._sxy = d * self._sxy + rows * seconds
        mean_x, mean_y = self._sx / self._sw, self._sy / self._sw
        mean_xx = self._sxx / self._sw
        var_x = mean_xx - mean_x * mean_x
        if var_x > 1e-9 * mean_xx:  # the sizes vary enough to tell the slope apart
            self.per_row = max(0.0, (self._sxy / self._sw - mean_x * mean_y) / var_x)
        fixed = mean_y - self.per_row * mean_x
        if fixed < 0.0:  # noise says "no fixed cost": fit a line through the origin
            fixed, self.per_row = 0.0, self._sxy / self._sxx
        self.fixed = fixed


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def _fail(requests: list[_Request], error: Exception) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(error)


class AdaptiveBatcher:
    """Runs the calls of one batchable API in adaptive batches on the model thread.

    ``call`` is the API function (it receives the concatenated input of a batch); ``concat``,
    ``split`` and ``rows`` merge inputs, cut an output back into per-request slices and count
    the rows of an input. See the module documentation for the dispatch policy.
    """

    def __init__(
        self,
        name: str,
        call: Callable[[Any], Any],
        *,
        concat: Callable[[list[Any]], Any],
        split: Callable[[Any, list[int]], list[Any]],
        rows: Callable[[Any], int],
        executor: concurrent.futures.Executor,
        max_batch_size: int = 32,
        max_latency_ms: float = 10.0,
        max_queue_rows: int = 1024,
        retry_items: bool = True,
        stats: BatchStats | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        if not max_latency_ms >= 0:
            raise ValueError(f"max_latency_ms must be 0 or more, not {max_latency_ms}")
        if max_queue_rows < 1:
            raise ValueError(f"max_queue_rows must be at least 1, not {max_queue_rows}")
        self._name = name
        self._call = call
        self._concat = concat
        self._split = split
        self._rows = rows
        self._executor = executor
        self._max_batch_size = max_batch_size
        self._max_latency = max_latency_ms / 1000.0
        self._max_queue_rows = max_queue_rows
        self._retry_items = retry_items
        self._stats = stats

        self._queue: deque[_Request] = deque()
        self._queue_rows = 0
        self._in_flight = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[bool] | None = None  # set while the dispatcher sleeps

        self._latency = _LatencyModel()
        self._gap = self._max_latency  # mean seconds between arrivals
        self._mean_rows = 1.0  # mean rows per request
        self._last_arrival = -math.inf

    # -- public API ----------------------------------------------------------------------------

    @property
    def queue_rows(self) -> int:
        """Rows waiting for the model (not counting the batch it is running)."""
        return self._queue_rows

    @property
    def in_flight(self) -> bool:
        """Whether a batch is on the model thread now."""
        return self._in_flight

    @property
    def latency_model(self) -> tuple[float, float]:
        """The current estimate of the cost of a call: ``(fixed_seconds, seconds_per_row)``."""
        return self._latency.fixed, self._latency.per_row

    def start(self) -> None:
        """Start the dispatcher on the running event loop; :meth:`submit` works from then on."""
        if self._task is not None:
            raise RuntimeError(f"the batcher of {self._name!r} is already started")
        self._loop = loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._dispatch(loop), name=f"hubserve-batcher-{self._name}")

    async def submit(self, value: Any) -> Any:
        """Run ``value`` through the model as part of a batch and return its slice of the output.

        Raises :class:`Overloaded` when the queue has no room for it or the batcher is stopping,
        and the model's exception when this request (alone) makes the model fail.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"the batcher of {self._name!r} is not started")
        if self._stopping:
            raise self._stopping_error()
        n = self._rows(value)
        if n < 1:
            raise ValueError(f"a request to {self._name!r} needs at least one row, got {n}")
        if self._queue_rows + n > self._max_queue_rows:
            raise Overloaded(
                f"the queue of {self._name!r} is full ({self._queue_rows} rows waiting, "
                f"{n} more requested, at most {self._max_queue_rows})",
                retry_after=self._retry_after(),
            )
        now = loop.time()
        gap = min(now - self._last_arrival, max(self._max_latency, self._latency.fixed))
        self._gap += _ARRIVAL_SMOOTHING * (gap - self._gap)
        self._mean_rows += _ARRIVAL_SMOOTHING * (n - self._mean_rows)
        self._last_arrival = now
        request = _Request(value, n, loop.create_future(), now)
        self._queue.append(request)
        self._queue_rows += n
        self._wake()
        try:
            return await request.future
        except asyncio.CancelledError:
            if request.queued:  # the caller left before dispatch: free its place at once
                self._queue.remove(request)
                self._unqueue(request)
            raise

    async def stop(self, *, drain: bool = True) -> None:
        """Refuse new requests, then finish the queued ones (``drain``) or fail them.

        The batch on the model thread, if any, always finishes and delivers its results.
        """
        self._stopping = True
        if not drain:
            self._fail_queued()
        self._wake()
        if self._task is not None:
            await asyncio.shield(self._task)

    # -- the dispatcher (event loop) ---------------------------------------------------------

    async def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    await self._sleep(loop, None)
                    await self._collect(loop)  # a request reached an idle model
                    continue
                batch = self._take()
                if batch:
                    await self._run(loop, batch)
        finally:  # stopped, or cancelled with the loop: nobody will serve what is left
            self._stopping = True
            self._fail_queued()

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the batch fill up while waiting for the next request pays (module docs, 2.)."""
        while not self._stopping:
            patience = self._patience(loop.time())
            if patience <= 0.0 or not await self._sleep(loop, patience):
                return

    def _patience(self, now: float) -> float:
        """How long to wait for another request now; 0 or less: fire."""
        queue = self._queue
        if not queue or self._queue_rows + self._mean_rows > self._max_batch_size:
            return 0.0
        k = len(queue)
        budget = (self._latency.fixed - k * self._latency.per_row * self._mean_rows) / (k + 1)
        if self._gap >= budget:
            return 0.0
        return min(budget, queue[0].enqueued + self._max_latency - now)

    async def _sleep(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> bool:
        """Wait for an arrival or :meth:`stop` (True) or for ``timeout`` seconds (False)."""
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if timeout is None else loop.call_later(timeout, _settle, waiter, False)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter, True)

    def _take(self) -> list[_Request]:
        """Pop the next batch: queued requests in order, up to ``max_batch_size`` rows."""
        batch: list[_Request] = []
        rows = 0
        queue = self._queue
        while queue and (not batch or rows + queue[0].rows <= self._max_batch_size):
            request = queue.popleft()
            self._unqueue(request)
            if not request.future.done():  # else cancelled, its caller has not run yet
                batch.append(request)
                rows += request.rows
        return batch

    def _unqueue(self, request: _Request) -> None:
        request.queued = False
        self._queue_rows -= request.rows

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Request]) -> None:
        if self._stats is not None:
            self._stats.set_queue_depth(self._name, self._queue_rows)
        self._in_flight = True
        try:
            observations, seconds = await loop.run_in_executor(self._executor, self._execute, batch)
        except BaseException as exc:  # executor shut down, or the loop is being torn down
            error = self._stopping_error()
            error.__cause__ = exc
            _fail(batch, error)
            raise
        finally:
            self._in_flight = False
        for rows, elapsed in observations:
            self._latency.observe(rows, elapsed)
        for request in batch:
            future = request.future
            if future.done():  # the caller left after dispatch
                continue
            if request.error is not None:
                future.set_exception(request.error)
            else:
                future.set_result(request.result)
        if self._stats is not None:
            rows = sum(request.rows for request in batch)
            self._stats.observe_batch(self._name, rows, len(batch), seconds)

    def _fail_queued(self) -> None:
        queued = list(self._queue)
        self._queue.clear()
        for request in queued:
            self._unqueue(request)
        _fail(queued, self._stopping_error())

    def _stopping_error(self) -> Overloaded:
        return Overloaded(
            f"the model server is shutting down: {self._name!r} takes no more requests",
            retry_after=_STOPPING_RETRY_AFTER,
        )

    def _retry_after(self) -> float:
        """Seconds the model needs for the queued rows, rounded up to 0.1 s (at least 0.1 s)."""
        batches = math.ceil(self._queue_rows / self._max_batch_size)
        seconds = batches * self._latency.fixed + self._queue_rows * self._latency.per_row
        return max(0.1, math.ceil(seconds * 10.0) / 10.0)

    # -- the model thread --------------------------------------------------------------------

    def _execute(self, batch: list[_Request]) -> tuple[list[tuple[int, float]], float]:
        """Run ``batch`` and store each request's result or error in it.

        Returns the ``(rows, seconds)`` of each successful model call (for the latency model)
        and the total time spent.
        """
        started = time.perf_counter()
        observations: list[tuple[int, float]] = []
        self._execute_batch(batch, observations)
        return observations, time.perf_counter() - started

    def _execute_batch(self, batch: list[_Request], observations: list[tuple[int, float]]) -> None:
        sizes = [request.rows for request in batch]
        try:
            started = time.perf_counter()
            inputs = batch[0].value if len(batch) == 1 else self._concat([r.value for r in batch])
            output = self._call(inputs)
            observations.append((sum(sizes), time.perf_counter() - started))
        except Exception as exc:
            if self._retry_items and len(batch) > 1:  # find the culprits: one call each
                for request in batch:
                    self._execute_batch([request], observations)
            else:
                for request in batch:
                    request.error = exc
            return
        try:
            parts = self._split(output, sizes)
            if len(parts) != len(batch):
                raise ValueError(f"split returned {len(parts)} parts for {len(batch)} requests")
        except Exception as exc:  # the output does not match the input: the model is broken
            for request in batch:
                request.error = exc
            return
        for request, part in zip(batch, parts, strict=True):
            request.result = part
