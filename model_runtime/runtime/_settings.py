"""Runtime configuration: ``hubserve serve`` options and ``HUBSERVE_RUNTIME_*`` variables.

The hub service starts runtimes as subprocesses and passes their configuration in the
environment (so secrets never appear in a process listing); a person runs ``hubserve serve``
with options. Both end up in one :class:`RuntimeSettings`, read when the server starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._locations import JobLocations


class BatchingOverride(BaseModel):
    """Per-API batching settings that replace the bundle's (e.g. set at deploy time)."""

    max_batch_size: int | None = Field(None, ge=1, le=65536)
    max_latency_ms: float | None = Field(None, ge=0, le=60_000)


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUBSERVE_RUNTIME_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: torch intra-op threads per worker; default: the CPUs this process may use.
    threads: int | None = Field(None, ge=1)
    device: str = "cpu"
    trust_pickle: bool = False
    #: The gateway's shared secret; when set, every route but the health checks requires it.
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_queue_rows: int = Field(1024, ge=1)
    #: Seconds a request may wait for the model (queue included) before it gets a 504; below
    #: the hub gateway's own timeout (300 s), so callers see why.
    request_timeout: float = Field(240.0, gt=0)
    batching: dict[str, BatchingOverride] = Field(default_factory=dict)
    warmup: bool = True
    work_dir: Path | None = None
    #: Folders and URI prefixes (``/data/in``, ``s3://bucket/jobs``) that batch jobs may read
    #: and write, below which every job location must lie; empty: any location. ``{user}``
    #: in a path (``/home/{user}``, ``s3://jobs/{user}``) is the calling hub user's name, and
    #: only counts with ``api_token`` set (see :mod:`model_runtime.runtime._locations`).
    job_locations: JobLocations = Field(default_factory=list)
    graceful_timeout: float = 30.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    access_log: bool = False
    cache_dir: Path | None = None
    #: A socket bound to ``host``:``port`` by the process that started this runtime, to
    #: listen on instead of binding: the local backend's launcher binds before any of the
    #: bundle's code runs, so no other process (another replica, on the same loopback) can
    #: take the port meanwhile and receive the gateway's secret.
    socket_fd: int | None = None

    def torch_threads(self) -> int:
        if self.threads is not None:
            return self.threads
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
