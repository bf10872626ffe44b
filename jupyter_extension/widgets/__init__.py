"""ipywidgets for hubserve: :class:`DeployPanel` deploys and manages models from a notebook.

``jupyter_extension.DeployPanel`` imports this package lazily, so loading the server
extension or the magics does not import ipywidgets.
"""

from importlib.util import find_spec

# The notebook side is the jupyter extra; the core install (hubserve.Client) has no widgets.
_missing = [name for name in ("ipywidgets", "IPython") if find_spec(name) is None]
if _missing:
    raise ModuleNotFoundError(
        f"the hubserve widgets need the jupyter extra ({', '.join(_missing)} not installed): "
        "pip install 'hubserve[jupyter]'",
        name=_missing[0],
    )

from ._panel import DeployPanel  # noqa: E402
from ._snippets import Snippets  # noqa: E402

__all__ = ["DeployPanel", "Snippets"]
