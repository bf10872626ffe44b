"""Fixtures for the examples: their modules on ``sys.path``, a real S3 and a real WebDAV server.

The example directories are not packages (a data scientist runs ``python train.py`` there),
so their modules are imported by putting the directory on ``sys.path``, as hubserve itself
does when it loads a ``service.py``. The servers are the same kinds the runtime's job tests
use: SeaweedFS (``weed mini``, signature-checking S3) and WsgiDAV served by cheroot on
loopback, with a user and a password, as a NextCloud-style WebDAV share.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_runtime.testing.s3server import S3Server
from tests.webdav_server import webdav

__all__ = ["webdav"]  # the shared fixture (tests/webdav_server.py)

ASTRO_DIR = Path(__file__).resolve().parents[2] / "examples" / "astro"
if str(ASTRO_DIR) not in sys.path:
    sys.path.insert(0, str(ASTRO_DIR))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on loopback for the session, with one key pair."""
    with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
