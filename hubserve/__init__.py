"""``import hubserve``: the public face of hubserve in Python programs and notebooks.

``hubserve.Client`` talks to the hub service (models, deployments, predictions); the
definition API (``Service``, ``kinds``) and bundles come from :mod:`model_runtime`::

    import hubserve
    client = hubserve.Client()               # HUBSERVE_URL + JUPYTERHUB_API_TOKEN in a hub
    client.predict("alice/iris", "predict", [[5.1, 3.5, 1.4, 0.2]])
"""

from __future__ import annotations

from jupyter_extension.client import AsyncClient, Client
from model_runtime import Service, __version__, kinds

__all__ = ["AsyncClient", "Client", "Service", "__version__", "kinds"]
