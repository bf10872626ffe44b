"""Where hubserve keeps things on the local machine.

``HUBSERVE_HOME`` (default ``~/.local/share/hubserve``) holds the local model store;
``HUBSERVE_CACHE`` (default ``~/.cache/hubserve``) holds pulled and unpacked bundles and build
outputs, which can always be fetched again. Both are read when called, never at import time.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    env = os.environ.get("HUBSERVE_HOME")
    if env:
        return Path(env).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "hubserve"


def default_cache_dir() -> Path:
    env = os.environ.get("HUBSERVE_CACHE")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "hubserve"
