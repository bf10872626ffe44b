"""Naming rules for owners, models, versions and tags, and model references.

Names end up in object-store keys, URLs, file names and Kubernetes object names, so they are
validated once, here, with messages that say what is allowed. A *reference* names one
version of a model: ``[owner/]name[:version-or-tag]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidNameError

#: Model names: lower-case, DNS-label-like (they become URL and Kubernetes name parts).
MODEL_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_.-]{0,61}[a-z0-9])?$")
#: Owners are JupyterHub user names, which may hold e-mail-like characters.
OWNER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
#: Versions are assigned by hubserve: UTC time (sortable) then a short content hash.
VERSION_RE = re.compile(r"^\d{8}T\d{9}Z-[0-9a-f]{8}$")
#: Tags follow the OCI tag rule, minus anything that could be mistaken for a version.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

LATEST = "latest"


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.match(name):
        raise InvalidNameError(
            f"invalid model name {name!r}: use 1-63 lower-case letters, digits, '-', '_' or '.',"
            " starting and ending with a letter or digit"
        )
    return name


def check_owner(owner: str) -> str:
    if not OWNER_RE.match(owner):
        raise InvalidNameError(
            f"invalid owner {owner!r}: use letters, digits and '_', '.', '@', '+', '-'"
        )
    return owner


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise InvalidNameError(
            f"invalid version {version!r}: versions look like 20261125T161745123Z-3f2a9c1e"
        )
    return version


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag) or VERSION_RE.match(tag):
        raise InvalidNameError(
            f"invalid tag {tag!r}: use up to 128 letters, digits, '_', '.' or '-',"
            " not starting with '.' or '-'"
        )
    return tag


def is_version(text: str) -> bool:
    return VERSION_RE.match(text) is not None


@dataclass(frozen=True)
class ModelRef:
    """``owner/name:selector`` where the selector is a version or a tag (default ``latest``)."""

    owner: str
    name: str
    selector: str = LATEST

    @property
    def version(self) -> str | None:
        """The version when the selector is one, else ``None`` (it is a tag)."""
        return self.selector if is_version(self.selector) else None

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}:{self.selector}"

    @classmethod
    def parse(cls, text: str, *, default_owner: str | None = None) -> ModelRef:
        """Parse ``[owner/]name[:version-or-tag]``; the owner defaults to ``default_owner``."""
        body, sep, selector = text.partition(":")
        if sep and not selector:
            raise InvalidNameError(f"invalid reference {text!r}: nothing after ':'")
        owner_part, slash, name = body.rpartition("/")
        if not slash:
            if default_owner is None:
                raise InvalidNameError(f"invalid reference {text!r}: expected owner/name[:version]")
            owner_part = default_owner
        check_owner(owner_part)
        check_model_name(name)
        selector = selector or LATEST
        if not is_version(selector):
            check_tag(selector)
        return cls(owner_part, name, selector)
