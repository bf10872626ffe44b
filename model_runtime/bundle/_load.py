"""Loading a bundle back into a ready-to-call :class:`~model_runtime.Service`.

Loading verifies before it runs anything: an archive is checked member by member while it is
extracted, and a directory has every file hashed against the manifest. Only then is
``service.py`` executed, with :func:`~model_runtime.artifacts.loading_context` deciding
whether pickled artifacts may be loaded and onto which device.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..artifacts import loading_context
from ..errors import BundleError, PackagingError
from ..paths import default_cache_dir
from ..service import Service
from ._archive import (
    DEFAULT_LIMITS,
    Limits,
    extract_archive,
    read_archive_manifest,
    verify_directory,
)
from ._manifest import MANIFEST_NAME, BundleManifest, parse_manifest
from ._module import exec_service_file, find_service


def read_manifest(directory: Path) -> BundleManifest:
    path = directory / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{directory} has no {MANIFEST_NAME}: not a bundle") from None
    return parse_manifest(data, origin=str(path))


def unpack_bundle(
    archive: Path, *, cache_dir: str | Path | None = None, limits: Limits = DEFAULT_LIMITS
) -> Path:
    """Extract ``archive`` under the cache (once per version) and return the directory."""
    manifest = read_archive_manifest(archive, limits)
    root = Path(cache_dir or default_cache_dir()) / "unpacked" / manifest.name / manifest.version
    if (root / MANIFEST_NAME).is_file():
        return root
    extract_archive(archive, root, limits)
    return root


def load_bundle(
    source: str | Path,
    *,
    trust_pickle: bool = False,
    device: str = "cpu",
    verify: bool = True,
    cache_dir: str | Path | None = None,
) -> Service:
    """Load a bundle directory or ``.tar.gz`` archive and return its service, ready to call."""
    path = Path(source)
    if path.is_file():
        root = unpack_bundle(path, cache_dir=cache_dir)
    elif path.is_dir():
        root = path
    else:
        raise BundleError(f"no bundle at {path}")
    manifest = read_manifest(root)
    if verify:
        verify_directory(root, manifest)
    module_name = "hubserve_bundle_" + re.sub(r"\W", "_", f"{manifest.name}_{manifest.version}")
    with loading_context(trust_pickle=trust_pickle, device=device):
        try:
            namespace = exec_service_file(root / manifest.service_file, module_name)
        except PackagingError as exc:
            raise BundleError(f"bundle {manifest.ref}: {exc}") from exc.__cause__
    svc = find_service(
        namespace, manifest.service_var or None, default_name=manifest.name, origin=manifest.ref
    )
    missing = {a.name for a in manifest.apis} - set(svc.apis)
    if missing:
        raise BundleError(f"bundle {manifest.ref}: service.py no longer defines {sorted(missing)}")
    svc.manifest = manifest
    svc.bundle_dir = root
    return svc
