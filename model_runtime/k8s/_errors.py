"""The error of :mod:`model_runtime.k8s`: options that make no valid objects or files.

In a module of its own so that every module that checks options (the manifests, the
environment policy, the build context) raises the same class without importing another.
"""

from __future__ import annotations

from ..errors import HubserveError


class ManifestError(HubserveError, ValueError):
    """The deployment cannot be expressed as valid Kubernetes objects (bad option values)."""
