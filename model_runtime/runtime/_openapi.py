"""OpenAPI for the per-API and job routes, generated from the bundle's signatures.

The hot-path routes and the job routes are plain Starlette routes, which FastAPI does not
describe; this module adds them to FastAPI's generated document with the request and response
schemas and media types that :mod:`._codecs` derives from each API's input and output specs.
The document is a contract that the fuzz tests hold the runtime to: every status a route can
answer is listed, and when the runtime requires the gateway's secret, so does the document
(a security scheme, with 401 and 403 on every route but the probes).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..service import ApiSpec
from . import _codecs
from ._jobs import ITEMS_PAGE, MAX_ITEMS_FROM, MAX_ITEMS_PAGE, JobStatus
from ._runtime import Runtime

ERROR = {
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


#: The API function itself failed (its exception's type and message, never a traceback).
FAILED = {**ERROR, "description": "The API function failed"}

_JOB_REQUEST: dict[str, Any] = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["input", "output"],
            "properties": {
                "input": {"type": "string", "description": "folder: path, s3://, webdav://"},
                "output": {"type": "string"},
                "pattern": {"type": "string", "description": "glob over relative paths"},
            },
        }
    }
}


def _operation(spec: ApiSpec) -> dict[str, Any]:
    binary = {"type": "string", "format": "binary"}
    request = {
        media: {"schema": _codecs.json_schema(spec.input) if media.endswith("json") else binary}
        for media in _codecs.request_media_types(spec.input)
    }
    if spec.input.kind == "path":
        request = _JOB_REQUEST
        ok: dict[str, Any] = {
            "202": {
                "description": "Batch job started; poll /jobs/{id}",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/JobStatus"}}
                },
            }
        }
    else:
        ok = {
            "200": {
                "description": "Result, in the request's format or the one Accept names",
                "content": {
                    media: {"schema": _response_schema(spec, media)}
                    for media in _codecs.response_media_types(spec.output)
                },
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
                "400": ERROR,
                "413": ERROR,
                "415": ERROR,
                "422": ERROR,
                "500": FAILED,
                "503": ERROR,
                "504": ERROR,
            },
        }
    }


def _response_schema(spec: ApiSpec, media: str) -> dict[str, Any]:
    if media == "application/json":
        return _codecs.json_schema(spec.output)
    if media.startswith("text/"):
        return {"type": "string"}
    return {"type": "string", "format": "binary"}


_ITEMS_PAGE_PARAMETERS: list[dict[str, Any]] = [
    {
        "name": "items_from",
        "in": "query",
        "description": "Index of the first item to return.",
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ITEMS_FROM, "default": 0},
    },
    {
        "name": "items_limit",
        "in": "query",
        "description": "Most items to return (0: the summary alone).",
        "schema": {
            "type": "integer",
            "minimum": 0,
            "maximum": MAX_ITEMS_PAGE,
            "default": ITEMS_PAGE,
        },
    },
]


def _job_paths(runtime: Runtime) -> dict[str, Any]:
    """``/jobs`` routes, when the service has path APIs (else there are no jobs to document).

    ``POST /jobs/<api>`` and ``GET|DELETE /jobs/<id>`` are one path template for OpenAPI,
    whose templates may not differ by parameter name alone: ``{id}`` names the API on POST.
    """
    status = {"$ref": "#/components/schemas/JobStatus"}
    names = sorted(runtime.path_apis)

    def reply(description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    api = {**job_id, "description": "the path API to run", "schema": {"enum": names}}
    return {
        "/jobs": {
            "get": {
                "tags": ["batch jobs"],
                "summary": "Jobs of this runtime, oldest first, without their items",
                "operationId": "list_jobs",
                "responses": {"200": reply("Jobs", {"type": "array", "items": status})},
            }
        },
        "/jobs/{id}": {
            "post": {
                "tags": ["batch jobs"],
                "summary": "Start a batch job of a path API over a folder",
                "operationId": "start_job",
                "parameters": [api],
                "requestBody": {"required": True, "content": _JOB_REQUEST},
                "responses": {
                    "202": reply("Job started; poll /jobs/{id}", status),
                    **{code: ERROR for code in ("400", "404", "413", "422", "503")},
                },
            },
            "get": {
                "tags": ["batch jobs"],
                "summary": "Job status, with a page of its items",
                "description": (
                    "Items are only ever appended: ask for the items from the last answer's"
                    " `items_next` on to receive each item once."
                ),
                "operationId": "get_job",
                "parameters": [job_id, *_ITEMS_PAGE_PARAMETERS],
                "responses": {"200": reply("The job", status), "404": ERROR, "422": ERROR},
            },
            "delete": {
                "tags": ["batch jobs"],
                "summary": "Cancel a job",
                "operationId": "delete_job",
                "parameters": [job_id],
                "responses": {"200": reply("The job, with its first items", status), "404": ERROR},
            },
        },
    }


def _require_token(schema: dict[str, Any], public: Collection[str]) -> None:
    """Document the gateway secret: a security scheme, and 401/403 on non-public routes."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["gateway"] = {
        "type": "apiKey",
        "in": "header",
        "name": "X-Hubserve-Token",
        "description": "the shared secret of the hub gateway (or `Authorization: Bearer`)",
    }
    for path, operations in schema["paths"].items():
        if path in public:
            continue
        for operation in operations.values():
            operation["security"] = [{"gateway": []}]
            operation["responses"].setdefault("401", ERROR)
            operation["responses"].setdefault("403", ERROR)


def install_openapi(app: FastAPI, runtime: Runtime, *, public: Collection[str]) -> None:
    """Serve the complete document; ``public`` paths answer without the gateway secret."""

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
            if runtime.path_apis:
                paths.update(_job_paths(runtime))
                job = JobStatus.model_json_schema(
                    ref_template="#/components/schemas/{model}", mode="serialization"
                )
                models = schema.setdefault("components", {}).setdefault("schemas", {})
                models.update(job.pop("$defs", {}))
                models["JobStatus"] = job
            token = runtime.settings.api_token
            if token is not None and token.get_secret_value():
                _require_token(schema, public)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
