"""Turning a live :class:`~model_runtime.Service` into a stand-alone ``service.py``.

A service defined in a notebook exists only as objects in the kernel. To ship it, hubserve
writes a module that rebuilds it: the source of every API function (IPython keeps each cell's
source in :mod:`linecache`, which is what :func:`inspect.getsource` reads), and of everything
those functions use from the notebook, found by walking their global names with
:mod:`symtable`:

* modules become ``import`` lines, objects of importable modules ``from ... import`` lines --
  local modules (a ``mylib.py`` beside the notebook) included: the bundle gets a copy of them
  (see :mod:`._local`);
* functions and classes defined interactively, or in the service's own module, have their
  source captured in turn, and the imports inside them are recorded as well;
* models of the service, and torch modules, tensors or arrays the code refers to, become
  artifacts loaded with :func:`~model_runtime.artifacts.load_model`;
* plain constants (numbers, strings, small containers of them) are written as literals.

Anything else -- an open file, a closure over a local variable, a lambda -- cannot be rebuilt
faithfully, so packaging stops with a message that names it and says what to do instead.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import linecache
import symtable
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import Model, resolve_format, unwrap
from ..errors import PackagingError
from ..kinds import IOSpec
from ..service import ApiSpec, Service
from ._local import local_source
from ._requirements import installed_distributions, is_third_party, modules_imported_by

_LITERAL_TYPES = (type(None), bool, int, float, complex, str, bytes)
_MAX_LITERAL_CHARS = 10_000


@dataclass
class GeneratedModule:
    """The generated ``service.py``, the models to save and the packages it imports."""

    source: str
    service_var: str
    models: dict[str, Model]
    packages: set[str] = field(default_factory=set)


def generate_service_module(svc: Service) -> GeneratedModule:
    return _Collector(svc).generate()


def _is_installed(module_name: str) -> bool:
    """True for the standard library and modules of installed distributions."""
    top = module_name.split(".")[0]
    return not is_third_party(top) or bool(installed_distributions().get(top))


def _importable_as(obj: Any) -> tuple[str, str] | None:
    """``(module, qualname)`` when importing that path gives back ``obj`` itself."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not module_name or not qualname or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError):
        return None
    return (module_name, qualname) if found is obj else None


def _literal(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _LITERAL_TYPES):
        return True
    if depth < 8 and isinstance(value, (list, tuple, set, frozenset)):
        return all(_literal(v, depth + 1) for v in value)
    if depth < 8 and isinstance(value, dict):
        return all(_literal(k, depth + 1) and _literal(v, depth + 1) for k, v in value.items())
    return False


def _literal_source(value: Any) -> str | None:
    if not _literal(value):
        return None
    text = repr(value)
    if len(text) > _MAX_LITERAL_CHARS:
        return None
    try:
        if ast.literal_eval(text) != value:
            return None
    except (ValueError, SyntaxError):
        # nan/inf floats and empty sets have no literal form: rebuild them from their repr.
        return None
    return text


def _is_model_like(value: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, (torch.nn.Module, torch.Tensor)):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _source_of_function(fn: Callable[..., Any]) -> str:
    """The ``def`` of ``fn`` without decorators (they are re-applied from the manifest)."""
    if fn.__name__ == "<lambda>":
        raise PackagingError(
            "lambdas cannot be packaged: define the API with 'def' so its source can be saved"
        )
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        raise PackagingError(
            f"cannot find the source code of {fn.__qualname__}: define it in a notebook cell,"
            " a .py file, or use a service directory with service.py"
        ) from None
    tree = ast.parse(source)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise PackagingError(f"cannot isolate the definition of {fn.__qualname__}")
    lines = source.splitlines()
    body = "\n".join(lines[node.lineno - 1 : node.end_lineno])
    return textwrap.dedent(body)


def _source_of_class(cls: type) -> str:
    try:
        return textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        pass
    found = _class_source_from_linecache(cls)
    if found is None:
        raise PackagingError(
            f"cannot find the source code of class {cls.__qualname__}: define it in a notebook"
            " cell or a .py file"
        )
    return found


def _class_source_from_linecache(cls: type) -> str | None:
    """Find an interactively defined class in the cell sources IPython keeps in linecache.

    ``inspect.getsource`` cannot do it on Python < 3.13 because ``__main__`` has no file.
    Among the cells that define a class of that name, the one whose lines hold the class's
    methods' code is the right one; without methods, the last definition wins.
    """
    code_locations = {
        (f.__code__.co_filename, f.__code__.co_firstlineno)
        for f in vars(cls).values()
        if isinstance(f, types.FunctionType)
    }
    candidates: list[tuple[bool, str]] = []
    for filename, entry in list(linecache.cache.items()):
        if len(entry) < 3 or not entry[2]:
            continue
        source = "".join(entry[2])
        if f"class {cls.__name__}" not in source:
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
                end = node.end_lineno or node.lineno
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                matches = any(
                    fname == filename and start <= line <= end for fname, line in code_locations
                )
                text = "".join(entry[2][start - 1 : end])
                candidates.append((matches, textwrap.dedent(text)))
    exact = [text for matches, text in candidates if matches]
    if exact:
        return exact[-1]
    return candidates[-1][1] if candidates and not code_locations else None


def _global_names(source: str) -> list[str]:
    """Names a snippet reads from its module's globals, in first-use order."""
    top = symtable.symtable(source, "<hubserve>", "exec")
    names: dict[str, None] = {}
    for sym in top.get_symbols():
        if sym.is_referenced() and not sym.is_assigned() and not sym.is_imported():
            names[sym.get_name()] = None

    def visit(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            # Python 3.11 also reports function locals as global: is_local() tells them apart.
            if sym.is_declared_global() or (sym.is_global() and not sym.is_local()):
                names[sym.get_name()] = None
        for child in table.get_children():
            visit(child)

    for child in top.get_children():
        visit(child)
    return list(names)


class _Collector:
    """Walks the API functions' global references and emits the module, dependencies first."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.bound: dict[str, Any] = {}
        self.imports: dict[str, str] = {}
        self.constants: dict[str, str] = {}
        self.definitions: list[str] = []
        self.models: dict[str, Model] = {
            key: resolve_format(unwrap(v)) for key, v in svc.models.items()
        }
        self.model_globals: dict[str, str] = {}
        self.model_classes: dict[str, str] = {}
        self.packages: set[str] = set()
        self.service_var = "service"
        #: The top-level modules that define the API functions: the service's own code.
        self.own_modules = {spec.func.__module__.split(".")[0] for spec in svc.apis.values()}
        self._visiting: set[int] = set()
        self._done: set[int] = set()

    def _model_key(self, value: Any) -> str | None:
        for key, model in self.models.items():
            if model.obj is value:
                return key
        return None

    def generate(self) -> GeneratedModule:
        if not self.svc.apis:
            raise PackagingError(f"service {self.svc.name!r} has no API functions to package")
        for spec in self.svc.apis.values():
            self._bind(spec.func.__name__, spec.func, origin=f"API {spec.name!r}")
        for key, model in self.models.items():
            if key not in self.model_globals.values():
                self._bind(key, model.obj, origin=f"model {key!r}")
            if model.format == "safetensors" and _is_model_like(model.obj):
                self._bind_model_class(key, model.obj)
        return GeneratedModule(
            source=self._render(),
            service_var=self.service_var,
            models=self.models,
            packages=self.packages,
        )

    def _bind_model_class(self, key: str, obj: Any) -> None:
        torch = sys.modules.get("torch")
        if torch is None or not isinstance(obj, torch.nn.Module):
            return
        cls = type(obj)
        self._bind(cls.__name__, cls, origin=f"model {key!r}")
        self.model_classes[key] = cls.__name__

    def _bind(self, name: str, value: Any, *, origin: str) -> None:
        if name in self.bound:
            if self.bound[name] is not value:
                raise PackagingError(
                    f"{origin} uses {name!r}, but another object of that name is used elsewhere;"
                    " rename one of them"
                )
            return
        self.bound[name] = value
        if value is self.svc:
            self.service_var = name
            return
        key = self._model_key(value)
        if key is None and _is_model_like(value):
            if name in self.models:
                raise PackagingError(f"{origin} uses {name!r}, which clashes with a model key")
            key = name
            self.models[key] = resolve_format(Model(value))
        if key is not None:
            self.model_globals[name] = key
            return
        if isinstance(value, types.ModuleType):
            self._import_module(name, value)
            return
        importable = _importable_as(value)
        if isinstance(value, (types.FunctionType, type)) and (
            importable is None or self._is_own_code(importable[0])
        ):
            self._capture(name, value, origin=origin)
            return
        if importable is not None:
            module_name, qualname = importable
            if "." in qualname:
                raise PackagingError(
                    f"{origin} uses {name!r} = {module_name}.{qualname}: import the outer object"
                    " instead"
                )
            alias = "" if qualname == name else f" as {name}"
            self.imports[name] = f"from {module_name} import {qualname}{alias}"
            self.packages.add(module_name.split(".")[0])
            return
        literal = _literal_source(value)
        if literal is not None:
            self.constants[name] = f"{name} = {literal}"
            return
        raise PackagingError(
            f"{origin} uses the global {name!r} ({type(value).__module__}."
            f"{type(value).__qualname__}), which hubserve cannot package: pass it in"
            " Service(models={...}) if it is a model, define it inside the function, or make it"
            " a constant"
        )

    def _is_own_code(self, module_name: str) -> bool:
        """Whether objects of ``module_name`` are captured as source rather than imported.

        Installed modules are imported. So are local ones, which the bundle will hold a copy
        of, unless they are where the API functions themselves are defined: that module is
        the service being packaged, not a library it uses. What is neither (the notebook's
        ``__main__``, a file run under another name) exists nowhere else.
        """
        if _is_installed(module_name):
            return False
        top = module_name.split(".")[0]
        return top in self.own_modules or local_source(top) is None

    def _import_module(self, name: str, module: types.ModuleType) -> None:
        module_name = module.__name__
        if module_name == "__main__":
            raise PackagingError(f"{name!r} is the notebook's own namespace and cannot be imported")
        alias = "" if module_name == name else f" as {name}"
        self.imports[name] = f"import {module_name}{alias}"
        self.packages.add(module_name.split(".")[0])

    def _capture(self, name: str, value: types.FunctionType | type, *, origin: str) -> None:
        if id(value) in self._visiting:
            return  # recursion between functions: each is emitted once, order is irrelevant
        self._visiting.add(id(value))
        if isinstance(value, type):
            source = _source_of_class(value)
            namespace = _class_globals(value)
        else:
            if value.__closure__:
                free = ", ".join(value.__code__.co_freevars)
                raise PackagingError(
                    f"{value.__qualname__} is a closure over {free}: hubserve packages"
                    " module-level functions only"
                )
            source = _source_of_function(value)
            namespace = value.__globals__
        # Imports inside the bodies (``def f(): import scipy.stats``) bind no global name.
        self.packages |= modules_imported_by(source, origin=value.__qualname__)
        for dep in _global_names(source):
            if dep == value.__name__:
                continue
            if dep in namespace:
                self._bind(dep, namespace[dep], origin=f"{value.__qualname__}")
            elif not hasattr(builtins, dep):
                raise PackagingError(
                    f"{value.__qualname__} uses the name {dep!r}, which is not defined"
                )
        if id(value) not in self._done:
            self._done.add(id(value))
            text = source.rstrip()
            if name != value.__name__:
                text += f"\n\n\n{name} = {value.__name__}"
            self.definitions.append(text)

    def _render(self) -> str:
        svc = self.svc
        parts = [
            f'"""hubserve service {svc.name!r}, generated from interactive definitions."""',
            "\n".join(sorted(set(self.imports.values()))),
            "from model_runtime import IOSpec, Service, load_model",
        ]
        if self.constants:
            parts.append("\n".join(self.constants[n] for n in sorted(self.constants)))
        parts.extend(self.definitions)
        loads = []
        first_var: dict[str, str] = {}
        for var, key in self.model_globals.items():
            if key in first_var:
                loads.append(f"{var} = {first_var[key]}")
                continue
            first_var[key] = var
            cls = self.model_classes.get(key)
            cls_arg = f", cls={cls}" if cls else ""
            loads.append(f"{var} = load_model({key!r}, __file__{cls_arg})")
        if loads:
            parts.append("\n".join(loads))
        model_map = ", ".join(f"{k!r}: {v}" for k, v in first_var.items())
        service_lines = [
            f"{self.service_var} = Service(",
            f"    {svc.name!r},",
            f"    models={{{model_map}}},",
            f"    description={svc.description!r},",
            f"    labels={svc.labels!r},",
            ")",
        ]
        service_lines.extend(
            _api_registration(self.service_var, spec) for spec in svc.apis.values()
        )
        parts.append("\n".join(service_lines))
        return "\n\n\n".join(p for p in parts if p) + "\n"


def _class_globals(cls: type) -> dict[str, Any]:
    for member in vars(cls).values():
        if isinstance(member, types.FunctionType):
            return member.__globals__
    module = inspect.getmodule(cls)
    return vars(module) if module is not None else {}


def _spec_source(spec: IOSpec) -> str:
    return f"IOSpec.from_json({spec.to_json()!r})"


def _api_registration(service_var: str, spec: ApiSpec) -> str:
    return (
        f"{service_var}.add_api(\n"
        f"    {spec.func.__name__},\n"
        f"    name={spec.name!r},\n"
        f"    input={_spec_source(spec.input)},\n"
        f"    output={_spec_source(spec.output)},\n"
        f"    batchable={spec.batchable!r},\n"
        f"    max_batch_size={spec.batching.max_batch_size!r},\n"
        f"    max_latency_ms={spec.batching.max_latency_ms!r},\n"
        ")"
    )
