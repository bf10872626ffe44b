"""The hub service's FastAPI application.

Every route lives under the service prefix (``/services/hubserve/`` by default), because the
JupyterHub proxy forwards requests with their full path. :func:`create_app` builds the app
from :class:`~hub_service._settings.HubServiceSettings`. It serves:

* ``GET {prefix}``: a redirect to the API docs (the hub's Services menu links here);
* ``GET {prefix}healthz``: liveness, no authentication (the hub and ``make up`` poll it);
* ``GET {prefix}api/me``: the caller's hub identity (name, admin flag, groups, scopes);
* ``GET {prefix}login`` and ``{prefix}oauth_callback``: the browser login through the hub
  (only when the service has its own hub token, i.e. not in the static-token dev mode);
* ``{prefix}api/models...``: the model registry (:mod:`hub_service.registry`);
* ``{prefix}api/deployments...``: deployments (:mod:`hub_service.deployments`);
* ``{prefix}d/<owner>/<name>/<path>``: the prediction gateway (:mod:`hub_service.gateway`);
* ``{prefix}docs`` and ``{prefix}openapi.json``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import RedirectResponse
from pydantic import BaseModel

from model_runtime import __version__
from model_runtime.store import Store, StoreSettings, open_store

from ._responses import AUTH_ERRORS, error_responses
from ._settings import HubServiceSettings
from ._state import ServiceState
from .auth import HubAuthenticator, HubUser, LoginRequired, require_user
from .backends import Backend
from .backends.local import LocalBackend
from .db import Database
from .deployments import load_deployments
from .deployments import router as deployments_router
from .gateway import Gateway, GatewayMiddleware
from .oauth import login_required_handler, oauth_router
from .registry import router as registry_router


def make_backend(settings: HubServiceSettings, store: Store) -> Backend:
    """The deploy backend ``settings.backend`` names.

    ``kubernetes`` reads its own settings from ``HUBSERVE_K8S_*`` and needs an S3 store
    (``settings.store``), whose bundles its pods pull; its client library is an extra
    (``pip install hubserve[kubernetes]``), imported only here.
    """
    if settings.backend == "kubernetes":
        try:
            from .backends._k8s_settings import KubernetesSettings
            from .backends.kubernetes import KubernetesBackend, env_policy_of
        except ImportError as exc:
            raise ValueError(
                "the kubernetes deploy backend needs the kubernetes client:"
                f" pip install 'hubserve[kubernetes]' ({exc})"
            ) from exc
        return KubernetesBackend(
            KubernetesSettings(),
            settings.store,
            job_locations=settings.job_locations,
            env_policy=env_policy_of(settings),
        )
    return LocalBackend(
        store,
        settings.data_dir,
        job_locations=settings.job_locations,
        environments=settings.environments(),
        isolation=settings.isolation(),
    )


class Health(BaseModel):
    status: str
    version: str


def create_app(
    settings: HubServiceSettings,
    *,
    authenticator: HubAuthenticator | None = None,
    store: Store | None = None,
    database: Database | None = None,
    backend: Backend | None = None,
) -> FastAPI:
    """The service app for ``settings``; the parts not given are built from the settings."""
    auth = authenticator or HubAuthenticator(settings)
    the_store = store or open_store(settings.store or None, StoreSettings())
    state = ServiceState(
        settings=settings,
        store=the_store,
        db=database or Database(settings.db_url),
        backend=backend or make_backend(settings, the_store),
    )
    prefix = settings.base_url.rstrip("/")
    gateway = Gateway(state)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(state.db.upgrade)
        await state.backend.start(await load_deployments(state))
        await gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()
            await state.backend.aclose()
            await auth.aclose()
            state.db.dispose()

    app = FastAPI(
        title="hubserve",
        version=__version__,
        description=(
            "Model registry, deployments and prediction gateway for JupyterHub. The gateway,"
            f" `ANY {prefix}/d/<owner>/<name>/<path>`, forwards calls to a deployment's"
            " runtime, whose own API is documented at `d/<owner>/<name>/docs`."
        ),
        docs_url=f"{prefix}/docs",
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,  # FastAPI's default is outside the prefix
        openapi_url=f"{prefix}/openapi.json",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = auth
    app.state.hubserve = state
    app.add_exception_handler(LoginRequired, login_required_handler)

    router = APIRouter(prefix=prefix)

    @router.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse(f"{prefix}/docs", status_code=302)

    @router.get("/healthz", tags=["health"])
    async def healthz() -> Health:
        return Health(status="ok", version=__version__)

    @router.get("/api/me", tags=["auth"], responses=error_responses(*AUTH_ERRORS))
    async def me(user: Annotated[HubUser, Depends(require_user)]) -> HubUser:
        """The hub identity of the caller."""
        return user

    if settings.oauth_enabled:
        router.include_router(oauth_router())
    router.include_router(registry_router)
    router.include_router(deployments_router)
    app.include_router(router)
    app.add_middleware(GatewayMiddleware, gateway=gateway)
    return app
