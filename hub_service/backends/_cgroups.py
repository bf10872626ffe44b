"""Resource limits of local replicas: one cgroup (v1) per replica, below the service's own.

A deployment's ``resources.memory`` ("512Mi") and ``resources.cpu`` ("500m") are requests on
Kubernetes; on this machine they are enforced limits. Each replica that has one runs in its
own cgroup under the service's cgroup (``<controller>/<service's path>/hubserve/<replica>``),
so the service's own limits still bound the whole, and one replica's excess kills that
replica only: the kernel's OOM killer acts inside the cgroup, and its ``oom_kill`` counter
tells the backend afterwards that memory, not a bug, ended the process. Every such cgroup
also caps the number of tasks (a fork bomb stops there) and, with ``cpu``, the CPU time
(a CFS quota).

A replica joins its cgroup before it loads its bundle: a child forked from the zygote
writes itself into ``cgroup.procs`` first thing; a process started directly is moved right
after it starts. cgroup v1's ``memory``, ``cpu`` and ``pids`` controllers are used (what
these machines mount); where they are missing or not writable, :meth:`CgroupTree.detect`
finds none and a deployment with limits fails with that reason rather than running
unbounded.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
#: Tasks (processes and threads: torch starts many) one replica may have.
DEFAULT_PIDS = 4096
_CFS_PERIOD_US = 100_000
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[mkMGTPE]|[eE][-+]?[0-9]+)?$")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity ("512Mi", "1G", "500m", "2") as a number (ValueError if not)."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a quantity such as 512Mi, 1Gi, 500m or 2")
    number, suffix = float(match.group(1)), match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * 10.0 ** int(suffix[1:])


def human_bytes(size: int) -> str:
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= factor:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


@dataclass(frozen=True)
class Limits:
    """What one replica may use: bytes of memory, CPUs (a quota), tasks."""

    memory: int | None = None
    cpu: float | None = None
    pids: int = DEFAULT_PIDS

    @classmethod
    def of(cls, memory: str | None, cpu: str | None) -> Limits | None:
        """The limits a deployment's resources ask for (None: none asked)."""
        if memory is None and cpu is None:
            return None
        return cls(
            memory=int(parse_quantity(memory)) if memory else None,
            cpu=parse_quantity(cpu) if cpu else None,
        )

    def describe_memory(self) -> str:
        return human_bytes(self.memory) if self.memory is not None else "none"


@dataclass(frozen=True)
class Cgroup:
    """One replica's cgroup in each controller."""

    memory: Path
    cpu: Path
    pids: Path
    limits: Limits

    @property
    def procs(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes itself (``0``) or a pid into."""
        return [str(p / "cgroup.procs") for p in (self.memory, self.cpu, self.pids)]

    def add(self, pid: int) -> None:
        for procs in self.procs:
            Path(procs).write_text(str(pid))

    def oom_kills(self) -> int:
        """How many processes the OOM killer ended in this cgroup since it was made."""
        with contextlib.suppress(OSError):
            for line in (self.memory / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self) -> None:
        """Remove the (empty) cgroups; a process just killed may linger a moment."""
        for path in (self.memory, self.cpu, self.pids):
            for _ in range(20):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)


@dataclass(frozen=True)
class CgroupTree:
    """Where this service's replicas' cgroups go, per controller."""

    memory: Path
    cpu: Path
    pids: Path

    @classmethod
    def detect(cls) -> CgroupTree | None:
        """The service's own cgroup in each v1 controller, with a ``hubserve`` child made
        there; None where a controller is missing or not writable."""
        own: dict[str, str] = {}
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, path = line.split(":", 2)
                for controller in controllers.split(","):
                    own[controller] = path
        found: dict[str, Path] = {}
        for controller in ("memory", "cpu", "pids"):
            names = [controller, "cpu,cpuacct"] if controller == "cpu" else [controller]
            mount = next((_ROOT / n for n in names if (_ROOT / n).is_dir()), None)
            if mount is None or controller not in own:
                return None
            base = mount / own[controller].lstrip("/") / "hubserve"
            try:
                base.mkdir(exist_ok=True)
            except OSError:
                return None
            found[controller] = base
        return cls(memory=found["memory"], cpu=found["cpu"], pids=found["pids"])

    def create(self, name: str, limits: Limits) -> Cgroup:
        """A fresh cgroup ``name`` (its counters at zero) with ``limits`` set."""
        group = Cgroup(self.memory / name, self.cpu / name, self.pids / name, limits)
        group.remove()  # a previous launch's: a new one starts its OOM count at zero
        for path in (group.memory, group.cpu, group.pids):
            path.mkdir()
        if limits.memory is not None:
            (group.memory / "memory.limit_in_bytes").write_text(str(limits.memory))
            swap = group.memory / "memory.memsw.limit_in_bytes"
            if swap.exists():  # no escape into swap
                swap.write_text(str(limits.memory))
        if limits.cpu is not None:
            (group.cpu / "cpu.cfs_period_us").write_text(str(_CFS_PERIOD_US))
            quota = max(1000, int(limits.cpu * _CFS_PERIOD_US))
            (group.cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (group.pids / "pids.max").write_text(str(limits.pids))
        return group

    def existing(self, name: str, limits: Limits) -> Cgroup | None:
        """The cgroup ``name`` if it is there (an adopted replica's)."""
        group = Cgroup(self.memory / name, self.cpu / name, self.pids / name, limits)
        return group if group.memory.is_dir() else None

    def prune(self, keep: set[str]) -> None:
        """Remove the cgroups of replicas gone with an earlier run of the service."""
        for base in (self.memory, self.cpu, self.pids):
            for path in base.glob("replica-*"):
                if path.name not in keep:
                    with contextlib.suppress(OSError):
                        path.rmdir()
