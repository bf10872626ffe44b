"""Deploy backends: where the replicas of a deployment run.

The service decides *what* should run — a :class:`DeploymentSpec`: this bundle version, this
many replicas, these runtime settings — and a backend makes it so and keeps it so. Backends
are declarative: :meth:`Backend.apply` hands over the whole desired state of a deployment,
whatever changed (a new version, another replica count), and the backend converges to it in
the background, rolling: replicas of a new generation become ready before the old ones are
drained and stopped, so callers see no failed request during a roll.

The gateway asks the backend for a replica to send each call to (:meth:`Backend.choose`);
the backend answers with a ready replica that has the fewest requests in flight.

Backends: :class:`~hub_service.backends.local.LocalBackend` (supervised processes on this
machine, the embedded default) and :class:`~hub_service.backends.kubernetes.KubernetesBackend`
(a Deployment, Service and optionally Ingress and autoscaler per deployment in a cluster).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from model_runtime.naming import ModelRef


@dataclass(frozen=True)
class DeploymentSpec:
    """What should run for one deployment; ``generation`` changes with what replicas run."""

    owner: str
    name: str
    model: ModelRef
    generation: int
    replicas: int
    secret: str
    threads: int | None = None
    #: Resource requests for backends that schedule (Kubernetes: "500m", "1Gi").
    cpu: str | None = None
    memory: str | None = None
    batching: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.name}"


class ReplicaState(str, Enum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    CRASHED = "crashed"
    STOPPING = "stopping"


class ReplicaStatus(BaseModel):
    id: str
    version: str
    generation: int
    state: ReplicaState
    restarts: int = Field(description="How often the backend restarted this replica.")
    started_at: datetime
    ready_at: datetime | None = None
    in_flight: int = Field(0, description="Requests the gateway has open on it.")
    last_error: str | None = None


class EnvironmentStatus(BaseModel):
    """The Python environment the newest version runs in (see :mod:`model_runtime.envs`)."""

    kind: str = Field(description="runtime | overlay | full")
    reason: str = Field(description="Why this kind: what it adds, or what conflicts.")
    key: str | None = Field(None, description="Content address; shared by equal requirements.")
    packages: dict[str, str] = Field(
        default_factory=dict, description="What it installs beside or instead of the runtime's."
    )


class DeploymentStatus(BaseModel):
    desired: int
    ready: int
    updated: int = Field(description="Ready replicas of the newest generation.")
    phase: str = Field(
        description="preparing environment | progressing | ready | degraded | failed | stopped"
    )
    message: str | None = None
    environment: EnvironmentStatus | None = None
    replicas: list[ReplicaStatus] = Field(default_factory=list)


class Endpoint(ABC):
    """A ready replica the gateway may call; counts the requests it has in flight."""

    id: str
    in_flight: int

    @property
    @abstractmethod
    def address(self) -> str:
        """Base URL of the replica (``http://host:port``)."""

    def acquire(self) -> None:
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1


class LogChunk(BaseModel):
    replica: str
    lines: list[str]


class Backend(ABC):
    """Runs deployments; see the module docstring for the contract."""

    @abstractmethod
    async def start(self, specs: list[DeploymentSpec]) -> None:
        """Take over after a (re)start of the service: converge to ``specs``, adopting what
        still runs of them and stopping what belongs to no deployment any more."""

    @abstractmethod
    async def apply(self, spec: DeploymentSpec) -> None:
        """Make ``spec`` the desired state of its deployment (create or update)."""

    @abstractmethod
    async def remove(self, owner: str, name: str) -> None:
        """Stop and forget every replica of a deployment (returns when they are gone)."""

    @abstractmethod
    def status(self, owner: str, name: str) -> DeploymentStatus:
        """The deployment as the backend sees it now."""

    @abstractmethod
    def choose(
        self,
        owner: str,
        name: str,
        prefer: str | None = None,
        avoid: Collection[str] = (),
    ) -> Endpoint | None:
        """The ready replica ``prefer`` names if there is one (batch jobs live in the replica
        that runs them), else a ready replica with the fewest requests in flight, or ``None``.
        Replicas whose ids are in ``avoid`` (the gateway could not connect to them just now)
        are not chosen."""

    @abstractmethod
    async def logs(self, owner: str, name: str, tail: int) -> list[LogChunk]:
        """The last ``tail`` lines of each replica's output."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop supervising (and stop the replicas, for backends that own processes)."""
