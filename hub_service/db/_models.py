"""The service's tables: deployments and their revision history.

The model *registry* has no tables: the store is the source of truth for models, versions and
tags (its records are written commit-last), so the database holds only what the store cannot:
which versions run, for whom, and how. Replicas are not here either: they are the deploy
backend's business (the local backend keeps a state file per process, Kubernetes its objects).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Deployment(Base):
    """What a user asked for: a model version served by N replicas, callable by some users."""

    __tablename__ = "deployments"
    __table_args__ = (
        UniqueConstraint("owner", "name", name="uq_deployment_owner_name"),
        Index("ix_deployments_model", "model_owner", "model_name", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(64))
    model_owner: Mapped[str] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(64))
    #: What the user asked for (a version or a tag); ``version`` is what it resolved to.
    selector: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    replicas: Mapped[int] = mapped_column(Integer)
    #: ``{"threads": int | None, "cpu": str | None, "memory": str | None}``.
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: ``{api: {"max_batch_size": ..., "max_latency_ms": ...}}`` over the bundle's settings.
    batching: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: :class:`hub_service.access.Grants` as a dict.
    grants: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    #: The shared secret that runtimes of this deployment require from the gateway.
    secret: Mapped[str] = mapped_column(String(128))
    #: Incremented by every change of what should run (version, resources, batching).
    generation: Mapped[int] = mapped_column(Integer, default=1)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    revisions: Mapped[list[Revision]] = relationship(
        back_populates="deployment",
        cascade="all, delete-orphan",
        order_by="Revision.number",
        lazy="selectin",
    )


class Revision(Base):
    """One version a deployment ran, in order: what ``rollback`` goes back through."""

    __tablename__ = "deployment_revisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deployment_id: Mapped[int] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="revisions")
