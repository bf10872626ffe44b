"""Fixtures for the examples: their modules on ``sys.path``, a real S3 and a real WebDAV server.

The example directories are not packages (a data scientist runs ``python train.py`` there),
so their modules are imported by putting the directory on ``sys.path``, as hubserve itself
does when it loads a ``service.py``. The servers are the same kinds the runtime's job tests
use: SeaweedFS (``weed mini``, signature-checking S3) and WsgiDAV served by cheroot on
loopback, with a user and a password, as a NextCloud-style WebDAV share.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cheroot import wsgi
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp

from model_runtime.testing.s3server import S3Server

ASTRO_DIR = Path(__file__).resolve().parents[2] / "examples" / "astro"
if str(ASTRO_DIR) not in sys.path:
    sys.path.insert(0, str(ASTRO_DIR))


@dataclass(frozen=True)
class WebDAVServer:
    root: Path
    host: str
    port: int
    user: str
    password: str

    def uri(self, path: str) -> str:
        """A ``webdav://`` URI with the credentials in its userinfo, as a user pastes it."""
        return f"webdav://{self.user}:{self.password}@{self.host}:{self.port}/{path}"


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[WebDAVServer]:
    """WsgiDAV on a temporary directory, user ``alice``, on a free loopback port."""
    root = tmp_path / "dav"
    root.mkdir()
    app = WsgiDAVApp(
        {
            "provider_mapping": {"/": FilesystemProvider(str(root))},
            "simple_dc": {"user_mapping": {"*": {"alice": {"password": "dav-pass-1234"}}}},
            "dir_browser": {"enable": False},
            "verbose": 1,
            "logging": {"enable": False},
        }
    )
    server = wsgi.Server(("127.0.0.1", 0), app, numthreads=4)
    server.prepare()
    thread = threading.Thread(target=server.serve, name="webdav", daemon=True)
    thread.start()
    try:
        yield WebDAVServer(root, "127.0.0.1", server.bind_addr[1], "alice", "dav-pass-1234")
    finally:
        server.stop()
        thread.join(10)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS on loopback for the session, with one key pair."""
    with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
