"""One call in ``jupyterhub_config.py`` that wires hubserve into a JupyterHub::

    import hub_service
    hub_service.configure_jupyterhub(c, store="s3://models", backend="local")

What it configures, and why:

* **The managed service** ``c.JupyterHub.services``: JupyterHub starts
  ``python -m hub_service`` (this interpreter), proxies ``/services/<name>/`` to it, gives it
  an API token (which is also its OAuth client secret) and the ``JUPYTERHUB_*`` environment.
  hubserve's own settings (store, database, backend, limits) travel as ``HUBSERVE_*``
  variables. ``oauth_no_confirm`` is set: the service is part of the hub, so users are not
  asked to confirm each browser login. A managed service stops and starts with the hub.
* **Or an external service**, with ``api_token=``: the hub only registers it (URL, token) and
  routes to it; you run ``python -m hub_service`` yourself (its own pod, a systemd unit) with
  that token in ``JUPYTERHUB_API_TOKEN`` and its settings in its own environment. Deployments
  then keep serving while the hub restarts, and callers are authenticated from what the hub
  said before (``HUBSERVE_HUB_OUTAGE_GRACE``, see :mod:`hub_service.auth`). This is the
  topology of Zero to JupyterHub, where hub, proxy and services are separate pods.
* **The service role** ``<name>-service``, holding ``service_scopes``, and by default no
  role at all: the service resolves every caller by asking the hub about the *caller's*
  token (``GET /hub/api/user`` answers for any token), and the OAuth code exchange is
  authenticated by the client secret, so it needs no hub permissions of its own. Least
  privilege is the empty set (a role without scopes would only make the hub warn). Pass
  scopes if a feature needs them (e.g. ``read:users:name`` to validate grant targets).
* **Access for users**: the ``user`` role (all users hold it) gets
  ``access:services!service=<name>`` added to its scopes, keeping ``self`` (the default) or
  whatever scopes it already has. Without this scope a user's tokens are refused (403).
* **Single-user servers**: ``c.Spawner.server_token_scopes`` gets the same access scope (on
  top of the hub's defaults, ``users:activity!user`` and ``access:servers!server``), so the
  server's ``$JUPYTERHUB_API_TOKEN`` may call hubserve on the user's behalf, and
  ``c.Spawner.environment["HUBSERVE_URL"]`` tells the server where the service is: under the
  hub's public URL when it is known, else the service's own address.

The call is idempotent (calling it twice changes nothing more) and merges with roles,
services, environment and token scopes configured before it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from traitlets.config import Config
from traitlets.config.loader import LazyConfigValue

from model_runtime.store import StoreSettings

from ._settings import ServiceLimits
from .auth import access_scope

DEFAULT_PORT = 10101
# JupyterHub's ``server`` role, used for server tokens when server_token_scopes is unset.
HUB_DEFAULT_SERVER_SCOPES = ("users:activity!user", "access:servers!server")


@dataclass(frozen=True)
class HubserveURL:
    """Spawner environment value: the URL at which single-user servers reach hubserve.

    Evaluated by JupyterHub for each spawn (``Spawner.environment`` accepts callables): the
    explicit ``public_url`` if given, else the hub's public URL when the hub knows it
    (``JupyterHub.public_url``), else the service's own address (same machine).
    """

    name: str
    internal_url: str
    public_url: str | None = None

    def __call__(self, spawner: Any) -> str:
        if self.public_url:
            return self.public_url.rstrip("/") + f"/services/{self.name}/"
        public_hub_url = str(getattr(spawner, "public_hub_url", "") or "")
        if public_hub_url:
            base = public_hub_url.rstrip("/").removesuffix("/hub")
            return f"{base}/services/{self.name}/"
        return self.internal_url


@dataclass(frozen=True)
class AddScopes:
    """``server_token_scopes`` wrapper: a configured callable's scopes plus ours."""

    inner: Callable[[Any], Sequence[str]]
    extra: tuple[str, ...]

    def __call__(self, spawner: Any) -> list[str]:
        scopes = list(self.inner(spawner))
        return scopes + [s for s in self.extra if s not in scopes]


def _current(section: Config, key: str, initial: Any) -> Any:
    """The value configured so far for ``key`` (``None`` if unset), lazy appends applied."""
    value = dict.get(section, key)
    if isinstance(value, LazyConfigValue):
        return value.get_value(initial)
    return value


def _service_environment(
    store: str | os.PathLike[str] | StoreSettings | None,
    database_url: str | None,
    data_dir: str | os.PathLike[str] | None,
    backend: str,
    limits: Mapping[str, int] | ServiceLimits | None,
    extra_env: Mapping[str, str] | None,
) -> dict[str, str]:
    env: dict[str, str] = {"HUBSERVE_BACKEND": backend}
    if isinstance(store, StoreSettings):
        env["HUBSERVE_STORE"] = store.store
        if store.s3_endpoint:
            env["HUBSERVE_S3_ENDPOINT"] = store.s3_endpoint
            env["HUBSERVE_S3_ACCESS_KEY"] = store.s3_access_key
            env["HUBSERVE_S3_SECRET_KEY"] = store.s3_secret_key.get_secret_value()
            env["HUBSERVE_S3_SECURE"] = "true" if store.s3_secure else "false"
            if store.s3_region:
                env["HUBSERVE_S3_REGION"] = store.s3_region
    elif store is not None:
        env["HUBSERVE_STORE"] = os.fspath(store)
    if database_url:
        env["HUBSERVE_DATABASE_URL"] = database_url
    if data_dir is not None:
        env["HUBSERVE_DATA_DIR"] = os.fspath(data_dir)
    if limits is not None:
        checked = limits if isinstance(limits, ServiceLimits) else ServiceLimits(**limits)
        env["HUBSERVE_LIMITS"] = checked.model_dump_json()
    env.update(extra_env or {})
    return env


def configure_jupyterhub(
    c: Config,
    *,
    name: str = "hubserve",
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    public_url: str | None = None,
    store: str | os.PathLike[str] | StoreSettings | None = None,
    database_url: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    backend: Literal["local", "kubernetes"] = "local",
    limits: Mapping[str, int] | ServiceLimits | None = None,
    service_scopes: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
    api_token: str | None = None,
) -> None:
    """Register hubserve with the JupyterHub config ``c`` (see the module docstring).

    ``store`` is a local directory, ``s3://bucket[/prefix]`` or a
    :class:`~model_runtime.store.StoreSettings` with the S3 endpoint and keys;
    ``database_url`` a SQLAlchemy URL (default: SQLite in the service's data directory);
    ``data_dir`` the service's own files (database, replica logs and state, bundle cache;
    default ``$HUBSERVE_HOME/service``);
    ``limits`` the fields of :class:`~hub_service._settings.ServiceLimits`; ``public_url``
    the hub's public URL, if single-user servers should reach hubserve through it.
    ``api_token`` makes it an external service, which the hub does not start: the service's
    settings are then those of its own environment, not these arguments.
    """
    if backend not in ("local", "kubernetes"):
        raise ValueError(f"unknown backend {backend!r}: use 'local' or 'kubernetes'")
    if api_token is not None and any(
        given is not None for given in (store, database_url, data_dir, limits, extra_env)
    ):
        raise ValueError(
            "an external service (api_token=...) reads its settings from its own environment:"
            " pass store, database_url, data_dir, limits and extra_env to it, not here"
        )
    scope = access_scope(name)
    hub = c.JupyterHub
    spawner = c.Spawner

    service: dict[str, Any] = {
        "name": name,
        "url": f"http://{host}:{port}",
        "oauth_no_confirm": True,
    }
    if api_token is None:
        service["command"] = [sys.executable, "-m", "hub_service"]
        service["environment"] = _service_environment(
            store, database_url, data_dir, backend, limits, extra_env
        )
    else:
        service["api_token"] = api_token
    services = [s for s in _current(hub, "services", []) or [] if s.get("name") != name]
    hub.services = [*services, service]

    roles = [dict(r) for r in _current(hub, "load_roles", []) or []]
    role_name = f"{name}-service"
    roles = [r for r in roles if r.get("name") != role_name]
    if service_scopes:
        roles.append(
            {
                "name": role_name,
                "description": f"What the {name} model-serving service may do at the hub",
                "scopes": list(service_scopes),
                "services": [name],
            }
        )
    user_role = next((r for r in roles if r.get("name") == "user"), None)
    if user_role is None:
        roles.append({"name": "user", "scopes": ["self", scope]})
    elif scope not in user_role.get("scopes", []):
        user_role["scopes"] = [*user_role.get("scopes", []), scope]
    hub.load_roles = roles

    token_scopes = _current(spawner, "server_token_scopes", [])
    if callable(token_scopes):
        if not isinstance(token_scopes, AddScopes) or scope not in token_scopes.extra:
            spawner.server_token_scopes = AddScopes(token_scopes, (scope,))
    else:
        scopes = list(HUB_DEFAULT_SERVER_SCOPES if token_scopes is None else token_scopes)
        spawner.server_token_scopes = scopes + ([] if scope in scopes else [scope])

    environment = dict(_current(spawner, "environment", {}) or {})
    environment["HUBSERVE_URL"] = HubserveURL(
        name=name, internal_url=f"http://{host}:{port}/services/{name}/", public_url=public_url
    )
    spawner.environment = environment
