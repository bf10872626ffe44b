"""A tiny offline wheelhouse for the environment tests: no index, no network, no build backend.

Each distribution is one module written straight into a wheel (a zip with ``METADATA``,
``WHEEL`` and a ``RECORD`` of hashes, as the wheel spec says) or into an sdist (a source
tree in a ``.tar.gz``). Writing them directly takes milliseconds and needs neither
``setuptools`` nor ``wheel``, so the tests run on an air-gapped host.
"""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class Dist:
    """One distribution: ``name`` (any spelling), ``version``, ``requires`` (PEP 508 lines)."""

    name: str
    version: str
    requires: tuple[str, ...] = ()
    #: The top-level import name (default: the distribution's name with underscores).
    module: str | None = None

    @property
    def stem(self) -> str:
        """The name as wheel and sdist file names spell it."""
        return canonicalize_name(self.name).replace("-", "_")

    @property
    def module_name(self) -> str:
        return self.module or self.stem

    def metadata(self, version: str = "2.1") -> str:
        lines = [f"Metadata-Version: {version}", f"Name: {self.name}", f"Version: {self.version}"]
        lines += [f"Requires-Dist: {req}" for req in self.requires]
        return "\n".join(lines) + "\n\n"

    def source(self) -> str:
        doc = f'"""{self.name} {self.version}, a test distribution."""\n'
        return f'{doc}\nVERSION = "{self.version}"\n'


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def write_wheel(folder: Path, dist: Dist) -> Path:
    """``dist`` as a pure-Python wheel in ``folder``."""
    info = f"{dist.stem}-{dist.version}.dist-info"
    module = dist.module_name
    files: dict[str, bytes] = {
        # a package (a folder), so that it can stand in for a real one, e.g. packaging
        f"{module}/__init__.py": dist.source().encode(),
        f"{info}/METADATA": dist.metadata().encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: hubserve-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n\n"
        ),
    }
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{dist.stem}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def write_sdist(folder: Path, dist: Dist) -> Path:
    """``dist`` as a setuptools source distribution (only buildable by running its backend)."""
    top = f"{dist.stem}-{dist.version}"
    requires = ", ".join(f'"{r}"' for r in dist.requires)
    files = {
        f"{top}/PKG-INFO": dist.metadata("2.1").encode(),
        f"{top}/pyproject.toml": (
            '[build-system]\nrequires = ["setuptools>=61"]\n'
            'build-backend = "setuptools.build_meta"\n'
            f'\n[project]\nname = "{dist.name}"\nversion = "{dist.version}"\n'
            f"dependencies = [{requires}]\n"
        ).encode(),
        f"{top}/{dist.module_name}.py": dist.source().encode(),
    }
    path = folder / f"{top}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(data)
            entry.mode = 0o644
            archive.addfile(entry, io.BytesIO(data))
    return path


def build_wheelhouse(folder: Path, wheels: Iterable[Dist], sdists: Iterable[Dist] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for dist in wheels:
        write_wheel(folder, dist)
    for dist in sdists:
        write_sdist(folder, dist)
    return folder
