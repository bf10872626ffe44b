"""Renders a Helm chart without helm: a re-implementation of the subset of Go's
text/template and of Helm's functions that deploy/helm/hubserve uses.

helm cannot be installed on the test machines (it is in no package registry they reach),
so tests/model_runtime/k8s/test_helm.py renders the chart with this and validates the
result. It follows Go's rules where the chart depends on them: ``{{-``/``-}}`` trim the
whitespace beside an action; ``if``/``with``/``range`` take "empty" values (``false``, 0,
``nil``, ``""``, empty lists and maps) as false; ``with`` rebinds ``.``; ``range`` over a map
goes in key order; ``and``/``or`` return one of their operands; pipelines pass the previous
value as the last argument; missing values print as "" (Helm replaces ``<no value>``), but a
field of a missing value is an error, as in helm. Anything outside the subset (an unknown
function or keyword) raises :class:`TemplateError`, so the chart cannot quietly grow past
what is tested. Numbers stay Python ints (helm reads values as float64; the chart only
prints integers that both print the same).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class TemplateError(Exception):
    pass


# -- parsing ---------------------------------------------------------------------------------

_ACTION_RE = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


@dataclass
class Node:
    kind: str  # text, action, if, with, range, define
    text: str = ""
    branches: list[tuple[str, list[Node]]] = field(default_factory=list)
    else_body: list[Node] = field(default_factory=list)


def _tokens(source: str) -> list[tuple[str, str]]:
    """``[("text", ...), ("action", ...)]`` with Go's whitespace trimming applied."""
    out: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION_RE.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        out.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    out.append(("text", tail.lstrip() if trim_next else tail))
    return [t for t in out if t != ("text", "")]


def parse(source: str) -> list[Node]:
    tokens = _tokens(source)
    nodes, index, end = _parse_block(tokens, 0)
    if end is not None:
        raise TemplateError(f"unexpected {{{{{end}}}}}")
    assert index == len(tokens)
    return nodes


def _parse_block(tokens: list[tuple[str, str]], index: int) -> tuple[list[Node], int, str | None]:
    """Nodes up to an ``end``/``else`` (returned as the third item) or the end of input."""
    nodes: list[Node] = []
    while index < len(tokens):
        kind, text = tokens[index]
        index += 1
        if kind == "text":
            nodes.append(Node("text", text))
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else"):
            return nodes, index, text
        if word in ("if", "with", "range", "define"):
            node = Node(word)
            condition = text[len(word) :].strip()
            while True:
                body, index, closer = _parse_block(tokens, index)
                if closer is None:
                    raise TemplateError(f"{{{{{text}}}}} has no end")
                node.branches.append((condition, body))
                if closer == "end":
                    break
                rest = closer[len("else") :].strip()
                if rest.startswith("if ") and word == "if":
                    condition = rest[3:].strip()
                    continue
                if rest:
                    raise TemplateError(f"unsupported {{{{{closer}}}}}")
                node.else_body, index, closer = _parse_block(tokens, index)
                if closer != "end":
                    raise TemplateError(f"{{{{{text}}}}}: else without end")
                break
            nodes.append(node)
            continue
        if word in ("block", "template", "break", "continue"):
            raise TemplateError(f"{{{{{word}}}}} is outside the tested subset")
        nodes.append(Node("action", text))
    return nodes, index, None


# -- expressions -----------------------------------------------------------------------------

_TERM_RE = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<open>\()
    | (?P<close>\))
    | (?P<pipe>\|)
    | (?P<assign>:?=)
    | (?P<comma>,)
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    | (?P<field>\.(?:[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)


def _lex(text: str) -> list[tuple[str, str]]:
    out = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TERM_RE.match(text, pos)
        if match is None or match.end() == pos:
            raise TemplateError(f"cannot parse {text[pos:]!r}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


def truth(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, tuple, dict)):
        return len(value) > 0
    return True


def strval(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (dict, list)):
        raise TemplateError(f"printing a {type(value).__name__}: use toYaml or toJson")
    return str(value)


def _go_printf(fmt: str, *args: Any) -> str:
    values = list(args)

    def one(match: re.Match[str]) -> str:
        verb = match.group(1)
        if verb == "%":
            return "%"
        if not values:
            raise TemplateError(f"printf {fmt!r}: too few arguments")
        value = values.pop(0)
        if verb in ("s", "v"):
            return strval(value)
        if verb == "d":
            return str(int(value))
        if verb == "q":
            return json.dumps(strval(value))
        raise TemplateError(f"printf verb %{verb} is outside the tested subset")

    return re.sub(r"%([svdq%])", one, fmt)


def _indent(width: int, text: str) -> str:
    pad = " " * int(width)
    return pad + text.replace("\n", "\n" + pad)


def _to_yaml(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _required(message: str, value: Any) -> Any:
    if value is None or value == "":
        raise TemplateError(f"required: {message}")
    return value


def _and(*args: Any) -> Any:
    for arg in args:
        if not truth(arg):
            return arg
    return args[-1]


def _or(*args: Any) -> Any:
    for arg in args:
        if truth(arg):
            return arg
    return args[-1]


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "default": lambda default, *value: value[0] if value and truth(value[0]) else default,
    "quote": lambda *values: " ".join(json.dumps(strval(v)) for v in values),
    "toYaml": _to_yaml,
    "toJson": lambda value: json.dumps(value, separators=(",", ":"), sort_keys=True),
    "nindent": lambda width, text: "\n" + _indent(width, text),
    "indent": _indent,
    "trunc": lambda n, text: text[: int(n)],
    "trimSuffix": lambda suffix, text: (
        text[: -len(suffix)] if suffix and text.endswith(suffix) else text
    ),
    "contains": lambda sub, text: sub in text,
    "printf": _go_printf,
    "print": lambda *values: "".join(strval(v) for v in values),
    "b64enc": lambda text: base64.b64encode(strval(text).encode()).decode(),
    "sha256sum": lambda text: hashlib.sha256(text.encode()).hexdigest(),
    "required": _required,
    "not": lambda value: not truth(value),
    "and": _and,
    "or": _or,
    "eq": lambda a, *others: any(a == o for o in others),
    "ne": lambda a, b: a != b,
    "empty": lambda value: not truth(value),
}


@dataclass
class Scope:
    dot: Any
    root: Any
    variables: dict[str, Any]


class Renderer:
    """Holds the ``define``d templates and the files; renders with :meth:`render_file`."""

    def __init__(self) -> None:
        self.defines: dict[str, list[Node]] = {}
        self.files: dict[str, list[Node]] = {}

    def add_file(self, name: str, source: str) -> None:
        nodes = parse(source)
        self.files[name] = nodes
        self._collect(nodes)

    def _collect(self, nodes: list[Node]) -> None:
        for node in nodes:
            if node.kind == "define":
                ((condition, body),) = node.branches
                self.defines[json.loads(condition)] = body

    def render_file(self, name: str, root: Mapping[str, Any]) -> str:
        return self._render(self.files[name], Scope(root, root, {"$": root}))

    # -- evaluation --------------------------------------------------------------------------

    def _render(self, nodes: list[Node], scope: Scope) -> str:
        out = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "action":
                value = self._pipeline(node.text, scope)
                if value is not _NOTHING:
                    out.append(strval(value))
            elif node.kind == "if":
                for condition, body in node.branches:
                    if truth(
                        self._pipeline(
                            condition, Scope(scope.dot, scope.root, dict(scope.variables))
                        )
                    ):
                        out.append(
                            self._render(body, Scope(scope.dot, scope.root, dict(scope.variables)))
                        )
                        break
                else:
                    out.append(
                        self._render(
                            node.else_body, Scope(scope.dot, scope.root, dict(scope.variables))
                        )
                    )
            elif node.kind == "with":
                ((condition, body),) = node.branches
                value = self._pipeline(
                    condition, Scope(scope.dot, scope.root, dict(scope.variables))
                )
                if truth(value):
                    out.append(self._render(body, Scope(value, scope.root, dict(scope.variables))))
                else:
                    out.append(
                        self._render(
                            node.else_body, Scope(scope.dot, scope.root, dict(scope.variables))
                        )
                    )
            elif node.kind == "range":
                out.append(self._range(node, scope))
            elif node.kind == "define":
                continue
            else:  # pragma: no cover
                raise TemplateError(node.kind)
        return "".join(out)

    def _range(self, node: Node, scope: Scope) -> str:
        ((condition, body),) = node.branches
        names: list[str] = []
        match = re.match(r"^(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*(.*)$", condition, re.DOTALL)
        if match:
            names = [n for n in match.group(1, 2) if n]
            condition = match.group(3)
        value = self._pipeline(condition, Scope(scope.dot, scope.root, dict(scope.variables)))
        if isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        elif value is None:
            items = []
        else:
            raise TemplateError(f"cannot range over {type(value).__name__}")
        if not items:
            return self._render(node.else_body, scope)
        out = []
        for key, item in items:
            variables = dict(scope.variables)
            if len(names) == 2:
                variables[names[0]], variables[names[1]] = key, item
            elif names:
                variables[names[0]] = item
            out.append(self._render(body, Scope(item, scope.root, variables)))
        return "".join(out)

    def _pipeline(self, text: str, scope: Scope) -> Any:
        tokens = _lex(text)
        declared = None
        if len(tokens) >= 2 and tokens[0][0] == "var" and tokens[1][0] == "assign":
            declared = tokens[0][1]
            tokens = tokens[2:]
        value, rest = self._eval_pipeline(tokens, scope)
        if rest:
            raise TemplateError(f"trailing tokens in {text!r}")
        if declared is not None:
            scope.variables[declared] = value
            return _NOTHING
        return value

    def _eval_pipeline(
        self, tokens: list[tuple[str, str]], scope: Scope
    ) -> tuple[Any, list[tuple[str, str]]]:
        commands: list[list[tuple[str, str]]] = [[]]
        depth = 0
        index = 0
        while index < len(tokens):
            kind, text = tokens[index]
            if kind == "open":
                depth += 1
            elif kind == "close":
                if depth == 0:
                    break
                depth -= 1
            if kind == "pipe" and depth == 0:
                commands.append([])
            else:
                commands[-1].append((kind, text))
            index += 1
        value: Any = _NOTHING
        for command in commands:
            value = self._command(command, scope, value)
        return value, tokens[index:]

    def _command(self, tokens: list[tuple[str, str]], scope: Scope, piped: Any) -> Any:
        if not tokens:
            raise TemplateError("empty command")
        head_kind, head = tokens[0]
        args: list[Any] = []
        rest = (
            tokens[1:] if head_kind == "ident" and head not in ("true", "false", "nil") else tokens
        )
        index = 0
        while index < len(rest):
            kind, text = rest[index]
            if kind == "open":
                depth, end = 1, index + 1
                while depth:
                    if rest[end][0] == "open":
                        depth += 1
                    elif rest[end][0] == "close":
                        depth -= 1
                    end += 1
                inner, leftover = self._eval_pipeline(rest[index + 1 : end - 1], scope)
                if leftover:
                    raise TemplateError("bad parentheses")
                args.append(inner)
                index = end
                continue
            args.append(self._term(kind, text, scope))
            index += 1
        if piped is not _NOTHING:
            args.append(piped)
        if rest is tokens:  # a value, not a function call
            if len(args) != 1:
                raise TemplateError(f"{head!r} is not a function")
            return args[0]
        if head == "include":
            name, dot = args
            body = self.defines.get(name)
            if body is None and name in self.files:
                body = self.files[name]
            if body is None:
                raise TemplateError(f"include of unknown template {name!r}")
            return self._render(body, Scope(dot, scope.root, {"$": dot}))
        function = FUNCTIONS.get(head)
        if function is None:
            raise TemplateError(f"function {head!r} is outside the tested subset")
        return function(*args)

    def _term(self, kind: str, text: str, scope: Scope) -> Any:
        if kind == "str":
            return json.loads(text)
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if "." in text else int(text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "nil":
                return None
            raise TemplateError(f"function {text!r} used as a value")
        if kind == "field":
            return _lookup(scope.dot, text[1:].split(".") if text != "." else [], text)
        if kind == "var":
            name, _, path = text.partition(".")
            if name not in scope.variables:
                raise TemplateError(f"undefined variable {name}")
            return _lookup(scope.variables[name], path.split(".") if path else [], text)
        raise TemplateError(f"unexpected {text!r}")


class _Nothing:
    pass


_NOTHING = _Nothing()


def _lookup(value: Any, path: list[str], text: str) -> Any:
    for part in path:
        if value is None:
            raise TemplateError(f"nil pointer evaluating {text}")
        if not isinstance(value, Mapping):
            raise TemplateError(f"{text}: cannot take .{part} of a {type(value).__name__}")
        value = value.get(part)
    return value


def merge_values(base: Any, override: Any) -> Any:
    """Helm's value merge: maps merge recursively, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge_values(base.get(key), value) if key in base else value
        return merged
    return override


def render_chart(
    chart_dir: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "hubserve",
    namespace: str = "jhub",
) -> dict[str, str]:
    """``{template path: rendered text}`` as ``helm template`` would print them (NOTES.txt
    included, partials not)."""
    chart = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text()) or {}
    renderer = Renderer()
    names = []
    for path in sorted((chart_dir / "templates").iterdir()):
        name = f"{chart['name']}/templates/{path.name}"
        renderer.add_file(name, path.read_text())
        names.append(name)
    root = {
        "Values": merge_values(defaults, dict(values or {})),
        "Chart": {
            "Name": chart["name"],
            "Version": chart["version"],
            "AppVersion": chart.get("appVersion", ""),
        },
        "Release": {
            "Name": release,
            "Namespace": namespace,
            "Service": "Helm",
            "IsInstall": True,
            "IsUpgrade": False,
        },
        "Template": {"BasePath": f"{chart['name']}/templates"},
    }
    return {
        name: renderer.render_file(name, root)
        for name in names
        if not Path(name).name.startswith("_")
    }


def documents(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a rendered chart (empty documents dropped)."""
    docs = []
    for name, text in rendered.items():
        if not name.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs
