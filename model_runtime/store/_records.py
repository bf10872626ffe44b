"""What the store keeps about each version, and what listings return."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from ..bundle import BundleManifest


class StoredVersion(BaseModel):
    """The store's record of a pushed version (``<version>/bundle.json`` in the store).

    Writing it is the commit: a version without a record is invisible, whatever else exists.
    It repeats the bundle's own manifest and adds where the archive is and how to check it.
    """

    model_config = ConfigDict(extra="forbid")

    owner: str
    name: str
    version: str
    pushed_at: datetime
    pushed_by: str
    archive_sha256: str
    archive_size: int
    manifest: BundleManifest

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}:{self.version}"


class VersionSummary(BaseModel):
    """One row of a version listing, built from object metadata alone (no per-version reads)."""

    owner: str
    name: str
    version: str
    created_at: datetime
    pushed_at: datetime
    size: int
    tags: list[str]


class ModelSummary(BaseModel):
    owner: str
    name: str
