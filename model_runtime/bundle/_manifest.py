"""``bundle.json``: what a bundle is, what it needs and what it contains.

The manifest is the contract between the packager, the store, the runtime and the services:
it names the bundle and its version, records who built it with which Python and packages,
describes each API (kinds, dtypes, shapes, batching) and each model artifact, and lists the
sha256 of every other file so that a copy can be verified end to end. It is validated with
pydantic whenever it is read, so a malformed or hostile manifest fails with a clear message.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import BundleError, PackagingError
from ..kinds import IOSpec
from ..naming import MODEL_NAME_RE, VERSION_RE

MANIFEST_NAME = "bundle.json"
FORMAT_VERSION = 1
#: A manifest larger than this is refused before parsing (it would only be a DoS vector).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024

_SHA256_RE = r"^[0-9a-f]{64}$"


def is_inside(path: str) -> bool:
    """Whether ``path`` names a file below the bundle's root, on POSIX and Windows alike."""
    pure = PurePosixPath(path)
    absolute = pure.is_absolute() or bool(PureWindowsPath(path).drive)
    return bool(path) and not absolute and ".." not in pure.parts and "\\" not in path


class BatchingEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(32, ge=1, le=65536)
    max_latency_ms: float = Field(10.0, ge=0, le=60_000)


class ApiEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
    function: str
    input: dict[str, Any]
    output: dict[str, Any]
    batchable: bool = False
    batching: BatchingEntry = BatchingEntry()
    signature: str = ""
    doc: str = ""

    @field_validator("input", "output")
    @classmethod
    def _valid_spec(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            IOSpec.from_json(value)
        except (PackagingError, TypeError, AttributeError) as exc:
            raise ValueError(str(exc)) from None
        return value


class ModelEntry(BaseModel):
    """One saved model; format-specific fields (class, init_kwargs...) ride along."""

    model_config = ConfigDict(extra="allow")

    name: str
    format: str
    path: str
    type: str = ""
    framework: str = "python"

    @field_validator("path")
    @classmethod
    def _inside(cls, path: str) -> str:
        if not is_inside(path):
            raise ValueError(f"artifact path {path!r} is not a relative path inside the bundle")
        return path


class BundleManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str = Field(pattern=MODEL_NAME_RE.pattern)
    version: str = Field(pattern=VERSION_RE.pattern)
    created_at: datetime
    creator: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    framework: str = "python"
    environment: dict[str, str] = Field(default_factory=dict)
    requirements: list[str] = Field(default_factory=list)
    entrypoint: str = "service.py:service"
    source: str = Field("object", pattern=r"^(object|directory)$")
    apis: list[ApiEntry]
    models: list[ModelEntry] = Field(default_factory=list)
    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("format_version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value > FORMAT_VERSION:
            raise ValueError(
                f"bundle format {value} is newer than this hubserve understands ({FORMAT_VERSION});"
                " upgrade hubserve"
            )
        return value

    @field_validator("files")
    @classmethod
    def _relative_files(cls, files: dict[str, str]) -> dict[str, str]:
        for path, digest in files.items():
            if not is_inside(path):
                raise ValueError(f"file entry {path!r} is not a relative path inside the bundle")
            if not re.match(_SHA256_RE, digest):
                raise ValueError(f"file entry {path!r} has an invalid sha256")
        return files

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def service_file(self) -> str:
        return self.entrypoint.partition(":")[0]

    @property
    def service_var(self) -> str:
        return self.entrypoint.partition(":")[2]

    def to_json_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def parse_manifest(data: bytes, *, origin: str = MANIFEST_NAME) -> BundleManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{origin} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES} limit")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{origin} is not valid JSON: {exc}") from None
    except RecursionError:  # "[[[[...": no manifest nests deeper than a few levels
        raise BundleError(f"{origin} is nested too deeply to be a bundle manifest") from None
    try:
        return BundleManifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()[:5]
        )
        raise BundleError(f"{origin} is not a valid bundle manifest: {problems}") from None
