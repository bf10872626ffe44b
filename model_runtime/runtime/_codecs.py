"""Request and response codecs: HTTP bodies in, Python values out, and back.

An API declares what it takes and returns as an :class:`~model_runtime.kinds.IOSpec` (a *kind*
plus, for arrays, a dtype and shape). Clients do not all speak the same format for the same
kind: a notebook posts JSON nested lists, a numpy script posts ``.npy`` bytes, a spreadsheet
export posts CSV, a browser posts a multipart form. :func:`decode` accepts every format that
makes sense for the kind, and validates the value *before* the model sees it, so a wrong
request gets a precise 4xx instead of a stack trace from deep inside torch.

Errors a client can cause are :class:`CodecError` with the HTTP status to answer:

* 400 -- the body is empty (but for text and files), or malformed (invalid JSON, CSV,
  ``.npy``, multipart, UTF-8);
* 413 -- it would inflate past a limit (image and zip bombs);
* 415 -- the content type is not one this kind accepts (the message lists those that are);
* 422 -- it parses, but the value is wrong: dtype, shape, missing columns, not an image.

Responses mirror requests: :class:`Decoded` remembers the *wire* format an input came in,
and :func:`encode` answers in the matching format (``.npy`` for ``.npy``, CSV for CSV, PNG
for uploaded images) unless the ``Accept`` header asks for another one it can produce. An
output that cannot be encoded at all is a bug in the API function, not the client's fault,
so it raises a plain :class:`TypeError` (the app answers 500).

Batchable APIs are called with several requests merged along their first axis:
:func:`batch_size` counts the rows of one decoded input, :func:`concat` merges inputs and
:func:`split` cuts the model's output back into one result per request.

pandas, Pillow and torch are imported on first use only: a runtime serving a numpy model
should not pay their import time at every cold start.
"""

from __future__ import annotations

import importlib
import io
import itertools
import math
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import HubserveError
from ..kinds import IOSpec

if TYPE_CHECKING:
    from PIL import Image
    from python_multipart.multipart import MultipartCallbacks

_JSON = "application/json"
_NPY = "application/x-npy"
_NPZ = "application/x-npz"
_CSV = "text/csv"
_TEXT = "text/plain"
_PNG = "image/png"
_JPEG = "image/jpeg"
_OCTET = "application/octet-stream"
_MULTIPART = "multipart/form-data"

#: Largest array a ``.npz`` member may inflate to (a few KiB of zip can claim terabytes).
_MAX_INFLATED_BYTES = 1024**3
_IMAGE_FORMATS = ("PNG", "JPEG")
#: Pillow modes whose pixels are uint8; other modes are converted to RGB(A) unless the spec
#: names a mode.
_UINT8_MODES = ("L", "LA", "RGB", "RGBA")
#: The response format that mirrors each request format, when the output allows it.
_MIRROR = {
    "npy": _NPY,
    "npz": _NPZ,
    "csv": _CSV,
    "text": _TEXT,
    "image": _PNG,
    "multipart": _PNG,
    "bytes": _PNG,
}
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

_BatchKind = Literal["ndarray", "tensor", "dataframe", "list"]


class CodecError(HubserveError):
    """A request body the client must fix; ``status_code`` is the HTTP status to answer."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Decoded:
    """A decoded input and the wire format it came in, to answer in the same format."""

    value: Any
    #: "json", "npy", "npz", "csv", "multipart", "image", "bytes" or "text".
    wire: str


# --------------------------------------------------------------------------- decoding


def decode(spec: IOSpec, body: bytes, content_type: str | None) -> Decoded:
    """Decode and validate a request body for an API whose input is ``spec``."""
    if not body and spec.kind not in ("text", "file"):  # whatever its content type says
        accepted = ", ".join(request_media_types(spec))
        raise CodecError(f"the body is empty: send {spec.kind} input as one of: {accepted}", 400)
    media, params = _parse_media_type(content_type)
    return _DECODERS[spec.kind](spec, body, media, params)


def request_media_types(spec: IOSpec) -> list[str]:
    """The media types an API with input ``spec`` accepts (for OpenAPI and 415 messages)."""
    return list(_REQUEST_MEDIA_TYPES[spec.kind])


def response_media_types(spec: IOSpec) -> list[str]:
    """The media types a result of an API with output ``spec`` can be sent in (for OpenAPI)."""
    return list(_RESPONSE_MEDIA_TYPES[spec.kind])


_RESPONSE_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "json": (_JSON,),
    "ndarray": (_JSON, _NPY, _NPZ),
    "tensor": (_JSON, _NPY, _NPZ),
    "dataframe": (_JSON, _CSV),
    "image": (_JSON, _PNG, _NPY, _NPZ),
    "file": (_OCTET,),
    "text": (_JSON, _TEXT),
    "path": (_JSON,),
}

_REQUEST_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "json": (_JSON,),
    "ndarray": (_JSON, _NPY, _NPZ),
    "tensor": (_JSON, _NPY, _NPZ),
    "dataframe": (_JSON, _CSV),
    "image": (_PNG, _JPEG, _MULTIPART, _OCTET),
    "file": (_OCTET, _MULTIPART),
    "text": (_TEXT, _JSON),
    "path": (_JSON,),
}


def _decode_json(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    _require_json(spec, media)
    return Decoded(_load_json(body), "json")


def _decode_array(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    if media == _NPY:
        array, wire = _load_npy(body, "a .npy body"), "npy"
    elif media == _NPZ:
        array, wire = _load_npz(body), "npz"
    else:
        _require_json(spec, media)
        array, wire = _array_from_json(spec, _load_json(body)), "json"
    array = check_array(spec, array)
    return Decoded(_to_tensor(spec, array) if spec.kind == "tensor" else array, wire)


def _decode_dataframe(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    pd = _pandas()
    if media == _CSV:
        try:
            frame = pd.read_csv(io.BytesIO(body))
        except ValueError as exc:  # pandas' parser errors and UnicodeDecodeError included
            raise CodecError(f"invalid CSV: {exc}", 400) from exc
        wire = "csv"
    else:
        _require_json(spec, media)
        frame, wire = _frame_from_json(spec, _load_json(body)), "json"
    return Decoded(_select_columns(spec, frame), wire)


def _decode_image(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    if media == _MULTIPART:
        parts = _file_parts(body, params)
        if len(parts) != 1:
            raise CodecError(f"expected one file part in the multipart body, got {len(parts)}")
        data, wire = parts[0], "multipart"
    elif media in ("", _OCTET) or media.startswith("image/"):
        data, wire = body, "image"
    else:
        raise _unsupported(spec, media)
    with _open_image(data) as image:
        mode = spec.extra.get("mode") or _default_mode(image)
        array = np.array(image if image.mode == mode else image.convert(mode))
    return Decoded(check_array(spec, array), wire)


def _decode_file(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    if media == _MULTIPART:
        parts = _file_parts(body, params)
        if not parts:
            raise CodecError("the multipart body has no file part (a part with a filename)")
        return Decoded(parts[0], "multipart")
    return Decoded(body, "bytes")


def _decode_text(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    if media.startswith("text/"):
        try:
            return Decoded(body.decode("utf-8"), "text")
        except UnicodeDecodeError as exc:
            raise CodecError(f"the text body is not valid UTF-8: {exc}", 400) from exc
    _require_json(spec, media)
    value = _load_json(body)
    if not isinstance(value, str):
        raise CodecError(f"expected a JSON string, got {_json_type(value)}")
    return Decoded(value, "json")


def _decode_path(spec: IOSpec, body: bytes, media: str, params: dict[str, str]) -> Decoded:
    _require_json(spec, media)
    value = _load_json(body)
    if not isinstance(value, str) or not value:
        raise CodecError(f"expected a path as a non-empty JSON string, got {_json_type(value)}")
    return Decoded(value, "json")


_Decoder = Callable[[IOSpec, bytes, str, dict[str, str]], Decoded]
_DECODERS: dict[str, _Decoder] = {
    "json": _decode_json,
    "ndarray": _decode_array,
    "tensor": _decode_array,
    "dataframe": _decode_dataframe,
    "image": _decode_image,
    "file": _decode_file,
    "text": _decode_text,
    "path": _decode_path,
}


def _parse_media_type(header: str | None) -> tuple[str, dict[str, str]]:
    """``"Text/CSV; charset=utf-8"`` -> ``("text/csv", {"charset": "utf-8"})``; "" if absent."""
    media, params = parse_options_header(header)
    return media.decode("latin-1"), {
        key.decode("latin-1"): value.decode("latin-1") for key, value in params.items()
    }


#: What ``curl -d`` sends unless told otherwise; its body is JSON for every client we know.
_CURL_DEFAULT = "application/x-www-form-urlencoded"


def _require_json(spec: IOSpec, media: str) -> None:
    """A missing content type means JSON; so do ``application/json``, any ``+json`` and
    curl's default form type (``curl -d '[[1, 2]]'`` should just work)."""
    if media not in ("", _JSON, _CURL_DEFAULT) and not media.endswith("+json"):
        raise _unsupported(spec, media)


def _unsupported(spec: IOSpec, media: str) -> CodecError:
    accepted = ", ".join(request_media_types(spec))
    return CodecError(
        f"unsupported content type {media!r} for {spec.kind} inputs; send one of: {accepted}",
        415,
    )


def _load_json(body: bytes) -> Any:
    """Parse a JSON body; ``{"inputs": X}`` (that key alone) stands for ``X``."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"invalid JSON: {exc}", 400) from exc
    if isinstance(value, dict) and value.keys() == {"inputs"}:
        return value["inputs"]
    return value


def _json_type(value: Any) -> str:
    """How a client would name a parsed JSON value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# ----------------------------------------------------------------------------- arrays


def check_array(spec: IOSpec, array: np.ndarray, *, what: str = "input") -> np.ndarray:
    """Check ``array`` against the spec's shape and cast it to its dtype, or raise a 422.

    Casts follow numpy's ``same_kind`` rule (ints to floats, float64 to float32) with two
    refinements: integers may go to any integer dtype their values fit in (JSON integers
    parse as int64, and a uint8 API must still accept them), and a cast that overflows is
    refused instead of wrapping around or turning into ``inf``. ``bfloat16`` has no numpy
    dtype: such arrays stay float32 (tensor inputs are converted afterwards).
    """
    if spec.shape is not None:
        _check_shape(spec.shape, array.shape, what)
    if spec.dtype is None:
        return array
    return _cast(array, spec.dtype, what)


def _check_shape(expected: tuple[int, ...], shape: tuple[int, ...], what: str) -> None:
    prefix = f"{what}: expected shape {expected}, got {shape}"
    if len(shape) != len(expected):
        raise CodecError(f"{prefix}: expected {len(expected)} dimensions, got {len(shape)}")
    for axis, (want, got) in enumerate(zip(expected, shape, strict=True)):
        if want not in (-1, got):
            raise CodecError(f"{prefix}: dimension {axis} is {got}, expected {want}")


def _cast(array: np.ndarray, dtype_name: str, what: str) -> np.ndarray:
    source = array.dtype
    target = _numpy_dtype(dtype_name)
    if source == target or source.kind == target.kind == "U":
        return array
    if target.kind == "O":
        return array.astype(object)
    if source.kind in "iu" and target.kind in "iu":
        _check_int_range(array, target, what)
        return array.astype(target)
    if source.kind in "iufc" and target.kind in "fc" and np.can_cast(source, target, "same_kind"):
        with np.errstate(over="raise"):
            try:
                return array.astype(target)
            except FloatingPointError:
                raise CodecError(f"{what}: values out of range for {dtype_name}") from None
    reason = ""
    if source.kind == "f" and target.kind in "iu":
        reason = " (values would be truncated)"
    elif source.kind == "c" and target.kind in "iuf":
        reason = " (the imaginary part would be lost)"
    raise CodecError(f"{what}: expected dtype {dtype_name}, got {_dtype_name(source)}{reason}")


def _numpy_dtype(name: str) -> np.dtype[Any]:
    if name == "bfloat16":
        return np.dtype(np.float32)
    return np.dtype(name)


def _dtype_name(dtype: np.dtype[Any]) -> str:
    return {"U": "str", "S": "bytes", "O": "object"}.get(dtype.kind, dtype.name)


def _check_int_range(array: np.ndarray, target: np.dtype[Any], what: str) -> None:
    if array.size == 0:
        return
    info = np.iinfo(target)
    if int(array.min()) < info.min or int(array.max()) > info.max:
        raise CodecError(
            f"{what}: values out of range for {target.name} ({info.min} to {info.max})"
        )


def _array_from_json(spec: IOSpec, value: Any) -> np.ndarray:
    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise CodecError(f"ragged nested lists: {exc}") from exc
    if array.size == 0 and spec.dtype is not None:
        return array.astype(_numpy_dtype(spec.dtype))
    if array.dtype.kind == "O" and spec.dtype != "object":
        raise CodecError(
            "expected nested lists of numbers, booleans or strings; got values that do not"
            " form an array (null, objects or integers beyond 64 bits)"
        )
    return array


def _load_npy(data: bytes, source: str) -> np.ndarray:
    """Load one ``.npy`` file, checking its header first so a lying header cannot make us
    allocate more than the body holds, and never unpickling."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _fortran_order, dtype = read_header(stream)
    except ValueError as exc:
        raise CodecError(f"{source} is not a valid .npy file: {exc}", 400) from exc
    if dtype.hasobject:
        raise CodecError(f"{source} holds Python objects, which would need pickle to load")
    if any(size < 0 for size in shape):
        raise CodecError(f"{source} is not a valid .npy file: negative shape {shape}", 400)
    needed = math.prod(shape) * dtype.itemsize
    available = len(data) - stream.tell()
    if needed > available:
        raise CodecError(
            f"{source} is truncated: its header announces {needed} bytes of data, "
            f"it holds {available}",
            400,
        )
    stream.seek(0)
    try:
        return np.load(stream, allow_pickle=False)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise CodecError(f"{source} is not a valid .npy file: {exc}", 400) from exc


def _load_npz(data: bytes) -> np.ndarray:
    """The array named ``inputs`` of a ``.npz`` archive, or its only array."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = {
                info.filename.removesuffix(".npy"): info
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
            name = _npz_member(members)
            info = members[name]
            if info.file_size > _MAX_INFLATED_BYTES:
                raise CodecError(
                    f"array {name!r} of the .npz body inflates to {info.file_size} bytes,"
                    f" more than the limit of {_MAX_INFLATED_BYTES}",
                    413,
                )
            member = archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as exc:
        raise CodecError(f"not a valid .npz file: {exc}", 400) from exc
    return _load_npy(member, f"array {name!r} of the .npz body")


def _npz_member(members: dict[str, zipfile.ZipInfo]) -> str:
    if "inputs" in members:
        return "inputs"
    if len(members) == 1:
        return next(iter(members))
    if not members:
        raise CodecError("the .npz body holds no arrays")
    names = ", ".join(sorted(members))
    raise CodecError(f"the .npz body holds several arrays ({names}); name the input 'inputs'")


def _to_tensor(spec: IOSpec, array: np.ndarray) -> Any:
    import torch

    if array.dtype.kind not in "biufc":
        raise CodecError(
            f"input: a tensor holds numbers or booleans, got {_dtype_name(array.dtype)}"
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    tensor = torch.from_numpy(array)
    return tensor.to(torch.bfloat16) if spec.dtype == "bfloat16" else tensor


# -------------------------------------------------------------------------- dataframes


def _pandas() -> Any:
    """pandas, imported on first use (it ships no type information)."""
    return importlib.import_module("pandas")


def _frame_from_json(spec: IOSpec, value: Any) -> Any:
    pd = _pandas()
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return pd.DataFrame(
            value, columns=list(spec.columns) if not value and spec.columns else None
        )
    if isinstance(value, dict) and value.keys() in (
        {"columns", "data"},
        {"columns", "data", "index"},
    ):
        try:
            return pd.DataFrame(value["data"], columns=value["columns"], index=value.get("index"))
        except (ValueError, TypeError) as exc:
            raise CodecError(f"invalid split-oriented DataFrame: {exc}") from exc
    raise CodecError(
        'expected a list of records ([{"column": value, ...}, ...]) or'
        f' {{"columns": [...], "data": [[...], ...]}}, got {_json_type(value)}'
    )


def _select_columns(spec: IOSpec, frame: Any) -> Any:
    """The spec's columns, in its order; other columns are dropped."""
    if spec.columns is None:
        return frame
    missing = [column for column in spec.columns if column not in frame.columns]
    if missing:
        got = ", ".join(map(str, frame.columns)) or "none"
        raise CodecError(
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f" (expected {', '.join(spec.columns)}; got {got})"
        )
    return frame[list(spec.columns)]


# ------------------------------------------------------------------------------ images


def _open_image(data: bytes) -> Image.Image:
    """Open and fully load a PNG or JPEG, refusing decompression bombs with a 413."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS)
        if (
            Image.MAX_IMAGE_PIXELS is not None
            and image.width * image.height > Image.MAX_IMAGE_PIXELS
        ):
            raise CodecError(
                f"image too large: {image.width}x{image.height} pixels, more than the limit"
                f" of {Image.MAX_IMAGE_PIXELS}",
                413,
            )
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is raised only where warnings are errors; otherwise the size check
        # above refuses the same images.
        raise CodecError(f"image too large: {exc}", 413) from exc
    except UnidentifiedImageError:
        raise CodecError("not a PNG/JPEG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise CodecError(f"not a PNG/JPEG image: {exc}") from exc
    return image


def _default_mode(image: Image.Image) -> str:
    if image.mode in _UINT8_MODES:
        return image.mode
    return "RGBA" if image.has_transparency_data else "RGB"


# --------------------------------------------------------------------------- multipart


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


class _PartCollector:
    """Callbacks for :class:`MultipartParser` that keep every part in memory."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self.ended = False
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": lambda: self.parts.append(_Part()),
            "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_part_data": lambda data, start, end: self.parts[-1].data.extend(data[start:end]),
            "on_end": self._end,
        }

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _end(self) -> None:
        self.ended = True


def _file_parts(body: bytes, params: dict[str, str]) -> list[bytes]:
    """The contents of the file parts (those with a filename) of a multipart/form-data body."""
    boundary = params.get("boundary")
    if not boundary:
        raise CodecError("multipart/form-data without a boundary parameter", 400)
    collector = _PartCollector()
    try:
        parser = MultipartParser(boundary.encode("latin-1"), collector.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise CodecError(f"malformed multipart body: {exc}", 400) from exc
    if not collector.ended:
        raise CodecError("malformed multipart body: it ends before the closing boundary", 400)
    return [
        bytes(part.data)
        for part in collector.parts
        if b"filename" in parse_options_header(part.headers.get("content-disposition"))[1]
    ]


# --------------------------------------------------------------------------- encoding


def encode(spec: IOSpec, value: Any, *, wire: str, accept: str | None) -> tuple[bytes, str]:
    """Encode an API's output as ``(body, media type)``.

    The format mirrors the request's ``wire`` when the value allows it (``.npy`` for arrays
    that came as ``.npy``, CSV for DataFrames that came as CSV, PNG for images answering an
    upload, plain text for text), and JSON otherwise; an ``Accept`` header naming another
    format the value can take wins. Unknown ``Accept`` values fall back to that default
    rather than failing with a 406.
    """
    encoders = _encoders(spec, value)
    mirror = _MIRROR.get(wire, _JSON)
    default = mirror if mirror in encoders else next(iter(encoders))
    offers = [default, *(media for media in encoders if media != default)]
    media = _negotiate(accept, offers)
    return encoders[media](), f"{media}; charset=utf-8" if media in (_CSV, _TEXT) else media


def _encoders(spec: IOSpec, value: Any) -> dict[str, Callable[[], bytes]]:
    """The formats ``value`` can be sent in, JSON (or raw bytes) first."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {_OCTET: lambda: bytes(value)}
    if spec.kind == "file":
        raise TypeError(f"an API with a file output must return bytes, not {type(value).__name__}")
    if _is_pil_image(value):
        return {_JSON: lambda: dumps(np.asarray(value)), _PNG: lambda: _png(value)}
    encoders: dict[str, Callable[[], bytes]] = {_JSON: lambda: dumps(value)}
    if isinstance(value, str):
        encoders[_TEXT] = value.encode
    elif _is_dataframe(value):
        encoders[_CSV] = lambda: value.to_csv(index=False).encode()
    elif isinstance(value, np.ndarray) or _is_tensor(value):
        encoders[_NPY] = lambda: _npy(_as_numpy(value))
        encoders[_NPZ] = lambda: _npz(_as_numpy(value))
        if spec.kind == "image":
            encoders[_PNG] = lambda: _png(_as_numpy(value))
    return encoders


def _negotiate(accept: str | None, offers: list[str]) -> str:
    """The first of ``offers`` (best first) that the best-ranked ``Accept`` range allows."""
    for media_range in _accepted_ranges(accept):
        for offer in offers:
            if media_range in ("*/*", offer) or (
                media_range.endswith("/*") and offer.startswith(media_range[:-1])
            ):
                return offer
    return offers[0]


def _accepted_ranges(accept: str | None) -> list[str]:
    """The media ranges of an ``Accept`` header by decreasing quality (q=0 ones dropped)."""
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate((accept or "").split(",")):
        media, params = _parse_media_type(item)
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            continue
        if media and quality > 0:
            ranked.append((-quality, index, media))
    return [media for _, _, media in sorted(ranked)]


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    import torch

    tensor = value.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # type: ignore[no-any-return]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, array, allow_pickle=False)
    except ValueError as exc:
        raise TypeError(f"cannot encode the output as .npy: {exc}") from exc
    return buffer.getvalue()


def _npz(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    try:
        np.savez(buffer, allow_pickle=False, outputs=array)
    except ValueError as exc:
        raise TypeError(f"cannot encode the output as .npz: {exc}") from exc
    return buffer.getvalue()


def _png(image: Image.Image | np.ndarray) -> bytes:
    from PIL import Image

    if isinstance(image, np.ndarray):
        array = image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image
        if array.dtype != np.uint8 or not (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (2, 3, 4))
        ):
            raise TypeError(
                "an image output must be a PIL image or a uint8 array of shape (H, W) or"
                f" (H, W, C) with C in 1..4, got {array.dtype} with shape {image.shape}"
            )
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, ValueError) as exc:
        raise TypeError(f"cannot encode the image output as PNG: {exc}") from exc
    return buffer.getvalue()


# ------------------------------------------------------------------------------- JSON


def dumps(value: Any) -> bytes:
    """JSON bytes for API values: numpy arrays and scalars, torch tensors, pandas objects
    (DataFrames as records), non-string dict keys. Raises :class:`TypeError` otherwise."""
    return orjson.dumps(value, default=_json_default, option=_DUMPS_OPTIONS)


def _json_default(value: Any) -> Any:
    """What orjson cannot serialize itself (it calls this for unknown types, and for numpy
    arrays that are not C-contiguous or have a dtype it lacks)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if _is_tensor(value):
        return value.detach().cpu().tolist()
    if isinstance(value, PurePath):
        return str(value)
    pd = sys.modules.get("pandas")
    if pd is not None:
        if isinstance(value, pd.DataFrame):
            return value.to_dict(orient="records")
        if isinstance(value, pd.Series | pd.Index):
            return value.tolist()
        if isinstance(value, pd.Timestamp | pd.Timedelta):
            return value.isoformat()
        if value is pd.NaT or value is pd.NA:
            return None
    raise TypeError(f"{type(value).__name__} values have no JSON form")


def json_schema(spec: IOSpec) -> dict[str, Any]:
    """The JSON Schema of a value of ``spec`` in a JSON body (binary kinds: a binary string)."""
    if spec.kind in ("ndarray", "tensor"):
        return _array_schema(spec.shape, _scalar_schema(spec.dtype))
    if spec.kind == "dataframe":
        record: dict[str, Any] = {"type": "object"}
        if spec.columns is not None:
            record["properties"] = {column: {} for column in spec.columns}
            record["required"] = list(spec.columns)
        return {"type": "array", "items": record}
    if spec.kind in ("text", "path"):
        return {"type": "string"}
    if spec.kind in ("image", "file"):
        return {"type": "string", "format": "binary"}
    return {}


def _scalar_schema(dtype: str | None) -> dict[str, Any]:
    if dtype is None or dtype == "object":
        return {}
    if dtype == "bool":
        return {"type": "boolean"}
    if dtype == "str":
        return {"type": "string"}
    numpy_dtype = _numpy_dtype(dtype)
    if numpy_dtype.kind in "iu":
        info = np.iinfo(numpy_dtype)
        return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    if numpy_dtype.kind == "f" and dtype != "bfloat16":  # larger ones would overflow: 422
        largest = float(np.finfo(numpy_dtype).max)
        return {"type": "number", "minimum": -largest, "maximum": largest}
    return {"type": "number"}


def _array_schema(shape: tuple[int, ...] | None, scalar: dict[str, Any]) -> dict[str, Any]:
    if shape is None:
        return {"type": "array"}
    schema = scalar
    for size in reversed(shape):
        schema = {"type": "array", "items": schema}
        # An empty list loses the dimensions below it (``[]`` has shape ``(0,)``): at least one.
        schema |= {"minItems": 1} if size == -1 else {"minItems": size, "maxItems": size}
    return schema


# --------------------------------------------------------------------- micro-batching


def batch_size(spec: IOSpec, value: Any) -> int:
    """The number of rows (first-axis length) of a decoded input of a batchable API.

    An empty batch is refused with a 422: there is nothing to run the model on.
    """
    try:
        rows = _rows(value)
    except ValueError:
        raise CodecError(
            f"a batchable API takes a batch along a first axis (a list, an array with at"
            f" least one dimension or a DataFrame); this {spec.kind} input is {_describe(value)}"
        ) from None
    if rows == 0:
        raise CodecError(f"this {spec.kind} input is an empty batch; send at least one row")
    return rows


def concat(values: list[Any]) -> Any:
    """Merge the inputs of several requests along their first axis."""
    if not values:
        raise ValueError("nothing to concatenate")
    kind = _batch_kind(values[0])
    for value in values[1:]:
        if _batch_kind(value) != kind:
            raise ValueError(
                f"cannot batch a {type(value).__name__} with a {type(values[0]).__name__}"
            )
    if kind == "list":
        return [item for value in values for item in value]
    if kind == "dataframe":
        _check_same(values, lambda frame: list(frame.columns), "columns")
        return _pandas().concat(values, ignore_index=True)
    for value in values:
        _rows(value)  # refuses 0-d arrays
    _check_same(values, lambda array: tuple(array.shape[1:]), "shapes after the first axis")
    _check_same(values, lambda array: array.dtype, "dtypes")
    if kind == "tensor":
        import torch

        return torch.cat(values)
    return np.concatenate(values)


def split(value: Any, sizes: list[int]) -> list[Any]:
    """Cut a batched output into one result per request, of ``sizes`` rows each.

    Tuples and dicts are split element by element: ``(scores, labels)`` gives one
    ``(scores_i, labels_i)`` per request.
    """
    if isinstance(value, tuple):
        columns = [split(item, sizes) for item in value]
        return [tuple(column[i] for column in columns) for i in range(len(sizes))]
    if isinstance(value, dict):
        split_values = {key: split(item, sizes) for key, item in value.items()}
        return [{key: parts[i] for key, parts in split_values.items()} for i in range(len(sizes))]
    rows, total = _rows(value), sum(sizes)
    if rows != total:
        raise ValueError(f"model returned {rows} rows for {total} inputs")
    if _batch_kind(value) == "tensor":
        return list(value.split(sizes))
    ends = list(itertools.accumulate(sizes))
    bounds = [slice(end - size, end) for end, size in zip(ends, sizes, strict=True)]
    if _is_dataframe(value):
        return [value.iloc[rows_slice].reset_index(drop=True) for rows_slice in bounds]
    return [value[rows_slice] for rows_slice in bounds]


def _batch_kind(value: Any) -> _BatchKind:
    if isinstance(value, np.ndarray):
        return "ndarray"
    if isinstance(value, list):
        return "list"
    if _is_tensor(value):
        return "tensor"
    if _is_dataframe(value):
        return "dataframe"
    raise ValueError(
        f"cannot batch a {type(value).__name__}: batches are lists, numpy arrays, torch tensors"
        " or DataFrames (a batched output may also be a tuple or dict of them)"
    )


def _rows(value: Any) -> int:
    if _batch_kind(value) in ("ndarray", "tensor"):
        if value.ndim == 0:
            raise ValueError("cannot batch a 0-d array: it has no first axis")
        return int(value.shape[0])
    return len(value)


def _check_same(values: list[Any], key: Callable[[Any], Any], what: str) -> None:
    first = key(values[0])
    for value in values[1:]:
        if key(value) != first:
            raise ValueError(f"cannot batch values with different {what}: {first} and {key(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray) or _is_tensor(value):
        return f"an array of shape {tuple(value.shape)}"
    return _json_type(value)


# ------------------------------------------------------------ lazily imported types


def _is_dataframe(value: Any) -> bool:
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(value, pd.DataFrame)


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_pil_image(value: Any) -> bool:
    pil_image = sys.modules.get("PIL.Image")
    return pil_image is not None and isinstance(value, pil_image.Image)
