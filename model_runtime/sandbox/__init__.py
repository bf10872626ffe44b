"""Sandboxes for model code: what a replica of the local backend runs in.

A bundle is code, and on a shared machine it is somebody else's code. A *sandbox* runs it
with only what serving needs:

* **its own view of the files** (a mount namespace): the whole machine read-only; homes,
  ``/tmp``, ``/run`` and the service's own folders (its data: database, bundle cache, logs,
  state; whatever the admin adds) replaced by empty folders; the bundle and its environment
  shown again read-only, and the job folders it may use read-write; a private ``/tmp`` of a
  fixed size; a ``/dev`` with only ``null``, ``zero``, ``full``, ``random``, ``urandom`` and
  ``tty``;
* **its own processes** (a PID namespace with its own ``/proc``): no other process of the
  machine can be seen, signalled or traced, nor its environment read;
* **an unprivileged account**: never root, never the service's user; every capability
  dropped, also from the bounding set, and ``no_new_privs`` set, so nothing it runs can
  gain any back; a cap on open files;
* **fewer system calls** (seccomp): no new namespaces (a user namespace would hand it
  capabilities over parts of the kernel less guarded than the rest), no mounts, kernel
  keyrings (shared by every process of an account), BPF, perf events, userfaultfd or
  io_uring, and no setuid or setgid bits on the files it may write;
* the machine's **network** (loopback included: that is how the gateway reaches it, and
  how batch jobs reach their stores).

Memory, CPU and the number of tasks are the cgroups' part (the local backend's
``_cgroups``); a replica joins its cgroups before the sandbox is made.

It is built from the kernel's primitives directly (``unshare``, ``mount``,
``mount_setattr``, ``openat2``, ``prctl``, a seccomp filter), as bubblewrap does, but
inside the process that will run the model: a replica forked from the zygote enters its
sandbox in the child, after the fork and before any bundle code runs, and keeps the
zygote's warm imports (``bwrap`` would mean a new process and a cold interpreter).
:func:`run_sandboxed` (``python -m model_runtime.sandbox``) does the same for a command
started from outside (the local backend's way when it has no zygote). Making one needs root
(it is the service that runs as root, never the model), Linux 5.12 or newer, and namespaces
allowed; :func:`probe` tells.
"""

from ._enter import fork_sandboxed, probe, run_sandboxed
from ._profile import ALWAYS_HIDDEN, Account, Profile, SandboxError, interpreter_folders

#: The environment variable that carries a :class:`Profile` (JSON) to ``python -m
#: model_runtime.sandbox``.
PROFILE_ENV = "HUBSERVE_SANDBOX_PROFILE"

__all__ = [
    "ALWAYS_HIDDEN",
    "PROFILE_ENV",
    "Account",
    "Profile",
    "SandboxError",
    "fork_sandboxed",
    "interpreter_folders",
    "probe",
    "run_sandboxed",
]
