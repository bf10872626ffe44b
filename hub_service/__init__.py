"""hub_service: the JupyterHub-managed service of hubserve.

It runs at ``/services/hubserve/`` under JupyterHub and owns the model registry, the
deployments and the authenticated prediction gateway (see ``DESIGN.md``, "Hub service API").
It depends on :mod:`model_runtime` for bundles and the store, and on nothing of the notebook
side, which talks to it over HTTP only.
"""

from .config import configure_jupyterhub

__all__ = ["configure_jupyterhub"]
