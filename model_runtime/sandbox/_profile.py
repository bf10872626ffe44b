"""What one sandbox shows, hides and grants: a :class:`Profile`, and the OS account it runs as."""

from __future__ import annotations

import json
import os
import pwd
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HubserveError

#: Hidden in every sandbox (an empty, read-only folder in their place): homes, the machine's
#: temporary folders (a private ``/tmp`` replaces them), where JupyterHub keeps its secrets
#: by convention, containers' mounted secrets, the cgroup tree.
ALWAYS_HIDDEN = (
    "/root",
    "/home",
    "/tmp",
    "/var/tmp",
    "/run",
    "/etc/jupyterhub",
    "/srv/jupyterhub",
    "/var/lib/jupyterhub",
    "/sys/fs/cgroup",
)


class SandboxError(HubserveError):
    """A sandbox cannot be made here, or with these settings."""


@dataclass(frozen=True)
class Account:
    """The unprivileged OS user a sandbox runs as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def named(cls, name: str, *, min_uid: int = 1) -> Account:
        """The account ``name``; refused if missing, root (or in root's group), below
        ``min_uid``, or the caller's own user (a sandbox running as the service's user
        could read the service's files)."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxError(f"there is no OS user {name!r} to run models as") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise SandboxError(f"models never run as root, and OS user {name!r} is root's")
        if entry.pw_uid < min_uid:
            raise SandboxError(f"OS user {name!r} is a system account (uid {entry.pw_uid})")
        if entry.pw_uid == os.getuid():
            raise SandboxError(
                f"OS user {name!r} runs the service itself; models need a user of their own"
            )
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != 0)
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


@dataclass(frozen=True)
class Profile:
    """One sandbox: who runs in it and which folders it sees.

    Everything on the machine is read-only in it; of that, :data:`ALWAYS_HIDDEN` and
    ``hidden`` are replaced by empty folders (a hidden file by an unreadable one).
    ``writable`` folders (job folders) are then shown read-write, at their own paths, with
    whatever ``hidden`` holds within them hidden again; one reached through a symbolic link
    is left out (a user may have made the link, to lead it into hidden files). Last,
    ``read_only`` folders (a bundle, its environment) are shown read-only. The interpreter's
    folders are always shown. ``/tmp`` is a private ``tmp_size``-byte tmpfs, ``/dev`` has
    only the harmless devices, and ``/proc`` shows the sandbox's own processes.
    """

    account: Account
    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    tmp_size: int = 1 << 30
    open_files: int = 4096
    #: Without cgroups for its tasks: a cap on the account's processes (RLIMIT_NPROC).
    max_processes: int | None = None
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        account = data["account"]
        return cls(
            account=Account(
                str(account["name"]),
                int(account["uid"]),
                int(account["gid"]),
                tuple(int(g) for g in account.get("groups") or ()),
            ),
            read_only=tuple(str(p) for p in data.get("read_only") or ()),
            writable=tuple(str(p) for p in data.get("writable") or ()),
            hidden=tuple(str(p) for p in data.get("hidden") or ()),
            tmp_size=int(data.get("tmp_size", 1 << 30)),
            open_files=int(data.get("open_files", 4096)),
            max_processes=(
                int(data["max_processes"]) if data.get("max_processes") is not None else None
            ),
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json())


def interpreter_folders() -> list[str]:
    """What the runtime's Python needs shown again: its prefixes and the folders on its path
    (an editable install's source tree among them) that lie in a hidden folder such as
    ``/root`` or ``/tmp``, outermost first. Folders visible anyway are left out, and so is
    the working directory (``python -m`` puts it first on the path, and it may be anything).
    """
    import model_runtime

    cwd = str(Path.cwd().resolve())
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    candidates.update(p for p in sys.path if p)
    package = str(Path(model_runtime.__file__).resolve().parent)  # not its whole checkout
    candidates.add(package)
    resolv = Path("/etc/resolv.conf")
    if resolv.is_symlink():  # systemd-resolved's file lives under the hidden /run
        candidates.add(str(resolv.resolve().parent))
    folders = sorted(
        {
            real
            for real in (os.path.realpath(p) for p in candidates if Path(p).is_dir())
            if any(_inside(real, hidden) for hidden in ALWAYS_HIDDEN)
        }
    )
    if cwd in folders and cwd != package:
        folders.remove(cwd)
    kept: list[str] = []
    for folder in folders:
        if not any(_inside(folder, k) or folder == k for k in kept):
            kept.append(folder)
    return kept


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` lies strictly inside ``folder``."""
    return path.startswith(folder.rstrip("/") + "/")
