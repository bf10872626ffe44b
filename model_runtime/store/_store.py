"""The versioned model store, written once over an :class:`ObjectBackend`.

Layout (keys relative to the store root)::

    models/<owner>/<name>/<version>/bundle.tar.gz   the archive, uploaded first
    models/<owner>/<name>/<version>/bundle.json     the record, written last: the commit
    models/<owner>/<name>/tags/<tag>                 a version string

*Commit-last*: a version exists for readers only once its record exists, and the record is
written after the archive is complete, so an interrupted push leaves nothing visible (only an
orphan archive that :meth:`Store.collect_garbage` removes). Versions are immutable: pushing a
version again with other content is refused. ``latest`` is not stored: it always names the
newest committed version, so it moves on every push and cannot go backwards when concurrent
pushes finish out of order. Other tags are user-set pointers that move only when told to.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import ValidationError

from ..bundle import MANIFEST_NAME, extract_archive, sha256_file, verify_archive
from ..errors import BundleError, InvalidNameError, NotFoundError, StoreError, VersionExistsError
from ..naming import LATEST, ModelRef, check_model_name, check_owner, check_tag, check_version
from ..paths import default_cache_dir
from ._objects import ObjectBackend, ProgressCallback
from ._records import ModelSummary, StoredVersion, VersionSummary

ARCHIVE_NAME = "bundle.tar.gz"
RECORD_NAME = MANIFEST_NAME
TAGS_DIR = "tags"


@dataclass(frozen=True)
class PulledBundle:
    """A version fetched from the store: its unpacked, verified directory and its record."""

    path: Path
    record: StoredVersion


def _model_prefix(owner: str, name: str) -> str:
    return f"models/{check_owner(owner)}/{check_model_name(name)}/"


def _version_from_created(version: str) -> datetime:
    return datetime.strptime(version[:18], "%Y%m%dT%H%M%S%f").replace(tzinfo=timezone.utc)


class Store:
    """Push, pull, list, tag and delete model versions."""

    def __init__(self, objects: ObjectBackend) -> None:
        self.objects = objects

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.objects.describe()}>"

    # -- writing ---------------------------------------------------------------------------

    def push(
        self,
        archive: str | Path,
        *,
        owner: str,
        tags: Iterable[str] = (),
        pushed_by: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> StoredVersion:
        """Verify ``archive`` and store it as ``owner/name:version``; move ``latest`` to it."""
        archive = Path(archive)
        check_owner(owner)
        tags = [_user_tag(t) for t in tags]  # before anything is written
        manifest = verify_archive(archive)
        prefix = _model_prefix(owner, manifest.name) + manifest.version + "/"
        record = StoredVersion(
            owner=owner,
            name=manifest.name,
            version=manifest.version,
            pushed_at=datetime.now(timezone.utc),
            pushed_by=pushed_by or owner,
            archive_sha256=sha256_file(archive),
            archive_size=archive.stat().st_size,
            manifest=manifest,
        )
        existing = self._read_record(prefix + RECORD_NAME, missing_ok=True)
        if existing is not None:
            if existing.archive_sha256 != record.archive_sha256:
                raise VersionExistsError(
                    f"{record.ref} already exists with different content; versions are immutable"
                )
            record = existing  # the same bundle again: nothing to do
        else:
            self.objects.put_file(prefix + ARCHIVE_NAME, archive, progress)
            self.objects.put_bytes(prefix + RECORD_NAME, record.model_dump_json(indent=2).encode())
        for tag in tags:
            self.set_tag(ModelRef(owner, manifest.name, manifest.version), tag)
        return record

    def set_tag(self, ref: ModelRef | str, tag: str) -> StoredVersion:
        """Point ``tag`` at the version ``ref`` resolves to (tags move, versions do not)."""
        tag = _user_tag(tag)
        record = self.stat(ref)
        self._write_tag(record.owner, record.name, tag, record.version)
        return record

    def delete_tag(self, owner: str, name: str, tag: str) -> None:
        key = _model_prefix(owner, name) + f"{TAGS_DIR}/{_user_tag(tag)}"
        if not self.objects.exists(key):
            raise NotFoundError(f"{owner}/{name} has no tag {tag!r}")
        self.objects.delete(key)

    def delete_version(self, owner: str, name: str, version: str) -> None:
        """Remove a version: un-commit it first (record), then its archive and its tags."""
        prefix = _model_prefix(owner, name) + check_version(version) + "/"
        if self._read_record(prefix + RECORD_NAME, missing_ok=True) is None:
            raise NotFoundError(f"{owner}/{name}:{version} not found in {self.objects.describe()}")
        doomed = [t for t, v in self.tags(owner, name).items() if v == version and t != LATEST]
        self.objects.delete(prefix + RECORD_NAME)
        self.objects.delete(prefix + ARCHIVE_NAME)
        for tag in doomed:
            self.objects.delete(_model_prefix(owner, name) + f"{TAGS_DIR}/{tag}")

    def delete_model(self, owner: str, name: str) -> int:
        """Remove every version and tag of a model; return how many versions there were."""
        versions = self.list_versions(owner, name)
        if not versions:
            raise NotFoundError(f"model {owner}/{name} not found in {self.objects.describe()}")
        prefix = _model_prefix(owner, name)
        for summary in versions:  # records first: nothing stays half-visible
            self.objects.delete(prefix + f"{summary.version}/{RECORD_NAME}")
        for info in list(self.objects.scan(prefix)):
            self.objects.delete(info.key)
        return len(versions)

    def collect_garbage(self, *, older_than: timedelta = timedelta(hours=1)) -> list[str]:
        """Delete archives of pushes that never committed (older than ``older_than``)."""
        now = datetime.now(timezone.utc)
        by_dir: dict[str, dict[str, datetime]] = {}
        for info in self.objects.scan("models/"):
            directory, _, leaf = info.key.rpartition("/")
            by_dir.setdefault(directory, {})[leaf] = info.last_modified
        removed = []
        for directory, leaves in by_dir.items():
            stamp = leaves.get(ARCHIVE_NAME)
            if stamp is not None and RECORD_NAME not in leaves and now - stamp > older_than:
                self.objects.delete(f"{directory}/{ARCHIVE_NAME}")
                removed.append(f"{directory}/{ARCHIVE_NAME}")
        return removed

    # -- reading ---------------------------------------------------------------------------

    def list_models(self, owner: str | None = None) -> list[ModelSummary]:
        owners = [check_owner(owner)] if owner else self.objects.list_children("models/")
        return [
            ModelSummary(owner=o, name=n)
            for o in owners
            for n in self.objects.list_children(f"models/{o}/")
        ]

    def list_versions(self, owner: str, name: str) -> list[VersionSummary]:
        """Committed versions, newest first, from a single listing of the model's keys."""
        prefix = _model_prefix(owner, name)
        committed: dict[str, datetime] = {}
        sizes: dict[str, int] = {}
        tag_keys: list[str] = []
        for info in self.objects.scan(prefix):
            rest = info.key[len(prefix) :]
            head, _, leaf = rest.partition("/")
            if head == TAGS_DIR:
                tag_keys.append(leaf)
            elif leaf == RECORD_NAME:
                committed[head] = info.last_modified
            elif leaf == ARCHIVE_NAME:
                sizes[head] = info.size
        tags: dict[str, list[str]] = {}
        for tag in tag_keys:
            target = self._read_tag(owner, name, tag)
            if target is not None:
                tags.setdefault(target, []).append(tag)
        if committed:
            tags.setdefault(max(committed), []).append(LATEST)
        return [
            VersionSummary(
                owner=owner,
                name=name,
                version=version,
                created_at=_version_from_created(version),
                pushed_at=committed[version],
                size=sizes.get(version, 0),
                tags=sorted(tags.get(version, [])),
            )
            for version in sorted(committed, reverse=True)
        ]

    def tags(self, owner: str, name: str) -> dict[str, str]:
        """Every tag of a model, ``latest`` included, mapped to its version."""
        found = {}
        for summary in self.list_versions(owner, name):
            found.update({tag: summary.version for tag in summary.tags})
        return found

    def resolve(self, ref: ModelRef | str) -> ModelRef:
        """Turn a tag reference into a version reference (checking the version exists)."""
        record = self.stat(ref)
        return ModelRef(record.owner, record.name, record.version)

    def stat(self, ref: ModelRef | str) -> StoredVersion:
        """The record of the version ``ref`` names (a version or a tag)."""
        owner, name, version = self._locate(ref)
        key = _model_prefix(owner, name) + f"{version}/{RECORD_NAME}"
        record = self._read_record(key, missing_ok=True)
        if record is None:
            raise NotFoundError(f"{owner}/{name}:{version} not found in {self.objects.describe()}")
        return record

    def _locate(self, ref: ModelRef | str) -> tuple[str, str, str]:
        """``(owner, name, version)`` for ``ref``; whether that version exists is for the
        caller's one read of its record to find out."""
        ref = ModelRef.parse(ref) if isinstance(ref, str) else ref
        version = ref.version
        if version is None:
            is_latest = ref.selector == LATEST
            version = None if is_latest else self._read_tag(ref.owner, ref.name, ref.selector)
            if version is None:
                versions = self.list_versions(ref.owner, ref.name)
                if not versions:
                    raise NotFoundError(
                        f"model {ref.owner}/{ref.name} not found in {self.objects.describe()}"
                    )
                if not is_latest:
                    raise NotFoundError(f"{ref.owner}/{ref.name} has no tag {ref.selector!r}")
                version = versions[0].version
        return ref.owner, ref.name, version

    def download(
        self, ref: ModelRef | str, dest: str | Path, *, progress: ProgressCallback | None = None
    ) -> StoredVersion:
        """Fetch the archive to ``dest`` and check it against the record's sha256."""
        record = self.stat(ref)
        self._fetch_archive(record, Path(dest), progress)
        return record

    def _fetch_archive(
        self, record: StoredVersion, dest: Path, progress: ProgressCallback | None
    ) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            key = _model_prefix(record.owner, record.name) + f"{record.version}/{ARCHIVE_NAME}"
            self.objects.get_file(key, tmp, progress)
            digest = sha256_file(tmp)
            if digest != record.archive_sha256:
                raise StoreError(
                    f"the archive of {record.ref} in {self.objects.describe()} does not match its"
                    " record (corrupted or replaced in the store)"
                )
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def pull(
        self,
        ref: ModelRef | str,
        *,
        cache_dir: str | Path | None = None,
        progress: ProgressCallback | None = None,
    ) -> PulledBundle:
        """Fetch, verify and unpack a version into the cache (once); return its directory."""
        record = self.stat(ref)
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        target = root / "bundles" / record.owner / record.name / record.version
        if (target / MANIFEST_NAME).is_file():
            return PulledBundle(target, record)
        downloads = root / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{record.name}-", dir=downloads))
        try:
            archive = workdir / ARCHIVE_NAME
            self._fetch_archive(record, archive, progress)
            try:
                extract_archive(archive, target)
            except BundleError:
                if not (target / MANIFEST_NAME).is_file():  # not just a concurrent pull winning
                    raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return PulledBundle(target, record)

    # -- internals -------------------------------------------------------------------------

    def _read_record(self, key: str, *, missing_ok: bool = False) -> StoredVersion | None:
        try:
            data = self.objects.get_bytes(key)
        except NotFoundError:
            if missing_ok:
                return None
            raise
        try:
            return StoredVersion.model_validate_json(data)
        except ValidationError:
            raise StoreError(f"the record {key} in {self.objects.describe()} is corrupt") from None

    def _read_tag(self, owner: str, name: str, tag: str) -> str | None:
        key = _model_prefix(owner, name) + f"{TAGS_DIR}/{tag}"
        try:
            value = self.objects.get_bytes(key).decode().strip()
        except NotFoundError:
            return None
        except UnicodeDecodeError:
            raise StoreError(f"the tag {key} in {self.objects.describe()} is corrupt") from None
        return check_version(value)

    def _write_tag(self, owner: str, name: str, tag: str, version: str) -> None:
        key = _model_prefix(owner, name) + f"{TAGS_DIR}/{tag}"
        self.objects.put_bytes(key, check_version(version).encode())


def _user_tag(tag: str) -> str:
    if tag == LATEST:
        raise InvalidNameError(
            "'latest' is managed by the store (it always names the newest version); use another tag"
        )
    return check_tag(tag)


def default_owner() -> str:
    """``HUBSERVE_OWNER``, else the JupyterHub user, else the login name."""
    for var in ("HUBSERVE_OWNER", "JUPYTERHUB_USER"):
        if os.environ.get(var):
            return os.environ[var]
    return getpass.getuser()
