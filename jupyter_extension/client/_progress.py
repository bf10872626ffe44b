"""Progress of long calls: pushing bundles (package, then upload) and waiting for batch jobs.

Callers pass ``progress=True`` for tqdm bars (``tqdm.auto``: widgets in a notebook, text in a
terminal), ``False`` for silence, or their own callable (magics and widgets draw their own
displays). Every operation talks to a :class:`Reporter`, whatever the caller chose, so the
operations do not care how progress is shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from ._models import Job

__all__ = ["JobProgress", "Reporter", "TransferProgress", "job_reporter", "transfer_reporter"]

T = TypeVar("T")

#: ``progress(stage, done, total)`` with stage "package" (steps) or "upload"/"download" (bytes).
TransferCallback = Callable[[str, int, int], None]
TransferProgress = bool | TransferCallback | None
JobProgress = bool | Callable[["Job"], None] | None


class Reporter(Generic[T]):
    """Receives progress updates of type ``T``; :meth:`close` ends any display."""

    def update(self, value: T) -> None:
        """Show ``value``."""

    def close(self) -> None:
        """The operation is over (done or failed)."""


class _Forward(Reporter[T]):
    def __init__(self, callback: Callable[[T], None]) -> None:
        self._callback = callback

    def update(self, value: T) -> None:
        self._callback(value)


#: A transfer update: (stage, done, total).
Transfer = tuple[str, int, int]


class _CallbackTransfer(Reporter[Transfer]):
    def __init__(self, callback: TransferCallback) -> None:
        self._callback = callback

    def update(self, value: Transfer) -> None:
        self._callback(*value)


class _TqdmTransfer(Reporter[Transfer]):
    """One bar per stage; byte stages in human units."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._stage = ""
        self._bar: Any = None

    def update(self, value: Transfer) -> None:
        stage, done, total = value
        if stage != self._stage or self._bar is None:
            self.close()
            self._stage = stage
            self._bar = _tqdm(
                total=total,
                desc=f"{stage} {self._label}".strip(),
                **(
                    {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
                    if stage != "package"
                    else {"bar_format": "{desc}: {elapsed}"}
                ),
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class _TqdmJob(Reporter["Job"]):
    def __init__(self) -> None:
        self._bar: Any = None

    def update(self, value: Job) -> None:
        if self._bar is None:
            self._bar = _tqdm(total=value.items_total, desc=f"job {value.id[:8]}", unit="file")
        self._bar.set_postfix(state=value.state, failed=value.items_failed, refresh=False)
        self._bar.update(value.items_done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _tqdm(**kwargs: Any) -> Any:
    from tqdm.auto import tqdm  # only when a bar is wanted: it imports ipywidgets

    return tqdm(**kwargs)


def transfer_reporter(progress: TransferProgress, label: str = "") -> Reporter[Transfer]:
    """The reporter for a push or download, from the caller's ``progress`` argument."""
    if progress is True:
        return _TqdmTransfer(label)
    if callable(progress):
        return _CallbackTransfer(progress)
    return Reporter()


def job_reporter(progress: JobProgress) -> Reporter[Job]:
    """The reporter for waiting on a batch job, from the caller's ``progress`` argument."""
    if progress is True:
        return _TqdmJob()
    if callable(progress):
        return _Forward(progress)
    return Reporter()
