"""Run code the way a notebook does: cell by cell in a real IPython shell."""

from __future__ import annotations

from typing import Any

from IPython.core.interactiveshell import InteractiveShell


class Notebook:
    """A fresh IPython namespace; cells keep their sources in linecache as in Jupyter."""

    def __init__(self) -> None:
        self.shell = InteractiveShell.instance()
        self.shell.reset(new_session=True)

    def run(self, cell: str) -> Any:
        result = self.shell.run_cell(cell, store_history=True)
        result.raise_error()
        return result.result

    @property
    def ns(self) -> dict[str, Any]:
        return self.shell.user_ns

    def __getitem__(self, name: str) -> Any:
        return self.shell.user_ns[name]
