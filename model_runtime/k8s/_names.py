"""Kubernetes names and labels for hubserve deployments.

Kubernetes is stricter than hubserve about names: object names are DNS-1123 labels (at most
63 lower-case letters, digits and '-', starting and ending with an alphanumeric; a Service
name must also start with a letter), and label values are at most 63 letters, digits, '-',
'_' or '.'. hubserve owners are JupyterHub user names (``Alice``, ``bob@example.org``) and
model names may hold '_' and '.', so both are mapped:

* :func:`object_name` turns ``(owner, name)`` into ``hs-<owner>-<name>-<hash>``: readable
  slugs, shortened to fit, plus six hex digits of a hash of the exact pair. The hash keeps
  names distinct when slugs collide (``Alice`` and ``alice``, ``a.b`` and ``a-b``) and the
  name is stable: the same deployment always maps to the same objects, which is how the
  backend finds them again after a restart.
* :func:`label_value` keeps a value that is already label-safe and otherwise replaces the
  offending characters and appends a hash, so that different owners never share a label
  value. The exact values travel in annotations (``hubserve.io/owner`` ...).
"""

from __future__ import annotations

import hashlib
import re

#: Prefix of every object name: marks hubserve's objects and makes names start with a letter.
NAME_PREFIX = "hs"
#: Longest object name: a DNS-1123 label.
MAX_NAME = 63
#: Hex digits of the hash in object names (24 bits: collisions need ~4000 same-slug pairs).
HASH_DIGITS = 6

_DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _digest(text: str, digits: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:digits]


def slug(text: str) -> str:
    """Lower-case ``text`` and replace every run of other characters than ``[a-z0-9]`` by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def object_name(owner: str, name: str) -> str:
    """The stable Kubernetes name of ``owner``'s deployment ``name`` (a DNS-1123 label).

    ``hs-<owner slug>-<name slug>-<hash>``, at most 63 characters: e.g.
    ``object_name("alice", "iris") == "hs-alice-iris-<6 hex digits>"``. Related objects add
    suffixes (``-token``, ``-tls``) only to Secret names, which may be longer.
    """
    digest = _digest(f"{owner}/{name}", HASH_DIGITS)
    owner_slug = slug(owner) or "user"
    name_slug = slug(name) or "model"
    # Room for the slugs: 63 minus "hs-", two "-" separators and the hash.
    room = MAX_NAME - len(NAME_PREFIX) - 3 - HASH_DIGITS
    owner_room = max(room - len(name_slug), min(len(owner_slug), 20))
    owner_slug = owner_slug[:owner_room].strip("-") or "user"
    name_slug = name_slug[: room - len(owner_slug)].strip("-") or "model"
    result = f"{NAME_PREFIX}-{owner_slug}-{name_slug}-{digest}"
    assert _DNS_LABEL_RE.match(result), result
    return result


def label_value(text: str) -> str:
    """``text`` as a label value: itself when valid, else a cleaned prefix plus a hash."""
    if _LABEL_VALUE_RE.match(text):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:54]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    digest = _digest(text, 8)
    return f"{cleaned}-{digest}" if cleaned else digest


def is_label_value(text: str) -> bool:
    return bool(_LABEL_VALUE_RE.match(text))


def is_label_key(key: str) -> bool:
    """``[prefix/]name``: an optional DNS-subdomain prefix (≤ 253) and a ≤ 63 name."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        return False
    return bool(_LABEL_NAME_RE.match(name))


def is_dns_label(text: str) -> bool:
    """A DNS-1123 label: what namespace names must be (digits first are allowed there)."""
    return len(text) <= MAX_NAME and bool(re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", text))


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= 253 and bool(_DNS_SUBDOMAIN_RE.match(text))
