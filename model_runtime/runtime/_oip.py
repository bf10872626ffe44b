"""Open Inference Protocol v2 (KServe / Triton REST), so standard clients can call a runtime.

Every API that takes an array (``ndarray`` or ``tensor`` kind) is an OIP *model* named after
the API; the bundle's own name is an alias of the first such API. A request carries tensors
as JSON (``data`` flat or nested, reshaped to ``shape``) or, with the *binary tensor data*
extension, as raw bytes after a JSON header whose length is given by
``Inference-Header-Content-Length``. Replies use binary data when the client asks for it
(``binary_data_output`` or per output ``binary_data``), as ``tritonclient`` does.

An API takes one tensor. Its result becomes one output named ``output``, or one per key
of a returned dict, or ``output_<i>`` per element of a returned tuple.
"""

from __future__ import annotations

import struct
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from .._version import __version__
from ..errors import InvalidInput
from ..service import ApiSpec
from . import _codecs
from ._batching import Overloaded
from ._body import BodyTooLarge, read_body
from ._runtime import CallTimeout, Runtime

HEADER_LENGTH = "inference-header-content-length"

_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_FROM_NUMPY = {np.dtype(v).name: k for k, v in _TO_NUMPY.items() if k != "BYTES"}


class OipError(Exception):
    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


#: OpenAPI of the error replies: OIP clients read ``error``, not FastAPI's ``detail``.
_ERROR_REPLY = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}
_NOT_READY = {
    "description": "Not ready yet (loading or warming up)",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
_UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {404: _ERROR_REPLY}
_MODEL_READY: dict[int | str, dict[str, Any]] = {404: _ERROR_REPLY, 503: _NOT_READY}
#: 500: the API function itself failed; 503: the queue is full (with ``Retry-After``);
#: 504: the model took longer than ``request_timeout``.
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    status: _ERROR_REPLY for status in (400, 404, 413, 422, 500, 503, 504)
}


def _error(exc: OipError | _codecs.CodecError) -> Response:
    return Response(
        orjson.dumps({"error": str(exc)}),
        status_code=exc.status_code,
        media_type="application/json",
    )


def oip_datatype(dtype: str | None) -> str:
    if dtype is None:
        return "FP32"
    return _FROM_NUMPY.get(dtype, "BYTES")


def _decode_bytes_tensor(raw: bytes, count: int) -> np.ndarray:
    """BYTES tensors in binary form: each element is a 4-byte little-endian length + bytes."""
    out = np.empty(count, dtype=np.object_)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise OipError("BYTES tensor data is truncated")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        out[i] = raw[offset : offset + length]
        offset += length
    return out


def _encode_bytes_tensor(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def _parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise OipError(f"invalid {HEADER_LENGTH} header")
        split = int(header_length)
        head, binary = body[:split], body[split:]
    else:
        head, binary = body, b""
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise OipError(f"invalid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise OipError(
            'an inference request is {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    return request, binary


def _input_tensor(request: dict[str, Any], binary: bytes) -> np.ndarray:
    inputs = request["inputs"]
    if len(inputs) != 1:
        raise OipError(f"this model takes exactly one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise OipError("an input tensor must be an object")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if datatype not in _TO_NUMPY:
        raise OipError(f"unknown datatype {datatype!r}; use one of {', '.join(_TO_NUMPY)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise OipError("shape must be a list of non-negative integers")
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise OipError("binary_data_size does not match the binary data sent")
        raw = binary[:size]
        if datatype == "BYTES":
            array = _decode_bytes_tensor(raw, count)
        else:
            dtype = np.dtype(_TO_NUMPY[datatype])
            if len(raw) != count * dtype.itemsize:
                raise OipError(f"{len(raw)} bytes of binary data do not hold {shape} {datatype}")
            array = np.frombuffer(raw, dtype=dtype).copy()
    else:
        if "data" not in tensor:
            raise OipError("an input tensor needs 'data' or binary_data_size")
        try:
            array = np.asarray(tensor["data"], dtype=_TO_NUMPY[datatype])
        except (ValueError, TypeError) as exc:
            raise OipError(f"data does not fit datatype {datatype}: {exc}") from None
        if array.size != count:
            raise OipError(f"{array.size} values do not fill shape {shape}")
    return array.reshape(shape)


def _outputs(result: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(result, dict):
        return [(str(k), _as_array(v)) for k, v in result.items()]
    if isinstance(result, tuple):
        return [(f"output_{i}", _as_array(v)) for i, v in enumerate(result)]
    return [("output", _as_array(result))]


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype.kind in "US":
        array = array.astype(np.object_)
    return array


def _reply(
    runtime: Runtime, model: str, request: dict[str, Any], outputs: list[tuple[str, np.ndarray]]
) -> Response:
    wanted: dict[str, dict[str, Any]] = {
        str(o.get("name")): o for o in request.get("outputs") or [] if isinstance(o, dict)
    }
    unknown = set(wanted) - {name for name, _ in outputs}
    if unknown:
        raise OipError(
            f"unknown outputs requested: {sorted(unknown)}; this model has"
            f" {[name for name, _ in outputs]}"
        )
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in outputs:
        if wanted and name not in wanted:
            continue
        datatype = "BYTES" if array.dtype == np.object_ else _FROM_NUMPY.get(array.dtype.name)
        if datatype is None:
            raise OipError(f"output {name} has dtype {array.dtype}, which OIP cannot carry", 500)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        params = (wanted.get(name) or {}).get("parameters") or {}
        if params.get("binary_data", binary_default):
            raw = _encode_bytes_tensor(array) if datatype == "BYTES" else array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [
                v.decode() if isinstance(v, bytes) else str(v) for v in array.reshape(-1)
            ]
        else:
            entry["data"] = array.reshape(-1).tolist()
        described.append(entry)
    head = orjson.dumps(
        {
            "model_name": model,
            "model_version": runtime.version,
            "id": request.get("id", ""),
            "outputs": described,
        }
    )
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(
        head + b"".join(chunks),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )


def oip_router(runtime: Runtime) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
    models: dict[str, ApiSpec] = {
        name: spec
        for name, spec in runtime.service.apis.items()
        if spec.input.kind in ("ndarray", "tensor")
    }
    if models:
        models.setdefault(runtime.name, next(iter(models.values())))

    def find(name: str) -> ApiSpec:
        spec = models.get(name)
        if spec is None:
            raise OipError(f"unknown model {name!r}; this runtime serves {sorted(models)}", 404)
        return spec

    def json_response(data: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(data), status_code=status, media_type="application/json")

    @router.get("", summary="Server metadata")
    async def server_metadata() -> Response:
        return json_response(
            {"name": "hubserve", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    @router.get("/health/live", summary="Server liveness")
    async def live() -> Response:
        return json_response({"live": True})

    @router.get("/health/ready", summary="Server readiness", responses={503: _NOT_READY})
    async def ready() -> Response:
        return json_response({"ready": runtime.ready}, 200 if runtime.ready else 503)

    @router.get("/models/{name}", summary="Model metadata", responses=_UNKNOWN_MODEL)
    @router.get("/models/{name}/versions/{version}", include_in_schema=False)
    async def metadata(name: str, version: str | None = None) -> Response:
        try:
            spec = find(name)
        except OipError as exc:
            return _error(exc)
        return json_response(
            {
                "name": name,
                "versions": [runtime.version],
                "platform": f"hubserve_{runtime.service.manifest.framework}"
                if runtime.service.manifest is not None
                else "hubserve",
                "inputs": [
                    {
                        "name": "input",
                        "datatype": oip_datatype(spec.input.dtype),
                        "shape": list(spec.input.shape or [-1]),
                    }
                ],
                "outputs": [
                    {
                        "name": "output",
                        "datatype": oip_datatype(spec.output.dtype),
                        "shape": list(spec.output.shape or [-1]),
                    }
                ],
            }
        )

    @router.get("/models/{name}/ready", summary="Model readiness", responses=_MODEL_READY)
    async def model_ready(name: str) -> Response:
        try:
            find(name)
        except OipError as exc:
            return _error(exc)
        return json_response({"name": name, "ready": runtime.ready}, 200 if runtime.ready else 503)

    _INFER_BODY = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                },
            },
        }
    }

    @router.post(
        "/models/{name}/infer",
        summary="Inference",
        openapi_extra=_INFER_BODY,
        responses=_INFER_ERRORS,
    )
    @router.post("/models/{name}/versions/{version}/infer", include_in_schema=False)
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        status = 500
        started = time.perf_counter()
        try:
            spec = find(name)
            if version is not None and version != runtime.version:
                raise OipError(
                    f"version {version!r} is not served (this is {runtime.version})", 404
                )
            try:  # refused before it is read when its declared length is too large
                body = await read_body(request, runtime.settings.max_body_bytes)
            except BodyTooLarge:
                raise OipError(
                    f"request body is larger than {runtime.settings.max_body_bytes} bytes", 413
                ) from None
            parsed, binary = _parse_request(body, request.headers.get(HEADER_LENGTH))
            array = _codecs.check_array(spec.input, _input_tensor(parsed, binary))
            if spec.input.kind == "tensor":
                import torch

                value: Any = torch.from_numpy(np.ascontiguousarray(array))
            else:
                value = array
            try:
                result = await runtime.call(spec, value)
            except Overloaded as exc:
                status = 503
                return Response(
                    orjson.dumps({"error": f"{name} is overloaded; retry later"}),
                    status_code=503,
                    media_type="application/json",
                    headers={"Retry-After": str(max(1, round(exc.retry_after)))},
                )
            except InvalidInput as exc:  # the API's own code refused the input
                raise OipError(str(exc), 422) from None
            except CallTimeout as exc:
                raise OipError(str(exc), 504) from None
            except Exception as exc:  # the API's own code failed
                return Response(
                    orjson.dumps({"error": f"{type(exc).__name__}: {exc}"}),
                    status_code=500,
                    media_type="application/json",
                )
            response = _reply(runtime, name, parsed, _outputs(result))
            status = response.status_code
            return response
        except (OipError, _codecs.CodecError) as exc:
            status = exc.status_code
            return _error(exc)
        finally:
            runtime.metrics.observe_request(f"v2/{name}", status, time.perf_counter() - started)

    return router
