"""Packages the project's environment deliberately lacks, installed aside for the tests that
need them.

The hub service's environment must not hold scikit-learn or skops: the per-bundle environments
are proven by bundles that need packages the service lacks. Tests that do need them run their
code in a subprocess with ``PYTHONPATH`` set to :func:`extra_site`, a directory where ``uv``
installed them once per machine (``.hubserve/test-extras/<hash>``, reused by later runs).

The install resolves against this machine's package indexes (pip's configuration and
``PIP_*`` variables, handed to ``uv``) and is constrained to the versions installed in this
environment, so the copies of shared dependencies (numpy...) it brings along are the very
versions the subprocess would import anyway. It is done in a temporary directory renamed into
place at the end: an interrupted install is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".hubserve" / "test-extras"
#: This environment's uv (a dependency of hubserve), else the one on PATH.
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv") or "uv"
#: What the scikit-learn tests install (unpinned skops resolves to a bogus 0.1.dev0).
SKLEARN = ["scikit-learn", "skops>=0.16"]


def extra_site(packages: list[str]) -> Path:
    """A directory holding ``packages`` (requirement strings) for this interpreter.

    Keyed by the requirements, the Python version and this environment's versions: a change
    of any of them installs afresh rather than shadowing the environment with stale copies.
    """
    constraints = _installed_pins()
    key = json.dumps([sys.version, sorted(packages), constraints]).encode()
    target = CACHE / hashlib.sha256(key).hexdigest()[:16]
    if target.is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=CACHE))
    try:
        constraints_file = staging / "constraints.txt"
        constraints_file.write_text("".join(f"{line}\n" for line in constraints))
        site = staging / "site"
        command = [
            UV,
            "pip",
            "install",
            "--target",
            str(site),
            "--python",
            sys.executable,
            "--only-binary",
            ":all:",
            "--index-strategy",
            "unsafe-best-match",
            "--constraint",
            str(constraints_file),
            *_index_options(),
            *packages,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"installing {packages} failed:\n{done.stderr[-4000:]}")
        try:
            site.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent install that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _installed_pins() -> list[str]:
    """``name==version`` of every distribution of this environment, for ``--constraint``."""
    pins = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and not dist.version.count("+"):  # local labels (torch's +cpu) are not indexed
            pins[name.lower()] = f"{name}=={dist.version}"
    return [pins[name] for name in sorted(pins)]


def _index_options() -> list[str]:
    """The package indexes pip uses here (its configuration, then ``PIP_*``), as uv options."""
    settings: dict[str, list[str]] = {"index-url": [], "extra-index-url": [], "find-links": []}
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    for line in listed.splitlines():
        key, sep, value = line.partition("=")
        option = key.rpartition(".")[2]
        if sep and option in settings:
            settings[option] += value.strip().strip("'\"").split()
    for option, values in settings.items():
        values += os.environ.get("PIP_" + option.upper().replace("-", "_"), "").split()
    # One index URL: the last one set (the environment overrides the configuration files).
    settings["index-url"] = settings["index-url"][-1:]
    return [
        arg
        for option, values in settings.items()
        for value in dict.fromkeys(values)
        for arg in (f"--{option}", value)
    ]
