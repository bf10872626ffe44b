"""Building a bundle from a live service or from a service directory.

Two sources, one result. A :class:`~model_runtime.Service` object (typically defined in a
notebook) is turned into generated code plus saved model artifacts. A *service directory*
holds a hand-written ``service.py`` (and any modules and weight files next to it): its files
are copied as they are and its code is run once to read the API definitions.

The requirements are completed here too: what the code imports (the service's, and that of
the local modules copied into the bundle, see :mod:`._local`), plus what the saved artifacts
hold (the classes inside a pickle or skops file, see :mod:`._artifact_scan`), pinned to the
installed versions. An import nothing provides is a :class:`~model_runtime.PackagingWarning`.

The version is assigned here: UTC time to the millisecond, so versions sort by age, and the
first 8 hex digits of a hash of the content, so two builds that differ never collide.
"""

from __future__ import annotations

import getpass
import hashlib
import importlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..artifacts import Model, save_model
from ..errors import PackagingError, PackagingWarning
from ..paths import default_cache_dir
from ..service import Service
from ._archive import directory_digests, write_archive
from ._artifact_scan import artifact_modules
from ._local import copy_local_modules
from ._manifest import ApiEntry, BundleManifest, ModelEntry
from ._module import exec_service_file, find_service
from ._requirements import (
    environment,
    merge_requirements,
    modules_imported_by,
    pinned_requirements,
    read_requirements_file,
    unresolved_modules,
)
from ._source import generate_service_module

SERVICE_FILE = "service.py"
REQUIREMENTS_FILE = "requirements.txt"
#: Never copied from a service directory.
_IGNORED = {"__pycache__", ".git", ".ipynb_checkpoints", ".venv", ".mypy_cache", ".pytest_cache"}
#: Formats whose loading needs a package at run time.
_FORMAT_PACKAGES = {
    "torchscript": "torch",
    "export": "torch",
    "safetensors": "safetensors",
    "npy": "numpy",
    "skops": "skops",
}


@dataclass(frozen=True)
class BuiltBundle:
    """A packaged bundle: the archive on disk and its manifest."""

    archive: Path
    manifest: BundleManifest

    @property
    def ref(self) -> str:
        return self.manifest.ref


def build_bundle(
    source: Service | str | Path,
    *,
    output_dir: str | Path | None = None,
    requirements: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    description: str | None = None,
    creator: str | None = None,
    trust_pickle: bool = False,
) -> BuiltBundle:
    """Package ``source`` into ``<output_dir>/<name>-<version>.tar.gz``.

    ``source`` is a :class:`Service`, a service directory (``dir`` or ``dir:variable``), a
    Python file (``file.py:variable``) or an importable object path (``package.module:svc``).
    """
    out = Path(output_dir) if output_dir is not None else default_cache_dir() / "builds"
    with tempfile.TemporaryDirectory(prefix="hubserve-build-") as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        staged = _stage(source, staging)
        svc = staged.service
        models = [
            ModelEntry.model_validate(save_model(model, staging, key, trust_pickle=trust_pickle))
            for key, model in staged.models.items()
        ]
        modules = staged.modules | _artifact_modules(models, staging)
        copied = copy_local_modules(modules - staged.local, staging)
        modules |= copied.imports
        local = staged.local | copied.copied
        explicit = [
            *read_requirements_file(staging / REQUIREMENTS_FILE),
            *svc.requirements,
            *requirements,
        ]
        reqs = merge_requirements(pinned_requirements(modules, local=local), explicit)
        _warn_unresolved(unresolved_modules(modules, local=local), reqs)
        (staging / REQUIREMENTS_FILE).write_text("".join(f"{r}\n" for r in reqs))
        files = directory_digests(staging)
        created = datetime.now(timezone.utc)
        manifest = BundleManifest(
            name=svc.name,
            version=_version(created, files),
            created_at=created,
            creator=creator or _default_creator(),
            description=description if description is not None else svc.description,
            labels={**svc.labels, **(labels or {})},
            framework=_framework(models),
            environment=environment(),
            requirements=reqs,
            entrypoint=f"{SERVICE_FILE}:{staged.service_var}",
            source=staged.kind,
            apis=[ApiEntry.model_validate(spec.to_json()) for spec in svc.apis.values()],
            models=models,
            files=files,
        )
        archive = out / f"{manifest.name}-{manifest.version}.tar.gz"
        write_archive(staging, manifest, archive)
    return BuiltBundle(archive=archive, manifest=manifest)


def _artifact_modules(models: list[ModelEntry], staging: Path) -> set[str]:
    """What loading the artifacts needs: the format's package and the classes they hold."""
    found = {_FORMAT_PACKAGES[m.format] for m in models if m.format in _FORMAT_PACKAGES}
    for model in models:
        found |= artifact_modules(staging / model.path, model.format)
    return found


def _warn_unresolved(modules: list[str], requirements: list[str]) -> None:
    """Warn about imports the runtime may lack, unless the user's requirements name them."""
    listed = {canonicalize_name(Requirement(r).name) for r in requirements}
    missing = [m for m in modules if canonicalize_name(m) not in listed]
    if missing:
        warnings.warn(
            f"the service needs {', '.join(missing)}, which no installed distribution provides"
            " and no local file defines: the bundle will not run where they are missing;"
            " add their distributions to the requirements",
            PackagingWarning,
            stacklevel=3,
        )


def _version(created: datetime, files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(f"{rel}\0{files[rel]}\n".encode())
    stamp = created.strftime("%Y%m%dT%H%M%S") + f"{created.microsecond // 1000:03d}Z"
    return f"{stamp}-{digest.hexdigest()[:8]}"


def _default_creator() -> str:
    user = os.environ.get("JUPYTERHUB_USER")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _framework(models: list[ModelEntry]) -> str:
    frameworks = {m.framework for m in models}
    if "pytorch" in frameworks:
        return "pytorch"
    return frameworks.pop() if len(frameworks) == 1 else "python"


@dataclass
class _Staged:
    """What staging learnt: the service, where it came from and what its code imports."""

    service: Service
    kind: str
    service_var: str
    modules: set[str]
    local: set[str] = field(default_factory=set)
    models: dict[str, Model] = field(default_factory=dict)


def _stage(source: Service | str | Path, staging: Path) -> _Staged:
    """Write the code into ``staging``."""
    if isinstance(source, Service):
        return _stage_object(source, staging)
    text = str(source)
    location, _, variable = text.rpartition(":") if _has_variable(text) else (text, "", "")
    path = Path(location)
    if path.is_dir():
        return _stage_directory(path, variable or None, staging)
    if path.suffix == ".py" and path.is_file():
        namespace = exec_service_file(path, f"hubserve_source_{path.stem}")
        svc = find_service(namespace, variable or None, default_name=path.stem, origin=str(path))
        return _stage_object(svc, staging)
    if variable:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise PackagingError(f"cannot import {location!r}: {exc}") from None
        svc = find_service(vars(module), variable, default_name=location, origin=location)
        return _stage_object(svc, staging)
    raise PackagingError(
        f"{text!r} is neither a service directory, a .py file nor a 'module:object' path"
    )


def _has_variable(text: str) -> bool:
    head, sep, tail = text.rpartition(":")
    return bool(sep) and tail.isidentifier() and bool(head)


def _stage_object(svc: Service, staging: Path) -> _Staged:
    generated = generate_service_module(svc)
    (staging / SERVICE_FILE).write_text(generated.source)
    return _Staged(
        service=svc,
        kind="object",
        service_var=generated.service_var,
        modules=generated.packages | {"numpy"},
        models=generated.models,
    )


def _stage_directory(directory: Path, variable: str | None, staging: Path) -> _Staged:
    service_file = directory / SERVICE_FILE
    if not service_file.is_file():
        raise PackagingError(f"{directory} has no {SERVICE_FILE}: not a service directory")
    module_name = f"hubserve_source_{directory.resolve().name}".replace("-", "_")
    namespace = exec_service_file(service_file, module_name)
    svc = find_service(
        namespace, variable, default_name=directory.resolve().name, origin=str(service_file)
    )
    # An empty variable means "collect the @api functions" again at load time.
    service_var = next((k for k, v in namespace.items() if v is svc), "")
    staged = _Staged(service=svc, kind="directory", service_var=service_var, modules=set())
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part in _IGNORED for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
            raise PackagingError(f"{rel} links outside the service directory")
        target = staging / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            staged.local.add(rel.parts[0])
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            if path.suffix == ".py":
                staged.local.add(rel.with_suffix("").parts[0])
                staged.modules |= modules_imported_by(path.read_text())
    return staged
