"""The hubserve Jupyter server extension: the hub service under ``{base_url}hubserve/``.

Enabled by the shipped ``etc/jupyter/jupyter_server_config.d/jupyter_extension.json``
(``ServerApp.jpserver_extensions.jupyter_extension = true``) once hubserve is installed;
``jupyter_extension._jupyter_server_extension_points`` names this module, and jupyter_server
calls :func:`_load_jupyter_server_extension` when the server starts.

It is a plain module extension, not an ``ExtensionApp``: it has no pages, static files or
command line of its own, only REST handlers and a few settings, which live in the
:class:`HubserveExtension` configurable (``c.HubserveExtension.service_url``, ``.token``,
``.public_url``, ``.timeout``, ``.connect_timeout``, ``.max_body_size``; see
:mod:`jupyter_extension.serverext._settings`). The handlers are in
:mod:`jupyter_extension.serverext.handlers`.

An unconfigured extension (no service URL or token, e.g. a plain ``jupyter lab`` outside a hub)
still loads: ``hubserve/config`` says ``"configured": false`` with the reason, and the
forwarded API answers 503 with the same reason, so the panel can explain what is missing.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import TYPE_CHECKING

# The notebook side is the jupyter extra; the core install (hubserve.Client) has no server.
if find_spec("jupyter_server") is None:
    raise ModuleNotFoundError(
        "the hubserve server extension needs the jupyter extra (jupyter_server not installed): "
        "pip install 'hubserve[jupyter]'",
        name="jupyter_server",
    )

from ._settings import HubserveExtension
from .handlers import SETTINGS_KEY, ServiceClient, default_handlers

if TYPE_CHECKING:
    from jupyter_server.serverapp import ServerApp

__all__ = ["HubserveExtension", "ServiceClient"]


def _load_jupyter_server_extension(serverapp: ServerApp) -> None:
    """Read the settings, create the server's service client, register the handlers."""
    settings = HubserveExtension(parent=serverapp)
    service = ServiceClient(settings)
    web_app = serverapp.web_app
    web_app.settings[SETTINGS_KEY] = service
    # ServerWebApplication leaves add_handlers (tornado's, typed) unannotated.
    web_app.add_handlers(".*$", default_handlers(web_app.settings["base_url"]))  # type: ignore[no-untyped-call]
    if service.problem:
        serverapp.log.warning("hubserve: %s", service.problem)
    else:
        serverapp.log.info(
            "hubserve: %shubserve/ forwards to the service at %s",
            web_app.settings["base_url"],
            service.service_url,
        )
