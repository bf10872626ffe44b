"""Deciding what a bundle's requirements need on top of the runtime's own environment.

Three answers, cheapest first:

* ``runtime``: the runtime's environment already satisfies every requirement (the common
  torch-only bundle): nothing to build.
* ``overlay``: some packages are missing (or a package the runtime never imports is wanted at
  another version). They are installed into a directory put first on ``sys.path`` of a
  replica forked from the zygote, so torch & co. are not imported again.
* ``full``: a requirement conflicts with a package the runtime itself imports (another numpy,
  pandas, torch ...). A forked replica already has the runtime's version loaded, so it gets a
  separate virtual environment and interpreter instead: slower to start, still correct.

"The runtime imports it" means: it is in the dependency closure of ``hubserve`` itself or of
a module the zygote preloads. The planner works on installed metadata only; resolving the
overlay's own dependencies is the installer's job (:mod:`._build`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import platform
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from .._version import __version__
from ..errors import HubserveError

#: Modules a runtime imports besides hubserve's dependencies (see the zygote's PRELOAD).
_RUNTIME_MODULES = ("torch",)


class EnvBuildError(HubserveError):
    """An environment cannot be planned or built; ``reason`` is one line for a status."""

    def __init__(self, reason: str, *, log_file: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_file = log_file


class EnvPolicyError(EnvBuildError):
    """The requirements break the admin's policy (a denied package, not on the allow list)."""


@dataclass(frozen=True)
class Plan:
    """What a requirement set needs: ``kind``, why, and the requirements the build installs."""

    kind: str
    reason: str
    requirements: tuple[str, ...]
    #: Requirements that differ from what the runtime has (installed by an overlay or full env).
    wanted: tuple[str, ...] = ()


def normalize(requirements: Iterable[str]) -> tuple[str, ...]:
    """Requirement lines, parsed, with canonical names, deduplicated and sorted (a package
    named twice is one requirement with both lines' versions and extras).

    Lines whose marker does not apply here are dropped; options (``-r``, ``--index-url``) and
    direct references (``pkg @ URL``) are refused: they would bypass the admin's policy.
    """
    env = default_environment()
    found: dict[str, Requirement] = {}
    for line in requirements:
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith("-"):
            raise EnvPolicyError(f"requirement option {text!r} is not allowed")
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise EnvBuildError(f"invalid requirement {text!r}: {exc}") from None
        if req.url:
            raise EnvPolicyError(
                f"{req.name} @ {req.url}: direct references are not allowed, only packages"
                " from the configured indexes"
            )
        if req.marker is not None and not req.marker.evaluate(env):  # type: ignore[arg-type]
            continue
        req.name = canonicalize_name(req.name)
        req.extras = {canonicalize_name(extra) for extra in req.extras}
        req.marker = None
        same = found.get(req.name)
        if same is not None:
            # ``numpy>=1.24`` and ``numpy<2`` on two lines: both hold, as with pip.
            req.specifier &= same.specifier
            req.extras |= same.extras
        found[req.name] = req
    return tuple(sorted(str(req) for req in found.values()))


@functools.lru_cache(maxsize=1)
def runtime_distributions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution the runtime's interpreter sees."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and canonicalize_name(name) not in found:
            found[canonicalize_name(name)] = dist.version
    return found


@functools.lru_cache(maxsize=1)
def runtime_closure() -> frozenset[str]:
    """Distributions the runtime imports: hubserve's dependencies and torch's, transitively."""
    installed = runtime_distributions()
    env = default_environment()
    todo = ["hubserve", *_RUNTIME_MODULES]
    seen: set[str] = set()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name not in installed:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            # Only unconditional dependencies: extras ('[hub]', '[test]') are not the runtime.
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):  # type: ignore[dict-item]
                todo.append(req.name)
    return frozenset(seen)


def plan(requirements: Iterable[str]) -> Plan:
    """Which kind of environment ``requirements`` (normalized) need, and why."""
    installed = runtime_distributions()
    closure = runtime_closure()
    missing: list[str] = []
    shadowed: list[str] = []
    conflicts: list[str] = []
    reqs = tuple(requirements)
    for line in reqs:
        req = Requirement(line)
        have = installed.get(req.name)
        if have is not None and _satisfies(req, have):
            continue
        if have is None:
            missing.append(line)
        elif req.name in closure:
            conflicts.append(f"{line} (the runtime has {req.name} {have})")
        else:
            shadowed.append(line)
    if conflicts:
        return Plan(
            "full",
            "conflicts with the runtime's own packages: " + "; ".join(conflicts),
            reqs,
            tuple(missing + shadowed + [c.split(" ", 1)[0] for c in conflicts]),
        )
    if missing or shadowed:
        wanted = tuple(missing + shadowed)
        return Plan("overlay", "adds " + ", ".join(wanted), wanted, wanted)
    return Plan("runtime", "the runtime's environment has every requirement", ())


def _satisfies(req: Requirement, version: str) -> bool:
    try:
        return req.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def environment_key(requirements: Iterable[str], fingerprint: dict[str, object]) -> str:
    """The content address of an environment: same inputs, same environment, shared.

    Python version, platform, the runtime's own packages (an overlay is built against them)
    and hubserve's version, the requirement set and where packages come from.
    """
    installed = runtime_distributions()
    closure = {name: installed[name] for name in sorted(runtime_closure())}
    material = {
        "python": f"{sys.implementation.name}-{platform.python_version()}",
        "platform": sysconfig.get_platform(),
        "hubserve": __version__,
        "runtime": closure,
        "requirements": sorted(requirements),
        "sources": fingerprint,
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return digest[:24]
