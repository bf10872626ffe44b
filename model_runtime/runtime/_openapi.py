"""OpenAPI for the per-API routes, generated from the bundle's signatures.

The hot-path routes are plain Starlette routes, which FastAPI does not describe; this module
adds them to FastAPI's generated document with the request and response schemas and media
types that :mod:`._codecs` derives from each API's input and output specs.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..service import ApiSpec
from . import _codecs
from ._runtime import Runtime

_ERROR = {
    "description": "Error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    },
}


def _operation(spec: ApiSpec) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    request = {
        media: {"schema": _codecs.json_schema(spec.input) if media.endswith("json") else binary}
        for media in _codecs.request_media_types(spec.input)
    }
    if spec.input.kind == "path":
        request = {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input", "output"],
                    "properties": {
                        "input": {
                            "type": "string",
                            "description": "folder: path, s3://, webdav://",
                        },
                        "output": {"type": "string"},
                        "pattern": {"type": "string", "description": "glob over relative paths"},
                    },
                }
            }
        }
        ok: dict[str, Any] = {"202": {"description": "Batch job started; poll /jobs/{id}"}}
    else:
        ok = {
            "200": {
                "description": "Result",
                "content": {"application/json": {"schema": _codecs.json_schema(spec.output)}},
            }
        }
    return {
        "post": {
            "tags": ["model APIs"],
            "summary": spec.doc.splitlines()[0] if spec.doc else spec.name,
            "description": f"{spec.doc}\n\n`{spec.signature}`".strip(),
            "operationId": f"api_{spec.name}",
            "requestBody": {"required": True, "content": request},
            "responses": {
                **ok,
                "400": _ERROR,
                "413": _ERROR,
                "415": _ERROR,
                "422": _ERROR,
                "503": _ERROR,
            },
        }
    }


def install_openapi(app: FastAPI, runtime: Runtime) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            paths = schema.setdefault("paths", {})
            for spec in runtime.service.apis.values():
                paths[f"/{spec.name}"] = _operation(spec)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
