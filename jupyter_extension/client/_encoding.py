"""Prediction bodies: Python values to HTTP and back, shared by the sync and async clients.

The runtime (:mod:`model_runtime.runtime._codecs`) accepts several wire formats per input kind
and answers in the format the request came in (or the ``Accept`` header asks for). The client
picks, for each Python value, the format that loses nothing and costs least:

* numpy arrays (and torch tensors, converted) go as ``.npy``: exact dtype and shape, no float
  printing, and the answer comes back as ``.npy``, decoded to numpy again (an API that takes
  JSON refuses ``.npy`` with a 415: the client then sends the values again as nested lists);
* pandas DataFrames go as JSON ``{"columns": [...], "data": [[...]]}`` (split orientation,
  which keeps the column order) and a JSON answer of records comes back as a DataFrame;
* PIL images go as a multipart PNG file, ``bytes`` and ``pathlib.Path`` files as multipart
  file uploads (what ``image`` and ``file`` APIs take);
* everything else (lists, dicts, numbers, strings) goes as JSON. A ``str`` goes as a JSON
  string, which ``text`` APIs accept as well as ``json`` and ``path`` ones, so the client needs
  no lookup of the API's kind; ``text`` APIs then answer a JSON string, decoded to ``str``.

Answers are decoded by their content type: ``.npy`` and ``.npz`` to numpy, JSON to Python (or
a DataFrame, see above), CSV to a DataFrame, text to ``str``, PNG/JPEG to a PIL image, anything
else to ``bytes``.

The Open Inference Protocol (``infer``) has its own JSON tensor format: :func:`encode_infer`
and :func:`decode_infer`.

pandas, torch and Pillow are only touched when the caller already uses them (looked up in
``sys.modules``), so a client call never pays their import.
"""

from __future__ import annotations

import importlib
import io
import mimetypes
import secrets
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Literal

import httpx
import numpy as np
import orjson

from ._errors import InvalidRequest, ServerError

_JSON = "application/json"
NPY = "application/x-npy"
_NPZ = "application/x-npz"
_OCTET = "application/octet-stream"
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

#: How to read the answer back: as sent (``auto``) or, for DataFrames, as a DataFrame.
Expect = Literal["auto", "frame"]


@dataclass(frozen=True)
class Body:
    """An encoded request body and how to decode its answer."""

    content: bytes
    content_type: str
    expect: Expect = "auto"


# ----------------------------------------------------------------------------- predict


def encode_predict(data: Any) -> Body:
    """Encode ``data`` for ``POST d/<owner>/<name>/<api>`` (see the module docstring)."""
    if _is_tensor(data):
        data = tensor_to_numpy(data)
    if isinstance(data, np.ndarray):
        return Body(npy_bytes(data), NPY)
    if _is_dataframe(data):
        split = data.to_json(orient="split", index=False, date_format="iso")
        return Body(split.encode(), _JSON, expect="frame")
    if _is_pil_image(data):
        buffer = io.BytesIO()
        data.save(buffer, format="PNG")
        return multipart_file(buffer.getvalue(), "image.png", "image/png")
    if isinstance(data, bytes | bytearray | memoryview):
        return multipart_file(bytes(data), "data", _OCTET)
    if isinstance(data, PurePath):
        path = Path(data)
        if not path.is_file():
            raise InvalidRequest(f"{path} is not a file: pass a file's path to upload it")
        media = mimetypes.guess_type(path.name)[0] or _OCTET
        return multipart_file(path.read_bytes(), path.name, media)
    return Body(dumps(data), _JSON)


def decode_predict(response: httpx.Response, expect: Expect) -> Any:
    """Decode a prediction answer (its body read) by its content type."""
    media = _media_type(response)
    content = response.content
    if media == NPY:
        return load_npy(content)
    if media == _NPZ:
        return _load_npz(content)
    if media == _JSON or media.endswith("+json"):
        value = _loads(content)
        return _to_frame(value) if expect == "frame" else value
    if media == "text/csv":  # only when asked for (Accept): the caller wants a table
        return importlib.import_module("pandas").read_csv(io.BytesIO(content))
    if media.startswith("text/"):
        return response.text
    if media in ("image/png", "image/jpeg"):
        return _open_image(content)
    return content


def multipart_file(data: bytes, filename: str, media_type: str) -> Body:
    """A ``multipart/form-data`` body with one file field (``file``), as a browser sends."""
    boundary = f"hubserve-{secrets.token_hex(16)}"
    quoted = filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        f"Content-Type: {media_type}\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return Body(head + data + tail, f"multipart/form-data; boundary={boundary}")


def dumps(value: Any) -> bytes:
    """JSON bytes for request values: numpy values, tensors, DataFrames, paths included."""
    try:
        return orjson.dumps(value, default=_json_default, option=_DUMPS_OPTIONS)
    except TypeError as exc:
        raise InvalidRequest(f"cannot send this value as JSON: {exc}") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if _is_tensor(value):
        return tensor_to_numpy(value).tolist()
    if isinstance(value, PurePath):
        return str(value)
    if _is_dataframe(value):
        return value.to_dict(orient="records")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} values have no JSON form")


def _loads(content: bytes) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise ServerError(f"the answer is not valid JSON: {exc}") from None


def _to_frame(value: Any) -> Any:
    """A JSON answer to a DataFrame request as a DataFrame, when it is table-shaped."""
    pd = _module("pandas")
    if pd is None:
        return value
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return pd.DataFrame.from_records(value) if value else pd.DataFrame()
    if isinstance(value, dict) and {"columns", "data"} <= value.keys() <= {
        "columns",
        "data",
        "index",
    }:
        return pd.DataFrame(value["data"], columns=value["columns"], index=value.get("index"))
    return value


def _open_image(content: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(content))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ServerError(f"the answer is not a valid image: {exc}") from None
    return image


# ------------------------------------------------------------------------------- arrays


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, array, allow_pickle=False)
    except ValueError as exc:  # object arrays
        raise InvalidRequest(f"cannot send this array as .npy: {exc}") from None
    return buffer.getvalue()


def load_npy(content: bytes) -> np.ndarray:
    try:
        array: np.ndarray = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ServerError(f"the answer is not a valid .npy file: {exc}") from None
    return array


def _load_npz(content: bytes) -> Any:
    """The runtime's ``.npz`` answer (one array named ``outputs``), or all its arrays."""
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as exc:
        raise ServerError(f"the answer is not a valid .npz file: {exc}") from None
    if set(arrays) == {"outputs"}:
        return arrays["outputs"]
    return arrays


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A torch tensor as a numpy array (on the CPU; bfloat16, which numpy lacks, as float32)."""
    torch = sys.modules["torch"]
    value = tensor.detach().cpu()
    if value.dtype == torch.bfloat16:
        value = value.float()
    array: np.ndarray = value.numpy()
    return array


# -------------------------------------------------------------------- Open Inference Protocol

_OIP_FROM_NUMPY = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
_OIP_TO_NUMPY = {v: k for k, v in _OIP_FROM_NUMPY.items()}
_OIP_HEADER_LENGTH = "inference-header-content-length"


def encode_infer(inputs: Mapping[str, Any] | Any) -> bytes:
    """An OIP v2 inference request (JSON tensors) for one array or named arrays."""
    named = dict(inputs) if isinstance(inputs, Mapping) else {"input": inputs}
    if not named:
        raise InvalidRequest("infer needs at least one input array")
    tensors = []
    for name, value in named.items():
        array = tensor_to_numpy(value) if _is_tensor(value) else np.asarray(value)
        if array.dtype.kind in "USO":
            datatype = "BYTES"
            data: list[Any] = [
                v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)
            ]
        else:
            datatype = _OIP_FROM_NUMPY.get(array.dtype.name, "")
            if not datatype:
                raise InvalidRequest(
                    f"input {name!r}: the Open Inference Protocol has no datatype for {array.dtype}"
                )
            data = array.reshape(-1).tolist()
        tensors.append(
            {"name": str(name), "shape": list(array.shape), "datatype": datatype, "data": data}
        )
    return orjson.dumps({"inputs": tensors})


def decode_infer(response: httpx.Response) -> dict[str, np.ndarray]:
    """The outputs of an OIP v2 inference answer, by name (JSON or binary tensor data)."""
    content = response.content
    header_length = response.headers.get(_OIP_HEADER_LENGTH)
    binary = b""
    if header_length is not None and header_length.isdigit():
        split = int(header_length)
        content, binary = content[:split], content[split:]
    answer = _loads(content)
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, list):
        raise ServerError("the inference answer has no 'outputs' list")
    result: dict[str, np.ndarray] = {}
    offset = 0
    for output in outputs:
        name, shape, datatype = output.get("name"), output.get("shape"), output.get("datatype")
        size = (output.get("parameters") or {}).get("binary_data_size")
        try:
            if size is not None:
                raw = binary[offset : offset + int(size)]
                offset += int(size)
                array = _binary_tensor(raw, datatype)
            elif datatype == "BYTES":
                array = np.array(output.get("data"), dtype=object)
            else:
                array = np.asarray(output.get("data"), dtype=_OIP_TO_NUMPY[datatype])
            result[str(name)] = array.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ServerError(
                f"cannot read output {name!r} of the inference answer: {exc}"
            ) from None
    return result


def _binary_tensor(raw: bytes, datatype: str) -> np.ndarray:
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=_OIP_TO_NUMPY[datatype]).copy()
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


# ------------------------------------------------------------------------------ helpers


def _media_type(response: httpx.Response) -> str:
    header: str = response.headers.get("content-type", "")
    return header.split(";")[0].strip().lower()


def _module(name: str) -> Any:
    """A module the caller already imported, or ``None``; never imports it."""
    return sys.modules.get(name)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_dataframe(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


def _is_pil_image(value: Any) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)
