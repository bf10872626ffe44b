"""A service with one API of every kind, used by the runtime's HTTP tests."""

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from model_runtime import InvalidInput, Service, kinds

WEIGHTS = torch.arange(8, dtype=torch.float32).reshape(4, 2) / 10

service = Service("sink", description="every input kind")


@service.api(
    input=kinds.ndarray("float32", (-1, 4)),
    output="ndarray",
    batchable=True,
    max_batch_size=16,
    max_latency_ms=5,
)
def predict(x: np.ndarray) -> np.ndarray:
    """Two scores per row."""
    if (x < -1000).any():
        raise InvalidInput("row has a value below -1000")
    return (torch.from_numpy(x) @ WEIGHTS).numpy()


@service.api(input=kinds.tensor("float32", (-1, 3)), output="tensor")
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@service.api(input=kinds.dataframe(["a", "b"]), output="dataframe")
def table(df):  # type: ignore[no-untyped-def]
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    if not all(is_numeric_dtype(df[c]) and not is_bool_dtype(df[c]) for c in ("a", "b")):
        raise InvalidInput("columns a and b must hold numbers")
    return df.assign(total=df["a"] + df["b"])


@service.api(input=kinds.image("L"), output="json")
def brightness(image: np.ndarray) -> dict:
    return {
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "mean": float(image.mean()),
    }


@service.api(input="file", output="json")
def digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@service.api(input="text", output="text")
def shout(text: str) -> str:
    return text.upper()


@service.api(input="json", output="json")
def echo(value):  # type: ignore[no-untyped-def]
    if value == "explode":
        raise RuntimeError("the model blew up")
    if value == "unencodable":
        return object()
    return {"got": value}


@service.api(
    input=kinds.ndarray("float32", (-1, 1)),
    output="ndarray",
    batchable=True,
    max_batch_size=4,
    max_latency_ms=1,
)
def slow(x: np.ndarray) -> np.ndarray:
    time.sleep(0.15)
    return x


@service.api(input="path", output="json")
def invert(src: Path, out: Path) -> dict:
    try:
        array = np.load(src, allow_pickle=False)
    except (OSError, ValueError):
        raise InvalidInput(f"{src.name} is not a .npy array") from None
    np.save(out / "inverted.npy", -array)
    return {"shape": list(array.shape)}
