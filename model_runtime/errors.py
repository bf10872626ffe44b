"""Exceptions raised by hubserve's core.

Every error a user can cause (a bad bundle, an unknown model, a store that is down or rejects
our credentials) is a :class:`HubserveError` with a message meant to be shown as is: the CLI
prints it without a traceback and the services map each class to an HTTP status. Messages
never contain credentials. :class:`PackagingWarning` is the one warning: a bundle that was
built but may lack something at run time.
"""

from __future__ import annotations


class HubserveError(Exception):
    """Base class of every error hubserve reports to users."""


class InvalidNameError(HubserveError, ValueError):
    """An owner, model name, version, tag or reference does not follow the naming rules."""


class PackagingError(HubserveError):
    """A service cannot be turned into a bundle (code that cannot be captured, bad options)."""


class PackagingWarning(UserWarning):
    """A bundle was built, but may not run where it is deployed.

    Raised as a warning, not an error, because packaging cannot always tell: an import that
    no installed distribution provides and no local file defines (a module installed without
    metadata, an import inside a function that never ran) may still be satisfied by the
    requirements the user adds, or never be reached.
    """


class BundleError(HubserveError):
    """A bundle archive or directory is malformed, unsafe or does not match its checksums."""


class UnsafeBundleError(BundleError):
    """A bundle archive tries to escape its directory, holds links or devices, or is too big."""


class InvalidInput(HubserveError, ValueError):
    """Raise it in an API function to reject the caller's input: the client gets a 422.

    The runtime checks what the API declares (kind, dtype, shape) before calling it; anything
    else the function finds wrong with its input (an image too small to segment, a value out
    of range) is the caller's fault too, but any other exception there means the function
    itself failed and becomes a 500. The message is sent to the client as is (in a batch job,
    it is the item's error), so it should say what was wrong and what is expected. A
    :class:`ValueError`, so code calling the function directly can catch it as one.
    """


class ArtifactError(HubserveError):
    """A model artifact cannot be saved or loaded (format, missing trust for pickle, ...)."""


class StoreError(HubserveError):
    """The model store failed an operation."""


class NotFoundError(StoreError, LookupError):
    """A model, version or tag does not exist in the store."""


class VersionExistsError(StoreError):
    """A version is immutable and already exists with different content."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached (network error, server down, disk unavailable)."""


class StoreAuthError(StoreError):
    """The store rejected our credentials or denied access."""
