"""Request/response codecs: every kind, content type and error path, and micro-batching."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from urllib3 import encode_multipart_formdata

from model_runtime.errors import HubserveError
from model_runtime.kinds import IOSpec, dataframe, image, ndarray, tensor
from model_runtime.runtime import _codecs
from model_runtime.runtime._codecs import (
    CodecError,
    Decoded,
    batch_size,
    check_array,
    concat,
    decode,
    dumps,
    encode,
    json_schema,
    request_media_types,
    split,
)

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def image_bytes(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    img = Image.fromarray(array)
    if mode is not None:
        img = img.convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def multipart(fields: dict[str, Any]) -> tuple[bytes, str]:
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type


def codec_error(spec: IOSpec, body: bytes, content_type: str | None) -> CodecError:
    with pytest.raises(CodecError) as info:
        decode(spec, body, content_type)
    return info.value


RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)


# ------------------------------------------------------------------------- CodecError


def test_codec_error_is_a_hubserve_error_with_a_status() -> None:
    assert isinstance(CodecError("bad"), HubserveError)
    assert CodecError("bad").status_code == 422
    assert CodecError("too big", 413).status_code == 413
    assert str(CodecError("bad")) == "bad"


# ------------------------------------------------------------------------------ json


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"inputs": [1, 2]}', [1, 2]),
        (b'{"inputs": {"a": 1}}', {"a": 1}),
        (b'{"inputs": 1, "other": 2}', {"inputs": 1, "other": 2}),
        (b'{"a": 1}', {"a": 1}),
        (b"[1, 2]", [1, 2]),
        (b'"hello"', "hello"),
        (b"null", None),
    ],
)
def test_json_bodies_unwrap_only_a_lone_inputs_key(body: bytes, expected: Any) -> None:
    assert decode(IOSpec("json"), body, JSON) == Decoded(expected, "json")


@pytest.mark.parametrize(
    "content_type",
    [None, "", "application/json", "Application/JSON; charset=utf-8", "application/ld+json"],
)
def test_json_content_types(content_type: str | None) -> None:
    assert decode(IOSpec("json"), b"[1]", content_type).value == [1]


def test_invalid_json_is_a_400_with_the_position() -> None:
    error = codec_error(IOSpec("json"), b'{"a": 1,}', JSON)
    assert error.status_code == 400
    assert str(error).startswith("invalid JSON: ")
    assert str(error).endswith("line 1 column 8 (char 7)")


def test_empty_json_body_is_a_400() -> None:
    assert codec_error(IOSpec("json"), b"", None).status_code == 400


def test_json_kind_refuses_other_content_types_with_415() -> None:
    error = codec_error(IOSpec("json"), b"a,b", "text/csv")
    assert error.status_code == 415
    assert str(error) == (
        "unsupported content type 'text/csv' for json inputs; send one of: application/json"
    )


# ------------------------------------------------------------------- ndarray from JSON


def test_ndarray_from_nested_lists_casts_ints_to_the_float_dtype() -> None:
    decoded = decode(ndarray("float32", (-1, 4)), b"[[1, 2, 3, 4], [5, 6, 7, 8]]", JSON)
    assert decoded.wire == "json"
    assert decoded.value.dtype == np.float32
    np.testing.assert_array_equal(decoded.value, [[1, 2, 3, 4], [5, 6, 7, 8]])


def test_ndarray_accepts_the_inputs_wrapper() -> None:
    decoded = decode(ndarray("int64"), b'{"inputs": [[1, 2]]}', JSON)
    np.testing.assert_array_equal(decoded.value, [[1, 2]])
    assert decoded.value.dtype == np.int64


def test_ndarray_without_a_spec_keeps_what_json_gives() -> None:
    assert decode(ndarray(), b"[1.5, 2]", None).value.dtype == np.float64
    assert decode(ndarray(), b"[true, false]", None).value.dtype == np.bool_
    assert decode(ndarray(), b'["a", "bc"]', None).value.dtype.kind == "U"
    scalar = decode(ndarray(), b"3", None).value
    assert scalar.shape == ()
    assert scalar == 3


def test_ragged_lists_are_a_422() -> None:
    error = codec_error(ndarray("float32"), b"[[1, 2], [3]]", JSON)
    assert error.status_code == 422
    assert str(error).startswith("ragged nested lists: ")


@pytest.mark.parametrize("body", [b"[1, null]", b'[{"a": 1}]', b'{"a": 1}'])
def test_values_that_are_not_array_elements_are_a_422(body: bytes) -> None:
    error = codec_error(ndarray(), body, JSON)
    assert error.status_code == 422
    assert "expected nested lists of numbers, booleans or strings" in str(error)


def test_object_dtype_accepts_any_json_values() -> None:
    array = decode(ndarray("object"), b"[1, null]", JSON).value
    assert array.dtype == object
    assert array.tolist() == [1, None]


def test_empty_lists_take_the_spec_dtype() -> None:
    empty = decode(ndarray("int64", (-1,)), b"[]", JSON).value
    assert empty.dtype == np.int64
    assert empty.shape == (0,)
    nested = decode(ndarray("uint8", (-1, -1)), b"[[]]", JSON).value
    assert (nested.dtype, nested.shape) == (np.uint8, (1, 0))


def test_float_to_int_is_refused() -> None:
    error = codec_error(ndarray("int64"), b"[1.0, 2.5]", JSON)
    assert error.status_code == 422
    assert str(error) == "input: expected dtype int64, got float64 (values would be truncated)"


def test_json_ints_fit_smaller_int_dtypes_when_in_range() -> None:
    array = decode(ndarray("uint8"), b"[0, 255]", JSON).value
    assert array.dtype == np.uint8
    assert array.tolist() == [0, 255]


@pytest.mark.parametrize(
    ("dtype", "body"), [("uint8", b"[0, 256]"), ("uint8", b"[-1]"), ("int8", b"[-129]")]
)
def test_ints_out_of_range_are_refused(dtype: str, body: bytes) -> None:
    error = codec_error(ndarray(dtype), body, JSON)
    assert error.status_code == 422
    assert str(error).startswith(f"input: values out of range for {dtype} (")


def test_float_overflow_is_refused() -> None:
    error = codec_error(ndarray("float16"), b"[1e10]", JSON)
    assert str(error) == "input: values out of range for float16"
    assert decode(ndarray("float16"), b"[1.5]", JSON).value.dtype == np.float16


@pytest.mark.parametrize(
    ("dtype", "body", "got"),
    [
        ("float32", b"[true]", "bool"),
        ("bool", b"[1, 0]", "int64"),
        ("float32", b'["1.5"]', "str"),
        ("str", b"[1]", "int64"),
    ],
)
def test_bool_and_str_mismatches_are_refused(dtype: str, body: bytes, got: str) -> None:
    error = codec_error(ndarray(dtype), body, JSON)
    assert error.status_code == 422
    assert str(error) == f"input: expected dtype {dtype}, got {got}"


def test_str_dtype_keeps_the_strings() -> None:
    assert decode(ndarray("str"), b'["ab", "c"]', JSON).value.tolist() == ["ab", "c"]


def test_bfloat16_arrays_are_float32_in_numpy() -> None:
    assert decode(ndarray("bfloat16"), b"[1, 2]", JSON).value.dtype == np.float32


def test_ndarray_refuses_csv_with_415_listing_the_types() -> None:
    error = codec_error(ndarray(), b"1,2", "text/csv")
    assert error.status_code == 415
    assert str(error) == (
        "unsupported content type 'text/csv' for ndarray inputs; send one of:"
        " application/json, application/x-npy, application/x-npz"
    )


# ----------------------------------------------------------------------- check_array


def test_check_array_shape_errors_name_the_dimension() -> None:
    spec = ndarray("float32", (-1, 4))
    with pytest.raises(CodecError) as info:
        check_array(spec, np.zeros((2, 3)))
    assert str(info.value) == (
        "input: expected shape (-1, 4), got (2, 3): dimension 1 is 3, expected 4"
    )
    assert info.value.status_code == 422


def test_check_array_dimension_count() -> None:
    with pytest.raises(CodecError, match=r"^x: expected shape \(-1, 4\), got \(4,\): "):
        check_array(ndarray(shape=(-1, 4)), np.zeros(4), what="x")
    with pytest.raises(CodecError, match=r"expected 2 dimensions, got 1$"):
        check_array(ndarray(shape=(-1, 4)), np.zeros(4))


def test_check_array_wildcards_and_names() -> None:
    out = check_array(ndarray("float64", (-1, 2, -1)), np.zeros((7, 2, 9), np.int32))
    assert out.dtype == np.float64
    assert out.shape == (7, 2, 9)
    with pytest.raises(CodecError, match=r"^input 'x': expected dtype int32, got float32"):
        check_array(ndarray("int32"), np.zeros(2, np.float32), what="input 'x'")


def test_check_array_returns_the_same_array_when_nothing_changes() -> None:
    array = np.zeros((2, 2), np.float32)
    assert check_array(ndarray("float32", (2, 2)), array) is array
    assert check_array(ndarray(), array) is array


def test_check_array_complex_and_objects() -> None:
    with pytest.raises(CodecError, match=r"got complex128 \(the imaginary part would be lost\)"):
        check_array(ndarray("float64"), np.zeros(2, np.complex128))
    assert check_array(ndarray("complex64"), np.zeros(2)).dtype == np.complex64
    with pytest.raises(CodecError, match=r"^input: expected dtype float64, got object$"):
        check_array(ndarray("float64"), np.array([1, None]))
    assert check_array(ndarray("object"), np.arange(2)).dtype == object


def test_check_array_converts_byte_order() -> None:
    big = np.arange(3, dtype=">f8")
    out = check_array(ndarray("float64"), big)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, [0, 1, 2])


# ----------------------------------------------------------------------------- .npy


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(6, dtype=np.int16).reshape(2, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.array([True, False]),
        np.array(["ab", "c"]),
        np.zeros((0, 4)),
        np.array(2.5),
    ],
)
def test_npy_round_trip(array: np.ndarray) -> None:
    decoded = decode(ndarray(), npy_bytes(array), NPY)
    assert decoded.wire == "npy"
    assert decoded.value.dtype == array.dtype
    np.testing.assert_array_equal(decoded.value, array)
    body, media = encode(ndarray(), decoded.value, wire=decoded.wire, accept=None)
    assert media == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), array)


@pytest.mark.parametrize(
    ("spec", "content_type"),
    [
        (ndarray(), NPY),
        (ndarray(), "application/octet-stream"),
        (dataframe(), "text/csv"),
        (image(), "image/png"),
        (IOSpec("json"), None),
    ],
)
def test_an_empty_body_says_so(spec: IOSpec, content_type: str | None) -> None:
    """Whatever its content type claims: not a 415 about a type, not a parse error."""
    error = codec_error(spec, b"", content_type)
    assert error.status_code == 400
    assert str(error).startswith(f"the body is empty: send {spec.kind} input as one of: ")


def test_npy_is_checked_against_the_spec() -> None:
    spec = ndarray("float32", (-1, 4))
    assert decode(spec, npy_bytes(np.ones((2, 4), np.int64)), NPY).value.dtype == np.float32
    error = codec_error(spec, npy_bytes(np.ones((2, 5))), NPY)
    assert "dimension 1 is 5, expected 4" in str(error)


@pytest.mark.parametrize("body", [b"not npy at all", b"\x93NUMPY"])
def test_invalid_npy_is_a_400(body: bytes) -> None:
    error = codec_error(ndarray(), body, NPY)
    assert error.status_code == 400
    assert str(error).startswith("a .npy body is not a valid .npy file: ")


def test_npy_whose_header_announces_more_data_than_sent_is_a_400() -> None:
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 10**6)}
    np.lib.format.write_array_header_1_0(buffer, header)
    error = codec_error(ndarray(), buffer.getvalue() + b"\x00" * 16, NPY)
    assert error.status_code == 400
    assert "is truncated: its header announces 8000000000000000 bytes of data, it holds 16" in (
        str(error)
    )


def test_npy_with_a_negative_dimension_is_a_400() -> None:
    buffer = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (-2,)}
    np.lib.format.write_array_header_1_0(buffer, header)
    error = codec_error(ndarray(), buffer.getvalue(), NPY)
    assert error.status_code == 400
    assert "negative shape (-2,)" in str(error)


def test_npy_with_python_objects_is_refused_without_unpickling() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([1, None], dtype=object), allow_pickle=True)
    error = codec_error(ndarray(), buffer.getvalue(), NPY)
    assert error.status_code == 422
    assert str(error) == "a .npy body holds Python objects, which would need pickle to load"


def test_npy_of_an_unknown_format_version_is_a_400() -> None:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.arange(3), version=(2, 0))
    body = bytearray(buffer.getvalue())
    body[6] = 4  # a format version numpy does not know, with a header it can parse
    error = codec_error(ndarray(), bytes(body), NPY)
    assert error.status_code == 400
    assert "not a valid .npy file" in str(error)


def test_empty_npy_int_arrays_cast_to_any_int_dtype() -> None:
    empty = decode(ndarray("uint8"), npy_bytes(np.zeros(0, np.int64)), NPY).value
    assert (empty.dtype, empty.shape) == (np.uint8, (0,))


def test_npy_version_2_header() -> None:
    buffer = io.BytesIO()
    array = np.arange(3.0)
    np.lib.format.write_array(buffer, array, version=(2, 0))
    np.testing.assert_array_equal(decode(ndarray(), buffer.getvalue(), NPY).value, array)


# ----------------------------------------------------------------------------- .npz


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_prefers_the_array_named_inputs(compressed: bool) -> None:
    body = npz_bytes(compressed, other=np.zeros(2), inputs=np.arange(3))
    decoded = decode(ndarray(), body, NPZ)
    assert decoded.wire == "npz"
    np.testing.assert_array_equal(decoded.value, [0, 1, 2])


def test_npz_with_one_array_uses_it_whatever_its_name() -> None:
    np.testing.assert_array_equal(decode(ndarray(), npz_bytes(x=np.arange(2)), NPZ).value, [0, 1])


def test_npz_with_several_arrays_and_no_inputs_is_a_422() -> None:
    error = codec_error(ndarray(), npz_bytes(b=np.zeros(1), a=np.zeros(1)), NPZ)
    assert error.status_code == 422
    assert str(error) == "the .npz body holds several arrays (a, b); name the input 'inputs'"


def test_npz_without_arrays_is_a_422() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "hi")
    error = codec_error(ndarray(), buffer.getvalue(), NPZ)
    assert (error.status_code, str(error)) == (422, "the .npz body holds no arrays")


def test_not_a_zip_is_a_400() -> None:
    error = codec_error(ndarray(), npy_bytes(np.zeros(2)), NPZ)
    assert error.status_code == 400
    assert str(error).startswith("not a valid .npz file: ")


def test_npz_with_a_corrupt_member_is_a_400() -> None:
    body = bytearray(npz_bytes(inputs=np.arange(100, dtype=np.int64)))
    body[200] ^= 0xFF  # inside the stored array data: the CRC no longer matches
    error = codec_error(ndarray(), bytes(body), NPZ)
    assert error.status_code == 400
    assert "not a valid .npz file" in str(error)


def test_npz_with_a_broken_npy_member_is_a_400() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("inputs.npy", b"garbage")
    error = codec_error(ndarray(), buffer.getvalue(), NPZ)
    assert error.status_code == 400
    assert str(error).startswith("array 'inputs' of the .npz body is not a valid .npy file")


def test_npz_member_inflating_past_the_limit_is_a_413(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codecs, "_MAX_INFLATED_BYTES", 1000)
    body = npz_bytes(True, inputs=np.zeros(1000))
    error = codec_error(ndarray(), body, NPZ)
    assert error.status_code == 413
    assert "inflates to 8128 bytes, more than the limit of 1000" in str(error)


# --------------------------------------------------------------------------- tensors


def test_tensor_inputs_are_torch_tensors() -> None:
    decoded = decode(tensor("float32", (-1, 2)), b"[[1, 2], [3, 4]]", JSON)
    assert isinstance(decoded.value, torch.Tensor)
    assert decoded.value.dtype == torch.float32
    assert decoded.value.tolist() == [[1, 2], [3, 4]]


def test_tensor_from_big_endian_npy() -> None:
    body = npy_bytes(np.arange(4, dtype=">i4"))
    decoded = decode(tensor(), body, NPY)
    assert decoded.value.dtype == torch.int32
    assert decoded.value.tolist() == [0, 1, 2, 3]


def test_tensor_from_npz() -> None:
    decoded = decode(tensor("float64"), npz_bytes(inputs=np.ones((2, 2), np.float32)), NPZ)
    assert decoded.value.dtype == torch.float64


def test_bfloat16_tensors() -> None:
    value = decode(tensor("bfloat16"), b"[1.5, 2]", JSON).value
    assert value.dtype == torch.bfloat16
    assert value.tolist() == [1.5, 2.0]


def test_tensor_of_strings_is_a_422() -> None:
    error = codec_error(tensor(), b'["a"]', JSON)
    assert (error.status_code, str(error)) == (
        422,
        "input: a tensor holds numbers or booleans, got str",
    )


def test_tensor_shape_errors() -> None:
    assert "dimension 0 is 3, expected 2" in str(codec_error(tensor(shape=(2,)), b"[1,2,3]", None))


# ------------------------------------------------------------------------ dataframes


def test_dataframe_from_records() -> None:
    decoded = decode(dataframe(), b'[{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]', JSON)
    assert decoded.wire == "json"
    assert decoded.value.to_dict(orient="list") == {"a": [1, 2], "b": ["x", "y"]}


def test_dataframe_from_split_orient() -> None:
    body = b'{"columns": ["a", "b"], "data": [[1, 2], [3, 4]]}'
    frame = decode(dataframe(), body, JSON).value
    assert frame.to_dict(orient="list") == {"a": [1, 3], "b": [2, 4]}


def test_dataframe_from_split_orient_with_index_as_pandas_writes_it() -> None:
    source = pd.DataFrame({"a": [1.5, 2.5]}, index=[10, 20])
    frame = decode(dataframe(), source.to_json(orient="split").encode(), JSON).value
    pd.testing.assert_frame_equal(frame, source)


def test_dataframe_from_inputs_wrapper() -> None:
    frame = decode(dataframe(), b'{"inputs": [{"a": 1}]}', JSON).value
    assert frame.to_dict(orient="list") == {"a": [1]}


def test_dataframe_from_csv_ignores_the_charset() -> None:
    decoded = decode(dataframe(), b"a,b\n1,x\n2,y\n", "text/csv; charset=utf-8")
    assert decoded.wire == "csv"
    assert decoded.value.to_dict(orient="list") == {"a": [1, 2], "b": ["x", "y"]}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"c,b,a\n3,2,1\n", "text/csv"), (b'[{"a": 1, "b": 2, "c": 3}]', JSON)],
)
def test_dataframe_columns_are_selected_in_spec_order(body: bytes, content_type: str) -> None:
    frame = decode(dataframe(["b", "a"]), body, content_type).value
    assert list(frame.columns) == ["b", "a"]
    assert frame.to_dict(orient="records") == [{"b": 2, "a": 1}]


def test_missing_columns_are_named() -> None:
    error = codec_error(dataframe(["a", "b", "c"]), b'[{"b": 1, "z": 2}]', JSON)
    assert error.status_code == 422
    assert str(error) == "missing columns a, c (expected a, b, c; got b, z)"
    one = codec_error(dataframe(["a", "b"]), b"b\n1\n", "text/csv")
    assert str(one) == "missing column a (expected a, b; got b)"


def test_empty_records_get_the_spec_columns() -> None:
    frame = decode(dataframe(["a", "b"]), b"[]", JSON).value
    assert list(frame.columns) == ["a", "b"]
    assert len(frame) == 0


@pytest.mark.parametrize(
    ("body", "got"),
    [(b"[1, 2]", "an array"), (b'{"a": 1}', "an object"), (b"3", "a number")],
)
def test_dataframe_json_that_is_neither_records_nor_split_is_a_422(body: bytes, got: str) -> None:
    error = codec_error(dataframe(), body, JSON)
    assert error.status_code == 422
    assert str(error).startswith("expected a list of records")
    assert str(error).endswith(f"got {got}")


def test_split_orient_with_wrong_row_lengths_is_a_422() -> None:
    error = codec_error(dataframe(), b'{"columns": ["a"], "data": [[1, 2]]}', JSON)
    assert error.status_code == 422
    assert str(error).startswith("invalid split-oriented DataFrame: ")


@pytest.mark.parametrize("body", [b"a,b\n\xff\xfe,1\n", b'a,b\n"1,2\n'])
def test_invalid_csv_is_a_400(body: bytes) -> None:
    error = codec_error(dataframe(), body, "text/csv")
    assert error.status_code == 400
    assert str(error).startswith("invalid CSV: ")


def test_dataframe_refuses_npy() -> None:
    error = codec_error(dataframe(), npy_bytes(np.ones((2, 2))), NPY)
    assert error.status_code == 415
    assert "send one of: application/json, text/csv" in str(error)


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize(
    "content_type", ["image/png", "image/jpeg", "image/webp", "application/octet-stream", None]
)
def test_raw_png_bodies_whatever_the_image_content_type(content_type: str | None) -> None:
    decoded = decode(image(), image_bytes(RGB), content_type)
    assert decoded.wire == "image"
    assert decoded.value.dtype == np.uint8
    np.testing.assert_array_equal(decoded.value, RGB)


def test_jpeg_bodies() -> None:
    decoded = decode(image(), image_bytes(RGB, "JPEG"), "image/jpeg")
    assert decoded.value.shape == (4, 5, 3)
    assert decoded.value.dtype == np.uint8


def test_image_mode_from_the_spec() -> None:
    gray = decode(image("L"), image_bytes(RGB), "image/png").value
    assert gray.shape == (4, 5)
    rgba = decode(image("RGBA"), image_bytes(RGB), "image/png").value
    assert rgba.shape == (4, 5, 4)


def test_grayscale_and_alpha_images_keep_their_mode() -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    assert decode(image(), image_bytes(gray), "image/png").value.shape == (4, 5)
    assert decode(image(), image_bytes(RGB, mode="RGBA"), "image/png").value.shape == (4, 5, 4)


def test_palette_and_16_bit_images_become_rgb() -> None:
    palette = decode(image(), image_bytes(RGB, mode="P"), "image/png").value
    assert palette.shape == (4, 5, 3)
    assert palette.dtype == np.uint8
    deep = np.arange(20, dtype=np.uint16).reshape(4, 5) * 10
    assert decode(image(), image_bytes(deep), "image/png").value.shape == (4, 5, 3)


def test_image_shape_is_checked_against_the_spec() -> None:
    spec = IOSpec("image", shape=(28, 28), extra={"mode": "L"})
    error = codec_error(spec, image_bytes(RGB), "image/png")
    assert str(error) == "input: expected shape (28, 28), got (4, 5): dimension 0 is 4, expected 28"


def test_image_from_multipart_with_other_form_fields() -> None:
    body, content_type = multipart(
        {"caption": "a cat", "file": ("cat.png", image_bytes(RGB), "image/png")}
    )
    decoded = decode(image(), body, content_type)
    assert decoded.wire == "multipart"
    np.testing.assert_array_equal(decoded.value, RGB)


def test_image_multipart_needs_exactly_one_file() -> None:
    two, content_type = multipart(
        {"a": ("a.png", image_bytes(RGB), "image/png"), "b": ("b.png", image_bytes(RGB))}
    )
    error = codec_error(image(), two, content_type)
    assert (error.status_code, str(error)) == (
        422,
        "expected one file part in the multipart body, got 2",
    )
    none, content_type = multipart({"caption": "no file"})
    assert "got 0" in str(codec_error(image(), none, content_type))


@pytest.mark.parametrize("body", [b"not an image", image_bytes(RGB, "GIF")])
def test_bodies_that_are_not_png_or_jpeg_are_a_422(body: bytes) -> None:
    error = codec_error(image(), body, "image/png")
    assert (error.status_code, str(error)) == (422, "not a PNG/JPEG image")


def test_truncated_image_is_a_422() -> None:
    error = codec_error(image(), image_bytes(RGB, "JPEG")[:-40], "image/jpeg")
    assert error.status_code == 422
    assert str(error).startswith("not a PNG/JPEG image: ")


def test_image_kind_refuses_json_with_415() -> None:
    error = codec_error(image(), b"[[0]]", JSON)
    assert error.status_code == 415
    assert str(error) == (
        "unsupported content type 'application/json' for image inputs; send one of:"
        " image/png, image/jpeg, multipart/form-data, application/octet-stream"
    )


@pytest.mark.parametrize("limit", [10, 15])  # above twice the limit: Pillow's error; else warning
def test_decompression_bombs_are_a_413(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    error = codec_error(image(), image_bytes(RGB), "image/png")
    assert error.status_code == 413
    assert str(error).startswith("image too large: ")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_images_over_the_pixel_limit_are_a_413_where_warnings_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 15)
    error = codec_error(image(), image_bytes(RGB), "image/png")
    assert (error.status_code, str(error)) == (
        413,
        "image too large: 5x4 pixels, more than the limit of 15",
    )


# ----------------------------------------------------------------------------- files


def test_file_from_multipart_takes_the_first_file_part() -> None:
    body, content_type = multipart(
        {
            "note": "hello",
            "first": ("a.bin", b"\x00\x01first\r\n--not-a-boundary", "application/octet-stream"),
            "second": ("b.bin", b"second"),
        }
    )
    assert decode(IOSpec("file"), body, content_type) == Decoded(
        b"\x00\x01first\r\n--not-a-boundary", "multipart"
    )


def test_hand_written_multipart_with_quoted_boundary() -> None:
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="upload"; filename="data.txt"\r\n'
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"line one\r\nline two\r\n"
        b"--XyZ--\r\n"
    )
    decoded = decode(IOSpec("file"), body, 'multipart/form-data; boundary="XyZ"')
    assert decoded.value == b"line one\r\nline two"


def test_multipart_without_file_parts_is_a_422_for_files() -> None:
    body, content_type = multipart({"note": "hello"})
    error = codec_error(IOSpec("file"), body, content_type)
    assert (error.status_code, str(error)) == (
        422,
        "the multipart body has no file part (a part with a filename)",
    )


@pytest.mark.parametrize(
    "content_type", [None, "application/octet-stream", "application/json", "text/plain"]
)
def test_any_other_body_is_the_file(content_type: str | None) -> None:
    assert decode(IOSpec("file"), b"\x00raw", content_type) == Decoded(b"\x00raw", "bytes")


def test_multipart_without_boundary_is_a_400() -> None:
    error = codec_error(IOSpec("file"), b"--x\r\n", "multipart/form-data")
    assert (error.status_code, str(error)) == (
        400,
        "multipart/form-data without a boundary parameter",
    )


def test_malformed_multipart_is_a_400() -> None:
    error = codec_error(IOSpec("file"), b"garbage", "multipart/form-data; boundary=XyZ")
    assert error.status_code == 400
    assert str(error).startswith("malformed multipart body: ")


def test_multipart_cut_before_the_closing_boundary_is_a_400() -> None:
    body, content_type = multipart({"f": ("a.bin", b"data")})
    error = codec_error(IOSpec("file"), body[:-8], content_type)
    assert (error.status_code, str(error)) == (
        400,
        "malformed multipart body: it ends before the closing boundary",
    )


def test_multipart_with_an_overlong_boundary_is_a_400() -> None:
    error = codec_error(IOSpec("image"), b"", "multipart/form-data; boundary=" + "b" * 300)
    assert error.status_code == 400


# ------------------------------------------------------------------------ text, path


def test_text_plain_is_decoded_as_utf8_whatever_the_charset() -> None:
    body = "héllo".encode()
    assert decode(IOSpec("text"), body, "text/plain; charset=latin-1") == Decoded("héllo", "text")
    assert decode(IOSpec("text"), body, "text/markdown").value == "héllo"


def test_invalid_utf8_text_is_a_400() -> None:
    error = codec_error(IOSpec("text"), b"\xff\xfe", "text/plain")
    assert error.status_code == 400
    assert str(error).startswith("the text body is not valid UTF-8: ")


@pytest.mark.parametrize("body", [b'"hi"', b'{"inputs": "hi"}'])
def test_text_from_json_strings(body: bytes) -> None:
    assert decode(IOSpec("text"), body, None) == Decoded("hi", "json")


@pytest.mark.parametrize(
    ("body", "got"), [(b"1", "a number"), (b"[]", "an array"), (b"null", "null")]
)
def test_text_from_json_that_is_not_a_string_is_a_422(body: bytes, got: str) -> None:
    error = codec_error(IOSpec("text"), body, JSON)
    assert (error.status_code, str(error)) == (422, f"expected a JSON string, got {got}")


def test_text_refuses_images() -> None:
    error = codec_error(IOSpec("text"), b"", "image/png")
    assert error.status_code == 415
    assert "send one of: text/plain, application/json" in str(error)


@pytest.mark.parametrize("body", [b'"/data/in"', b'{"inputs": "/data/in"}'])
def test_paths_are_json_strings(body: bytes) -> None:
    assert decode(IOSpec("path"), body, JSON) == Decoded("/data/in", "json")


@pytest.mark.parametrize(
    ("body", "got"),
    [(b'""', "an empty string"), (b'{"path": "x"}', "an object"), (b"true", "a boolean")],
)
def test_paths_that_are_not_non_empty_strings_are_a_422(body: bytes, got: str) -> None:
    error = codec_error(IOSpec("path"), body, JSON)
    assert (error.status_code, str(error)) == (
        422,
        f"expected a path as a non-empty JSON string, got {got}",
    )


def test_path_refuses_text_plain() -> None:
    assert codec_error(IOSpec("path"), b"/x", "text/plain").status_code == 415


# ------------------------------------------------------------- media types and schemas


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (IOSpec("json"), ["application/json"]),
        (ndarray(), ["application/json", NPY, NPZ]),
        (tensor(), ["application/json", NPY, NPZ]),
        (dataframe(), ["application/json", "text/csv"]),
        (image(), ["image/png", "image/jpeg", "multipart/form-data", "application/octet-stream"]),
        (IOSpec("file"), ["application/octet-stream", "multipart/form-data"]),
        (IOSpec("text"), ["text/plain", "application/json"]),
        (IOSpec("path"), ["application/json"]),
    ],
)
def test_request_media_types(spec: IOSpec, expected: list[str]) -> None:
    assert request_media_types(spec) == expected


def test_request_media_types_returns_a_fresh_list() -> None:
    request_media_types(IOSpec("json")).append("x")
    assert request_media_types(IOSpec("json")) == ["application/json"]


def test_array_schemas_follow_shape_and_dtype() -> None:
    largest = float(np.finfo(np.float32).max)  # larger JSON numbers overflow float32: 422
    assert json_schema(ndarray("float32", (-1, 2))) == {
        "type": "array",
        "minItems": 1,  # ``[]`` would lose the inner dimension
        "items": {
            "type": "array",
            "items": {"type": "number", "minimum": -largest, "maximum": largest},
            "minItems": 2,
            "maxItems": 2,
        },
    }
    assert json_schema(tensor("uint8", (3,))) == {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 255},
        "minItems": 3,
        "maxItems": 3,
    }
    assert json_schema(ndarray("bool", ())) == {"type": "boolean"}
    assert json_schema(ndarray("str", (-1,))) == {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
    }
    assert json_schema(ndarray("object", (-1,))) == {"type": "array", "items": {}, "minItems": 1}
    assert json_schema(ndarray("bfloat16", ())) == {"type": "number"}
    assert json_schema(ndarray("float32")) == {"type": "array"}


def test_other_schemas() -> None:
    assert json_schema(dataframe(["a", "b"])) == {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"a": {}, "b": {}},
            "required": ["a", "b"],
        },
    }
    assert json_schema(dataframe()) == {"type": "array", "items": {"type": "object"}}
    assert json_schema(IOSpec("text")) == {"type": "string"}
    assert json_schema(IOSpec("path")) == {"type": "string"}
    assert json_schema(image()) == {"type": "string", "format": "binary"}
    assert json_schema(IOSpec("file")) == {"type": "string", "format": "binary"}
    assert json_schema(IOSpec("json")) == {}


def test_schemas_are_plain_json() -> None:
    json.dumps(json_schema(ndarray("int64", (-1, 3))))


# -------------------------------------------------------------------------- encoding


def test_arrays_encode_as_json_by_default() -> None:
    body, media = encode(ndarray(), np.arange(3), wire="json", accept=None)
    assert (orjson.loads(body), media) == ([0, 1, 2], JSON)


@pytest.mark.parametrize(
    ("wire", "accept", "expected"),
    [
        ("npy", None, NPY),
        ("npy", "*/*", NPY),
        ("npy", "", NPY),
        ("npy", JSON, JSON),
        ("json", NPY, NPY),
        ("json", "application/x-npy;q=0.5, application/json", JSON),
        ("json", "application/json;q=0.5, application/x-npy", NPY),
        ("json", "application/x-npy;q=0, */*", JSON),
        ("json", "application/x-npy;q=oops", JSON),
        ("npz", None, NPZ),
        ("json", NPZ, NPZ),
        ("npy", "text/html, application/xhtml+xml", NPY),
        ("npz", "application/*", NPZ),
        ("json", "image/png", JSON),
    ],
)
def test_array_output_negotiation(wire: str, accept: str | None, expected: str) -> None:
    _, media = encode(ndarray(), np.arange(3), wire=wire, accept=accept)
    assert media == expected


def test_npz_output_is_named_outputs() -> None:
    body, _ = encode(ndarray(), np.arange(3), wire="npz", accept=None)
    with np.load(io.BytesIO(body)) as archive:
        assert list(archive) == ["outputs"]
        np.testing.assert_array_equal(archive["outputs"], [0, 1, 2])


def test_npz_output_decodes_as_input() -> None:
    body, _ = encode(ndarray(), np.eye(2), wire="npz", accept=None)
    np.testing.assert_array_equal(decode(ndarray(), body, NPZ).value, np.eye(2))


def test_tensor_outputs() -> None:
    value = torch.arange(4, dtype=torch.float32, requires_grad=True) * 2
    body, media = encode(tensor(), value, wire="json", accept=None)
    assert (orjson.loads(body), media) == ([0.0, 2.0, 4.0, 6.0], JSON)
    body, media = encode(tensor(), value, wire="npy", accept=None)
    assert media == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), [0, 2, 4, 6])


def test_bfloat16_tensor_outputs_become_float32_npy() -> None:
    body, _ = encode(tensor(), torch.ones(2, dtype=torch.bfloat16), wire="npy", accept=None)
    assert np.load(io.BytesIO(body)).dtype == np.float32


def test_object_arrays_cannot_be_npy() -> None:
    with pytest.raises(TypeError, match=r"^cannot encode the output as \.npy: "):
        encode(ndarray(), np.array([1, None]), wire="npy", accept=None)
    with pytest.raises(TypeError, match=r"^cannot encode the output as \.npz: "):
        encode(ndarray(), np.array([1, None]), wire="npz", accept=None)


def test_dataframe_outputs() -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    body, media = encode(dataframe(), frame, wire="json", accept=None)
    assert media == JSON
    assert orjson.loads(body) == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    for wire, accept in [("csv", None), ("json", "text/csv")]:
        body, media = encode(dataframe(), frame, wire=wire, accept=accept)
        assert media == "text/csv; charset=utf-8"
        assert body == b"a,b\n1,x\n2,y\n"
    _, media = encode(dataframe(), frame, wire="csv", accept="application/json")
    assert media == JSON


def test_dataframe_csv_output_round_trips() -> None:
    frame = pd.DataFrame({"a": [1.5, 2.5], "b": [3, 4]})
    body, media = encode(dataframe(), frame, wire="csv", accept=None)
    pd.testing.assert_frame_equal(decode(dataframe(), body, media).value, frame)


@pytest.mark.parametrize("wire", ["image", "multipart", "bytes"])
def test_image_outputs_are_png_for_binary_requests(wire: str) -> None:
    body, media = encode(image(), RGB, wire=wire, accept=None)
    assert media == "image/png"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), RGB)


def test_image_outputs_are_json_for_json_requests() -> None:
    body, media = encode(image(), RGB, wire="json", accept=None)
    assert media == JSON
    assert orjson.loads(body) == RGB.tolist()
    _, media = encode(image(), RGB, wire="json", accept="image/*")
    assert media == "image/png"


def test_pil_image_outputs() -> None:
    picture = Image.fromarray(RGB)
    body, media = encode(image(), picture, wire="image", accept=None)
    assert media == "image/png"
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), RGB)
    body, media = encode(IOSpec("json"), picture, wire="json", accept=None)
    assert (orjson.loads(body), media) == (RGB.tolist(), JSON)


def test_image_outputs_with_one_channel_and_tensors() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
    body, _ = encode(image(), gray, wire="image", accept=None)
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), gray[..., 0])
    body, _ = encode(image(), torch.from_numpy(RGB), wire="image", accept=None)
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), RGB)


@pytest.mark.parametrize(
    "value", [np.zeros((2, 2), np.float32), np.zeros((2, 2, 5), np.uint8), np.zeros(3, np.uint8)]
)
def test_arrays_that_are_not_images_cannot_be_png(value: np.ndarray) -> None:
    with pytest.raises(TypeError, match=r"^an image output must be a PIL image or a uint8 array"):
        encode(image(), value, wire="image", accept=None)


def test_pil_images_png_cannot_store_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"^cannot encode the image output as PNG: "):
        encode(image(), Image.new("CMYK", (2, 2)), wire="image", accept=None)


def test_arrays_of_other_kinds_are_never_png() -> None:
    _, media = encode(ndarray(), RGB, wire="image", accept="image/png")
    assert media == JSON


@pytest.mark.parametrize("value", [b"\x00raw", bytearray(b"\x00raw"), memoryview(b"\x00raw")])
def test_bytes_outputs(value: bytes | bytearray | memoryview) -> None:
    for spec in (IOSpec("file"), IOSpec("json")):
        assert encode(spec, value, wire="json", accept=JSON) == (
            b"\x00raw",
            "application/octet-stream",
        )


def test_file_outputs_must_be_bytes() -> None:
    with pytest.raises(TypeError, match=r"^an API with a file output must return bytes, not str$"):
        encode(IOSpec("file"), "text", wire="bytes", accept=None)


def test_text_outputs() -> None:
    assert encode(IOSpec("text"), "héllo", wire="text", accept=None) == (
        "héllo".encode(),
        "text/plain; charset=utf-8",
    )
    assert encode(IOSpec("text"), "héllo", wire="json", accept=None) == (
        '"héllo"'.encode(),
        JSON,
    )
    assert encode(IOSpec("text"), "hi", wire="json", accept="text/plain")[1] == (
        "text/plain; charset=utf-8"
    )
    assert encode(IOSpec("text"), "hi", wire="text", accept=JSON)[1] == JSON


def test_json_outputs_of_mixed_values() -> None:
    value = {"scores": np.array([0.5, 0.25], np.float32), "label": np.int64(2), "ok": True}
    body, media = encode(IOSpec("json"), value, wire="json", accept=None)
    assert (orjson.loads(body), media) == ({"scores": [0.5, 0.25], "label": 2, "ok": True}, JSON)


def test_unencodable_outputs_are_type_errors() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        encode(IOSpec("json"), {"x": object()}, wire="json", accept=None)


# ------------------------------------------------------------------------------ dumps


def test_dumps_numpy() -> None:
    value = {
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "strided": np.arange(6.0).reshape(2, 3)[:, ::2],
        "half": np.array([1.5], np.float16),
        "strings": np.array(["a", "b"]),
        "scalar": np.float32(0.5),
        "flag": np.bool_(True),
        1: "non-string key",
    }
    assert orjson.loads(dumps(value)) == {
        "array": [[0, 1, 2], [3, 4, 5]],
        "strided": [[0.0, 2.0], [3.0, 5.0]],
        "half": [1.5],
        "strings": ["a", "b"],
        "scalar": 0.5,
        "flag": True,
        "1": "non-string key",
    }


def test_dumps_torch() -> None:
    value = [torch.ones(2, requires_grad=True), torch.tensor([1.5], dtype=torch.bfloat16)]
    assert orjson.loads(dumps(value)) == [[1.0, 1.0], [1.5]]


def test_dumps_pandas() -> None:
    frame = pd.DataFrame(
        {
            "t": pd.to_datetime(["2026-01-02", None]),
            "x": [1.5, float("nan")],
            "d": pd.to_timedelta(["1s", "2s"]),
        }
    )
    assert orjson.loads(dumps(frame)) == [
        {"t": "2026-01-02T00:00:00", "x": 1.5, "d": "P0DT0H0M1S"},
        {"t": None, "x": None, "d": "P0DT0H0M2S"},
    ]
    assert orjson.loads(dumps({"s": pd.Series([1, 2]), "i": pd.Index(["a"])})) == {
        "s": [1, 2],
        "i": ["a"],
    }
    assert dumps([pd.NA]) == b"[null]"


def test_dumps_paths_and_datetimes() -> None:
    assert dumps([PurePosixPath("/a/b"), datetime(2026, 1, 2)]) == (
        b'["/a/b","2026-01-02T00:00:00"]'
    )


def test_dumps_refuses_what_has_no_json_form() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: complex"):
        dumps(np.complex128(1 + 2j))
    with pytest.raises(TypeError, match="not JSON serializable: set"):
        dumps({1, 2})


# --------------------------------------------------------------------- micro-batching


@pytest.mark.parametrize(
    ("value", "rows"),
    [
        ([1, 2, 3], 3),
        (np.zeros((4, 2)), 4),
        (torch.zeros(5), 5),
        (pd.DataFrame({"a": [1, 2]}), 2),
    ],
)
def test_batch_size(value: Any, rows: int) -> None:
    assert batch_size(ndarray(), value) == rows


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (np.array(1.0), "an array of shape ()"),
        (torch.tensor(1.0), "an array of shape ()"),
        ({"a": 1}, "an object"),
        ("text", "a string"),
        (("a", "b"), "a tuple"),
    ],
)
def test_batch_size_of_values_without_rows_is_a_422(value: Any, what: str) -> None:
    with pytest.raises(CodecError) as info:
        batch_size(IOSpec("json"), value)
    assert info.value.status_code == 422
    assert str(info.value).startswith("a batchable API takes a batch along a first axis")
    assert str(info.value).endswith(f"this json input is {what}")


@pytest.mark.parametrize("value", [[], np.zeros((0, 3)), pd.DataFrame({"a": []})])
def test_empty_batches_are_a_422(value: Any) -> None:
    with pytest.raises(CodecError, match=r"^this ndarray input is an empty batch"):
        batch_size(ndarray(), value)


def test_batch_size_of_decoded_inputs() -> None:
    spec = ndarray("float32", (-1, 2))
    assert batch_size(spec, decode(spec, b"[[1, 2], [3, 4], [5, 6]]", None).value) == 3


def test_concat_and_split_arrays() -> None:
    parts = [np.arange(6).reshape(3, 2), np.arange(2).reshape(1, 2)]
    merged = concat(parts)
    assert merged.shape == (4, 2)
    for got, expected in zip(split(merged, [3, 1]), parts, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_concat_and_split_tensors() -> None:
    parts = [torch.ones(2, 3), torch.zeros(1, 3)]
    merged = concat(parts)
    assert isinstance(merged, torch.Tensor)
    assert merged.shape == (3, 3)
    pieces = split(merged, [2, 1])
    assert all(torch.equal(a, b) for a, b in zip(pieces, parts, strict=True))


def test_concat_and_split_dataframes() -> None:
    parts = [pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]}, index=[7])]
    merged = concat(parts)
    assert merged["a"].tolist() == [1, 2, 3]
    assert list(merged.index) == [0, 1, 2]
    pieces = split(merged, [2, 1])
    pd.testing.assert_frame_equal(pieces[0], parts[0])
    pd.testing.assert_frame_equal(pieces[1], parts[1].reset_index(drop=True))


def test_concat_and_split_lists() -> None:
    assert concat([[1, 2], [3]]) == [1, 2, 3]
    assert split([1, 2, 3], [2, 1]) == [[1, 2], [3]]


def test_split_tuple_and_dict_outputs() -> None:
    scores = np.arange(6.0).reshape(3, 2)
    labels = ["a", "b", "c"]
    first, second = split((scores, labels), [1, 2])
    assert isinstance(first, tuple)
    np.testing.assert_array_equal(first[0], scores[:1])
    assert first[1] == ["a"]
    assert second[1] == ["b", "c"]
    pieces = split({"scores": torch.arange(3), "labels": labels}, [2, 1])
    assert [piece["labels"] for piece in pieces] == [["a", "b"], ["c"]]
    assert [piece["scores"].tolist() for piece in pieces] == [[0, 1], [2]]


def test_split_with_empty_sizes() -> None:
    assert split(np.arange(2), [0, 2])[0].shape == (0,)
    assert [t.shape[0] for t in split(torch.arange(2), [2, 0])] == [2, 0]


@pytest.mark.parametrize(
    "values",
    [
        [np.zeros(2), [1]],
        [[1], np.zeros(2)],
        [torch.zeros(2), np.zeros(2)],
        [pd.DataFrame({"a": [1]}), [1]],
    ],
)
def test_concat_of_mismatched_types_is_a_value_error(values: list[Any]) -> None:
    with pytest.raises(ValueError, match=r"^cannot batch a "):
        concat(values)


def test_concat_of_mismatched_shapes_dtypes_or_columns() -> None:
    with pytest.raises(
        ValueError, match=r"different shapes after the first axis: \(2,\) and \(3,\)"
    ):
        concat([np.zeros((1, 2)), np.zeros((1, 3))])
    with pytest.raises(ValueError, match="different shapes after the first axis"):
        concat([torch.zeros(1, 2), torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="different dtypes: float64 and int64"):
        concat([np.zeros(1), np.zeros(1, np.int64)])
    with pytest.raises(ValueError, match=r"different columns: \['a'\] and \['b'\]"):
        concat([pd.DataFrame({"a": [1]}), pd.DataFrame({"b": [1]})])


def test_concat_refuses_0d_arrays_and_other_types_and_nothing() -> None:
    with pytest.raises(ValueError, match="0-d array"):
        concat([np.zeros(()), np.zeros(())])
    with pytest.raises(ValueError, match=r"^cannot batch a dict: batches are lists"):
        concat([{"a": 1}])
    with pytest.raises(ValueError, match=r"^nothing to concatenate$"):
        concat([])


def test_split_refuses_outputs_with_the_wrong_number_of_rows() -> None:
    with pytest.raises(ValueError, match=r"^model returned 3 rows for 4 inputs$"):
        split(np.zeros((3, 2)), [2, 2])
    with pytest.raises(ValueError, match=r"^model returned 1 rows for 2 inputs$"):
        split((np.zeros(2), [1]), [1, 1])
    with pytest.raises(ValueError, match=r"^cannot batch a str"):
        split("text", [1])
    with pytest.raises(ValueError, match="0-d array"):
        split({"x": np.array(1.0)}, [1])


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, list[Any]]:
    kind = draw(st.sampled_from(["ndarray", "tensor", "dataframe", "list"]))
    sizes = draw(st.lists(st.integers(0, 5), min_size=1, max_size=6))
    trailing = draw(st.lists(st.integers(1, 3), max_size=2))
    values: list[Any] = []
    for size in sizes:
        data = draw(
            st.lists(st.integers(-100, 100), min_size=size, max_size=size).map(np.array)
        ).astype(np.int64)
        array = np.repeat(data, int(np.prod(trailing))).reshape(size, *trailing)
        if kind == "tensor":
            values.append(torch.from_numpy(array))
        elif kind == "dataframe":
            values.append(pd.DataFrame({"a": data, "b": data * 2}))
        elif kind == "list":
            values.append(data.tolist())
        else:
            values.append(array)
    return kind, values


@settings(database=None, deadline=None, max_examples=60)
@given(batches())
def test_split_inverts_concat(batch: tuple[str, list[Any]]) -> None:
    kind, values = batch
    sizes = [len(value) for value in values]
    merged = concat(values)
    assert len(merged) == sum(sizes)
    pieces = split(merged, sizes)
    assert len(pieces) == len(values)
    for piece, value in zip(pieces, values, strict=True):
        if kind == "tensor":
            assert torch.equal(piece, value)
        elif kind == "dataframe":
            pd.testing.assert_frame_equal(piece, value.reset_index(drop=True))
        elif kind == "list":
            assert piece == value
        else:
            np.testing.assert_array_equal(piece, value)
            assert piece.shape == value.shape


def test_curl_default_content_type_is_read_as_json() -> None:
    """``curl -d '[[1, 2]]'`` sends application/x-www-form-urlencoded with a JSON body."""
    decoded = decode(
        IOSpec("ndarray", dtype="float32"), b"[[1, 2]]", "application/x-www-form-urlencoded"
    )
    assert decoded.wire == "json"
    assert decoded.value.tolist() == [[1.0, 2.0]]
