"""Fuzzing the runtime's OpenAPI document with schemathesis: the document is the contract.

Each operation of ``/openapi.json`` is exercised in-process (ASGI, no sockets) with
requests generated from its schema, valid ones and invalid ones, against a runtime that
serves a real torch bundle and requires the gateway's secret, as a deployed one does:

* **with the secret** -- no 5xx; every status, content type, header and body conforms to the
  document; invalid requests are refused with a 4xx; and the route refuses the same request
  without the secret (schemathesis' ``ignored_auth``);
* **without it** (none, or a wrong one) -- every route but the probes answers 401 (no secret)
  or 403 (a wrong one), before any input is looked at; the probes answer as usual.

``positive_data_acceptance`` is left out: a schema-valid request may still be refused on
purpose (an API function raising :class:`~model_runtime.InvalidInput`, a job over a folder
that does not exist), and that answer is checked by the others.

Runs are derandomized (fixed seeds, no example database), so CI sees the same cases every
time; each run also asserts that every operation of the document was exercised, so a new
route cannot escape the fuzzer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import positive_data_acceptance

from model_runtime import BuiltBundle, build_bundle, load_bundle
from model_runtime.runtime import Runtime, RuntimeSettings, create_app

from .conftest import SERVICE_FILE

EXAMPLES = Path(__file__).parents[3] / "examples"
SECRET = "gateway-secret-for-fuzzing"
HEADER = "X-Hubserve-Token"
#: Routes the deploy backend's probes reach without the secret.
PROBES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
SERVICES = {
    "iris": f"{EXAMPLES / 'iris' / 'iris.py'}:service",
    "sink": f"{SERVICE_FILE}:service",
}


def _settings(max_examples: int) -> Any:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture(scope="module", params=sorted(SERVICES))
def bundle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    return build_bundle(SERVICES[request.param], output_dir=tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def app(bundle: BuiltBundle, tmp_path: Path) -> Iterator[Any]:
    """A runtime app that requires :data:`SECRET`, serving a real torch bundle.

    Its jobs may only use a scratch folder, so generated job requests cannot reach the rest
    of the file system or the network. One per test: schemathesis' pytest plugin ends the
    lifespans of ASGI apps after each test, and a runtime does not start twice.
    """
    scratch = tmp_path / "scratch"
    (scratch / "in").mkdir(parents=True)
    runtime = Runtime(
        load_bundle(bundle.archive, cache_dir=tmp_path / "cache"),
        RuntimeSettings(
            work_dir=tmp_path / "work",
            api_token=SECRET,
            job_locations=[str(scratch)],
            max_body_bytes=256 * 1024,
        ),
    )
    try:
        yield create_app(runtime)
    finally:
        shutdown_lifespans()  # runs the runtime's shutdown: drains its batchers and jobs


def load_schema(app: Any, config: str = "") -> Any:
    """The app's OpenAPI document (fetched with the secret); starts the app's lifespan."""
    return schemathesis.openapi.from_asgi(
        "/openapi.json",
        app,
        config=SchemathesisConfig.from_str(config),
        headers={HEADER: SECRET},
    )


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _takes_input(operation: Any) -> bool:
    """Whether invalid requests exist: a body or parameters to get wrong."""
    return any(
        len(list(group)) > 0
        for group in (operation.body, operation.path_parameters, operation.query)
    )


def _modes(operation: Any) -> list[GenerationMode]:
    if _takes_input(operation):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def test_every_route_conforms_with_the_gateway_secret(app: Any) -> None:
    # The secret as the schema's "gateway" security scheme: sent where the document requires
    # it, and known to be valid, so ``ignored_auth`` checks that the route refuses a request
    # without it or with a wrong one.
    schema = load_schema(app, f'[auth.openapi.gateway]\napi_key = "{SECRET}"\n')
    exercised: Counter[str] = Counter()
    for operation in _operations(schema):
        for mode in _modes(operation):

            @given(case=operation.as_strategy(generation_mode=mode))
            @_settings(max_examples=25)
            def run(case: Any) -> None:
                exercised[case.operation.label] += 1
                case.call_and_validate(excluded_checks=[positive_data_acceptance])

            run()
    assert set(exercised) == {operation.label for operation in _operations(schema)}


def test_every_route_but_the_probes_refuses_callers_without_the_secret(app: Any) -> None:
    schema = load_schema(app)
    exercised: Counter[str] = Counter()
    for operation in _operations(schema):

        @given(case=operation.as_strategy())
        @_settings(max_examples=8)
        def run(case: Any) -> None:
            exercised[case.operation.label] += 1
            headers = dict(case.headers or {})
            presented = headers.pop(HEADER, "")
            if presented:  # a generated token: wrong, since it is not the secret
                headers[HEADER] = presented
            case.headers = headers
            response = case.call()
            if case.operation.path in PROBES:
                assert response.status_code in (200, 503), response.text
            else:
                assert response.status_code == (403 if presented else 401), response.text
                assert response.json() == {
                    "detail": "invalid runtime token"
                    if presented
                    else "this runtime only accepts calls from its gateway"
                }

        run()
    assert set(exercised) == {operation.label for operation in _operations(schema)}
