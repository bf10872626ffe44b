"""Bundles: a service's code, models and metadata, in one versioned, verifiable archive.

A bundle directory holds ``bundle.json`` (the manifest: name, version, creator, environment,
requirements, APIs with their signatures and batching, models, and the sha256 of every file),
``service.py`` (the API functions), ``artifacts/`` (model weights) and ``requirements.txt``.
It travels as one ``.tar.gz``. :func:`build_bundle` makes one from a live service or a service
directory; :func:`load_bundle` verifies and loads one back into a callable service.
"""

from ._archive import (
    DEFAULT_LIMITS,
    Limits,
    extract_archive,
    read_archive_manifest,
    sha256_file,
    verify_archive,
    verify_directory,
)
from ._build import BuiltBundle, build_bundle
from ._imports import load_time_imports
from ._load import load_bundle, read_manifest, unpack_bundle
from ._manifest import MANIFEST_NAME, ApiEntry, BundleManifest, ModelEntry, parse_manifest

__all__ = [
    "DEFAULT_LIMITS",
    "MANIFEST_NAME",
    "ApiEntry",
    "BuiltBundle",
    "BundleManifest",
    "Limits",
    "ModelEntry",
    "build_bundle",
    "extract_archive",
    "load_bundle",
    "load_time_imports",
    "parse_manifest",
    "read_archive_manifest",
    "read_manifest",
    "sha256_file",
    "unpack_bundle",
    "verify_archive",
    "verify_directory",
]
