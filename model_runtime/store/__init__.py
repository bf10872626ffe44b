"""The model store: versioned bundles in a local directory or an S3 bucket.

:class:`LocalStore` keeps everything under a directory (default ``$HUBSERVE_HOME``,
``~/.local/share/hubserve``); :class:`S3Store` uses any S3 server (MinIO, SeaweedFS, AWS) via
the ``minio`` client. Both behave the same, because both are a :class:`Store` over an object
backend. :func:`open_store` picks one from a location string, as the CLI's ``--store`` does::

    open_store("~/models")                       # a local directory (or file:///...)
    open_store("s3://models", settings)          # a bucket; endpoint and keys from settings
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import HubserveError, InvalidNameError
from ..naming import ModelRef
from ..paths import default_home
from ..s3 import S3Credentials
from ._objects import LocalObjects, ObjectBackend, ObjectInfo, ProgressCallback
from ._records import ModelSummary, StoredVersion, VersionSummary
from ._s3 import S3Objects
from ._store import PulledBundle, Store, default_owner


class LocalStore(Store):
    """A store in a local directory (default: ``$HUBSERVE_HOME``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_home()
        super().__init__(LocalObjects(self.root))


class S3Store(Store):
    """A store in an S3 bucket, optionally under a key prefix."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        secure: bool = True,
        region: str | None = None,
        prefix: str = "",
        create_bucket: bool = True,
    ) -> None:
        self.bucket = bucket
        super().__init__(
            S3Objects(
                endpoint,
                bucket,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                region=region,
                prefix=prefix,
                create_bucket=create_bucket,
            )
        )


class StoreSettings(BaseSettings):
    """Store configuration from ``HUBSERVE_*`` environment variables (read on creation)."""

    model_config = SettingsConfigDict(env_prefix="HUBSERVE_", extra="ignore")

    store: str = ""
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_secure: bool = False
    s3_region: str | None = None

    def s3_credentials(self) -> S3Credentials | None:
        """The S3 server these settings name (``https://`` in the endpoint means TLS)."""
        if not self.s3_endpoint:
            return None
        return S3Credentials(
            endpoint=self.s3_endpoint.removeprefix("http://").removeprefix("https://"),
            access_key=self.s3_access_key or None,
            secret_key=self.s3_secret_key.get_secret_value() or None,
            secure=self.s3_secure or self.s3_endpoint.startswith("https://"),
            region=self.s3_region,
        )


def open_store(location: str | Path | None = None, settings: StoreSettings | None = None) -> Store:
    """Open the store at ``location``: a path, ``file://...`` or ``s3://bucket[/prefix]``.

    Without a location, ``HUBSERVE_STORE`` is used, else the local default. S3 endpoint and
    keys come from ``settings`` (by default the ``HUBSERVE_S3_*`` environment variables).
    """
    settings = settings or StoreSettings()
    where = str(location) if location else settings.store
    if not where:
        return LocalStore()
    parts = urlsplit(where)
    if parts.scheme == "s3":
        credentials = settings.s3_credentials()
        if credentials is None:
            raise HubserveError(
                f"{where} needs an S3 endpoint: set HUBSERVE_S3_ENDPOINT or --s3-endpoint"
            )
        return S3Store(
            credentials.endpoint,
            parts.netloc,
            access_key=credentials.access_key,
            secret_key=credentials.secret_key,
            secure=credentials.secure,
            region=credentials.region,
            prefix=parts.path,
        )
    if parts.scheme == "file":
        return LocalStore(parts.path)
    if parts.scheme:
        raise HubserveError(f"unsupported store {where!r}: use a path, file:// or s3://")
    return LocalStore(where)


def split_model_uri(text: str) -> tuple[str, ModelRef] | None:
    """``s3://bucket/[prefix/]owner/name[:sel]`` or ``file:///root/owner/name[:sel]`` ->
    ``(store location, reference)``: the last two path parts name the model, the rest is the
    store. ``None`` when ``text`` is not such a URI (a plain reference, say)."""
    parts = urlsplit(text)
    if parts.scheme not in ("s3", "file"):
        return None
    path, _, selector = parts.path.partition(":")
    segments = [s for s in path.split("/") if s]
    if len(segments) < 2:
        raise InvalidNameError(f"{text!r} must end with /owner/name[:version]")
    base = "/".join(segments[:-2])
    location = f"s3://{parts.netloc}/{base}" if parts.scheme == "s3" else f"file:///{base}"
    ref = ModelRef.parse(f"{segments[-2]}/{segments[-1]}" + (f":{selector}" if selector else ""))
    return location, ref


__all__ = [
    "LocalStore",
    "ModelSummary",
    "ObjectBackend",
    "ObjectInfo",
    "ProgressCallback",
    "PulledBundle",
    "S3Store",
    "Store",
    "StoreSettings",
    "StoredVersion",
    "VersionSummary",
    "default_owner",
    "open_store",
    "split_model_uri",
]
