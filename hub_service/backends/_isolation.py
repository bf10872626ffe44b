"""How the local backend isolates replicas: each in a sandbox, as an unprivileged user.

:mod:`model_runtime.sandbox` makes the sandboxes; this module decides what each replica's
sandbox holds (:meth:`Isolation.profile`):

* the **account**: ``user`` (default ``hubserve-models``, a system user ``make up`` creates),
  or with ``{owner}`` the deploying hub user's own OS account, as JupyterHub's
  LocalProcessSpawner runs each user's server (a deployment whose owner has none fails);
  never root, never the service's own user;
* **read-only**: its bundle and its environment; **hidden**: the service's data folder (its
  database, every bundle, log and state file), the environments' folder, and the admin's
  ``hidden`` paths, on top of the homes, ``/tmp`` and ``/run`` that every sandbox hides;
* **read-write**: its owner's job folders (:func:`job_folders`): the job locations without
  ``{user}``, and with ``/home/{user}`` among them, ``/home/<owner>``. Never another user's:
  an owner may share a deployment with anybody without their say, and a folder the models'
  account may write is a folder a model could plant code in. So other callers' jobs use the
  job locations shared by all, or remote ones (``s3://``, ``webdav://``). Symbolic links are
  refused on the way to a job folder (one could lead into the service's files);
* a private ``/tmp`` of ``tmp_size`` bytes (its pages count towards the replica's memory).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model_runtime.sandbox import Account, Profile, SandboxError, probe

from ._cgroups import DEFAULT_PIDS

#: With ``{owner}``: the lowest uid a hub user's account may have (below: system accounts,
#: such as postgres or hubserve-models itself, which a hub user named so must not become).
MIN_OWNER_UID = 1000
#: The account models run as by default.
DEFAULT_USER = "hubserve-models"
OWNER_PLACEHOLDER = "{owner}"
_USER_PLACEHOLDER = "{user}"


@dataclass(frozen=True)
class Isolation:
    """The local backend's sandbox settings (see the module docstring)."""

    user: str = DEFAULT_USER
    tmp_size: int = 1 << 30
    hidden: tuple[str, ...] = ()

    def check(self) -> None:
        """Refuse (SandboxError, one line) unless replicas can be sandboxed here."""
        if OWNER_PLACEHOLDER in self.user and self.user != OWNER_PLACEHOLDER:
            raise SandboxError(
                f"the models' user is a name or {OWNER_PLACEHOLDER}, not {self.user!r}"
            )
        name = "nobody" if self.user == OWNER_PLACEHOLDER else self.user
        probe(Profile(Account.named(name), tmp_size=1 << 20))

    def account(self, owner: str) -> Account:
        if self.user == OWNER_PLACEHOLDER:
            try:
                return Account.named(owner, min_uid=MIN_OWNER_UID)
            except SandboxError as exc:
                raise SandboxError(f"{exc} (models run as their owner's OS account)") from None
        return Account.named(self.user)

    def profile(
        self,
        owner: str,
        *,
        shown: Sequence[Path],
        writable: Sequence[str],
        hidden: Sequence[Path],
        limit_processes: bool,
    ) -> Profile:
        """The sandbox of one replica of ``owner``'s deployment."""
        return Profile(
            account=self.account(owner),
            read_only=tuple(str(p) for p in shown),
            writable=tuple(writable),
            hidden=tuple(str(p) for p in (*hidden, *self.hidden)),
            tmp_size=self.tmp_size,
            max_processes=DEFAULT_PIDS if limit_processes else None,
        )


def job_folders(locations: Sequence[str], owner: str) -> tuple[str, ...]:
    """The local folders among ``locations`` that a sandbox of ``owner``'s shows read-write,
    each once: those without ``{user}``, and the others with ``{user}`` as ``owner``."""
    folders: set[str] = set()
    for entry in locations:
        if not entry.startswith("/"):
            continue  # s3://, webdav://: reached over the network
        if _USER_PLACEHOLDER in entry:
            if owner in (".", "..") or "/" in owner:
                continue
            entry = entry.replace(_USER_PLACEHOLDER, owner)
        folders.add(os.path.normpath(entry))
    return tuple(sorted(f for f in folders if f != "/"))
