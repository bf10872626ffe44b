"""Deployments: a model version served by N replicas, behind the gateway at ``d/<owner>/<name>/``.

A deployment is named ``<owner>/<name>`` (the name defaults to the model's) and records what
the user asked for: the model reference (a version, or a tag resolved to a version when the
deployment is created or changed), the replica count, runtime resources (torch threads;
``cpu``/``memory`` are for the Kubernetes backend), per-API batching overrides, and who may
call it (:class:`~hub_service.access.Grants`). The metadata lives in the database; the deploy
backend makes it run (see :mod:`hub_service.backends`).

Changes are declarative. ``PATCH`` with ``replicas`` scales; with ``version`` (a version or a
tag of the same model) rolls to it; with ``rollback: true`` rolls back to the version of the
previous revision; ``resources``/``batching`` roll too (new processes); ``access`` takes
effect at once. Every change of version is a new *revision*, so rollbacks walk back through
history, and each roll is rolling (new replicas ready before old ones stop).

A deployment holds its bundle version: the registry refuses to delete a version that a
deployment uses, unless forced.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import AfterValidator, BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from model_runtime.bundle import BundleManifest
from model_runtime.envs import EnvBuildError
from model_runtime.errors import InvalidNameError
from model_runtime.naming import ModelRef, check_model_name
from model_runtime.runtime import BatchingOverride

from ._responses import AUTH_ERRORS, error_responses
from ._settings import HubServiceSettings
from ._state import Route, ServiceState, get_state
from ._store_calls import store_call
from .access import Grants, can_call, owner_for, require_manage
from .auth import AuthenticatedRoute, HubUser, require_user
from .backends import DeploymentSpec, DeploymentStatus, LogChunk
from .backends._cgroups import parse_quantity
from .db import Deployment, Revision, utcnow

router = APIRouter(
    prefix="/api/deployments",
    tags=["deployments"],
    responses=error_responses(*AUTH_ERRORS, 422),
    route_class=AuthenticatedRoute,
)

User = Annotated[HubUser, Depends(require_user)]
State = Annotated[ServiceState, Depends(get_state)]


# -- API models -----------------------------------------------------------------------------


class Resources(BaseModel):
    model_config = {"extra": "forbid"}

    threads: int | None = Field(None, ge=1, le=256, description="torch threads per replica.")
    cpu: str | None = Field(
        None,
        max_length=32,
        description="CPUs per replica, e.g. '500m' or '2': a request on Kubernetes, a quota "
        "(enforced) on the local backend.",
    )
    memory: str | None = Field(
        None,
        max_length=32,
        description="Memory per replica, e.g. '512Mi': a request on Kubernetes, a limit on "
        "the local backend (a replica past it is killed and reported out of memory).",
    )

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None:
            parse_quantity(value)  # ValueError: 422 with its message
        return value


class DeploymentCreate(BaseModel):
    model_config = {"extra": "forbid"}

    model: str = Field(
        description="``[owner/]name[:version-or-tag]`` of a pushed model (default tag latest)."
    )
    name: str | None = Field(None, description="Deployment name (default: the model's name).")
    owner: str | None = Field(None, description="Owner (hub admins only; default: you).")
    replicas: int = Field(1, ge=0)
    resources: Resources = Field(default_factory=Resources)
    batching: dict[str, BatchingOverride] = Field(default_factory=dict)
    access: Grants = Field(default_factory=Grants)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else check_model_name(value)


class DeploymentPatch(BaseModel):
    model_config = {"extra": "forbid"}

    replicas: int | None = Field(None, ge=0)
    version: str | None = Field(None, description="A version or tag of the same model.")
    rollback: bool = Field(False, description="Go back to the previous revision's version.")
    resources: Resources | None = None
    batching: dict[str, BatchingOverride] | None = None
    access: Grants | None = None


class ApiInfo(BaseModel):
    name: str
    path: str
    input: str
    output: str
    batchable: bool
    doc: str = ""


def _as_utc(value: datetime) -> datetime:
    """Times are stored in UTC, but SQLite hands them back without their zone: put it back."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


UTCDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class RevisionInfo(BaseModel):
    number: int
    version: str
    selector: str
    created_by: str
    created_at: UTCDatetime


class DeploymentInfo(BaseModel):
    owner: str
    name: str
    model: str = Field(description="owner/name of the model.")
    version: str
    selector: str
    url: str
    replicas: int
    resources: Resources
    batching: dict[str, BatchingOverride]
    access: Grants
    generation: int
    created_by: str
    created_at: UTCDatetime
    updated_at: UTCDatetime
    apis: list[ApiInfo]
    revisions: list[RevisionInfo]
    status: DeploymentStatus


# -- conversions ----------------------------------------------------------------------------


def route_of(row: Deployment) -> Route:
    return Route(grants=Grants(**(row.grants or {})), secret=row.secret)


def spec_of(row: Deployment) -> DeploymentSpec:
    return DeploymentSpec(
        owner=row.owner,
        name=row.name,
        model=ModelRef(row.model_owner, row.model_name, row.version),
        generation=row.generation,
        replicas=row.replicas,
        secret=row.secret,
        threads=(row.resources or {}).get("threads"),
        cpu=(row.resources or {}).get("cpu"),
        memory=(row.resources or {}).get("memory"),
        batching=dict(row.batching or {}),
    )


def _apis(manifest: BundleManifest) -> list[ApiInfo]:
    return [
        ApiInfo(
            name=api.name,
            path=f"/{api.name}",
            input=str(api.input.get("kind", "json")),
            output=str(api.output.get("kind", "json")),
            batchable=api.batchable,
            doc=api.doc,
        )
        for api in manifest.apis
    ]


async def _manifest(state: ServiceState, ref: ModelRef) -> BundleManifest:
    """The manifest of a version (immutable, so cached for the life of the service)."""
    key = str(ref)
    cached = state.manifests.get(key)
    if cached is None:
        record = await store_call(state.store, lambda: state.store.stat(ref))
        cached = record.manifest
        state.manifests[key] = cached
    return cached


async def info_of(state: ServiceState, row: Deployment) -> DeploymentInfo:
    try:
        manifest: BundleManifest | None = await _manifest(
            state, ModelRef(row.model_owner, row.model_name, row.version)
        )
    except HTTPException:  # the store is down or lost the version: the status says so
        manifest = None
    return DeploymentInfo(
        owner=row.owner,
        name=row.name,
        model=f"{row.model_owner}/{row.model_name}",
        version=row.version,
        selector=row.selector,
        url=state.settings.deployment_url(row.owner, row.name),
        replicas=row.replicas,
        resources=Resources(**(row.resources or {})),
        batching={k: BatchingOverride(**v) for k, v in (row.batching or {}).items()},
        access=Grants(**(row.grants or {})),
        generation=row.generation,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        apis=_apis(manifest) if manifest is not None else [],
        revisions=[
            RevisionInfo(
                number=r.number,
                version=r.version,
                selector=r.selector,
                created_by=r.created_by,
                created_at=r.created_at,
            )
            for r in row.revisions
        ],
        status=state.backend.status(row.owner, row.name),
    )


def _check_requirements(settings: HubServiceSettings, manifest: BundleManifest) -> None:
    """Refuse at once (422) a bundle whose requirements the hub's policy forbids, rather than
    a deployment that fails later while its environment builds."""
    if not settings.env_enabled:
        return
    try:
        settings.environments().check(manifest.requirements)
    except EnvBuildError as exc:
        raise HTTPException(422, f"{manifest.ref} cannot be deployed here: {exc.reason}") from None


def _check_batching(manifest: BundleManifest, batching: dict[str, BatchingOverride]) -> None:
    batchable = {api.name for api in manifest.apis if api.batchable}
    unknown = sorted(set(batching) - batchable)
    if unknown:
        names = ", ".join(sorted(batchable)) or "none"
        raise HTTPException(
            422, f"no batchable API named {', '.join(unknown)} (batchable APIs: {names})"
        )


def _check_replicas(state: ServiceState, replicas: int) -> None:
    limit = state.settings.limits.max_replicas
    if replicas > limit:
        raise HTTPException(422, f"at most {limit} replicas per deployment")


async def _resolve(state: ServiceState, user: HubUser, text: str) -> tuple[ModelRef, str]:
    """A model reference the caller may deploy, resolved to a version: (ref, selector)."""
    try:
        ref = ModelRef.parse(text, default_owner=user.name)
    except InvalidNameError as exc:
        raise HTTPException(422, str(exc)) from None
    require_manage(user, ref.owner, f"model {ref.owner}/{ref.name}")
    resolved = await store_call(state.store, lambda: state.store.resolve(ref))
    return resolved, ref.selector


# -- database helpers -----------------------------------------------------------------------


def _get_row(session: Session, owner: str, name: str) -> Deployment | None:
    return session.scalars(
        select(Deployment).where(Deployment.owner == owner, Deployment.name == name)
    ).one_or_none()


async def _visible_row(state: ServiceState, user: HubUser, owner: str, name: str) -> Deployment:
    row = await state.db.run(lambda s: _get_row(s, owner, name))
    if row is None or not can_call(user, row.owner, Grants(**(row.grants or {}))):
        raise HTTPException(404, f"deployment {owner}/{name} not found")
    return row


def _add_revision(row: Deployment, version: str, selector: str, by: str) -> None:
    number = (row.revisions[-1].number + 1) if row.revisions else 1
    row.revisions.append(Revision(number=number, version=version, selector=selector, created_by=by))


# -- routes ---------------------------------------------------------------------------------


@router.get("", responses=error_responses(422))
async def list_deployments(
    user: User, state: State, owner: Annotated[str | None, Query()] = None
) -> list[DeploymentInfo]:
    """Deployments you may manage or call (``owner`` narrows the list)."""

    def query(session: Session) -> list[Deployment]:
        statement = select(Deployment).order_by(Deployment.owner, Deployment.name)
        if owner is not None:
            statement = statement.where(Deployment.owner == owner)
        return list(session.scalars(statement))

    rows = await state.db.run(query)
    visible = [r for r in rows if can_call(user, r.owner, Grants(**(r.grants or {})))]
    return [await info_of(state, row) for row in visible]


@router.post("", status_code=201, responses=error_responses(400, 404, 409, 422))
async def create_deployment(
    body: DeploymentCreate, user: User, state: State, response: Response
) -> DeploymentInfo:
    """Deploy a pushed model version; replicas start in the background (see ``status``)."""
    owner = owner_for(user, body.owner)
    ref, selector = await _resolve(state, user, body.model)
    name = body.name or ref.name
    _check_replicas(state, body.replicas)
    manifest = await _manifest(state, ref)
    _check_batching(manifest, body.batching)
    _check_requirements(state.settings, manifest)
    assert ref.version is not None
    limit = state.settings.limits.max_deployments_per_user

    def insert(session: Session) -> Deployment:
        count = len(list(session.scalars(select(Deployment.id).where(Deployment.owner == owner))))
        if count >= limit:
            raise HTTPException(403, f"{owner} already has {count} deployments (the limit)")
        row = Deployment(
            owner=owner,
            name=name,
            model_owner=ref.owner,
            model_name=ref.name,
            selector=selector,
            version=ref.version or "",
            replicas=body.replicas,
            resources=body.resources.model_dump(exclude_none=True),
            batching={k: v.model_dump(exclude_none=True) for k, v in body.batching.items()},
            grants=body.access.model_dump(),
            secret=secrets.token_urlsafe(32),
            generation=1,
            created_by=user.name,
        )
        _add_revision(row, row.version, selector, user.name)
        session.add(row)
        session.flush()
        return row

    async with state.lock(owner, name):
        try:
            row = await state.db.run(insert)
        except IntegrityError:
            raise HTTPException(409, f"deployment {owner}/{name} already exists") from None
        state.routes[f"{owner}/{name}"] = route_of(row)
        await state.backend.apply(spec_of(row))
    response.headers["Location"] = f"{state.settings.base_url}api/deployments/{owner}/{name}"
    return await info_of(state, row)


@router.get("/{owner}/{name}", responses=error_responses(404, 422))
async def get_deployment(owner: str, name: str, user: User, state: State) -> DeploymentInfo:
    """A deployment's settings, revisions and live status (owner, admins, granted users)."""
    return await info_of(state, await _visible_row(state, user, owner, name))


@router.patch("/{owner}/{name}", responses=error_responses(400, 404, 409, 422))
async def update_deployment(
    owner: str, name: str, body: DeploymentPatch, user: User, state: State
) -> DeploymentInfo:
    """Scale, roll to another version, roll back, or change resources, batching, access."""
    require_manage(user, owner, f"deployment {owner}/{name}")
    if body.rollback and body.version is not None:
        raise HTTPException(422, "give either 'version' or 'rollback', not both")
    if body.replicas is not None:
        _check_replicas(state, body.replicas)
    async with state.lock(owner, name):
        row = await state.db.run(lambda s: _get_row(s, owner, name))
        if row is None:
            raise HTTPException(404, f"deployment {owner}/{name} not found")
        target: tuple[str, str] | None = None  # (version, selector)
        if body.rollback:
            if len(row.revisions) < 2:
                raise HTTPException(409, f"{owner}/{name} has no earlier revision to roll back to")
            previous = row.revisions[-2]
            target = (previous.version, previous.selector)
        elif body.version is not None:
            ref, selector = await _resolve(
                state, user, f"{row.model_owner}/{row.model_name}:{body.version}"
            )
            target = (ref.version or "", selector)
        version = target[0] if target else row.version
        manifest = await _manifest(state, ModelRef(row.model_owner, row.model_name, version))
        batching = body.batching
        if batching is None:
            batching = {k: BatchingOverride(**v) for k, v in (row.batching or {}).items()}
        _check_batching(manifest, batching)
        _check_requirements(state.settings, manifest)

        def change(session: Session) -> Deployment:
            current = _get_row(session, owner, name)
            if current is None:
                raise HTTPException(404, f"deployment {owner}/{name} not found")
            rolls = False
            if target is not None and (target[0] != current.version or body.rollback):
                current.version, current.selector = target
                _add_revision(current, target[0], target[1], user.name)
                rolls = True
            if body.replicas is not None:
                current.replicas = body.replicas
            if body.resources is not None:
                resources = body.resources.model_dump(exclude_none=True)
                rolls = rolls or resources != current.resources
                current.resources = resources
            if body.batching is not None:
                new = {k: v.model_dump(exclude_none=True) for k, v in body.batching.items()}
                rolls = rolls or new != current.batching
                current.batching = new
            if body.access is not None:
                current.grants = body.access.model_dump()
            if rolls:
                current.generation += 1
            current.updated_at = utcnow()
            session.flush()
            return current

        row = await state.db.run(change)
        state.routes[f"{owner}/{name}"] = route_of(row)
        await state.backend.apply(spec_of(row))
    return await info_of(state, row)


@router.delete("/{owner}/{name}", status_code=204, responses=error_responses(404, 422))
async def delete_deployment(owner: str, name: str, user: User, state: State) -> None:
    """Stop every replica (in-flight requests finish) and forget the deployment."""
    require_manage(user, owner, f"deployment {owner}/{name}")
    async with state.lock(owner, name):
        row = await state.db.run(lambda s: _get_row(s, owner, name))
        if row is None:
            raise HTTPException(404, f"deployment {owner}/{name} not found")
        state.routes.pop(f"{owner}/{name}", None)  # no new calls, then drain and stop
        await state.backend.remove(owner, name)

        def delete(session: Session) -> None:
            current = _get_row(session, owner, name)
            if current is not None:
                session.delete(current)

        await state.db.run(delete)


@router.get("/{owner}/{name}/logs", responses=error_responses(404, 422))
async def deployment_logs(
    owner: str,
    name: str,
    user: User,
    state: State,
    tail: Annotated[int, Query(ge=0, le=10_000)] = 200,
) -> list[LogChunk]:
    """The last ``tail`` lines of each replica's output (owner and admins)."""
    require_manage(user, owner, f"deployment {owner}/{name}")
    row = await state.db.run(lambda s: _get_row(s, owner, name))
    if row is None:
        raise HTTPException(404, f"deployment {owner}/{name} not found")
    return await state.backend.logs(owner, name, tail)


async def load_deployments(state: ServiceState) -> list[DeploymentSpec]:
    """Fill the gateway's table from the database and return every deployment as the
    backend's desired state (at service start)."""
    rows = await state.db.run(lambda s: list(s.scalars(select(Deployment))))
    state.routes.update({f"{row.owner}/{row.name}": route_of(row) for row in rows})
    return [spec_of(row) for row in rows]
