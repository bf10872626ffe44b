"""Input and output kinds of API functions.

A *kind* says how a value crosses HTTP: ``json`` (scalars, lists, dicts), ``ndarray`` (numpy,
as nested lists, ``.npy`` or Open Inference Protocol tensors), ``tensor`` (the same on the wire,
a ``torch.Tensor`` in the function), ``dataframe`` (pandas, as JSON records or CSV),
``image`` (PNG/JPEG upload, an array in the function), ``file`` (multipart upload, bytes),
``text`` and ``path`` (a file-system location, used by batch jobs over folders).

An :class:`IOSpec` adds what is known of the value -- dtype and shape for arrays -- so the
runtime can reject a wrong request with a precise 422 before the model sees it. Specs are
written into ``bundle.json`` as plain JSON.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .errors import PackagingError

Kind = Literal["json", "ndarray", "tensor", "dataframe", "image", "file", "text", "path"]
KINDS: tuple[str, ...] = get_args(Kind)

#: dtypes an array signature may name (numpy spelling; torch tensors map onto them).
DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "object",
        "str",
    }
)


@dataclass(frozen=True)
class IOSpec:
    """What an API takes or returns. ``shape`` uses ``-1`` for a dimension of any size."""

    kind: Kind = "json"
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    columns: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PackagingError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise PackagingError(f"unknown dtype {self.dtype!r}; expected one of {sorted(DTYPES)}")
        if self.shape is not None and any(d < -1 or d == 0 for d in self.shape):
            raise PackagingError(f"invalid shape {self.shape}: use positive sizes or -1")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.dtype is not None:
            data["dtype"] = self.dtype
        if self.shape is not None:
            data["shape"] = list(self.shape)
        if self.columns is not None:
            data["columns"] = list(self.columns)
        if self.extra:
            data["extra"] = dict(self.extra)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IOSpec:
        shape = data.get("shape")
        columns = data.get("columns")
        return cls(
            kind=data.get("kind", "json"),
            dtype=data.get("dtype"),
            shape=tuple(shape) if shape is not None else None,
            columns=tuple(columns) if columns is not None else None,
            extra=dict(data.get("extra", {})),
        )


def ndarray(dtype: str | None = None, shape: Sequence[int] | None = None) -> IOSpec:
    return IOSpec("ndarray", dtype=dtype, shape=tuple(shape) if shape is not None else None)


def tensor(dtype: str | None = None, shape: Sequence[int] | None = None) -> IOSpec:
    return IOSpec("tensor", dtype=dtype, shape=tuple(shape) if shape is not None else None)


def dataframe(columns: Sequence[str] | None = None) -> IOSpec:
    return IOSpec("dataframe", columns=tuple(columns) if columns is not None else None)


def image(mode: str | None = None) -> IOSpec:
    return IOSpec("image", extra={"mode": mode} if mode else {})


def as_spec(value: IOSpec | str | None, annotation: Any = inspect.Parameter.empty) -> IOSpec:
    """Accept a spec, a kind name, or infer the kind from a type annotation."""
    if isinstance(value, IOSpec):
        return value
    if isinstance(value, str):
        return IOSpec(value)  # type: ignore[arg-type]  # validated in __post_init__
    return IOSpec(kind_of_annotation(annotation))


def kind_of_annotation(annotation: Any) -> Kind:
    """Guess the kind from an annotation such as ``np.ndarray`` or ``pd.DataFrame``."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return "json"
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__qualname__", "")
    module = "" if isinstance(annotation, str) else getattr(annotation, "__module__", "")
    text = f"{module}.{name}"
    table: list[tuple[str, Kind]] = [
        ("ndarray", "ndarray"),
        ("NDArray", "ndarray"),
        ("Tensor", "tensor"),
        ("DataFrame", "dataframe"),
        ("Image", "image"),
        ("Path", "path"),
        ("bytes", "file"),
        ("str", "text"),
    ]
    for needle, kind in table:
        if text.endswith(needle) or text.endswith(f".{needle}"):
            return kind
    return "json"


def first_param_annotation(fn: Callable[..., Any]) -> Any:
    params = list(inspect.signature(fn).parameters.values())
    return params[0].annotation if params else inspect.Parameter.empty


def return_annotation(fn: Callable[..., Any]) -> Any:
    return inspect.signature(fn).return_annotation
