"""Running a service's code as a module, and finding the :class:`Service` it defines.

Used both when packaging a service directory (to read its API definitions) and when loading a
bundle (to get the callable service back). The bundle directory is put on ``sys.path`` so a
``service.py`` can import the modules shipped next to it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import PackagingError
from ..service import Service, api_spec_of


def exec_service_file(path: Path, module_name: str) -> dict[str, Any]:
    """Execute ``path`` as module ``module_name`` and return its namespace."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PackagingError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    directory = str(path.parent.resolve())
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise PackagingError(f"{path} failed to run: {type(exc).__name__}: {exc}") from exc
    return vars(module)


def find_service(
    namespace: dict[str, Any], variable: str | None, *, default_name: str, origin: str
) -> Service:
    """The service named ``variable``, else the only one defined, else one of the @api functions."""
    if variable:
        obj = namespace.get(variable)
        if not isinstance(obj, Service):
            raise PackagingError(f"{origin}: {variable!r} is not a hubserve Service")
        return obj
    services = {id(v): v for k, v in namespace.items() if isinstance(v, Service) and k[:1] != "_"}
    if len(services) == 1:
        return next(iter(services.values()))
    if len(services) > 1:
        raise PackagingError(f"{origin} defines several services; name one as {origin}:variable")
    functions = [v for v in namespace.values() if callable(v) and api_spec_of(v) is not None]
    if not functions:
        raise PackagingError(f"{origin} defines no Service and no @api functions")
    return Service(default_name.replace("_", "-").lower(), apis=functions)
