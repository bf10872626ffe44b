"""Services: a model's API functions and the models they use.

A :class:`Service` is what a data scientist defines and hubserve packages, versions and serves.
It has a name, the model objects it needs (saved as artifacts in the bundle) and API functions,
each registered with :func:`api` or :meth:`Service.api`::

    svc = Service("iris", models={"net": net})

    @svc.api(input=kinds.ndarray("float32", (-1, 4)), output="ndarray", batchable=True)
    def predict(x: np.ndarray) -> np.ndarray:
        return net(torch.from_numpy(x)).detach().numpy()

``batchable`` APIs take and return arrays whose first axis is the batch: the runtime merges
concurrent requests along that axis up to ``max_batch_size`` and waits at most
``max_latency_ms`` for more to arrive. A packaged service comes back from
:func:`model_runtime.load_bundle` ready to call: ``svc.call("predict", x)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .errors import PackagingError
from .kinds import IOSpec, as_spec, first_param_annotation, return_annotation
from .naming import check_model_name

if TYPE_CHECKING:
    from .bundle import BundleManifest

F = TypeVar("F", bound=Callable[..., Any])

_API_ATTR = "__hubserve_api__"
_API_NAME_RE_HELP = "API names must be Python identifiers not starting with '_'"
#: Paths of the runtime's own routes, which an API (served at ``POST /<api>``) cannot shadow.
RESERVED_API_NAMES = frozenset({"healthz", "readyz", "metrics", "docs", "redoc", "jobs", "v2"})


@dataclass(frozen=True)
class Batching:
    """Micro-batching settings of one API."""

    max_batch_size: int = 32
    max_latency_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise PackagingError("max_batch_size must be at least 1")
        if self.max_latency_ms < 0:
            raise PackagingError("max_latency_ms must not be negative")


@dataclass(frozen=True)
class ApiSpec:
    """One API of a service: its function, input/output specs and batching settings."""

    name: str
    func: Callable[..., Any] = field(compare=False)
    input: IOSpec = field(default_factory=IOSpec)
    output: IOSpec = field(default_factory=IOSpec)
    batchable: bool = False
    batching: Batching = field(default_factory=Batching)
    doc: str = ""

    @property
    def signature(self) -> str:
        try:
            return f"{self.func.__name__}{inspect.signature(self.func)}"
        except (TypeError, ValueError):
            return self.func.__name__

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "function": self.func.__name__,
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "batchable": self.batchable,
            "batching": {
                "max_batch_size": self.batching.max_batch_size,
                "max_latency_ms": self.batching.max_latency_ms,
            },
            "signature": self.signature,
            "doc": self.doc,
        }


def _make_spec(
    func: Callable[..., Any],
    *,
    name: str | None,
    input: IOSpec | str | None,
    output: IOSpec | str | None,
    batchable: bool,
    max_batch_size: int,
    max_latency_ms: float,
) -> ApiSpec:
    if not callable(func):
        raise PackagingError(f"an API must be a function, got {type(func).__name__}")
    api_name = name or func.__name__
    if not api_name.isidentifier() or api_name.startswith("_"):
        raise PackagingError(f"invalid API name {api_name!r}: {_API_NAME_RE_HELP}")
    if api_name in RESERVED_API_NAMES:
        raise PackagingError(
            f"API name {api_name!r} is taken by the runtime's own routes; choose another"
        )
    in_spec = as_spec(input, first_param_annotation(func))
    out_spec = as_spec(output, return_annotation(func))
    if batchable and in_spec.kind not in ("ndarray", "tensor", "dataframe", "json"):
        raise PackagingError(
            f"API {api_name!r}: batching merges inputs along their first axis, which needs an"
            f" ndarray, tensor, dataframe or json list input, not {in_spec.kind!r}"
        )
    return ApiSpec(
        name=api_name,
        func=func,
        input=in_spec,
        output=out_spec,
        batchable=batchable,
        batching=Batching(max_batch_size, max_latency_ms),
        doc=inspect.getdoc(func) or "",
    )


@overload
def api(func: F, /) -> F: ...
@overload
def api(
    *,
    name: str | None = None,
    input: IOSpec | str | None = None,
    output: IOSpec | str | None = None,
    batchable: bool = False,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
) -> Callable[[F], F]: ...


def api(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    input: IOSpec | str | None = None,
    output: IOSpec | str | None = None,
    batchable: bool = False,
    max_batch_size: int = 32,
    max_latency_ms: float = 10.0,
) -> F | Callable[[F], F]:
    """Mark a function as an API; a :class:`Service` built with ``apis=[...]`` picks it up.

    Kinds not given are inferred from the annotations (``np.ndarray`` -> ``ndarray``...).
    The function itself is returned unchanged, so it stays callable in the notebook.
    """

    def mark(fn: F) -> F:
        spec = _make_spec(
            fn,
            name=name,
            input=input,
            output=output,
            batchable=batchable,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
        )
        setattr(fn, _API_ATTR, spec)
        return fn

    return mark(func) if func is not None else mark


def api_spec_of(func: Callable[..., Any]) -> ApiSpec | None:
    """The spec attached by :func:`api`, if any."""
    spec = getattr(func, _API_ATTR, None)
    return spec if isinstance(spec, ApiSpec) else None


class Service:
    """A named set of API functions and the models they use; the unit hubserve packages."""

    def __init__(
        self,
        name: str,
        *,
        models: Mapping[str, Any] | None = None,
        apis: Iterable[Callable[..., Any]] = (),
        description: str = "",
        labels: Mapping[str, str] | None = None,
        requirements: Iterable[str] = (),
    ) -> None:
        self.name = check_model_name(name)
        self.models: dict[str, Any] = dict(models or {})
        for key in self.models:
            if not key.isidentifier():
                raise PackagingError(f"model key {key!r} must be a Python identifier")
        self.apis: dict[str, ApiSpec] = {}
        self.description = description
        self.labels: dict[str, str] = {str(k): str(v) for k, v in (labels or {}).items()}
        self.requirements: list[str] = list(requirements)
        #: Set when the service was loaded from a bundle.
        self.manifest: BundleManifest | None = None
        self.bundle_dir: Path | None = None
        for fn in apis:
            self.add_api(fn)

    def __repr__(self) -> str:
        return f"<Service {self.name!r} apis={list(self.apis)} models={list(self.models)}>"

    def add_api(self, func: Callable[..., Any], **options: Any) -> ApiSpec:
        """Register ``func``; options are those of :func:`api` and override its marks."""
        marked = api_spec_of(func)
        if marked is not None and not options:
            spec = marked
        else:
            spec = _make_spec(func, **{**_spec_options(marked), **options})
        if spec.name in self.apis and self.apis[spec.name].func is not func:
            raise PackagingError(f"service {self.name!r} already has an API named {spec.name!r}")
        self.apis[spec.name] = spec
        return spec

    @overload
    def api(self, func: F, /) -> F: ...
    @overload
    def api(
        self,
        /,
        *,
        name: str | None = None,
        input: IOSpec | str | None = None,
        output: IOSpec | str | None = None,
        batchable: bool = False,
        max_batch_size: int = 32,
        max_latency_ms: float = 10.0,
    ) -> Callable[[F], F]: ...

    def api(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        input: IOSpec | str | None = None,
        output: IOSpec | str | None = None,
        batchable: bool = False,
        max_batch_size: int = 32,
        max_latency_ms: float = 10.0,
    ) -> F | Callable[[F], F]:
        """Decorator form of :meth:`add_api` (see :func:`api` for the options)."""

        def register(fn: F) -> F:
            self.add_api(
                fn,
                name=name,
                input=input,
                output=output,
                batchable=batchable,
                max_batch_size=max_batch_size,
                max_latency_ms=max_latency_ms,
            )
            return fn

        return register(func) if func is not None else register

    def call(self, api_name: str, *args: Any, **kwargs: Any) -> Any:
        """Call an API function directly, as the runtime does after decoding a request."""
        try:
            spec = self.apis[api_name]
        except KeyError:
            raise KeyError(
                f"service {self.name!r} has no API {api_name!r}; it has: {', '.join(self.apis)}"
            ) from None
        return spec.func(*args, **kwargs)


def _spec_options(spec: ApiSpec | None) -> dict[str, Any]:
    if spec is None:
        return {
            "name": None,
            "input": None,
            "output": None,
            "batchable": False,
            "max_batch_size": 32,
            "max_latency_ms": 10.0,
        }
    return {
        "name": spec.name,
        "input": spec.input,
        "output": spec.output,
        "batchable": spec.batchable,
        "max_batch_size": spec.batching.max_batch_size,
        "max_latency_ms": spec.batching.max_latency_ms,
    }
