"""The few Linux system calls the sandbox needs and Python 3.11's ``os`` lacks (ctypes)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
_AT_FDCWD = -100
_AT_RECURSIVE = 0x8000
_SYS_MOUNT_SETATTR = 442  # the same number on x86_64 and aarch64 (a "new" syscall)
_SYS_OPENAT2 = 437
_RESOLVE_NO_SYMLINKS = 0x04

_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            flags,
            data.encode() if data is not None else None,
        ),
        f"mount {target}",
    )


def set_mount_attributes(
    path: str, *, set_flags: int = 0, clear_flags: int = 0, recursive: bool = False
) -> None:
    """``mount_setattr(2)`` (Linux 5.12): change the flags of the mount at ``path`` (and of
    every mount below it with ``recursive``) without re-stating the others."""
    attr = _MountAttr(set_flags, clear_flags, 0, 0)
    flags = _AT_RECURSIVE if recursive else 0
    result = _libc.syscall(
        _SYS_MOUNT_SETATTR,
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(path.encode()),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, f"mount_setattr {path}")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_folder_no_symlinks(path: str) -> int:
    """An ``O_PATH`` descriptor of the folder ``path``, refused (``ELOOP``) if any part of
    the path is a symbolic link: ``openat2(2)`` resolves it in one step, so a link swapped in
    meanwhile cannot redirect it either."""
    how = _OpenHow(os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, 0, _RESOLVE_NO_SYMLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2,
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(path.encode()),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    _check(fd, f"open {path}")
    return int(fd)


def _prctl(option: int, arg: int = 0) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


def drop_capability_bounding_set() -> None:
    """No capability can come back, even through an executable that grants some."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for capability in range(last + 1):
        _prctl(_PR_CAPBSET_DROP, capability)


def no_new_privileges() -> None:
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)


def die_with_parent(signum: int) -> None:
    _prctl(_PR_SET_PDEATHSIG, signum)


def become_subreaper() -> None:
    """Orphaned descendants (a sandboxed replica whose setup process exited) are re-parented
    to this process rather than to the machine's init, which may never reap them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


# -- seccomp ---------------------------------------------------------------------------------
# A classic BPF program over ``struct seccomp_data`` (nr at 0, arch at 4, args from 16; each
# argument's low 32 bits first on these little-endian machines).
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000
_LD_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_CLONE_NAMESPACES = 0x7E020000  # NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_SETUID_BITS = 0o6000

#: Per architecture: (AUDIT_ARCH, denied system calls, clone, answered "not implemented"
#: (clone3, openat2: their arguments are out of a filter's reach, and libc falls back to
#: clone and openat), {a call that sets a file's mode: the mode's argument}).
#: Denied: new namespaces and joining others (a user namespace hands out capabilities over
#: the kernel's less guarded interfaces), mounting, kernel keyrings shared by every process
#: of the account, BPF, perf events, userfaultfd and io_uring (large attack surfaces).
#: Numbered alike on every architecture: io_uring_setup, _enter, _register, open_tree,
#: move_mount, fsopen, fsconfig, fsmount, fspick, mount_setattr.
_NEW_MOUNT_API_AND_IO_URING = (425, 426, 427, 428, 429, 430, 431, 432, 433, 442)
_SYSCALLS = {
    "x86_64": (
        0xC000003E,
        # unshare setns mount umount2 pivot_root keyctl add_key request_key bpf perf_event_open
        # userfaultfd
        (272, 308, 165, 166, 155, 250, 248, 249, 321, 298, 323, *_NEW_MOUNT_API_AND_IO_URING),
        56,
        (435, 437),
        # chmod fchmod fchmodat fchmodat2 open openat creat mknod mknodat
        {90: 1, 91: 1, 268: 2, 452: 2, 2: 2, 257: 3, 85: 1, 133: 1, 259: 2},
    ),
    "aarch64": (
        0xC00000B7,
        (97, 268, 40, 39, 41, 219, 217, 218, 280, 241, 282, *_NEW_MOUNT_API_AND_IO_URING),
        220,
        (435, 437),
        {52: 1, 53: 2, 452: 2, 56: 3, 33: 2},  # fchmod fchmodat fchmodat2 openat mknodat
    ),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


#: An instruction (code, jump if true, jump if false, constant); a jump may name a label,
#: and a label is an instruction whose code is its name.
_Instruction = tuple[int | str, int | str, int | str, int]


def _seccomp_program(machine: str) -> list[_Instruction]:
    arch, denied, clone, not_implemented, modes = _SYSCALLS[machine]
    program: list[_Instruction] = [
        (_LD_ABS, 0, 0, 4),
        (_JEQ, 0, "kill", arch),
        (_LD_ABS, 0, 0, 0),
    ]
    if machine == "x86_64":  # the x32 ABI's numbers would bypass the list
        program.append((_JGE, "enosys", 0, 0x40000000))
    program += [(_JEQ, "eperm", 0, nr) for nr in denied]
    program += [(_JEQ, "enosys", 0, nr) for nr in not_implemented]
    program.append((_JEQ, "clone", 0, clone))
    program += [(_JEQ, f"mode{arg}", 0, nr) for nr, arg in modes.items()]
    program.append((_RET, 0, 0, _RET_ALLOW))
    program += [("clone", 0, 0, 0), (_LD_ABS, 0, 0, 16)]
    program.append((_JSET, "eperm", "allow", _CLONE_NAMESPACES))
    for arg in sorted(set(modes.values())):
        program += [(f"mode{arg}", 0, 0, 0), (_LD_ABS, 0, 0, 16 + 8 * arg)]
        program.append((_JSET, "eperm", "allow", _SETUID_BITS))
    program += [
        ("allow", 0, 0, 0),
        (_RET, 0, 0, _RET_ALLOW),
        ("eperm", 0, 0, 0),
        (_RET, 0, 0, _RET_ERRNO | 1),  # EPERM
        ("enosys", 0, 0, 0),
        (_RET, 0, 0, _RET_ERRNO | 38),  # ENOSYS
        ("kill", 0, 0, 0),
        (_RET, 0, 0, _RET_KILL_PROCESS),
    ]
    return program


def _assemble(program: list[_Instruction]) -> list[tuple[int, int, int, int]]:
    """Labels out, jumps to labels as the relative offsets BPF wants."""
    labels: dict[str, int] = {}
    code: list[_Instruction] = []
    for instruction in program:
        if isinstance(instruction[0], str):
            labels[instruction[0]] = len(code)
        else:
            code.append(instruction)
    assembled = []
    for index, (op, jt, jf, k) in enumerate(code):
        true, false = (labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf))
        assert isinstance(op, int)
        assembled.append((op, true, false, k))
    return assembled


def restrict_system_calls() -> None:
    """Install the seccomp filter above (after ``no_new_privs``); for good, exec included.
    On an architecture it does not know, nothing is installed."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        return
    code = _assemble(_seccomp_program(machine))
    filters = (_SockFilter * len(code))(*(_SockFilter(*i) for i in code))
    program = _SockFprog(len(code), filters)
    _check(
        _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(program), 0, 0),
        "seccomp",
    )
