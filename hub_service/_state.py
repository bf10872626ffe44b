"""What the running service holds, shared by its routers: settings, store, database, backend.

:func:`create_app` builds one :class:`ServiceState` and keeps it in ``app.state.hubserve``;
routes get it through the :func:`get_state` dependency, so tests can build the app around
their own store or database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from model_runtime.bundle import BundleManifest
from model_runtime.store import Store

from ._settings import HubServiceSettings
from .access import Grants
from .backends import Backend
from .db import Database, Deployment


@dataclass(frozen=True)
class Route:
    """What the gateway needs to know about a deployment, kept in memory (no DB per call)."""

    grants: Grants
    secret: str


@dataclass
class ServiceState:
    settings: HubServiceSettings
    store: Store
    db: Database
    backend: Backend
    #: Manifests by ``owner/name:version`` (versions are immutable, so this never goes stale).
    manifests: dict[str, BundleManifest] = field(default_factory=dict)
    #: The gateway's table, ``owner/name`` → :class:`Route`; the deployment routes keep it
    #: in step with the database.
    routes: dict[str, Route] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @asynccontextmanager
    async def lock(self, owner: str, name: str) -> AsyncIterator[None]:
        """Serialize changes to one deployment (create, patch, delete)."""
        key = f"{owner}/{name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            yield

    async def versions_in_use(self, owner: str, name: str) -> dict[str, list[str]]:
        """``{version: ["owner/deployment", ...]}`` for deployments of the model owner/name."""

        def query(session: Session) -> dict[str, list[str]]:
            rows = session.execute(
                select(Deployment.version, Deployment.owner, Deployment.name).where(
                    Deployment.model_owner == owner, Deployment.model_name == name
                )
            )
            used: dict[str, list[str]] = {}
            for version, dep_owner, dep_name in rows:
                used.setdefault(version, []).append(f"{dep_owner}/{dep_name}")
            return used

        return await self.db.run(query)


def get_state(request: Request) -> ServiceState:
    state = request.app.state.hubserve
    if not isinstance(state, ServiceState):
        raise RuntimeError("the app has no ServiceState (build it with create_app)")
    return state
