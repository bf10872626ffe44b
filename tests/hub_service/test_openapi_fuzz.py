"""Fuzzing the hub service's OpenAPI schema with schemathesis: no 5xx, no undeclared answer.

The service runs as a subprocess in standalone mode (:mod:`tests.standalone_service`) with a
real ``examples/iris`` bundle pushed and deployed, so fuzzed calls reach the paths where a
model, a version, a tag and a deployment exist, not only the 404s. For every operation of the
schema, hypothesis draws cases — valid ones and, for half of them, cases that break the schema
(wrong types, missing fields, out-of-range numbers) — and sends each one with a credential it
also draws: the owner's token, another user's, a group member's, the admin's, or none.

Every answer must be a declared status code with a body that matches its declared schema and
content type, never a 5xx; without a token, every route but ``healthz`` must answer 401,
whatever its body.
Destructive operations run too (the service is thrown away): between operations, the bundle
and the deployment are put back. The run is bounded (``EXAMPLES`` per operation, a fixed
seed) and collects every operation's failure before failing, so one run reports them all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from model_runtime import build_bundle
from tests.live_hub import REPO
from tests.standalone_service import StandaloneService, standalone_service

TOKENS: dict[str, dict[str, Any]] = {
    "fuzz-alice-token": {"name": "alice"},
    "fuzz-bob-token": {"name": "bob"},
    "fuzz-carol-token": {"name": "carol", "groups": ["friends"]},
    "fuzz-boss-token": {"name": "boss", "admin": True},
}
#: The credentials a case is sent with (``None``: no ``Authorization`` header).
CALLERS = [*TOKENS, None]
EXAMPLES = 60
"""Cases per operation (about 17 operations)."""
SEED = 20261125
#: Small limits: a fuzzed PATCH may scale the deployment, a POST may create some.
LIMITS = {"max_replicas": 2, "max_deployments_per_user": 3, "max_upload_bytes": 4 * 1024**2}
CHECKS: list[CheckFunction] = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class FuzzTarget:
    """The service under fuzzing and the resources kept alive in it."""

    def __init__(self, service: StandaloneService, archive: Path) -> None:
        self.service = service
        self.archive = archive
        self.version = ""

    def restore(self) -> None:
        """Push the iris bundle (a no-op when stored) and deploy it, if the fuzzer removed them."""
        pushed = self.service.call(
            "POST",
            "api/models",
            content=self.archive.read_bytes(),
            headers={"Content-Type": "application/gzip"},
        )
        assert pushed.status_code in (200, 201), pushed.text
        self.version = pushed.json()["version"]
        tagged = self.service.call(
            "PUT", "api/models/alice/iris/tags/stable", json={"version": self.version}
        )
        assert tagged.status_code == 200, tagged.text
        if self.service.call("GET", "api/deployments/alice/iris").status_code == 404:
            created = self.service.call(
                "POST",
                "api/deployments",
                json={"model": "alice/iris:latest", "access": {"groups": ["friends"]}},
            )
            assert created.status_code in (201, 409), created.text

    def known_parameters(self) -> dict[str, str]:
        """Path parameters that name what exists (the fuzzer draws them half of the time)."""
        return {"owner": "alice", "name": "iris", "version": self.version, "tag": "stable"}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    archive = build_bundle(
        f"{REPO / 'examples/iris/iris.py'}:service",
        output_dir=tmp_path_factory.mktemp("fuzz-bundle"),
        creator="alice",
    ).archive
    root = tmp_path_factory.mktemp("fuzz-service")
    with standalone_service(root, TOKENS, env={"HUBSERVE_LIMITS": json.dumps(LIMITS)}) as service:
        fuzz_target = FuzzTarget(service, archive)
        fuzz_target.restore()
        yield fuzz_target


def _cases(operation: Any, known: dict[str, str]) -> st.SearchStrategy[Any]:
    names = {p.name for p in operation.path_parameters}
    overrides = {key: value for key, value in known.items() if key in names}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    strategies = [operation.as_strategy(mode) for mode in modes]
    if overrides:
        strategies += [operation.as_strategy(mode, path_parameters=overrides) for mode in modes]
    return st.one_of(strategies)


def test_openapi_fuzz(target: FuzzTarget) -> None:
    service = target.service
    schema = schemathesis.openapi.from_url(f"{service.url}openapi.json", timeout=30)
    session = requests.Session()
    failures: dict[str, str] = {}
    counts = {"operations": 0, "cases": 0}

    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        public = operation.path.endswith("/healthz")

        def check(case: Any, who: str | None, public: bool = public) -> None:
            counts["cases"] += 1
            headers = {"Authorization": f"token {who}"} if who else {}
            response = case.call_and_validate(
                session=session, headers=headers, checks=CHECKS, timeout=60
            )
            if who is None and not public:  # authentication comes first, even for bodies
                assert response.status_code == 401, (response.status_code, response.text)
            if who is not None:
                assert who.encode() not in response.content, "the token is echoed back"

        @hypothesis.seed(SEED)
        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(
            case=_cases(operation, target.known_parameters()), who=st.sampled_from(CALLERS)
        )
        def fuzz(case: Any, who: str | None) -> None:
            check(case, who)

        try:
            fuzz()
        except (AssertionError, FailureGroup) as exc:  # every failure, reported together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
        target.restore()

    session.close()
    print(f"fuzzed {counts['cases']} cases over {counts['operations']} operations")
    assert counts["operations"] >= 15
    report = "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert not failures, f"{len(failures)} operations failed:\n{report}"
    # The service survived it all and still serves.
    assert httpx.get(f"{service.url}healthz").status_code == 200
    assert service.call("GET", "api/deployments/alice/iris").status_code == 200
