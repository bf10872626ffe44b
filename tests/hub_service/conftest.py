"""Fixtures of the hub_service tests: bundles, and names from :mod:`tests.live_hub` (the ``hub``
fixture itself comes from ``tests/conftest.py``, shared with the other live suites)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live_hub import (
    ADMIN_USER,
    NEGATIVE_TTL,
    PASSWORD,
    POSITIVE_TTL,
    REPO,
    Hub,
    chp_path,
    free_port,
)

__all__ = [
    "ADMIN_USER",
    "NEGATIVE_TTL",
    "PASSWORD",
    "POSITIVE_TTL",
    "REPO",
    "Hub",
    "chp_path",
    "free_port",
]


# -- bundles for the registry tests -----------------------------------------------------------


@dataclass(frozen=True)
class TestBundle:
    """A packaged bundle of ``examples/iris``: its archive and what the store will call it."""

    __test__ = False  # not a test class, whatever its name

    archive: Path
    name: str
    version: str
    sha256: str

    @property
    def data(self) -> bytes:
        return self.archive.read_bytes()


@pytest.fixture(scope="session")
def iris_bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestBundle, TestBundle]:
    """Two versions of the iris example, older first (packaging takes a few seconds)."""
    from model_runtime import build_bundle

    out = tmp_path_factory.mktemp("bundles")
    built = [
        build_bundle(f"{REPO / 'examples/iris/iris.py'}:service", output_dir=out) for _ in range(2)
    ]
    first, second = (
        TestBundle(
            archive=b.archive,
            name=b.manifest.name,
            version=b.manifest.version,
            sha256=hashlib.sha256(b.archive.read_bytes()).hexdigest(),
        )
        for b in built
    )
    assert first.version < second.version
    return first, second
