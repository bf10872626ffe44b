"""ipywidgets for hubserve: :class:`DeployPanel` deploys and manages models from a notebook.

``jupyter_extension.DeployPanel`` imports this package lazily, so loading the server
extension or the magics does not import ipywidgets.
"""

from ._panel import DeployPanel
from ._snippets import Snippets

__all__ = ["DeployPanel", "Snippets"]
