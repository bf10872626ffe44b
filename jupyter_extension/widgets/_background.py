"""Slow work off the kernel's main thread, and widget updates made safely from there.

A kernel handles widget events (a button click) on its main thread, one message at a time:
a click handler that packages and uploads a model for a minute would freeze every other
widget, and the notebook with them, until it returns. So the panel hands slow work to a small
thread pool that it owns (:class:`Background`) and lets the click handler return at once.

Updating widgets from a worker thread is allowed — a trait change becomes a comm message,
and ipykernel sends those through its IOPub thread — but widget state itself is plain
Python objects with no locking, and ``hold_sync`` is not safe across threads. Hence three
rules, enforced here:

* every widget update, from any thread, is made under one re-entrant lock
  (:attr:`Background.ui`);
* updates are coarse: progress callbacks that fire per uploaded chunk go through
  :class:`Throttle`, so the front end gets a handful of messages per second, not thousands;
* work can be cancelled: :meth:`Background.close` sets :attr:`Background.closing`, which
  long operations check in their progress callbacks (:meth:`Background.check_open`), so
  closing the panel does not leave a thread polling the service for minutes.

:class:`Poller` is the one other thread: it refreshes a view periodically until stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any


class Cancelled(Exception):
    """Raised inside background work when its panel was closed: stop quietly."""


class Background:
    """A small thread pool owned by one panel, with a way to wait until it is idle.

    Threads are started on first use (a panel that is never clicked starts none) and all
    of them end in :meth:`close`.
    """

    def __init__(self, *, max_workers: int = 2, name: str = "hubserve-panel") -> None:
        self.ui = threading.RLock()
        self.closing = threading.Event()
        self._max_workers = max_workers
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()
        self._idle = threading.Condition()

    def submit(self, work: Callable[[], None]) -> Future[None]:
        """Run ``work`` on a worker thread. Its exceptions are the caller's to catch."""
        with self._idle:
            if self.closing.is_set():
                raise Cancelled
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_workers, self._name)
            future = self._executor.submit(work)
            self._pending.add(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, future: Future[None]) -> None:
        with self._idle:
            self._pending.discard(future)
            if not self._pending:
                self._idle.notify_all()

    @property
    def busy(self) -> bool:
        with self._idle:
            return bool(self._pending)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no work is queued or running; ``False`` if ``timeout`` passed first.

        Work that submits follow-up work does so before it returns, so the pool is never
        seen idle between the two.
        """
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def check_open(self) -> None:
        """Raise :class:`Cancelled` once the panel is closing (call it from progress hooks)."""
        if self.closing.is_set():
            raise Cancelled

    def close(self, timeout: float = 10.0) -> None:
        """Cancel queued work, let running work notice, and end the threads.

        Running work stops at its next :meth:`check_open`; a call blocked on the network
        is given ``timeout`` seconds to return before the threads are left to end alone.
        """
        self.closing.set()
        with self._idle:
            executor, self._executor = self._executor, None
            pending = list(self._pending)
        if executor is None:
            return
        for future in pending:
            future.cancel()
        _, still_running = wait_futures(pending, timeout)
        executor.shutdown(wait=not still_running, cancel_futures=True)


class Poller:
    """Calls ``refresh`` every ``interval`` seconds in its own thread, until stopped.

    The thread is a daemon so that a forgotten panel never keeps the kernel from exiting,
    but :meth:`stop` is what ends it, promptly: the wait between two refreshes is an
    :class:`threading.Event` wait, not a sleep.
    """

    def __init__(self, refresh: Callable[[], Any], interval: float, *, name: str) -> None:
        self.interval = interval
        self._refresh = refresh
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._loop, args=(self._stop,), name=self._name, daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self._refresh()


class Throttle:
    """Lets an update through at most every ``interval`` seconds (forced ones always)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self._last = -float("inf")
        self._lock = threading.Lock()

    def ready(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        with self._lock:
            if force or now - self._last >= self.interval:
                self._last = now
                return True
            return False
