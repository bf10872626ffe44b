"""The S3 object backend (MinIO, SeaweedFS, AWS...), on the ``minio`` client.

Single PUTs are atomic in S3, and large archives go up as multipart uploads, which only
become an object when completed (the client aborts the upload on failure): a broken push
never produces a partial object. Connections use short timeouts and few retries, so a store
that is down is reported within seconds instead of hanging a notebook.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import urllib3
from minio.error import MinioException, S3Error

from ..errors import NotFoundError, StoreAuthError, StoreError, StoreUnavailableError
from ..s3 import (
    PART_SIZE,
    IncompleteDownload,
    LocalWriteError,
    S3Credentials,
    classify,
    download,
    make_client,
)
from ._objects import ObjectBackend, ObjectInfo, ProgressCallback


class _Progress:
    """Adapts minio's progress protocol (``set_meta``/``update``) to a callback."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback
        self.total = 0
        self.done = 0

    def set_meta(self, object_name: str, total_length: int) -> None:
        self.total = total_length

    def update(self, size: int) -> None:
        self.done += size
        self.callback(self.done, self.total)


class S3Objects(ObjectBackend):
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str | None,
        secret_key: str | None,
        secure: bool = True,
        region: str | None = None,
        prefix: str = "",
        create_bucket: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.create_bucket = create_bucket
        self._bucket_checked = False
        credentials = S3Credentials(endpoint, access_key, secret_key, secure, region)
        self.client = make_client(credentials, timeout=timeout)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint}"

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _error(self, exc: Exception, key: str = "") -> StoreError:
        where = f"{self.describe()}" + (f" ({key})" if key else "")
        failure = classify(exc)
        if failure == "unreachable":
            return StoreUnavailableError(
                f"cannot reach S3 at {self.endpoint}: {type(exc).__name__}"
            )
        if isinstance(exc, S3Error):
            if failure == "not_found":
                missing = f"bucket {self.bucket!r}" if exc.code == "NoSuchBucket" else key
                return NotFoundError(f"{missing} not found in {self.describe()}")
            if failure == "auth":
                return StoreAuthError(
                    f"S3 refused our credentials or denied access ({exc.code}) at {where}"
                )
            return StoreError(f"S3 error {exc.code} at {where}: {exc.message}")
        if isinstance(exc, MinioException):
            return StoreError(f"S3 error at {where}: {exc}")
        return StoreError(f"S3 error at {where}: {type(exc).__name__}")

    def _call(self, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (S3Error, MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error(exc, key) from None

    def _ensure_bucket(self) -> None:
        if self._bucket_checked or not self.create_bucket:
            return
        if not self._call("", self.client.bucket_exists, self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise self._error(exc) from None
            except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise self._error(exc) from None
        self._bucket_checked = True

    def put_file(self, key: str, path: Path, progress: ProgressCallback | None = None) -> None:
        self._ensure_bucket()
        size = path.stat().st_size
        with path.open("rb") as fh:
            self._call(
                key,
                self.client.put_object,
                self.bucket,
                self._key(key),
                fh,
                size,
                part_size=PART_SIZE,
                progress=_Progress(progress) if progress else None,
                num_parallel_uploads=1,
            )

    def put_bytes(self, key: str, data: bytes) -> None:
        self._ensure_bucket()
        self._call(
            key,
            self.client.put_object,
            self.bucket,
            self._key(key),
            io.BytesIO(data),
            len(data),
            content_type="application/json",
        )

    def get_bytes(self, key: str) -> bytes:
        response = self._call(key, self.client.get_object, self.bucket, self._key(key))
        try:
            data: bytes = response.read()
            return data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, key) from None
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, dest: Path, progress: ProgressCallback | None = None) -> None:
        try:
            download(self.client, self.bucket, self._key(key), dest, progress)
        except IncompleteDownload as exc:
            raise StoreUnavailableError(f"{exc} from {self.describe()}") from None
        except LocalWriteError:
            raise  # our disk, not the store: the caller reports it as the OSError it is
        except (S3Error, MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, key) from None

    def scan(self, prefix: str) -> Iterator[ObjectInfo]:
        try:
            for obj in self.client.list_objects(
                self.bucket, prefix=self._key(prefix), recursive=True
            ):
                if obj.object_name is None or obj.is_dir:
                    continue
                yield ObjectInfo(
                    obj.object_name[len(self.prefix) :],
                    obj.size or 0,
                    obj.last_modified or datetime.now(timezone.utc),
                )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return
            raise self._error(exc, prefix) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, prefix) from None

    def list_children(self, prefix: str) -> list[str]:
        names: list[str] = []
        try:
            for obj in self.client.list_objects(
                self.bucket, prefix=self._key(prefix), recursive=False
            ):
                # Filer-backed servers (SeaweedFS) keep emptied "directories": skip those.
                if obj.is_dir and obj.object_name and self._has_objects(obj.object_name):
                    names.append(obj.object_name[len(self._key(prefix)) :].rstrip("/"))
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise self._error(exc, prefix) from None
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error(exc, prefix) from None
        return sorted(names)

    def _has_objects(self, full_prefix: str) -> bool:
        listing = self.client.list_objects(self.bucket, prefix=full_prefix, recursive=True)
        return next(iter(listing), None) is not None

    def delete(self, key: str) -> None:
        self._call(key, self.client.remove_object, self.bucket, self._key(key))
