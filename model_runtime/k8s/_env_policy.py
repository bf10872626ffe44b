"""What a pod's ``hubserve env build`` may install, as container settings or CLI flags.

A bundle runs in the environment its ``requirements.txt`` asks for, built with uv by
``hubserve env build`` (see :mod:`model_runtime.envs`). Where the packages may come from and
which ones are acceptable is the cluster administrator's policy: a private index, a
wheelhouse, packages allowed or refused, whether source distributions (which run code at
build time) may be built, and a size cap. :class:`EnvPolicy` carries that policy to the
places that run the build:

* the init container and the runtime container of a pod, and the image ``hubserve
  containerize`` makes, get it as the ``HUBSERVE_ENV_*`` variables of the CLI
  (:meth:`EnvPolicy.env`): the build *and* ``hubserve serve --env auto``, because an
  environment's key hashes the package sources, and ``serve`` finds the environment the
  build made only under the same policy;
* the ``hubserve export`` options that rebuild a target get it as the flags of ``hubserve
  env build`` (:meth:`EnvPolicy.args`).

Only what is set is written: the default policy adds nothing to the objects.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ._errors import ManifestError

#: A distribution name as PEP 508 allows it (``torch``, ``scikit-learn``, ``zope.interface``).
_PACKAGE_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class EnvPolicy:
    """The options of ``hubserve env build`` that say what an environment may hold.

    ``index_url`` replaces the package index, ``extra_index_urls`` and ``find_links``
    (directories or URLs of wheels) add sources, ``no_index`` leaves only ``find_links``
    (an air-gapped cluster's wheelhouse); ``allow_sdist`` lets uv build source
    distributions; ``allow`` and ``deny`` name packages the build must accept or refuse;
    ``max_env_bytes`` caps the size of one environment.
    """

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    allow_sdist: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    max_env_bytes: int | None = None

    def __post_init__(self) -> None:
        locations = [("index URL", self.index_url)] if self.index_url is not None else []
        locations += [("extra index URL", url) for url in self.extra_index_urls]
        locations += [("find-links location", where) for where in self.find_links]
        for what, where in locations:
            if not where.strip() or not where.isprintable():  # a newline would end a line
                raise ManifestError(f"environment policy: {what} {where!r} is not a location")
        for what, names in (("allow", self.allow), ("deny", self.deny)):
            for name in names:
                if not _PACKAGE_RE.match(name):
                    raise ManifestError(
                        f"environment policy: {what} {name!r} is not a package name"
                    )
        if self.no_index and not self.find_links:
            raise ManifestError("environment policy: no index needs find-links to install from")
        if self.max_env_bytes is not None and self.max_env_bytes < 1:
            raise ManifestError("environment policy: max_env_bytes must be at least 1")

    @property
    def is_default(self) -> bool:
        return self == EnvPolicy()

    def env(self) -> list[dict[str, Any]]:
        """The policy as container environment entries (``HUBSERVE_ENV_*``, lists as JSON)."""
        values: list[tuple[str, str | None]] = [
            ("HUBSERVE_ENV_INDEX_URL", self.index_url),
            ("HUBSERVE_ENV_EXTRA_INDEX_URLS", _json_list(self.extra_index_urls)),
            ("HUBSERVE_ENV_FIND_LINKS", _json_list(self.find_links)),
            ("HUBSERVE_ENV_NO_INDEX", "true" if self.no_index else None),
            ("HUBSERVE_ENV_ALLOW_SDIST", "true" if self.allow_sdist else None),
            ("HUBSERVE_ENV_ALLOW", _json_list(self.allow)),
            ("HUBSERVE_ENV_DENY", _json_list(self.deny)),
            (
                "HUBSERVE_ENV_MAX_ENV_BYTES",
                str(self.max_env_bytes) if self.max_env_bytes is not None else None,
            ),
        ]
        return [{"name": name, "value": value} for name, value in values if value is not None]

    def args(self) -> list[str]:
        """The policy as the flags of ``hubserve env build`` (``export`` and ``containerize``
        take the same)."""
        args: list[str] = []
        if self.index_url is not None:
            args += ["--index-url", self.index_url]
        for url in self.extra_index_urls:
            args += ["--extra-index-url", url]
        for where in self.find_links:
            args += ["--find-links", where]
        if self.no_index:
            args.append("--no-index")
        if self.allow_sdist:
            args.append("--allow-sdist")
        for name in self.allow:
            args += ["--allow", name]
        for name in self.deny:
            args += ["--deny", name]
        if self.max_env_bytes is not None:
            args += ["--max-env-size", str(self.max_env_bytes)]
        return args


def _json_list(items: tuple[str, ...]) -> str | None:
    return json.dumps(list(items)) if items else None
