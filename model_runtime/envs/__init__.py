"""Per-bundle Python environments: every bundle runs with the packages it was packaged with.

A bundle's ``requirements.txt`` lists what its code and artifacts import, pinned to the
versions of the notebook kernel that packaged it. The runtime's own environment (torch,
numpy, FastAPI ...) rarely has all of it: a scikit-learn model needs scikit-learn, a model
trained against an older pandas needs that pandas. This package gives each bundle an
environment built from its requirements by `uv <https://docs.astral.sh/uv/>`_:

* **content-addressed**: the key hashes the Python version, platform, the runtime's own
  packages, the requirement set and the package sources, so two bundles with the same
  requirements share one environment, and a build happens once however many deploys ask for
  it at the same time (a file lock; the others wait and reuse it);
* **layered on the runtime**: what the runtime already has at a compatible version is never
  installed again. Missing packages go into an *overlay* folder put first on the path of a
  replica forked from the zygote (no second torch import); a requirement that conflicts with
  a package the runtime itself imports gets a *full* separate environment with its own
  interpreter. :func:`plan` says which, and why;
* **governed by the admin** (:class:`EnvironmentPolicy`): indexes, a local wheelhouse for
  air-gapped hubs (or pip's configuration on the host), wheels only by default, allow and
  deny lists, a size cap per environment, a cache size with least-recently-used eviction,
  and an off switch;
* **never half-built**: builds happen in a scratch folder and are renamed into place when
  complete; failures are :class:`EnvBuildError` with a one-line ``reason`` (the installer's
  whole output is in :meth:`EnvironmentManager.log_file`).

The hub service's local backend, ``hubserve serve --env`` and ``hubserve env`` (also the
Kubernetes init container) all go through :class:`EnvironmentManager`.
"""

from __future__ import annotations

from ._build import Environment, EnvironmentManager, failure_reason
from ._plan import EnvBuildError, EnvPolicyError, Plan, normalize, plan
from ._policy import EnvironmentPolicy, pip_configuration

__all__ = [
    "EnvBuildError",
    "EnvPolicyError",
    "Environment",
    "EnvironmentManager",
    "EnvironmentPolicy",
    "Plan",
    "failure_reason",
    "normalize",
    "pip_configuration",
    "plan",
]
