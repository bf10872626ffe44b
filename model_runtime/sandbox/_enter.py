"""Making a sandbox: namespaces and mounts in a setup process, then the sandboxed process.

The setup process (a fresh fork of a root process) unshares the mount, PID, IPC and UTS
namespaces and builds the sandbox's view of the files. Its next child is PID 1 of the new
PID namespace: it mounts a ``/proc`` of that namespace, drops to the profile's account, and
runs the model. Dropping privileges happens there, in the child, after every mount is made
and before any code of the bundle runs.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import _linux
from ._profile import ALWAYS_HIDDEN, Profile, SandboxError, _inside, interpreter_folders

_NAMESPACES = _linux.CLONE_NEWNS | _linux.CLONE_NEWPID | _linux.CLONE_NEWIPC | _linux.CLONE_NEWUTS
#: Character devices a program may need: (name, major, minor).
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
_SETUP_TIMEOUT = 10.0


def fork_sandboxed(
    profile: Profile, run: Callable[[], NoReturn], *, before: Callable[[], None] | None = None
) -> int:
    """Fork a process that calls ``run`` in a sandbox made from ``profile``; its pid.

    For a single-threaded root process (the zygote). ``before`` runs first in the forked
    process, still with the machine's view and rights (join cgroups, open the log file). The
    sandboxed process leads its own session; the setup process between it and the caller
    exits once it started, so the caller should be a child subreaper that ignores SIGCHLD
    (the zygote is), or the sandboxed process is re-parented to the machine's init.
    """
    read_end, write_end = os.pipe()
    setup = os.fork()
    if setup == 0:
        os.close(read_end)
        code = 1
        try:
            if before is not None:
                before()
            _build(profile)
            pid = os.fork()
            if pid == 0:
                os.close(write_end)
                _enter(profile)
                run()
            os.write(write_end, f"{pid}\n".encode())
            code = 0
        except BaseException as exc:  # the setup process must never return into its parent
            with contextlib.suppress(OSError):
                os.write(write_end, f"! {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        answer = _read_answer(read_end)
    except SandboxError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(setup, signal.SIGKILL)  # it must not start a runtime nobody knows of
        raise
    finally:
        os.close(read_end)
    if answer.startswith("!"):
        raise SandboxError(f"cannot make the sandbox: {answer[1:].strip()}")
    try:
        return int(answer)
    except ValueError:
        raise SandboxError("the sandbox's setup process ended without an answer") from None


def _read_answer(fd: int) -> str:
    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], _SETUP_TIMEOUT)
        if not ready:
            raise SandboxError("the sandbox's setup process did not answer in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def run_sandboxed(profile: Profile, argv: Sequence[str], cgroups: Sequence[str] = ()) -> int:
    """Run ``argv`` in a sandbox and return its exit status (this process stays its parent).

    For a process started from outside (``python -m model_runtime.sandbox``): it joins
    ``cgroups`` (their ``cgroup.procs`` files), makes the sandbox, and waits for the
    command, passing SIGTERM, SIGINT and SIGHUP on to it; if this process is killed, the
    command is killed too.
    """
    for procs in cgroups:
        Path(procs).write_text("0")
    _build(profile)
    pid = os.fork()
    if pid == 0:
        try:
            _enter(profile)
            _linux.die_with_parent(signal.SIGKILL)
            os.execvp(argv[0], list(argv))  # noqa: S606 - the backend's own command
        except BaseException as exc:
            print(f"Error: cannot start {argv[0]} in the sandbox: {exc}", file=sys.stderr)
        os._exit(127)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:
            continue
        return os.waitstatus_to_exitcode(status)


def probe(profile: Profile) -> None:
    """Make a sandbox from ``profile`` once and leave it; :class:`SandboxError` says why
    none can be made here (not root, no namespaces, an old kernel)."""
    if os.geteuid() != 0:
        raise SandboxError("sandboxes need the service to run as root (to make namespaces)")
    previous = signal.getsignal(signal.SIGCHLD)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(read_end)
                _build(profile)
                inner = os.fork()
                if inner == 0:
                    _enter(profile)
                    mine = Path("/proc/self/status").read_text()  # our own /proc and user
                    ok = f"Uid:\t{profile.account.uid}" in mine
                    os._exit(0 if ok and os.getpid() == 1 else 3)
                _, inner_status = os.waitpid(inner, 0)
                if os.waitstatus_to_exitcode(inner_status) != 0:
                    raise SandboxError("the sandboxed process did not get its own /proc and user")
                code = 0
            except BaseException as exc:
                with contextlib.suppress(OSError):
                    os.write(write_end, str(exc).encode())
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            reason = reader.read().decode(errors="replace").strip()
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SandboxError(reason or "the sandbox test process failed")


def _build(profile: Profile) -> None:
    """In the setup process: new namespaces, and the sandbox's files (see Profile)."""
    hidden = [os.path.realpath(f) for f in profile.hidden if Path(f).exists()]
    _linux.unshare(_NAMESPACES)
    _linux.mount(None, "/", None, _linux.MS_REC | _linux.MS_PRIVATE)
    # Opened now, in the new mount namespace, before hiding covers them.
    system = _open_all(interpreter_folders(), required=True)
    read_only = _open_all(profile.read_only, required=True)
    writable = _open_all(profile.writable, required=False, resolve=False)
    made: list[str] = []  # our own tmpfs mounts: the only places a mount point may be created
    for folder in ALWAYS_HIDDEN:
        if Path(folder).is_dir():
            if folder == "/tmp":
                _tmpfs("/tmp", f"mode=1777,size={profile.tmp_size}")
            else:
                _tmpfs(folder, "mode=755,size=1m")
            made.append(folder)
    _devices(profile)
    _show(system, made)
    _hide([h for h in hidden if Path(h).exists()], made)  # those not hidden already
    shown_writable = _show(writable, made)
    # A job folder may hold hidden ones (a data folder below the jobs' root): hide them again.
    _hide([h for h in hidden if any(_inside(h, w) for w in shown_writable)], made)
    _show(read_only, made)
    _linux.set_mount_attributes(
        "/",
        set_flags=_linux.MOUNT_ATTR_RDONLY | _linux.MOUNT_ATTR_NOSUID | _linux.MOUNT_ATTR_NODEV,
        recursive=True,
    )
    for target in ("/tmp", "/dev/shm", *shown_writable):
        _linux.set_mount_attributes(target, clear_flags=_linux.MOUNT_ATTR_RDONLY)
    _linux.set_mount_attributes("/dev", clear_flags=_linux.MOUNT_ATTR_NODEV)


def _open_all(
    paths: Sequence[str], *, required: bool, resolve: bool = True
) -> list[tuple[str, int]]:
    """Folders to show, opened before anything hides them. Paths the service controls are
    resolved first; job folders (``resolve=False``) are not: a symbolic link on the way,
    which a user may have made to lead into the service's files, leaves the folder out."""
    opened = []
    for path in paths:
        real = os.path.realpath(path) if resolve else os.path.normpath(path)
        try:
            fd = _linux.open_folder_no_symlinks(real)
        except OSError as exc:
            if required:
                raise SandboxError(f"cannot show {path} in the sandbox: {exc.strerror}") from None
            continue
        opened.append((real, fd))
    return opened


def _hide(paths: Sequence[str], made: list[str]) -> None:
    """An empty read-only folder in place of each folder of ``paths``, and our ``/dev/null``
    in place of each file (unreadable there: the mount is ``nodev``)."""
    for path in paths:
        if Path(path).is_dir():
            _tmpfs(path, "mode=755,size=1m")
            made.append(path)
        else:
            _linux.mount("/dev/null", path, None, _linux.MS_BIND)


def _tmpfs(target: str, options: str) -> None:
    _linux.mount("tmpfs", target, "tmpfs", _linux.MS_NOSUID | _linux.MS_NODEV, options)


def _devices(profile: Profile) -> None:
    """A ``/dev`` with the harmless devices only, and a private ``/dev/shm``."""
    _linux.mount("tmpfs", "/dev", "tmpfs", _linux.MS_NOSUID, "mode=755,size=1m")
    for name, major, minor in _DEVICES:
        os.mknod(f"/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
        Path(f"/dev/{name}").chmod(0o666)
    Path("/dev/shm").mkdir()
    _tmpfs("/dev/shm", f"mode=1777,size={profile.tmp_size}")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        Path(f"/dev/{name}").symlink_to(target)


def _show(opened: list[tuple[str, int]], made: list[str]) -> list[str]:
    """Bind each opened folder at its own path (creating the mount point only inside our
    own tmpfs mounts, never on the machine's disks); the targets shown."""
    shown = []
    for target, fd in opened:
        try:
            if not Path(target).is_dir():
                if not any(_inside(target, m) for m in made):
                    raise SandboxError(f"cannot show {target} in the sandbox: no place for it")
                Path(target).mkdir(mode=0o755, parents=True, exist_ok=True)
            _linux.mount(f"/proc/self/fd/{fd}", target, None, _linux.MS_BIND | _linux.MS_REC)
            shown.append(target)
        finally:
            os.close(fd)
    return shown


def _enter(profile: Profile) -> None:
    """In PID 1 of the new namespace: its ``/proc``, its session, limits, then the account,
    with every capability gone for good."""
    _linux.mount("proc", "/proc", "proc", _linux.MS_NOSUID | _linux.MS_NODEV | _linux.MS_NOEXEC)
    os.setsid()
    resource.setrlimit(resource.RLIMIT_NOFILE, (profile.open_files, profile.open_files))
    if profile.max_processes is not None:
        limit = profile.max_processes
        resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
    account = profile.account
    _linux.drop_capability_bounding_set()
    os.setgroups(list(account.groups))
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    _linux.no_new_privileges()
    _linux.restrict_system_calls()
    os.chdir("/tmp")
    os.environ.update(
        {"HOME": "/tmp", "TMPDIR": "/tmp", "USER": account.name, "LOGNAME": account.name}
    )
    os.environ.update(profile.env)
