"""The Python client of the hubserve service (also ``hubserve.Client``).

Push models, deploy them, call them, watch them, from a notebook or any Python program::

    from jupyter_extension.client import Client

    client = Client()  # in a JupyterHub server: $HUBSERVE_URL and $JUPYTERHUB_API_TOKEN
    version = client.push(service)  # a model_runtime.Service, a file.py:var, a bundle...
    client.deploy(version, replicas=2, wait=True)
    client.predict("iris", "predict", np.array([[5.1, 3.5, 1.4, 0.2]], dtype="float32"))
    client.rollback("iris", wait=True)

:class:`AsyncClient` has the same methods, awaited. Answers are typed objects (pydantic
models mirroring the service's JSON); failures are :class:`HubserveClientError` subclasses
carrying the service's message, never the token.
"""

from ._async import AsyncClient
from ._errors import (
    ConfigurationError,
    Conflict,
    DeploymentFailed,
    Forbidden,
    HubserveClientError,
    HubserveTimeout,
    InvalidRequest,
    NotFound,
    ServerError,
    ServiceUnavailable,
    Unauthorized,
)
from ._models import (
    Access,
    ApiInfo,
    BatchingSettings,
    BundleApi,
    BundleInfo,
    Deployment,
    DeploymentStatus,
    HubIdentity,
    Job,
    JobItem,
    LogChunk,
    ModelDetail,
    ModelSummary,
    ModelVersion,
    ReplicaStatus,
    Resources,
    Revision,
    VersionSummary,
)
from ._sync import Client

__all__ = [
    "Access",
    "ApiInfo",
    "AsyncClient",
    "BatchingSettings",
    "BundleApi",
    "BundleInfo",
    "Client",
    "ConfigurationError",
    "Conflict",
    "Deployment",
    "DeploymentFailed",
    "DeploymentStatus",
    "Forbidden",
    "HubIdentity",
    "HubserveClientError",
    "HubserveTimeout",
    "InvalidRequest",
    "Job",
    "JobItem",
    "LogChunk",
    "ModelDetail",
    "ModelSummary",
    "ModelVersion",
    "NotFound",
    "ReplicaStatus",
    "Resources",
    "Revision",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "VersionSummary",
]
