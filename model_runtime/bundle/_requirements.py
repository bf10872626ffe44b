"""Which distributions a bundle needs, pinned to the versions it was packaged with.

A bundle's code imports top-level modules (``torch``, ``sklearn``...). Each maps to the
installed distribution that provides it (``packages_distributions`` knows that ``sklearn``
comes from ``scikit-learn``), pinned to the installed version so the runtime can reproduce the
environment. The standard library and hubserve itself are left out; what the user lists
explicitly wins over what was detected. A module that maps to no distribution is reported by
:func:`unresolved_modules`, for the packager to warn about: pinning cannot bring it back.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import platform
import sys
from collections.abc import Iterable
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .._version import __version__
from ..errors import PackagingError

_SELF = {"model_runtime", "hub_service", "jupyter_extension", "hubserve"}


@functools.lru_cache(maxsize=1)
def installed_distributions() -> dict[str, list[str]]:
    """Top-level module name -> distributions providing it (cached: it scans site-packages)."""
    return {k: list(v) for k, v in importlib.metadata.packages_distributions().items()}


def modules_imported_by(source: str, *, origin: str = "service code") -> set[str]:
    """Top-level modules a piece of Python source imports (absolute imports only)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise PackagingError(f"syntax error in {origin}: {exc}") from None
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def is_third_party(module: str) -> bool:
    """Whether a top-level module is neither the standard library nor hubserve itself."""
    return not (
        module in sys.stdlib_module_names or module in sys.builtin_module_names or module in _SELF
    )


def pinned_requirements(modules: Iterable[str], *, local: Iterable[str] = ()) -> dict[str, str]:
    """``{distribution: version}`` for the third-party modules in ``modules``."""
    dists = installed_distributions()
    pinned: dict[str, str] = {}
    for module in sorted(m for m in set(modules) - set(local) if is_third_party(m)):
        for dist in dists.get(module, []):
            try:
                # Local labels (torch's '+cpu') are not on package indexes: pin the public part.
                pinned[canonicalize_name(dist)] = Version(importlib.metadata.version(dist)).public
            except importlib.metadata.PackageNotFoundError:
                continue
    return pinned


def unresolved_modules(modules: Iterable[str], *, local: Iterable[str] = ()) -> list[str]:
    """The third-party modules in ``modules`` that no installed distribution provides."""
    dists = installed_distributions()
    return sorted(m for m in set(modules) - set(local) if is_third_party(m) and not dists.get(m))


def merge_requirements(detected: dict[str, str], extra: Iterable[str]) -> list[str]:
    """Pinned detected requirements, overridden by the user's own lines (same project name)."""
    explicit: dict[str, str] = {}
    for line in extra:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise PackagingError(f"invalid requirement {text!r}: {exc}") from None
        explicit[canonicalize_name(req.name)] = text
    lines = {name: f"{name}=={version}" for name, version in detected.items()}
    lines.update(explicit)
    return [lines[name] for name in sorted(lines)]


def read_requirements_file(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("-")]


def environment() -> dict[str, str]:
    """Versions recorded in the manifest: Python, hubserve and the key numeric packages."""
    env = {"python": platform.python_version(), "hubserve": __version__}
    for dist in ("torch", "numpy", "safetensors"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return env
