"""What the service answers, as typed objects.

These mirror the JSON of the hub service (:mod:`hub_service.registry`,
:mod:`hub_service.deployments`, :mod:`hub_service.backends`) and of the runtime's batch jobs
(:mod:`model_runtime.runtime._jobs`) without importing them: the client runs in notebooks that
need not have the service installed, and may talk to a newer service. So every model ignores
fields it does not know (``extra="ignore"``), and closed sets of the service (replica states,
phases) are plain strings rather than enums that a new value would break.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Access",
    "ApiInfo",
    "BatchingSettings",
    "BundleApi",
    "BundleInfo",
    "Deployment",
    "DeploymentStatus",
    "HubIdentity",
    "Job",
    "JobItem",
    "LogChunk",
    "ModelDetail",
    "ModelSummary",
    "ModelVersion",
    "ReplicaStatus",
    "Resources",
    "Revision",
    "VersionSummary",
]

#: Job states after which nothing changes any more.
FINAL_JOB_STATES = frozenset({"succeeded", "completed_with_errors", "failed", "cancelled"})


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# -- identity -------------------------------------------------------------------------------


class HubIdentity(_Answer):
    """Who the token belongs to, as the service sees it (``GET api/me``)."""

    name: str
    admin: bool = False
    groups: list[str] = Field(default_factory=list)
    scopes: list[str] = Field(default_factory=list)


# -- the registry ---------------------------------------------------------------------------


class ModelSummary(_Answer):
    """One row of ``GET api/models``."""

    owner: str
    name: str

    @property
    def key(self) -> str:
        """``owner/name``."""
        return f"{self.owner}/{self.name}"


class VersionSummary(_Answer):
    """One version in a model's listing."""

    owner: str
    name: str
    version: str
    created_at: datetime
    pushed_at: datetime
    size: int
    tags: list[str] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        """``owner/name:version``, what :meth:`Client.deploy` and others accept."""
        return f"{self.owner}/{self.name}:{self.version}"


class ModelDetail(_Answer):
    """A model: its versions (newest first) and its tags (``latest`` included)."""

    owner: str
    name: str
    versions: list[VersionSummary]
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.name}"


class BundleApi(_Answer):
    """An API as the bundle's manifest describes it."""

    name: str
    input: dict[str, Any] = Field(default_factory=dict)
    output: dict[str, Any] = Field(default_factory=dict)
    batchable: bool = False
    batching: dict[str, Any] = Field(
        default_factory=dict, description="The bundle's max_batch_size and max_latency_ms."
    )
    signature: str = ""
    doc: str = ""


class BundleInfo(_Answer):
    """The parts of a bundle's manifest (``bundle.json``) that people look at."""

    name: str
    version: str
    created_at: datetime
    creator: str = ""
    description: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    framework: str = "python"
    requirements: list[str] = Field(default_factory=list)
    environment: dict[str, str] = Field(default_factory=dict)
    apis: list[BundleApi] = Field(default_factory=list)


class ModelVersion(_Answer):
    """A stored version: who pushed it when, its archive, its manifest and its tags."""

    owner: str
    name: str
    version: str
    pushed_at: datetime
    pushed_by: str
    archive_sha256: str
    archive_size: int
    manifest: BundleInfo
    tags: list[str] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        """``owner/name:version``, what :meth:`Client.deploy` and others accept."""
        return f"{self.owner}/{self.name}:{self.version}"

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.name}"


# -- deployments ----------------------------------------------------------------------------


class Resources(_Answer):
    threads: int | None = None
    cpu: str | None = None
    memory: str | None = None


class BatchingSettings(_Answer):
    """Per-API batching overrides set at deploy time (``None``: the bundle's own)."""

    max_batch_size: int | None = None
    max_latency_ms: float | None = None


class Access(_Answer):
    """Who, besides the owner and hub admins, may call a deployment."""

    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    public: bool = False


class ApiInfo(_Answer):
    """An API a deployment serves: call it with :meth:`Client.predict` at ``name``."""

    name: str
    path: str
    input: str
    output: str
    batchable: bool = False
    doc: str = ""


class Revision(_Answer):
    """One entry of a deployment's version history (rollbacks walk back through it)."""

    number: int
    version: str
    selector: str
    created_by: str
    created_at: datetime


class ReplicaStatus(_Answer):
    id: str
    version: str
    generation: int
    state: str
    restarts: int = 0
    started_at: datetime
    ready_at: datetime | None = None
    in_flight: int = 0
    last_error: str | None = None


class EnvironmentInfo(_Answer):
    """The Python environment the deployment's newest version runs in: ``runtime`` (the
    service's own), ``overlay`` (extra packages on it) or ``full`` (a separate one)."""

    kind: str
    reason: str
    key: str | None = None
    packages: dict[str, str] = Field(default_factory=dict)


class DeploymentStatus(_Answer):
    """What the replicas do now; ``phase`` is preparing environment, progressing, ready,
    degraded, failed or stopped."""

    desired: int
    ready: int
    updated: int
    phase: str
    message: str | None = None
    environment: EnvironmentInfo | None = None
    replicas: list[ReplicaStatus] = Field(default_factory=list)

    @property
    def settled(self) -> bool:
        """Ready, and exactly the desired replicas run the newest revision."""
        return self.phase == "ready" and self.ready == self.updated == self.desired


class Deployment(_Answer):
    """A deployment: its settings, history and live status."""

    owner: str
    name: str
    model: str
    version: str
    selector: str
    url: str
    replicas: int
    resources: Resources = Field(default_factory=Resources)
    batching: dict[str, BatchingSettings] = Field(default_factory=dict)
    access: Access = Field(default_factory=Access)
    generation: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    apis: list[ApiInfo] = Field(default_factory=list)
    revisions: list[Revision] = Field(default_factory=list)
    status: DeploymentStatus

    @property
    def key(self) -> str:
        """``owner/name``, what every deployment method accepts."""
        return f"{self.owner}/{self.name}"


class LogChunk(_Answer):
    """The last lines of one replica's output."""

    replica: str
    lines: list[str] = Field(default_factory=list)


# -- batch jobs -----------------------------------------------------------------------------


class JobItem(_Answer):
    """The outcome of one input file of a job; ``outputs`` are relative to its output."""

    item: str
    ok: bool
    outputs: list[str] = Field(default_factory=list)
    result: Any = None
    error: str | None = None
    seconds: float = 0.0


class Job(_Answer):
    """A batch job run by a path API over the files of an input location.

    The runtime answers a page of ``items`` at a time, starting with item ``items_from``;
    the client's methods gather the pages, so the jobs they return hold every item processed
    so far, from the first.
    """

    id: str
    api: str
    input: str
    output: str
    pattern: str | None = None
    state: str
    cancel_requested: bool = False
    items_total: int
    items_done: int = 0
    items_failed: int = 0
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    items: list[JobItem] = Field(default_factory=list)
    items_from: int = 0
    progress: float = 0.0

    @property
    def finished(self) -> bool:
        """Whether the job is over (succeeded, completed with errors, failed or cancelled)."""
        return self.state in FINAL_JOB_STATES
