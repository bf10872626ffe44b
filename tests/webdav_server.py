"""A real WebDAV server for tests: WsgiDAV served by cheroot on loopback, with a user and a
password, as a NextCloud-style share. Suites that need it import the fixture into their
``conftest.py`` or test module (``from tests.webdav_server import WebDAVServer, webdav``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cheroot import wsgi
from wsgidav.fs_dav_provider import FilesystemProvider
from wsgidav.wsgidav_app import WsgiDAVApp


@dataclass
class WebDAVServer:
    root: Path
    host: str
    port: int
    user: str
    password: str

    def uri(self, path: str, *, with_password: bool = False) -> str:
        """A ``webdav://`` URI; ``with_password`` puts the credentials in its userinfo, as a
        user pastes it."""
        userinfo = f"{self.user}:{self.password}@" if with_password else ""
        return f"webdav://{userinfo}{self.host}:{self.port}/{path}"


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
