"""A real runtime app, in-process, serving the kitchen-sink bundle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model_runtime import BuiltBundle, build_bundle, load_bundle
from model_runtime.runtime import Runtime, RuntimeSettings, create_app

SERVICE_FILE = Path(__file__).with_name("kitchen_sink_service.py")


@pytest.fixture(scope="session")
def sink_bundle(tmp_path_factory: pytest.TempPathFactory) -> BuiltBundle:
    return build_bundle(f"{SERVICE_FILE}:service", output_dir=tmp_path_factory.mktemp("sink"))


def make_client(bundle: BuiltBundle, tmp_path: Path, **settings: object) -> TestClient:
    service = load_bundle(bundle.archive, cache_dir=tmp_path / "cache")
    runtime = Runtime(service, RuntimeSettings(work_dir=tmp_path / "work", **settings))
    return TestClient(create_app(runtime), raise_server_exceptions=False)


@pytest.fixture
def client(sink_bundle: BuiltBundle, tmp_path: Path) -> Iterator[TestClient]:
    with make_client(sink_bundle, tmp_path) as test_client:
        yield test_client
