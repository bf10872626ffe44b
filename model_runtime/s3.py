"""How hubserve talks to S3: one client recipe, one reading of S3's error codes.

The model store and the runtime's ``s3://`` job locations both use the ``minio`` client.
Both need the same things: short connect timeouts and few retries (a server that is down is
reported in seconds, not after minutes of back-off), and the same sorting of S3 error codes
into "not found", "credentials refused" and "unreachable", each of which they turn into
their own error classes with messages that never include a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import urllib3
from minio import Minio
from minio.error import S3Error, ServerError

#: Multipart part size: large enough for few requests, small enough to stream.
PART_SIZE = 16 * 1024 * 1024
_CHUNK = 1024 * 1024

AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchUpload", "NoSuchObject"})

Failure = Literal["not_found", "auth", "unreachable", "other"]


@dataclass(frozen=True)
class S3Credentials:
    """Where an S3 server is and how to sign requests; ``endpoint`` is ``host[:port]``."""

    endpoint: str
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    secure: bool = True
    region: str | None = None


def make_client(credentials: S3Credentials, *, timeout: float = 10.0, pool: int = 10) -> Minio:
    """A client with short connect timeouts and two retries on 5xx and broken connections."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout, 5.0), read=max(timeout, 60.0)),
        retries=urllib3.Retry(
            total=2,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
            allowed_methods=None,
        ),
        maxsize=pool,
    )
    return Minio(
        credentials.endpoint,
        access_key=credentials.access_key,
        secret_key=credentials.secret_key,
        secure=credentials.secure,
        region=credentials.region,
        http_client=http,
    )


def classify(exc: BaseException) -> Failure:
    """What kind of failure an exception from the minio client is."""
    if isinstance(exc, S3Error):
        if exc.code in NOT_FOUND_CODES:
            return "not_found"
        if exc.code in AUTH_CODES:
            return "auth"
        return "other"
    if isinstance(exc, LocalWriteError):
        return "other"
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, ServerError)):
        return "unreachable"
    return "other"


class IncompleteDownload(OSError):
    """The server ended the stream before the whole object arrived."""


class LocalWriteError(OSError):
    """The object could not be written to the local file (a full disk, no permission).

    Its own class because it is an ``OSError`` like a broken connection, yet the server is not
    to blame: callers must not report it as the server being unreachable.
    """


def download(
    client: Minio,
    bucket: str,
    key: str,
    dest: Path,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Stream one object to ``dest``, checking that every byte the server announced came.

    Failures to write ``dest`` raise :class:`LocalWriteError`; the rest is the server's.
    """
    response = client.get_object(bucket, key)
    try:
        total = int(response.headers.get("Content-Length", -1))
        done = 0
        with _open_for_writing(dest) as out:
            for chunk in response.stream(_CHUNK):
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise LocalWriteError(exc.errno, exc.strerror, str(dest)) from None
                done += len(chunk)
                if progress:
                    progress(done, max(total, done))
        if total >= 0 and done != total:
            raise IncompleteDownload(f"the download of {key} stopped at {done}/{total} bytes")
    finally:
        response.close()
        response.release_conn()


@contextmanager
def _open_for_writing(dest: Path) -> Iterator[BinaryIO]:
    try:
        out = dest.open("wb")
    except OSError as exc:
        raise LocalWriteError(exc.errno, exc.strerror, str(dest)) from None
    try:
        yield out
    finally:
        try:
            out.close()  # flushes: a full disk may show only here
        except OSError as exc:
            raise LocalWriteError(exc.errno, exc.strerror, str(dest)) from None
