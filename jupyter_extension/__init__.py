"""jupyter_extension: hubserve inside Jupyter.

Four ways in, one client underneath:

* :class:`Client` / :class:`AsyncClient` (``jupyter_extension.client``, also ``hubserve.Client``):
  the Python client of the hub service — push models, deploy, scale, roll back, predict.
  Inside a JupyterHub single-user server it needs no arguments: the service URL comes from
  ``HUBSERVE_URL`` and the token from ``JUPYTERHUB_API_TOKEN``.
* ``%load_ext jupyter_extension``: the ``%hubserve`` line magic and the ``%%hubserve_service``
  cell magic (``jupyter_extension.magics``).
* :class:`DeployPanel` (``jupyter_extension.widgets``): an ipywidgets panel to deploy and
  manage models from a notebook.
* The Jupyter server extension (``jupyter_extension.serverext``): REST endpoints under
  ``/hubserve/`` that call the hub service with the server's own token, so the JupyterLab
  panel never holds one.

It depends on :mod:`model_runtime` and reaches ``hub_service`` over HTTP only. Names are
imported lazily, so loading the server extension does not import ipywidgets or torch. The
client needs only the core install (``pip install hubserve``); the magics, widgets and server
extension need the jupyter extra (``pip install 'hubserve[jupyter]'``), and the widgets and
server extension say so when it is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client import AsyncClient, Client
    from .widgets import DeployPanel

__all__ = [
    "AsyncClient",
    "Client",
    "DeployPanel",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_LAZY = {
    "Client": "jupyter_extension.client",
    "AsyncClient": "jupyter_extension.client",
    "DeployPanel": "jupyter_extension.widgets",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jupyter_extension' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext jupyter_extension``: register the hubserve magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext jupyter_extension``: remove the magics and their formatters."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_extension.serverext"}]
