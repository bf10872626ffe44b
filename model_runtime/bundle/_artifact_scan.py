"""Which modules a saved model artifact refers to, read from the file without loading it.

A pickled scikit-learn estimator needs ``sklearn`` at run time although the service's code may
never import it: the pickle names the class (``sklearn.linear_model._logistic
LogisticRegression``) and unpickling imports its module. Loading the artifact to find out would
run arbitrary code, so the pickle stream is only *read*: :mod:`pickletools` walks its opcodes
and the classes and functions it references are collected from ``GLOBAL``/``INST`` (module
and name inline) and ``STACK_GLOBAL`` (module and name pushed as strings just before, often
fetched back from the memo, which is why the memo is replayed for strings). ``torch.save``
writes a zip whose ``data.pkl`` is such a stream. A skops file stores the module of every
object in its ``schema.json``.
"""

from __future__ import annotations

import _compat_pickle
import json
import pickletools
import zipfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..errors import PackagingError

_STRING_OPS = {
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
#: Opcodes that push nothing: they leave the top of the stack as it was.
_NO_PUSH_OPS = {"PROTO", "FRAME", "MEMOIZE", *_PUT_OPS}


def artifact_modules(path: Path, fmt: str) -> set[str]:
    """Top-level modules whose objects the artifact at ``path``, in format ``fmt``, holds.

    ``__main__`` is left out: it names the notebook itself, which no requirement provides.
    """
    return {m.split(".")[0] for m in artifact_references(path, fmt)}


def artifact_references(path: Path, fmt: str) -> set[str]:
    """The modules (full dotted names) loading the artifact imports, ``__main__`` aside."""
    if fmt == "pickle":
        found = pickle_globals(path)
        notebook = sorted(name for module, name in found if module == "__main__")
        if notebook:
            raise PackagingError(
                f"{path.name} holds {', '.join(notebook)}, defined in the notebook itself:"
                " a runtime cannot unpickle them. Define them in a module beside the notebook"
                " (it is copied into the bundle) and import them from there"
            )
        references = {module for module, _ in found}
    elif fmt == "skops":
        references = _skops_modules(path)
    else:
        return set()
    return {m for m in references if m} - {"__main__"}


def pickle_globals(path: Path) -> set[tuple[str, str]]:
    """``(module, name)`` of every global a pickle file (or ``torch.save`` zip) references.

    Names are given as Python 3 unpickles them: protocols 0-2 write Python 2's
    (``__builtin__``, ``copy_reg``), which :mod:`pickle` maps back when loading.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = _torch_data_pickle(archive)
                if member is None:
                    raise PackagingError(f"{path.name} is a zip without a data.pkl to read")
                with archive.open(member) as stream:
                    found = set(_stream_globals(stream))
        else:
            with path.open("rb") as stream:
                found = set(_stream_globals(stream))
    except (ValueError, zipfile.BadZipFile) as exc:
        raise PackagingError(f"cannot read the pickle {path.name}: {exc}") from None
    return {_python3_name(module, name) for module, name in found}


def _python3_name(module: str, name: str) -> tuple[str, str]:
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _torch_data_pickle(archive: zipfile.ZipFile) -> str | None:
    """The top-level ``<record>/data.pkl`` of a ``torch.save`` archive."""
    for name in archive.namelist():
        parts = name.split("/")
        if parts[-1] == "data.pkl" and len(parts) <= 2:
            return name
    return None


def _stream_globals(stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    # The last two values pushed (None for anything but a string) and the memo's strings:
    # enough to know the two operands of STACK_GLOBAL, which a pickler pushes right before it.
    recent: deque[str | None] = deque([None, None], maxlen=2)
    memo: dict[int, str | None] = {}
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif name in _GET_OPS and isinstance(arg, int):
            recent.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif name in _PUT_OPS and isinstance(arg, int):
            memo[arg] = recent[-1]
        elif name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            yield module, qualname
            recent.append(None)
        elif name == "STACK_GLOBAL":
            stacked_module, stacked_name = recent
            if stacked_module is not None and stacked_name is not None:
                yield stacked_module, stacked_name
            recent.append(None)
        elif name not in _NO_PUSH_OPS:
            recent.append(None)


def _skops_modules(path: Path) -> set[str]:
    """Every ``__module__`` in a skops file's schema (objects, types and functions alike)."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()
    pending: list[Any] = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if isinstance(node.get("__module__"), str):
                found.add(node["__module__"])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return found
