"""Building environments with uv, once per content address, and never half.

Layout under the environment root::

    envs/<key>/env.json        written last: an environment without it does not exist
    envs/<key>/site/           an overlay's packages (put first on sys.path), or
    envs/<key>/venv/           a full environment (its own interpreter)
    building/<key>-<random>/   a build in progress (renamed to envs/<key> when complete)
    locks/<key>.lock           one build per key at a time, across processes and pods
    logs/<key>.log             the installer's full output of the last build
    uv-cache/                  uv's download and wheel cache

A build runs under an exclusive ``flock`` on its key: concurrent deploys of the same
requirement set build it once, the others wait and reuse it. It happens in ``building/`` and
only a complete, size-checked environment is renamed into ``envs/``, so an interrupted build
(a crash, a full disk, a killed pod) leaves nothing that looks usable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ._plan import (
    EnvBuildError,
    EnvPolicyError,
    environment_key,
    normalize,
    plan,
    runtime_closure,
    runtime_distributions,
)
from ._policy import EnvironmentPolicy

MARKER = "env.json"
#: A build that takes longer than this is stuck (an index that never answers).
BUILD_TIMEOUT = 1800.0
#: Leftovers in building/ older than this belong to a build that died.
STALE_BUILD = 3600.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Environment:
    """Where a bundle runs: the runtime's own environment, an overlay, or a full one."""

    kind: str
    reason: str
    key: str | None = None
    path: Path | None = None
    #: Distributions this environment installs on top of (or instead of) the runtime's.
    packages: dict[str, str] = field(default_factory=dict)
    #: For an overlay: the folder to put first on ``sys.path``.
    site: Path | None = None
    #: For a full environment: its interpreter (``None``: the runtime's own).
    python: Path | None = None
    #: Whether this call built it (False: it was there already, or nothing was needed).
    built: bool = False

    def modules(self) -> list[str]:
        """Top-level modules an overlay provides (what a warm launcher preloads for it)."""
        return top_level_modules(self.site) if self.site is not None else []

    def describe(self) -> str:
        """One line for statuses and logs."""
        if self.kind == "runtime":
            return f"runtime environment ({self.reason})"
        names = ", ".join(f"{n} {v}" for n, v in sorted(self.packages.items())[:6])
        more = f" and {len(self.packages) - 6} more" if len(self.packages) > 6 else ""
        label = "overlay" if self.kind == "overlay" else "full environment"
        return f"{label} {self.key} ({self.reason}): {names}{more}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "reason": self.reason,
            "key": self.key,
            "packages": self.packages,
        }


class EnvironmentManager:
    """Plans, builds, reuses and evicts environments under ``root`` (see the module doc)."""

    def __init__(self, root: Path, policy: EnvironmentPolicy | None = None) -> None:
        self.root = root
        self.policy = policy or EnvironmentPolicy()

    # -- public API ---------------------------------------------------------------------------

    def check(self, requirements: Iterable[str]) -> tuple[str, ...]:
        """The normalized requirements, or :class:`EnvPolicyError` if the policy refuses them.

        Checks the bundle's own requirements (cheap: no resolution, so the service can answer
        a deploy with 422 at once); dependencies are checked again when the build resolves.
        """
        reqs = normalize(requirements)
        installed = runtime_distributions()
        for line in reqs:
            name = Requirement(line).name
            self._check_name(name, needed_by=None, provided=name in installed)
        return reqs

    def prepare(self, requirements: Iterable[str], progress: Progress | None = None) -> Environment:
        """The environment for ``requirements``: reused when built, else built now."""
        say = progress or (lambda message: None)
        if not self.policy.enabled:  # today's behaviour: nothing checked, nothing built
            return Environment("runtime", "per-bundle environments are turned off")
        reqs = self.check(requirements)
        decided = plan(reqs)
        if decided.kind == "runtime":
            return Environment("runtime", decided.reason)
        sources = self.policy.sources()
        key = environment_key(reqs, sources.fingerprint())
        found = self._load(key)
        if found is None:
            with self._locked(key, say):
                found = self._load(key)  # built by whoever held the lock
                if found is None:
                    return self._build(key, reqs, decided.kind, decided.reason, sources, say)
        # Built under an older policy perhaps (the key does not hold the allow and deny
        # lists): what it installed must still be allowed.
        installed = runtime_distributions()
        for name in found.packages:
            self._check_name(name, needed_by=reqs, provided=name in installed)
        return found

    def log_file(self, key: str) -> Path:
        return self.root / "logs" / f"{key}.log"

    def environments(self) -> list[dict[str, Any]]:
        """Every complete environment's record, most recently used first."""
        records = []
        for marker in (self.root / "envs").glob(f"*/{MARKER}"):
            with contextlib.suppress(OSError, ValueError):
                record = json.loads(marker.read_text())
                record["last_used"] = marker.stat().st_mtime
                records.append(record)
        return sorted(records, key=lambda r: -float(r["last_used"]))

    def gc(self, in_use: Iterable[str] = (), *, max_bytes: int | None = None) -> list[str]:
        """Evict environments nobody uses, least recently used first, until the root fits
        ``max_bytes`` (default: the policy's cache size); also drop dead builds' leftovers.

        An environment being built or used right now is never removed (its lock is taken
        without waiting, or it is skipped).
        """
        limit = self.policy.max_cache_bytes if max_bytes is None else max_bytes
        keep = set(in_use)
        now = time.time()
        for leftover in _children(self.root / "building"):
            # A build holds its key's lock until its folder is renamed into envs/: a free
            # lock means the builder is gone; an old folder, a build that died long ago.
            with contextlib.suppress(OSError):
                if now - leftover.stat().st_mtime > STALE_BUILD:
                    shutil.rmtree(leftover, ignore_errors=True)
                    continue
                with self._try_lock(leftover.name.split("-", 1)[0]) as free:
                    if free:
                        shutil.rmtree(leftover, ignore_errors=True)
        for path in _children(self.root / "envs"):
            # An environment whose removal was interrupted (its env.json goes first).
            if not (path / MARKER).exists() and path.name not in keep:
                with self._try_lock(path.name) as free:
                    if free and not (path / MARKER).exists():
                        shutil.rmtree(path, ignore_errors=True)
        removed: list[str] = []
        candidates = [r["key"] for r in reversed(self.environments()) if r["key"] not in keep]
        total = _tree_bytes(self.root)
        for key in candidates:
            if total <= limit:
                break
            with self._try_lock(key) as locked:
                if not locked:
                    continue
                path = self.root / "envs" / key
                size = _tree_bytes(path)
                (path / MARKER).unlink(missing_ok=True)  # no longer looks complete
                shutil.rmtree(path, ignore_errors=True)
                total -= size
                removed.append(key)
        if total > limit and (self.root / "uv-cache").is_dir():
            # Still too big: what is left is mostly uv's cache. Pruning drops what no
            # environment links to any more, and is safe beside a running build.
            with contextlib.suppress(EnvBuildError, OSError):
                (self.root / "logs").mkdir(parents=True, exist_ok=True)
                self._uv(["cache", "prune"], self.root, self.root / "logs" / "gc.log")
        return removed

    # -- building ---------------------------------------------------------------------------

    def _build(
        self,
        key: str,
        reqs: tuple[str, ...],
        kind: str,
        reason: str,
        sources: EnvironmentPolicy,
        say: Progress,
    ) -> Environment:
        # This process holds the key's lock: any other build folder of the key is dead.
        for leftover in (self.root / "building").glob(f"{key}-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        building = self.root / "building" / f"{key}-{os.urandom(4).hex()}"
        building.mkdir(parents=True)
        log = self.log_file(key)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S}Z building {key}\n")
        try:
            if kind == "overlay":
                try:
                    resolved = self._resolve_overlay(building, reqs, sources, log, say)
                except _NeedsSeparateEnvironment as exc:
                    kind, reason = "full", str(exc)
                else:
                    packages = self._install_overlay(building, resolved, sources, log, say)
            if kind == "full":
                packages = self._install_full(building, reqs, sources, log, say)
            size = _tree_bytes(building)
            if size > self.policy.max_env_bytes:
                raise EnvBuildError(
                    f"the environment needs {_human_size(size)}, over the hub's limit of"
                    f" {_human_size(self.policy.max_env_bytes)} per environment",
                    log_file=str(log),
                )
            record = {
                "key": key,
                "kind": kind,
                "reason": reason,
                "requirements": list(reqs),
                "packages": packages,
                "bytes": size,
                "created_at": datetime.now(timezone.utc).isoformat(),
            }
            (building / MARKER).write_text(json.dumps(record, indent=1))
            final = self.root / "envs" / key
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():
                # No env.json (or _load would have found it): what an interrupted removal
                # left. Out of the way first, else the rename below fails for good.
                stale = building.with_name(f"{key}-stale-{os.urandom(4).hex()}")
                final.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            building.rename(final)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            raise EnvBuildError(f"cannot build the environment: {exc}", log_file=str(log)) from exc
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        say(f"built {kind} environment {key} ({_human_size(size)})")
        environment = self._load(key)
        assert environment is not None
        return dataclasses.replace(environment, built=True)

    def _resolve_overlay(
        self,
        building: Path,
        reqs: tuple[str, ...],
        sources: EnvironmentPolicy,
        log: Path,
        say: Progress,
    ) -> dict[str, str]:
        """The overlay's packages (name -> version) resolved against the runtime's pins;
        :class:`_NeedsSeparateEnvironment` when only a separate environment can hold them."""
        wanted = plan(reqs).requirements
        (building / "requested.txt").write_text("".join(f"{r}\n" for r in wanted))
        installed = runtime_distributions()
        pins = "".join(f"{name}=={installed[name]}\n" for name in sorted(runtime_closure()))
        (building / "runtime-pins.txt").write_text(pins)
        say(f"resolving {len(wanted)} requirement(s) against the runtime's packages")
        common = ["pip", "compile", "requested.txt", "--python", sys.executable, "--quiet"]
        common += ["--no-header", "--no-annotate", *sources.uv_arguments()]
        # The runtime's own packages as candidates, metadata only: an air-gapped wheelhouse
        # (or an index without torch's local '+cpu' build) need not hold what is installed.
        stubs = _runtime_stubs(building / "runtime-stubs", sorted(runtime_closure()))
        pinned = ["--constraint", "runtime-pins.txt", "--find-links", stubs, "-o", "lock.txt"]
        try:
            self._uv([*common, *pinned], building, log, sources)
        except EnvBuildError as beside:
            if not beside.reason.startswith("unresolvable"):
                raise
            # Resolvable on its own, not beside the runtime: a separate environment it is.
            self._uv([*common, "-o", "lock-alone.txt"], building, log, sources)
            say(f"needs a separate environment: {beside.reason}")
            raise _NeedsSeparateEnvironment(
                "conflicts with the runtime's own packages: " + beside.reason
            ) from None
        locked = _read_lock(building / "lock.txt")
        for name in locked:
            self._check_name(name, needed_by=wanted, provided=name in installed)
        return {n: v for n, v in locked.items() if installed.get(n) != v}

    def _install_overlay(
        self,
        building: Path,
        packages: dict[str, str],
        sources: EnvironmentPolicy,
        log: Path,
        say: Progress,
    ) -> dict[str, str]:
        say(f"installing {len(packages)} package(s): {', '.join(sorted(packages))}")
        (building / "install.txt").write_text(
            "".join(f"{n}=={v}\n" for n, v in sorted(packages.items()))
        )
        # Bytecode now, once: replicas may not write it (read-only folder, or
        # PYTHONDONTWRITEBYTECODE) and would compile every module at every start, which made
        # scikit-learn's import three times slower.
        args = ["pip", "install", "--target", "site", "--no-deps", "-r", "install.txt"]
        args += ["--compile-bytecode"]
        args += ["--python", sys.executable, *sources.uv_arguments()]
        self._uv(args, building, log, sources)
        return packages

    def _install_full(
        self,
        building: Path,
        reqs: tuple[str, ...],
        sources: EnvironmentPolicy,
        log: Path,
        say: Progress,
    ) -> dict[str, str]:
        say("creating a separate environment (its own interpreter)")
        self._uv(["venv", "venv", "--python", sys.executable, "--quiet"], building, log)
        python = building / "venv" / "bin" / "python"
        (building / "requested.txt").write_text("".join(f"{r}\n" for r in reqs))
        (building / "runtime.txt").write_text("".join(f"{r}\n" for r in _runtime_requirements()))
        say(f"installing {len(reqs)} requirement(s) and the runtime's dependencies")
        args = ["pip", "install", "-r", "requested.txt", "-r", "runtime.txt", "--compile-bytecode"]
        args += ["--python", str(python), *sources.uv_arguments()]
        self._uv(args, building, log, sources)
        frozen = self._uv(["pip", "freeze", "--python", str(python)], building, log)
        packages = _read_lock_text(frozen)
        installed = runtime_distributions()
        for name in packages:
            # The runtime's own dependencies are in every full environment: like everywhere
            # else, what the runtime provides is not subject to the allow list.
            self._check_name(name, needed_by=reqs, provided=name in installed)
        _link_runtime(building)
        return packages

    def _uv(
        self, args: list[str], cwd: Path, log: Path, sources: EnvironmentPolicy | None = None
    ) -> str:
        """Run uv in ``cwd``; its output goes to ``log``; failures become one-line reasons."""
        env = {
            **os.environ,
            "UV_CACHE_DIR": str(self.root / "uv-cache"),
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
            # The admin's policy is the whole truth: no uv.toml of the host adds sources.
            "UV_NO_CONFIG": "1",
            "NO_COLOR": "1",
        }
        if sources is not None and sources.cert:
            env["SSL_CERT_FILE"] = sources.cert
        with log.open("a") as out:
            out.write(f"$ uv {' '.join(args)}\n")
        try:
            done = subprocess.run(
                [_uv_binary(), *args],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise EnvBuildError(
                f"the installer took more than {BUILD_TIMEOUT:.0f} s", log_file=str(log)
            ) from None
        with log.open("a") as out:
            out.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise EnvBuildError(failure_reason(done.stderr), log_file=str(log))
        return done.stdout

    # -- policy, records, locks ----------------------------------------------------------------

    def _check_name(self, name: str, *, needed_by: Iterable[str] | None, provided: bool) -> None:
        via = f" (needed by {', '.join(needed_by)})" if needed_by else ""
        if name in self.policy.deny:
            raise EnvPolicyError(f"{name}{via} is denied by the hub's policy")
        if self.policy.allow and name not in self.policy.allow and not provided:
            raise EnvPolicyError(f"{name}{via} is not on the hub's list of allowed packages")

    def _load(self, key: str) -> Environment | None:
        path = self.root / "envs" / key
        marker = path / MARKER
        try:
            record = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        with contextlib.suppress(OSError):
            os.utime(marker)  # last use, for eviction
        kind = str(record["kind"])
        return Environment(
            kind=kind,
            reason=str(record["reason"]),
            key=key,
            path=path,
            packages=dict(record["packages"]),
            site=path / "site" if kind == "overlay" else None,
            python=path / "venv" / "bin" / "python" if kind == "full" else None,
        )

    @contextlib.contextmanager
    def _locked(self, key: str, say: Progress) -> Iterator[None]:
        lock = self.root / "locks" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say("waiting for another build of the same environment")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _try_lock(self, key: str) -> Iterator[bool]:
        lock = self.root / "locks" / f"{key}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class _NeedsSeparateEnvironment(Exception):
    """An overlay cannot hold the requirements beside the runtime's own packages."""


def _uv_binary() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
        if found is None:
            raise EnvBuildError("uv is not installed: pip install uv") from None
        return found
    return str(find_uv_bin())


def _runtime_stubs(folder: Path, names: Iterable[str]) -> str:
    """Wheels holding only the metadata of the runtime's installed distributions ``names``,
    for the resolver to pick them at their installed versions; never installed (the overlay
    leaves out what the runtime has). Returns the folder, for ``--find-links``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            dist = importlib.metadata.distribution(name)
            metadata = dist.read_text("METADATA")
        except importlib.metadata.PackageNotFoundError:
            continue
        if not metadata:
            continue
        stem = f"{canonicalize_name(name).replace('-', '_')}-{dist.version}"
        info = f"{stem}.dist-info"
        with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
            wheel.writestr(f"{info}/METADATA", metadata)
            wheel.writestr(
                f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            )
            wheel.writestr(f"{info}/RECORD", "")
    return str(folder)


def _read_lock(path: Path) -> dict[str, str]:
    return _read_lock_text(path.read_text())


def _read_lock_text(text: str) -> dict[str, str]:
    """``name==version`` lines (uv's lock or freeze output) as a mapping."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        specs = list(req.specifier)
        if len(specs) == 1 and specs[0].operator in ("==", "==="):
            found[canonicalize_name(req.name)] = specs[0].version
    return found


#: Dependencies of hubserve that only build environments: a full environment serves, it never
#: builds one itself (uv alone is 37 MiB).
_BUILDER_ONLY = frozenset({"uv"})


def _runtime_requirements() -> list[str]:
    """hubserve's own dependencies (without extras): what a full environment needs to serve."""
    try:
        requires = importlib.metadata.requires("hubserve") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    env = {**default_environment(), "extra": ""}
    lines = []
    for line in requires:
        req = Requirement(line)
        if canonicalize_name(req.name) in _BUILDER_ONLY:
            continue
        if req.marker is None or req.marker.evaluate(env):  # type: ignore[arg-type]
            req.marker = None
            lines.append(str(req))
    return lines


def _link_runtime(building: Path) -> None:
    """Make ``model_runtime`` (which imports nothing else of ours) importable in a full
    environment without installing the rest of hubserve: a link and a relative ``.pth``."""
    import model_runtime

    source = building / "runtime-src"
    source.mkdir()
    (source / "model_runtime").symlink_to(Path(model_runtime.__file__).resolve().parent)
    sites = list((building / "venv" / "lib").glob("python*/site-packages"))
    if not sites:
        raise EnvBuildError("the new environment has no site-packages folder")
    (sites[0] / "_hubserve_runtime.pth").write_text(os.path.relpath(source, sites[0]) + "\n")


def _children(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _human_size(size: float) -> str:
    """``3.2 MiB``: sizes in messages (a limit of a few KiB must not read "0 MiB")."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def top_level_modules(site: Path) -> list[str]:
    """Importable top-level names in ``site``, from its distributions' ``RECORD`` files
    (wheels installed by uv rarely carry ``top_level.txt``); private names left out."""
    found: set[str] = set()
    for record in site.glob("*.dist-info/RECORD"):
        with contextlib.suppress(OSError):
            for line in record.read_text().splitlines():
                found.add(line.split(",", 1)[0].split("/", 1)[0].removesuffix(".py"))
    return sorted(
        name
        for name in found
        if name.isidentifier()
        and not name.startswith("_")
        and ((site / name / "__init__.py").is_file() or (site / f"{name}.py").is_file())
    )


def _tree_bytes(path: Path) -> int:
    """Disk used below ``path``, hard links counted once (uv links files from its cache)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                stat = (Path(directory) / name).lstat()
                if (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_blocks * 512
    return total


_BECAUSE = re.compile(
    r"Because (.+?)(?:,? and you require| and (?:all versions|[\w.-]+==)|,? we can conclude)"
)


_WHEELS_ONLY = re.compile(r"Wheels are required for `([^`]+)` because building from source is")


def failure_reason(output: str) -> str:
    """uv's error output as one line a status can show."""
    text = " ".join(output.split())
    if "Failed to fetch" in text or "error sending request" in text or "tcp connect" in text:
        url = re.search(r"Failed to fetch: `?(\S+?)`?(?: |$)", text)
        where = f" ({url.group(1)})" if url else ""
        return f"the package index is not reachable{where}"
    if "No solution found" in text or "unsatisfiable" in text:
        because = _BECAUSE.search(text)
        detail = because.group(1) if because else text.split("cause:", 1)[-1].strip()
        reason = "unresolvable: " + detail.replace("usable wheels", "wheel for this platform")
        source_only = _WHEELS_ONLY.search(text)
        if source_only:
            package = source_only.group(1)
            reason += f" ({package} is not built from source: the hub installs wheels only)"
        return reason
    for line in output.splitlines():
        if line.strip().lower().startswith("error:"):
            return line.strip()[len("error:") :].strip()
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "the installer failed"
