"""hub_service: the JupyterHub-managed service of hubserve.

It runs at ``/services/hubserve/`` under JupyterHub and owns the model registry, the
deployments and the authenticated prediction gateway (see ``DESIGN.md``, "Hub service API").
It depends on :mod:`model_runtime` for bundles and the store, and on nothing of the notebook
side, which talks to it over HTTP only.
"""

from importlib.util import find_spec

# What the service imports beyond the core install (`pip install hubserve`, the model runtime):
# the hub extra brings them (JupyterHub brings traitlets). Checked here, without importing
# anything, so `import hub_service` and `python -m hub_service` say what to install.
_HUB_EXTRA = ("traitlets", "sqlalchemy", "alembic", "cryptography", "aiohttp")
_missing = [name for name in _HUB_EXTRA if find_spec(name) is None]
if _missing:
    raise ModuleNotFoundError(
        f"hub_service needs the hub extra of hubserve ({', '.join(_missing)} not installed): "
        "pip install 'hubserve[hub]'",
        name=_missing[0],
    )

from .config import configure_jupyterhub  # noqa: E402

__all__ = ["configure_jupyterhub"]
