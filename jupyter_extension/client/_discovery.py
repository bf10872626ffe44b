"""Where the hubserve service is and which token to use, explicit or from the environment.

Inside a JupyterHub single-user server, nothing needs configuring: hubserve's
``configure_jupyterhub`` sets ``HUBSERVE_URL`` for every server, and JupyterHub gives each
server ``JUPYTERHUB_API_TOKEN`` (whose scopes include access to hubserve) and
``JUPYTERHUB_API_URL``. Outside a hub (a laptop, CI), pass ``url=`` and ``token=``.

Precedence, most explicit first:

* URL: ``url=`` > ``$HUBSERVE_URL`` > ``$JUPYTERHUB_API_URL`` with ``/hub/api`` replaced by
  ``/services/hubserve/`` (the service's default route at the hub) > error;
* token: ``token=`` > ``$JUPYTERHUB_API_TOKEN`` > error.

The environment is read when a client is made, never at import time, so a notebook that sets
a variable after ``import hubserve`` still gets it.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigurationError

SERVICE_NAME = "hubserve"
_HUB_API_SUFFIX = "/hub/api"
#: What a token may look like: printable, no spaces (it goes into a header).
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def service_url(url: str | None = None) -> str:
    """The service's URL prefix, ending in ``/`` (see the module docstring)."""
    if url:
        return normalize_url(url, "url=")
    env = os.environ.get("HUBSERVE_URL", "").strip()
    if env:
        return normalize_url(env, "HUBSERVE_URL")
    hub_api = os.environ.get("JUPYTERHUB_API_URL", "").strip().rstrip("/")
    if hub_api:
        if not hub_api.endswith(_HUB_API_SUFFIX):
            raise ConfigurationError(
                f"cannot derive the hubserve URL from JUPYTERHUB_API_URL={hub_api!r} (it does"
                f" not end in {_HUB_API_SUFFIX}): set HUBSERVE_URL or pass url="
            )
        base = hub_api.removesuffix(_HUB_API_SUFFIX)
        return normalize_url(f"{base}/services/{SERVICE_NAME}/", "JUPYTERHUB_API_URL")
    raise ConfigurationError("cannot find the hubserve service: set HUBSERVE_URL or pass url=")


def normalize_url(url: str, origin: str) -> str:
    """``url`` checked (http or https, a host) and ending in ``/``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"the hubserve URL from {origin} must be http(s)://host[:port]/prefix/,"
            f" not {display_url(url)!r}"
        )
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def display_url(url: str) -> str:
    """``url`` without credentials, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def api_token(token: str | None = None) -> str:
    """The hub token to authenticate with (see the module docstring)."""
    origin = "token="
    if not token:
        token = os.environ.get("JUPYTERHUB_API_TOKEN", "").strip()
        origin = "JUPYTERHUB_API_TOKEN"
    if not token:
        raise ConfigurationError(
            "no hub token: pass token= or set JUPYTERHUB_API_TOKEN (a JupyterHub token whose"
            " scopes include access:services!service=hubserve)"
        )
    if not _TOKEN_RE.fullmatch(token):
        # Never echo the value: it is a credential, however malformed.
        raise ConfigurationError(f"the token from {origin} contains spaces or control characters")
    return token
