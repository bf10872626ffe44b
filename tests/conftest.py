"""Fixtures shared by every test run: an isolated hubserve home and cache per test, and the
live stack (:func:`tests.live_hub.hub`), started once per run by the first test that needs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.live_hub import hub

__all__ = ["hub"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the local store and the cache of each test in its own temporary directory."""
    home = tmp_path / "hubserve-home"
    monkeypatch.setenv("HUBSERVE_HOME", str(home))
    monkeypatch.setenv("HUBSERVE_CACHE", str(tmp_path / "hubserve-cache"))
    monkeypatch.setenv("HUBSERVE_OWNER", "alice")
    for var in ("HUBSERVE_STORE", "JUPYTERHUB_USER"):
        monkeypatch.delenv(var, raising=False)
    return home
