"""The user's own modules, which travel inside the bundle instead of as requirements.

A notebook often imports helpers from files beside it: ``mylib.py``, a ``mypkg/`` folder. No
distribution provides them, so no requirement can bring them back where the bundle runs. Their
source is copied next to ``service.py`` instead, and the import lines stay as the user wrote
them: the bundle directory is on ``sys.path`` while ``service.py`` runs (see :mod:`._module`).
What a copied module imports is followed in turn: other local modules are copied too, the rest
become requirements like the service's own imports.

A module is *local* when it is found as source (a ``.py`` file, or a package directory named
like the module) outside the standard library and the site directories, and no installed
distribution claims it: an editable install or a module installed without metadata is not
copied, and one whose file does not carry its name (``hubserve_source_x``, a ``.py`` file
executed under another name) is not importable by that name anywhere.
"""

from __future__ import annotations

import importlib.util
import shutil
import site
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PackagingError
from ._requirements import installed_distributions, is_third_party, modules_imported_by

_NEVER_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")


@dataclass
class LocalModules:
    """What :func:`copy_local_modules` copied, and what the copies import."""

    copied: set[str] = field(default_factory=set)
    imports: set[str] = field(default_factory=set)


def local_source(module: str) -> Path | None:
    """The ``.py`` file or package directory of the local top-level ``module``, or ``None``."""
    top = module.split(".")[0]
    if not is_third_party(top) or installed_distributions().get(top):
        return None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):  # ValueError: in sys.modules without a __spec__
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations is not None:
        locations = list(spec.submodule_search_locations)
        if spec.origin and Path(spec.origin).name == "__init__.py":
            source = Path(spec.origin).parent
        elif len(locations) == 1:  # a namespace package in a single directory
            source = Path(locations[0])
        else:
            return None
    elif spec.origin and spec.origin.endswith(".py"):
        source = Path(spec.origin)
    else:
        return None
    if source.stem != top or not source.exists() or _installed_location(source):
        return None
    return source


def _installed_location(path: Path) -> bool:
    """Whether ``path`` lies in the standard library or a site directory."""
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    resolved = path.resolve()
    return any(resolved.is_relative_to(Path(root).resolve()) for root in roots)


def copy_local_modules(modules: Iterable[str], staging: Path) -> LocalModules:
    """Copy the local modules among ``modules`` (and those they import) into ``staging``."""
    result = LocalModules()
    pending = sorted(set(modules), reverse=True)
    while pending:
        name = pending.pop()
        if name in result.copied:
            continue
        source = local_source(name)
        if source is None:
            continue
        target = staging / source.name
        if target.exists():
            raise PackagingError(
                f"the local module {name!r} ({source}) has the name of a bundle file,"
                f" {source.name}; rename the module"
            )
        if source.is_dir():
            shutil.copytree(source, target, ignore=_NEVER_COPIED)
            copies = {p: source / p.relative_to(target) for p in sorted(target.rglob("*.py"))}
        else:
            shutil.copyfile(source, target)
            copies = {target: source}
        result.copied.add(name)
        for copy, original in copies.items():
            found = modules_imported_by(copy.read_text(encoding="utf-8"), origin=str(original))
            result.imports |= found
            pending.extend(sorted(found - result.copied, reverse=True))
    result.imports -= result.copied
    return result
