"""Configuration of the hubserve server extension: ``c.HubserveExtension.*``.

Every trait can be set in ``jupyter_server_config.py`` / ``.json`` or on the command line
(``--HubserveExtension.service_url=...``). Unset traits fall back to the environment, read
once, when the server loads the extension:

* ``service_url``: ``$HUBSERVE_URL`` (which :func:`hub_service.configure_jupyterhub` puts in
  every single-user server's environment), else derived from ``$JUPYTERHUB_API_URL``
  (``<hub>/hub/api`` → ``<hub>/services/hubserve/``). ``$JUPYTERHUB_SERVICE_URL`` is *not*
  used: in a single-user server it is the server's own address, not the service's.
* ``public_url``: ``$HUBSERVE_URL`` when set (it is the hub's public URL when the hub knows
  it), else derived from ``$JUPYTERHUB_PUBLIC_HUB_URL``, else ``service_url``.
* ``token``: ``$JUPYTERHUB_API_TOKEN``, the server's own hub token; JupyterHub gives it the
  scope ``access:services!service=hubserve`` when hubserve is configured.

Outside JupyterHub (a plain ``jupyter lab`` against a standalone ``python -m hub_service``)
set ``service_url`` and ``token`` explicitly, or export ``HUBSERVE_URL`` and
``JUPYTERHUB_API_TOKEN``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from traitlets import Float, Int, Unicode, default, validate
from traitlets.config import LoggingConfigurable

SERVICE_NAME = "hubserve"
"""The name under which :func:`hub_service.configure_jupyterhub` registers the service."""


def service_url_from_hub_api(api_url: str, name: str = SERVICE_NAME) -> str:
    """``http://hub:8081/prefix/hub/api`` → ``http://hub:8081/prefix/services/<name>/``.

    Services live next to ``hub/`` under the hub's base URL; the prefix is kept. An API URL
    that does not end in ``/hub/api`` gives ``""`` (nothing sensible can be derived).
    """
    base = api_url.strip().rstrip("/")
    if not base.endswith("/hub/api"):
        return ""
    return f"{base.removesuffix('/hub/api')}/services/{name}/"


def service_url_from_public_hub(hub_url: str, name: str = SERVICE_NAME) -> str:
    """``https://hub.example.org/prefix/hub/`` → ``https://hub.example.org/prefix/services/<name>/``."""
    base = hub_url.strip().rstrip("/")
    if not base:
        return ""
    return f"{base.removesuffix('/hub')}/services/{name}/"


def normalize_url(url: str) -> str:
    """Strip blanks and end the URL with exactly one ``/`` (``""`` stays ``""``)."""
    url = url.strip()
    return url.rstrip("/") + "/" if url else ""


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be the service's address, or ``None`` when it can."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"the hubserve service URL {url!r} is not an http:// or https:// URL"
    if parts.query or parts.fragment:
        return f"the hubserve service URL {url!r} must not have a query or fragment"
    return None


class HubserveExtension(LoggingConfigurable):
    """Where the hub service is and how the Jupyter server calls it (``c.HubserveExtension``).

    The browser never sees :attr:`token`: the extension's handlers add it server-side, so
    the JupyterLab panel only needs the Jupyter server's own login.
    """

    service_url = Unicode(
        help="""URL of the hubserve service as this Jupyter server reaches it, e.g.
        ``http://127.0.0.1:10101/services/hubserve/``. Default: $HUBSERVE_URL, else derived
        from $JUPYTERHUB_API_URL (``<hub>/hub/api`` -> ``<hub>/services/hubserve/``).
        Empty: the extension is not configured and its API answers 503.""",
    ).tag(config=True)

    public_url = Unicode(
        help="""URL of the hubserve service as users and other programs reach it, shown by
        the JupyterLab panel (endpoint URLs, curl and Python snippets); never called by the
        extension. Default: $HUBSERVE_URL, else derived from $JUPYTERHUB_PUBLIC_HUB_URL,
        else ``service_url``.""",
    ).tag(config=True)

    token = Unicode(
        help="""Hub API token with which the extension calls the service on the user's behalf
        (never sent to the browser). Default: $JUPYTERHUB_API_TOKEN, the single-user
        server's own token. Outside JupyterHub: a token the standalone service accepts.""",
    ).tag(config=True)

    timeout = Float(
        300.0,
        min=0.1,
        help="""Seconds to wait for the service (reading its answer, sending a request body).
        Generous by default: uploads of large bundles and predictions through the gateway
        can take minutes.""",
    ).tag(config=True)

    connect_timeout = Float(
        5.0,
        min=0.1,
        help="""Seconds to wait for a connection to the service; a service that cannot be
        reached in time gives a 503 answer.""",
    ).tag(config=True)

    max_body_size = Int(
        16 * 1024**3,
        min=0,
        help="""Largest request body (bytes) the extension forwards, e.g. a bundle upload.
        Bodies are streamed to the service, never held in memory, so this replaces
        ServerApp.max_body_size for the extension's routes; the service enforces its own
        upload limit (max_upload_bytes) and answers 413 above it.""",
    ).tag(config=True)

    def __init__(self, *, environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        # Defaults read this mapping (os.environ unless given), so tests need not patch it.
        self._environ = os.environ if environ is None else environ
        super().__init__(**kwargs)

    # Dynamic defaults skip the validators below, so they normalize themselves.

    @default("service_url")
    def _default_service_url(self) -> str:
        explicit = normalize_url(self._environ.get("HUBSERVE_URL", ""))
        if explicit:
            return explicit
        return service_url_from_hub_api(self._environ.get("JUPYTERHUB_API_URL", ""))

    @default("public_url")
    def _default_public_url(self) -> str:
        explicit = normalize_url(self._environ.get("HUBSERVE_URL", ""))
        if explicit:
            return explicit
        public = service_url_from_public_hub(self._environ.get("JUPYTERHUB_PUBLIC_HUB_URL", ""))
        return public or self.service_url

    @default("token")
    def _default_token(self) -> str:
        return self._environ.get("JUPYTERHUB_API_TOKEN", "").strip()

    @validate("service_url", "public_url")
    def _normalize(self, proposal: Any) -> str:
        return normalize_url(str(proposal["value"]))

    @validate("token")
    def _strip(self, proposal: Any) -> str:
        return str(proposal["value"]).strip()

    @property
    def user(self) -> str | None:
        """The hub user this server belongs to (``$JUPYTERHUB_USER``), ``None`` outside a hub."""
        return self._environ.get("JUPYTERHUB_USER") or None

    def problem(self) -> str | None:
        """Why the extension cannot call the service, or ``None`` when it is configured."""
        if not self.service_url:
            return (
                "the hubserve extension is not configured: set $HUBSERVE_URL or"
                " c.HubserveExtension.service_url to the service's URL"
            )
        bad_url = url_problem(self.service_url)
        if bad_url:
            return bad_url
        if not self.token:
            return (
                "the hubserve extension has no token: set $JUPYTERHUB_API_TOKEN or"
                " c.HubserveExtension.token"
            )
        return None
