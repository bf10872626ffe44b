"""Saving and loading model objects as bundle artifacts.

Weights never travel as pickles unless the user says they trust them: pickle files run
arbitrary code when loaded. The formats, by object type:

============================  =================  ==========================================
object                        format             file
============================  =================  ==========================================
``torch.nn.Module``           ``torchscript``    ``artifacts/<name>.pt`` (code + weights)
``torch.nn.Module``           ``export``         ``artifacts/<name>.pt2`` (``torch.export``)
``torch.nn.Module``           ``safetensors``    state dict; the class is rebuilt from code
``torch.Tensor`` / dict       ``safetensors``    ``artifacts/<name>.safetensors``
``numpy.ndarray``             ``npy``            ``artifacts/<name>.npy`` (no pickled objects)
scikit-learn estimator        ``skops``          ``artifacts/<name>.skops`` (needs ``skops``)
anything                      ``pickle``         only with ``trust_pickle=True``
============================  =================  ==========================================

A skops file rebuilds objects from a description rather than running code, and only of types
skops trusts (scikit-learn's estimators, numpy, scipy...). An estimator holding other types (a
custom transformer) is saved only with ``trust_pickle=True``, which records those types in the
manifest entry's ``trusted_types``; loading accepts them again only under ``trust_pickle``.

The safetensors form of a module stores only the state dict, so loading needs the module's class
and its constructor arguments: the bundle's code defines or imports the class and the manifest
keeps ``init_kwargs``. ``format="auto"`` prefers it for modules whenever the constructor
arguments are known -- given, or read back from same-named attributes (``self.channels =
channels``) and checked by building the class on the ``meta`` device and comparing every
weight's shape. Otherwise it falls back to TorchScript (scripting, or tracing when example
inputs are given), which torch 2.13 deprecates but still loads without the class.

At load time the bundle's ``service.py`` calls :func:`load_model`, which reads the entry from
``bundle.json``. Whether pickles are trusted and which device to load onto are set by
:func:`loading_context` (used by :func:`model_runtime.load_bundle`).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError

ARTIFACTS_DIR = "artifacts"
FORMATS = ("auto", "torchscript", "export", "safetensors", "npy", "skops", "pickle")

_trust_pickle: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hubserve_trust_pickle", default=False
)
_device: contextvars.ContextVar[str] = contextvars.ContextVar("hubserve_device", default="cpu")


@dataclass
class Model:
    """A model object with the options to save it; pass it in ``Service(models=...)``.

    ``init_kwargs`` are the constructor arguments used to rebuild a module saved as a
    safetensors state dict; ``example_inputs`` let TorchScript tracing or ``torch.export``
    run the model once when scripting is not possible.
    """

    obj: Any
    format: str = "auto"
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    example_inputs: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ArtifactError(f"unknown model format {self.format!r}; use one of {FORMATS}")
        try:
            json.dumps(self.init_kwargs)
        except TypeError as exc:
            raise ArtifactError(f"init_kwargs must be JSON-serialisable: {exc}") from None


def unwrap(value: Any) -> Model:
    return value if isinstance(value, Model) else Model(value)


@contextlib.contextmanager
def loading_context(*, trust_pickle: bool = False, device: str = "cpu") -> Iterator[None]:
    """Set what :func:`load_model` may do while a bundle's code runs."""
    tokens = (_trust_pickle.set(trust_pickle), _device.set(device))
    try:
        yield
    finally:
        _trust_pickle.reset(tokens[0])
        _device.reset(tokens[1])


def _is_torch_module(obj: Any) -> bool:
    torch_nn = _optional_module("torch.nn")
    return torch_nn is not None and isinstance(obj, torch_nn.Module)


def _is_tensor_or_tensor_dict(obj: Any) -> bool:
    torch = _optional_module("torch")
    if torch is None:
        return False
    if isinstance(obj, torch.Tensor):
        return True
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _is_sklearn_estimator(obj: Any) -> bool:
    sklearn_base = _optional_module("sklearn.base")
    return sklearn_base is not None and isinstance(obj, sklearn_base.BaseEstimator)


def _optional_module(name: str) -> Any:
    # Only look at modules the user already imported: importing torch costs seconds.
    return sys.modules.get(name)


def class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def save_model(
    model: Model, directory: Path, name: str, *, trust_pickle: bool = False
) -> dict[str, Any]:
    """Write ``model`` under ``directory/artifacts`` and return its manifest entry."""
    obj = model.obj
    out_dir = directory / ARTIFACTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_format(model)
    fmt = model.format
    entry: dict[str, Any] = {"name": name, "format": fmt, "type": class_path(type(obj))}
    if fmt in ("torchscript", "export") or (fmt == "safetensors" and _is_torch_module(obj)):
        entry["framework"] = "pytorch"
        entry["parameters"] = int(sum(p.numel() for p in obj.parameters()))
    if fmt == "torchscript":
        entry["path"] = _save_torchscript(model, out_dir / f"{name}.pt")
    elif fmt == "export":
        entry["path"] = _save_export(model, out_dir / f"{name}.pt2")
    elif fmt == "safetensors":
        entry["path"] = _save_safetensors(model, out_dir / f"{name}.safetensors", entry)
    elif fmt == "npy":
        entry["path"] = _save_npy(obj, out_dir / f"{name}.npy")
        entry["framework"] = "numpy"
    elif fmt == "skops":
        entry["path"] = _save_skops(obj, out_dir / f"{name}.skops", entry, trust_pickle)
        entry["framework"] = "sklearn" if _is_sklearn_estimator(obj) else "python"
    else:  # pickle
        if not trust_pickle:
            raise ArtifactError(
                f"model {name!r} ({entry['type']}) can only be saved as a pickle, which runs"
                " arbitrary code when loaded; pass trust_pickle=True to allow it"
            )
        entry["path"] = _save_pickle(obj, out_dir / f"{name}.pkl")
        entry.setdefault("framework", "pytorch" if _is_torch_module(obj) else "python")
    entry["path"] = f"{ARTIFACTS_DIR}/{entry['path']}"
    return entry


def resolve_format(model: Model) -> Model:
    """Decide ``format="auto"`` (and the constructor arguments it implies) up front.

    The code generator needs to know whether the module's class must travel with the bundle.
    """
    if model.format != "auto":
        return model
    if _is_torch_module(model.obj):
        kwargs = _known_init_kwargs(model.obj, model.init_kwargs)
        if kwargs is not None:
            return Model(model.obj, "safetensors", kwargs, model.example_inputs)
        return Model(model.obj, "torchscript", model.init_kwargs, model.example_inputs)
    return Model(model.obj, _auto_format(model.obj), model.init_kwargs, model.example_inputs)


def _known_init_kwargs(obj: Any, given: dict[str, Any]) -> dict[str, Any] | None:
    """Constructor arguments that rebuild ``obj``'s exact weight shapes, or ``None``."""
    import torch

    cls = type(obj)
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    kwargs = dict(given)
    for param in params:
        if param.name in kwargs or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = getattr(obj, param.name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and _json_value(value):
            kwargs[param.name] = value
        elif param.default is inspect.Parameter.empty:
            return None
    try:
        # The meta device allocates nothing and draws no random numbers: the notebook's RNG
        # state and memory are untouched.
        with torch.device("meta"):
            fresh = cls(**kwargs)
    except Exception:  # arbitrary user constructors
        return None
    shapes = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
    fresh_shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return kwargs if shapes == fresh_shapes else None


def _json_value(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _auto_format(obj: Any) -> str:
    if _is_tensor_or_tensor_dict(obj):
        return "safetensors"
    np = _optional_module("numpy")
    if np is not None and isinstance(obj, np.ndarray) and obj.dtype != object:
        return "npy"
    if _is_sklearn_estimator(obj) and importlib.util.find_spec("skops") is not None:
        return "skops"
    return "pickle"


@contextlib.contextmanager
def _torchscript_deprecation_silenced() -> Iterator[None]:
    """torch 2.13 warns on every TorchScript call; choosing it was deliberate (see above)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


def _save_torchscript(model: Model, path: Path) -> str:
    import torch

    obj = model.obj
    if isinstance(obj, torch.jit.ScriptModule):
        scripted = obj
    else:
        was_training = obj.training
        obj.eval()
        try:
            with _torchscript_deprecation_silenced():
                scripted = torch.jit.script(obj)
        except Exception as script_error:  # torch raises many types here
            if model.example_inputs is None:
                raise ArtifactError(
                    f"cannot TorchScript-compile {class_path(type(obj))}:"
                    f" {_first_line(script_error)}."
                    " Pass Model(net, example_inputs=(x,)) to trace it instead, or"
                    " Model(net, format='safetensors', init_kwargs={...}) to save its weights"
                ) from None
            with torch.no_grad(), _torchscript_deprecation_silenced():
                scripted = torch.jit.trace(obj, model.example_inputs)  # type: ignore[no-untyped-call]
        finally:
            obj.train(was_training)
    with _torchscript_deprecation_silenced():
        torch.jit.save(scripted, str(path))
    return path.name


def _save_export(model: Model, path: Path) -> str:
    import torch

    if model.example_inputs is None:
        raise ArtifactError("format='export' needs example_inputs=(...) to trace the model")
    model.obj.eval()
    try:
        program = torch.export.export(model.obj, tuple(model.example_inputs))
    except Exception as exc:
        raise ArtifactError(f"torch.export failed: {_first_line(exc)}") from None
    torch.export.save(program, str(path))
    return path.name


def _save_safetensors(model: Model, path: Path, entry: dict[str, Any]) -> str:
    import torch
    from safetensors.torch import save_file

    obj = model.obj
    if _is_torch_module(obj):
        tensors = {k: v.detach().contiguous() for k, v in obj.state_dict().items()}
        entry["class"] = class_path(type(obj))
        entry["init_kwargs"] = model.init_kwargs
        entry["kind"] = "module"
    elif isinstance(obj, torch.Tensor):
        tensors = {"tensor": obj.detach().contiguous()}
        entry["kind"] = "tensor"
    elif _is_tensor_or_tensor_dict(obj):
        tensors = {k: v.detach().contiguous() for k, v in obj.items()}
        entry["kind"] = "dict"
    else:
        raise ArtifactError(
            f"safetensors holds torch modules and tensors, not {class_path(type(obj))}"
        )
    entry["framework"] = "pytorch"
    # Shared storage (tied weights) cannot be saved twice: clone to separate buffers.
    save_file({k: v.clone() for k, v in tensors.items()}, str(path))
    return path.name


def _save_npy(obj: Any, path: Path) -> str:
    import numpy as np

    np.save(path, obj, allow_pickle=False)
    return path.name


def _skops_io() -> Any:
    try:
        return importlib.import_module("skops.io")
    except ImportError:
        raise ArtifactError("the skops format needs the skops package: pip install skops") from None


def _save_skops(obj: Any, path: Path, entry: dict[str, Any], trust_pickle: bool) -> str:
    sio = _skops_io()
    sio.dump(obj, path)
    untrusted = sorted(sio.get_untrusted_types(file=path))
    if untrusted and not trust_pickle:
        path.unlink()
        raise ArtifactError(
            f"model {entry['name']!r} ({entry['type']}) holds types that skops does not trust,"
            f" whose code runs when it is loaded: {', '.join(untrusted)}; pass"
            " trust_pickle=True to allow them"
        )
    if untrusted:
        entry["trusted_types"] = untrusted
    return path.name


def _save_pickle(obj: Any, path: Path) -> str:
    import pickle

    if _is_torch_module(obj):
        import torch

        torch.save(obj, str(path))
    else:
        with path.open("wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return path.name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _bundle_root(bundle: str | Path) -> Path:
    path = Path(bundle)
    return path.parent if path.is_file() else path


def _manifest_entry(root: Path, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads((root / "bundle.json").read_text())
    except FileNotFoundError:
        raise ArtifactError(f"no bundle.json in {root}: not a bundle directory") from None
    for entry in manifest.get("models", []):
        if entry.get("name") == name:
            return dict(entry)
    raise ArtifactError(f"bundle {manifest.get('name')!r} has no model {name!r}")


def load_model(name: str, bundle: str | Path, *, cls: type | None = None) -> Any:
    """Load the artifact ``name`` of the bundle at ``bundle`` (its dir or ``service.py``).

    ``cls`` is the module class for safetensors state dicts; when omitted it is imported from
    the path recorded at save time.
    """
    root = _bundle_root(bundle)
    entry = _manifest_entry(root, name)
    fmt = entry["format"]
    path = root / entry["path"]
    device = _device.get()
    if fmt == "torchscript":
        import torch

        with _torchscript_deprecation_silenced():
            return torch.jit.load(str(path), map_location=device).eval()  # type: ignore[no-untyped-call]
    if fmt == "export":
        import torch

        return torch.export.load(str(path)).module().to(device)
    if fmt == "safetensors":
        return _load_safetensors(entry, path, cls, device)
    if fmt == "npy":
        import numpy as np

        return np.load(path, allow_pickle=False)
    if fmt == "skops":
        return _load_skops(entry, path)
    if fmt == "pickle":
        return _load_pickle(entry, path)
    raise ArtifactError(f"model {name!r} has unknown format {fmt!r}")


def _load_safetensors(entry: dict[str, Any], path: Path, cls: type | None, device: str) -> Any:
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=device)
    kind = entry.get("kind")
    if kind == "tensor":
        return tensors["tensor"]
    if kind == "dict":
        return tensors
    module_cls = cls or _import_class(entry["class"])
    try:
        module = module_cls(**entry.get("init_kwargs", {}))
    except TypeError as exc:
        raise ArtifactError(
            f"cannot rebuild {entry['class']} for model {entry['name']!r}: {exc}; save it with"
            " Model(net, format='safetensors', init_kwargs={...})"
        ) from None
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise ArtifactError(
            f"weights of model {entry['name']!r} do not fit {entry['class']}:"
            f" missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return module.to(device).eval()


def _import_class(path: str) -> type:
    """The torch module class named in a manifest, which the loader will instantiate.

    The manifest is as untrusted as a pickle: any other class (``subprocess:Popen`` with
    ``init_kwargs`` holding a command) would run arbitrary code without ``trust_pickle``.
    """
    import torch

    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise ArtifactError(f"cannot import model class {path}") from None
    if not isinstance(obj, type) or not issubclass(obj, torch.nn.Module):
        raise ArtifactError(f"{path} is not a torch module class")
    return obj


def _load_skops(entry: dict[str, Any], path: Path) -> Any:
    """Load with skops' default trusted types, plus the recorded ones if pickles are trusted.

    The manifest's ``trusted_types`` is as untrusted as the file itself: without
    ``trust_pickle`` it is ignored, so a bundle cannot vouch for its own types.
    """
    sio = _skops_io()
    recorded = entry.get("trusted_types", [])
    if not isinstance(recorded, list) or not all(isinstance(t, str) for t in recorded):
        raise ArtifactError(f"model {entry['name']!r} has malformed trusted_types")
    untrusted_error = importlib.import_module("skops.io.exceptions").UntrustedTypesFoundException
    try:
        return sio.load(path, trusted=recorded if _trust_pickle.get() else None)
    except untrusted_error as exc:
        raise ArtifactError(
            f"model {entry['name']!r} holds types that skops does not trust ({exc}); load the"
            " bundle with trust_pickle=True only if you trust its author"
        ) from None


def _load_pickle(entry: dict[str, Any], path: Path) -> Any:
    if not _trust_pickle.get():
        raise ArtifactError(
            f"model {entry['name']!r} is a pickle, which can run arbitrary code when loaded;"
            " load the bundle with trust_pickle=True only if you trust its author"
        )
    if entry.get("framework") == "pytorch":
        import torch

        return torch.load(str(path), map_location=_device.get(), weights_only=False)
    import pickle

    with path.open("rb") as fh:
        return pickle.load(fh)
