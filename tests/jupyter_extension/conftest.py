"""Fixtures of the jupyter_extension tests: helpers around the live hub (the ``hub`` fixture
comes from ``tests/conftest.py``)."""

from __future__ import annotations

from tests.live_hub import Hub, free_port

__all__ = ["Hub", "free_port"]
