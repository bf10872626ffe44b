"""What an environment build may install, and from where: the admin's policy.

Research hubs are often air-gapped or sit behind a mirror, and pip on the host is usually
configured for that already (``pip config``, ``PIP_*``). uv reads none of pip's
configuration, so when the policy names no index, :func:`pip_configuration` hands uv what
pip would use: the index URL, extra indexes, find-links folders, ``no-index`` (an air-gapped
host's wheelhouse only) and constraint files (a constraint file is how a host keeps a CUDA
build of torch from being pulled in), and the CA bundle pip trusts (``cert``): behind a
TLS-inspecting proxy uv's own roots fail, and JupyterHub starts services with a bare
environment, so ``SSL_CERT_FILE`` is often not there to help.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from packaging.utils import canonicalize_name


@dataclass(frozen=True)
class EnvironmentPolicy:
    """The admin's rules for building environments (service settings or ``hubserve`` flags).

    ``index_url`` / ``extra_index_urls`` / ``find_links`` / ``constraints`` say where
    packages come from; when none of the first three is set and ``use_pip_config`` is on,
    they are taken from pip's configuration on this host. ``no_index`` uses ``find_links``
    only (an air-gapped hub's wheelhouse), no index at all. ``allow_sdist`` off (the default)
    means wheels only: no package's build script runs on the service host. ``allow`` (if
    set) lists the only packages a bundle may add; ``deny`` the ones it may never install,
    dependencies included. ``max_env_bytes`` caps one environment, ``max_cache_bytes`` the
    environments and the installer's cache together. ``enabled`` off: every bundle runs in
    the runtime's own environment, as before environments existed.
    """

    enabled: bool = True
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    #: CA bundle for HTTPS to the indexes (pip's ``cert``), else uv's default roots.
    cert: str | None = None
    no_index: bool = False
    use_pip_config: bool = True
    allow_sdist: bool = False
    allow: frozenset[str] = field(default_factory=frozenset)
    deny: frozenset[str] = field(default_factory=frozenset)
    max_env_bytes: int = 4 * 1024**3
    max_cache_bytes: int = 20 * 1024**3

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow", frozenset(canonicalize_name(n) for n in self.allow))
        object.__setattr__(self, "deny", frozenset(canonicalize_name(n) for n in self.deny))

    @classmethod
    def create(
        cls,
        *,
        allow: Iterable[str] = (),
        deny: Iterable[str] = (),
        extra_index_urls: Iterable[str] = (),
        find_links: Iterable[str] = (),
        constraints: Iterable[str] = (),
        **options: object,
    ) -> EnvironmentPolicy:
        """Build a policy from any iterables (settings hold lists, the dataclass tuples)."""
        return cls(
            allow=frozenset(allow),
            deny=frozenset(deny),
            extra_index_urls=tuple(extra_index_urls),
            find_links=tuple(find_links),
            constraints=tuple(constraints),
            **options,  # type: ignore[arg-type]
        )

    def sources(self) -> EnvironmentPolicy:
        """This policy with pip's configuration filled in where it names no source."""
        named = self.index_url or self.extra_index_urls or self.find_links or self.no_index
        if not self.use_pip_config or named:
            return self
        pip = pip_configuration()
        return dataclasses.replace(
            self,
            index_url=next(iter(pip.get("index-url", [])), None),
            extra_index_urls=tuple(pip.get("extra-index-url", [])),
            find_links=tuple(pip.get("find-links", [])),
            constraints=self.constraints or tuple(pip.get("constraint", [])),
            no_index=(pip.get("no-index") or ["false"])[-1].lower() in _TRUE,
            cert=self.cert or next(iter(pip.get("cert", [])), None),
            use_pip_config=False,
        )

    def uv_arguments(self) -> list[str]:
        """uv options for these sources (call on :meth:`sources`' result)."""
        args: list[str] = ["--no-index"] if self.no_index else []
        if self.index_url:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for link in self.find_links:
            args += ["--find-links", link]
        for path in self.constraints:
            args += ["--constraint", path]
        if self.extra_index_urls:
            # pip's behaviour: the best version from all indexes, not the first index's.
            args += ["--index-strategy", "unsafe-best-match"]
        if not self.allow_sdist:
            args += ["--only-binary", ":all:"]
        return args

    def fingerprint(self) -> dict[str, object]:
        """What of the policy changes what gets installed (part of an environment's key)."""
        return {
            "index_url": self.index_url,
            "extra_index_urls": list(self.extra_index_urls),
            "find_links": list(self.find_links),
            "constraints": list(self.constraints),
            "no_index": self.no_index,
            "allow_sdist": self.allow_sdist,
        }


#: pip options that name package sources, as ``pip config list`` spells them.
_PIP_KEYS = ("index-url", "extra-index-url", "find-links", "constraint", "no-index", "cert")
#: How pip spells a boolean option's true (``no-index = yes``, ``PIP_NO_INDEX=1``).
_TRUE = frozenset({"1", "true", "yes", "on", "y", "t"})


@functools.lru_cache(maxsize=1)
def pip_configuration() -> dict[str, list[str]]:
    """Sources pip would use here: its config files, then ``PIP_*`` variables (which win).

    Read once per process: asking pip costs a subprocess, and every deploy needs the key.
    Values are split on whitespace, as pip splits its list options (a config file puts
    several find-links or indexes on separate lines).
    """
    found: dict[str, list[str]] = {}
    try:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        listing = ""
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        option = key.rpartition(".")[2]
        if sep and option in _PIP_KEYS:
            found[option] = _config_value(value).split()
    for option in _PIP_KEYS:
        variable = os.environ.get("PIP_" + option.upper().replace("-", "_"))
        if variable:
            found[option] = variable.split()
    return found


def _config_value(shown: str) -> str:
    """A value as ``pip config list`` shows it: Python's ``repr`` of the string (so the
    lines of a multi-line value read ``'\\n/opt/a\\n/opt/b'``)."""
    shown = shown.strip()
    try:
        value = ast.literal_eval(shown)
    except (ValueError, SyntaxError):
        return shown.strip("'\"")
    return value if isinstance(value, str) else shown
