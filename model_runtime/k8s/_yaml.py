"""A small YAML writer for JSON-like data, so that ``hubserve export`` needs no YAML library.

It writes block-style YAML that any YAML 1.1 or 1.2 reader (PyYAML, kubectl, GitLab) reads
back as the same data: a string is written plain only when it cannot be mistaken for
anything else (it starts with a letter, '/', '_' or '$', holds no ``": "`` or '#', and is not
one of YAML 1.1's booleans such as ``yes`` or ``on``); multi-line strings become literal
blocks (``|``); everything else is double-quoted with JSON's escapes, which YAML shares.
Output is deterministic (keys keep their insertion order), which the golden files rely on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PLAIN_RE = re.compile(r"^[A-Za-z/_$][\x20-\x22\x24-\x7e]*$")
#: Words a YAML 1.1 reader (PyYAML) or a YAML 1.2 one turns into booleans or null.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf"})
#: What must be escaped inside double quotes: YAML's non-printable characters, and the
#: Unicode line breaks (NEL, LS, PS) and BOM that a reader would take as structure.
_NON_PRINTABLE_RE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd"
    "\U00010000-\U0010ffff]"
)


def _is_plain(text: str) -> bool:
    return (
        bool(_PLAIN_RE.match(text))
        and text == text.strip()
        and ": " not in text
        and not text.endswith(":")
        and text.lower() not in _RESERVED
    )


def _quoted(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False)

    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"

    return _NON_PRINTABLE_RE.sub(escape, quoted)


def _literal_ok(text: str) -> bool:
    body = text[:-1] if text.endswith("\n") else text
    lines = body.split("\n")
    return (
        "\n" in body
        and not _NON_PRINTABLE_RE.search(text)
        and "\r" not in text
        and "\t" not in text
        and lines[0][:1] not in (" ", "")
        and all(line == line.rstrip() for line in lines)
        and not body.endswith("\n")
    )


def scalar(value: Any) -> str:
    """One scalar as YAML text."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 needs a dot: 1e-05 -> 1.0e-05
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        return value if _is_plain(value) else _quoted(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        out = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, not {type(key).__name__}")
            head = f"{pad}{scalar(key)}:"
            out += _entry(head, item, indent)
        return out
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            return [pad + "[]"]
        out = []
        for item in value:
            out += _entry(f"{pad}-", item, indent, in_list=True)
        return out
    return [pad + scalar(value)]


def _entry(head: str, item: Any, indent: int, *, in_list: bool = False) -> list[str]:
    """``head`` ("key:" or "-") followed by ``item``, inline when it is a scalar."""
    nested = isinstance(item, Mapping) or (isinstance(item, Sequence) and not isinstance(item, str))
    if nested and item:
        if in_list and isinstance(item, Mapping):
            inner = _lines(item, indent + 2)
            return [f"{head} {inner[0].lstrip()}", *inner[1:]]
        return [head, *_lines(item, indent + 2)]
    if isinstance(item, str) and _literal_ok(item):
        chomp = "" if item.endswith("\n") else "-"
        body = item[:-1] if item.endswith("\n") else item
        pad = " " * (indent + 2)
        return [f"{head} |{chomp}", *(pad + line if line else "" for line in body.split("\n"))]
    return [f"{head} {_lines(item, 0)[0]}"]


def dump(data: Any) -> str:
    """``data`` (dicts, lists, strings, numbers, booleans, None) as one YAML document."""
    return "\n".join(_lines(data, 0)) + "\n"


def dump_all(documents: Iterable[Any]) -> str:
    """Several documents separated by ``---`` lines (what ``kubectl apply -f`` reads)."""
    return "---\n".join(dump(doc) for doc in documents)
