"""hubserve's core: define, package, store and serve models.

This package imports nothing else of hubserve and nothing of Jupyter: it is what runs inside
every model runtime. The public API:

* :class:`Service`, :func:`api`, :mod:`~model_runtime.kinds` -- define a service, and
  :class:`InvalidInput` -- what its API functions raise to refuse a request (422);
* :class:`Model`, :func:`load_model` -- model artifacts and how they are saved;
* :func:`build_bundle`, :func:`load_bundle` -- package a service, load it back;
* :func:`open_store`, :class:`LocalStore`, :class:`S3Store` -- the versioned model store.
"""

from ._version import __version__
from .artifacts import Model, load_model
from .bundle import BuiltBundle, BundleManifest, build_bundle, load_bundle
from .errors import (
    ArtifactError,
    BundleError,
    HubserveError,
    InvalidInput,
    NotFoundError,
    PackagingError,
    PackagingWarning,
    StoreError,
    UnsafeBundleError,
)
from .kinds import IOSpec
from .naming import ModelRef
from .service import ApiSpec, Service, api
from .store import LocalStore, S3Store, Store, open_store

__all__ = [
    "ApiSpec",
    "ArtifactError",
    "BuiltBundle",
    "BundleError",
    "BundleManifest",
    "HubserveError",
    "IOSpec",
    "InvalidInput",
    "LocalStore",
    "Model",
    "ModelRef",
    "NotFoundError",
    "PackagingError",
    "PackagingWarning",
    "S3Store",
    "Service",
    "Store",
    "StoreError",
    "UnsafeBundleError",
    "__version__",
    "api",
    "build_bundle",
    "load_bundle",
    "load_model",
    "open_store",
]
