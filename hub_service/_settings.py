"""Settings of the hub service, read from the environment when the service starts.

JupyterHub starts a managed service with a set of ``JUPYTERHUB_*`` variables: the service's
name, the URL to bind (``JUPYTERHUB_SERVICE_URL``), its proxy prefix
(``JUPYTERHUB_SERVICE_PREFIX``, ``/services/hubserve/``), the hub API URL, the service's own
API token (which is also its OAuth client secret), its OAuth client id and callback URL, and
the public host/base URL of the hub that browsers are sent to for login. The hubserve-specific
settings (store, database, deploy backend, limits, auth caches, cookie secret) come from
``HUBSERVE_*`` variables, which :func:`hub_service.configure_jupyterhub` sets in the service's
environment.

Nothing is read at import time: :class:`HubServiceSettings` reads the environment when it is
instantiated, i.e. in :mod:`hub_service.__main__` or by a test that builds one explicitly.

Standalone development mode: without a hub, set ``HUBSERVE_STATIC_TOKEN_FILE`` to a JSON file
mapping tokens to identities (see :class:`StaticIdentity`); tokens are then resolved from it
instead of the hub API, and browser login is unavailable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, Field, SecretStr, TypeAdapter, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_runtime.envs import EnvironmentManager, EnvironmentPolicy
from model_runtime.paths import default_home
from model_runtime.runtime import JobLocations
from model_runtime.sandbox import SandboxError

from .backends._cgroups import parse_quantity
from .backends._isolation import Isolation

_COOKIE_KEY_CONTEXT = b"hubserve-cookie-secret-v1"


def _env(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ServiceLimits(BaseModel):
    """Resource limits the service enforces (``HUBSERVE_LIMITS`` as JSON)."""

    model_config = {"extra": "forbid"}

    max_upload_bytes: int = Field(2 * 1024**3, gt=0)
    max_replicas: int = Field(8, gt=0)
    max_deployments_per_user: int = Field(10, gt=0)


class StaticIdentity(BaseModel):
    """An identity of the standalone development mode, as written in the static token file.

    The file is a JSON object ``{"<token>": {"name": "alice", "admin": false, "groups": []}}``.
    Static identities always hold the access scope of this service.
    """

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1)
    admin: bool = False
    groups: list[str] = Field(default_factory=list)


StaticTokens = dict[str, StaticIdentity]
_STATIC_TOKENS = TypeAdapter(StaticTokens)


class HubServiceSettings(BaseSettings):
    """Everything the service needs to know, from ``JUPYTERHUB_*`` and ``HUBSERVE_*``."""

    model_config = SettingsConfigDict(env_prefix="HUBSERVE_", extra="ignore", populate_by_name=True)

    service_name: str = Field(
        "hubserve", validation_alias=_env("JUPYTERHUB_SERVICE_NAME", "HUBSERVE_SERVICE_NAME")
    )
    service_url: str = Field(
        "http://127.0.0.1:10101",
        validation_alias=_env("JUPYTERHUB_SERVICE_URL", "HUBSERVE_SERVICE_URL"),
        description="Where the service listens (scheme, host and port are used).",
    )
    base_url: str = Field(
        "/services/hubserve/",
        validation_alias=_env("JUPYTERHUB_SERVICE_PREFIX", "HUBSERVE_BASE_URL"),
        description="The path prefix the proxy routes to the service.",
    )
    hub_api_url: str = Field(
        "http://127.0.0.1:8081/hub/api",
        validation_alias=_env("JUPYTERHUB_API_URL", "HUBSERVE_HUB_API_URL"),
    )
    hub_host: str = Field(
        "",
        validation_alias=_env("JUPYTERHUB_HOST", "HUBSERVE_HUB_HOST"),
        description="Public origin of the hub for browser redirects ('' = same origin).",
    )
    hub_base_url: str = Field(
        "/", validation_alias=_env("JUPYTERHUB_BASE_URL", "HUBSERVE_HUB_BASE_URL")
    )
    api_token: SecretStr | None = Field(
        None, validation_alias=_env("JUPYTERHUB_API_TOKEN", "HUBSERVE_API_TOKEN")
    )
    oauth_client_id: str = Field(
        "", validation_alias=_env("JUPYTERHUB_CLIENT_ID", "HUBSERVE_OAUTH_CLIENT_ID")
    )
    oauth_redirect_uri: str = Field(
        "",
        validation_alias=_env("JUPYTERHUB_OAUTH_CALLBACK_URL", "HUBSERVE_OAUTH_REDIRECT_URI"),
    )
    # The fields below are read from HUBSERVE_<FIELD NAME>.
    cookie_secret: SecretStr | None = Field(
        None, description="Key material for session cookies; derived from api_token if unset."
    )
    static_token_file: Path | None = None
    positive_ttl: float = Field(60.0, ge=0, description="Seconds a resolved token is cached.")
    negative_ttl: float = Field(5.0, ge=0, description="Seconds a rejected token is cached.")
    cache_size: int = Field(4096, gt=0, description="Entries in each auth cache.")
    session_max_age: int = Field(14 * 24 * 3600, gt=0)
    oauth_state_max_age: int = Field(600, gt=0)
    hub_timeout: float = Field(10.0, gt=0)
    hub_outage_grace: float = Field(
        300.0,
        ge=0,
        description="Seconds a token the hub accepted keeps working while the hub cannot be "
        "asked (a hub restart); 0 disables.",
    )
    data_dir: Path = Field(
        default_factory=lambda: default_home() / "service",
        description="The service's own files: database (SQLite), replica logs, bundle cache.",
    )
    store: str = Field("", description="Model store: a directory, file:// or s3://bucket[/prefix].")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata DB (default: SQLite in data_dir)."
    )
    backend: Literal["local", "kubernetes"] = "local"
    job_locations: JobLocations = Field(
        default_factory=list,
        description="Folders and URI prefixes (/srv/jobs, s3://bucket/jobs, webdav://host/x) "
        "below which every batch job of every deployment must read and write; empty: any "
        "location the runtime can reach (JSON list in HUBSERVE_JOB_LOCATIONS). {user} in a "
        "path (/home/{user}, s3://jobs/{user}) is the calling hub user's name: each user's "
        "jobs get their own folder or prefix.",
    )
    limits: ServiceLimits = Field(default_factory=ServiceLimits)
    gateway_timeout: float = Field(
        300.0, gt=0, description="Seconds the gateway waits for a replica's answer."
    )
    connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to a replica.")
    gateway_rate_limit: float = Field(
        100.0,
        ge=0,
        description="Gateway calls per second per hub user (a token bucket); 0 disables.",
    )
    gateway_rate_burst: int = Field(
        200, gt=0, description="Gateway calls a user may make at once (the bucket's size)."
    )
    public_url: str = Field(
        "",
        description="Origin at which callers reach the hub (for deployment URLs in answers); "
        "defaults to hub_host.",
    )
    # Per-bundle environments (model_runtime.envs): the admin's policy for what replicas may
    # install. Read from HUBSERVE_ENV_*; lists are JSON.
    env_enabled: bool = Field(
        True,
        description="Build each bundle's own environment from its requirements; false: every "
        "replica runs in the service's environment (what it lacks fails at import).",
    )
    env_root: Path | None = Field(
        None, description="Where environments and the installer's cache live (data_dir/envs)."
    )
    env_index_url: str | None = Field(
        None,
        description="Package index for environments; unset: pip's configuration on this host "
        "(index-url, extra-index-url, find-links, constraint), else PyPI.",
    )
    env_extra_index_urls: list[str] = Field(
        default_factory=list, description="More package indexes (JSON list)."
    )
    env_find_links: list[str] = Field(
        default_factory=list,
        description="Local wheelhouses (folders or URLs) for air-gapped hubs (JSON list).",
    )
    env_no_index: bool = Field(
        False, description="Install from env_find_links only, never from an index (air-gapped)."
    )
    env_allow_sdist: bool = Field(
        False,
        description="Allow building packages from source distributions; off by default, so no "
        "package's build script ever runs on the service host.",
    )
    env_allow: list[str] = Field(
        default_factory=list,
        description="If set, the only packages a bundle may add to the runtime (JSON list).",
    )
    env_deny: list[str] = Field(
        default_factory=list, description="Packages no bundle may install (JSON list)."
    )
    env_max_env_bytes: int = Field(
        4 * 1024**3, gt=0, description="Largest environment one bundle may build (bytes)."
    )
    env_max_cache_bytes: int = Field(
        20 * 1024**3,
        gt=0,
        description="Disk for environments and the installer's cache; beyond it, environments "
        "no deployment uses are removed, least recently used first.",
    )
    # Isolation of the local backend's replicas (hub_service.backends._isolation).
    local_isolation: Literal["sandbox", "none"] = Field(
        "sandbox",
        description="'sandbox': every replica of the local backend runs in a sandbox as an "
        "unprivileged user (the service needs root for that, and refuses to start if it "
        "cannot make one); 'none': replicas run as the service's own user and see all it "
        "sees, for development only.",
    )
    local_user: str = Field(
        "hubserve-models",
        description="The OS user sandboxed replicas run as, or {owner}: the deploying hub "
        "user's own OS account (where hub users have one).",
    )
    local_tmp_size: str = Field(
        "1Gi", description="Size of each sandboxed replica's private /tmp (a quantity: 512Mi)."
    )
    local_hidden_paths: list[Path] = Field(
        default_factory=list,
        description="More folders no replica may see, besides the data directory, homes, "
        "/tmp, /run and JupyterHub's usual folders (JSON list).",
    )

    @field_validator("local_tmp_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if parse_quantity(value) < 1024 * 1024:
            raise ValueError(f"{value!r} is less than 1Mi")
        return value

    @field_validator("base_url", "hub_base_url")
    @classmethod
    def _slashes(cls, value: str) -> str:
        return "/" + value.strip("/") + "/" if value.strip("/") else "/"

    @field_validator("hub_api_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    # -- derived values -------------------------------------------------------------------

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'hubserve.sqlite'}"

    def environments(self) -> EnvironmentManager:
        """Where and by which rules bundles' environments are built (``HUBSERVE_ENV_*``)."""
        policy = EnvironmentPolicy.create(
            enabled=self.env_enabled,
            index_url=self.env_index_url,
            extra_index_urls=self.env_extra_index_urls,
            find_links=self.env_find_links,
            no_index=self.env_no_index,
            allow_sdist=self.env_allow_sdist,
            allow=self.env_allow,
            deny=self.env_deny,
            max_env_bytes=self.env_max_env_bytes,
            max_cache_bytes=self.env_max_cache_bytes,
        )
        return EnvironmentManager(self.env_root or self.data_dir / "envs", policy)

    def isolation(self) -> Isolation | None:
        """The local backend's sandbox settings, checked on this machine (None: no sandbox).

        Refuses, in one line (ValueError), when no sandbox can be made here, so a service
        never runs models unsandboxed unless the admin said so.
        """
        if self.local_isolation == "none":
            return None
        isolation = Isolation(
            user=self.local_user,
            tmp_size=int(parse_quantity(self.local_tmp_size)),
            hidden=tuple(str(p) for p in self.local_hidden_paths),
        )
        try:
            isolation.check()
        except SandboxError as exc:
            raise ValueError(
                f"the local backend cannot sandbox models here: {exc}; set"
                " HUBSERVE_LOCAL_ISOLATION=none to run them as the service's own user"
                " (development only)"
            ) from None
        return isolation

    def deployment_url(self, owner: str, name: str) -> str:
        """Where callers reach a deployment (absolute when the public origin is known)."""
        return f"{(self.public_url or self.hub_host).rstrip('/')}{self.base_url}d/{owner}/{name}/"

    @property
    def bind_host(self) -> str:
        return urlsplit(self.service_url).hostname or "127.0.0.1"

    @property
    def bind_port(self) -> int:
        parts = urlsplit(self.service_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def client_id(self) -> str:
        return self.oauth_client_id or f"service-{self.service_name}"

    @property
    def redirect_uri(self) -> str:
        return self.oauth_redirect_uri or self.hub_host + self.base_url + "oauth_callback"

    @property
    def authorize_url(self) -> str:
        """The hub's OAuth authorize endpoint, as the browser reaches it."""
        return self.hub_host + self.hub_base_url + "hub/api/oauth2/authorize"

    @property
    def token_url(self) -> str:
        """The hub's OAuth token endpoint, as this service reaches it."""
        return self.hub_api_url + "/oauth2/token"

    @property
    def oauth_enabled(self) -> bool:
        """Browser login needs the service's own token (the OAuth client secret)."""
        return self.api_token is not None and self.static_token_file is None

    def cookie_key(self) -> bytes:
        """32 bytes of key material for the session cookies.

        An explicit ``HUBSERVE_COOKIE_SECRET`` wins; otherwise the key is derived (HMAC) from
        the service's API token, so sessions survive a restart of the service as long as the
        hub keeps its token; without either, a random key (sessions end with the process).
        """
        if self.cookie_secret is not None:
            material = self.cookie_secret.get_secret_value().encode()
        elif self.api_token is not None:
            material = self.api_token.get_secret_value().encode()
        else:
            return secrets.token_bytes(32)
        return hmac.new(_COOKIE_KEY_CONTEXT, material, hashlib.sha256).digest()

    def load_static_tokens(self) -> StaticTokens | None:
        """The static token table of the development mode, or ``None`` when not configured."""
        if self.static_token_file is None:
            return None
        return _STATIC_TOKENS.validate_python(
            json.loads(self.static_token_file.read_text(encoding="utf-8"))
        )
