"""What the running service holds, shared by its routers: settings, store, database, backend.

:func:`create_app` builds one :class:`ServiceState` and keeps it in ``app.state.hubserve``;
routes get it through the :func:`get_state` dependency, so tests can build the app around
their own store or database.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from model_runtime.store import Store

from ._settings import HubServiceSettings
from .db import Database, Deployment


@dataclass
class ServiceState:
    settings: HubServiceSettings
    store: Store
    db: Database

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
