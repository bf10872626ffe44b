"""How the ``%hubserve`` magics show their results: HTML in notebooks, text elsewhere.

The magics return the client's own objects (a :class:`~jupyter_extension.client.Deployment`
stays a ``Deployment``, so ``dep = %hubserve deploy ...`` gives something useful to code).
Single objects get their rich form from formatters registered with IPython by type (see
:func:`register_formatters`); lists are returned as the small ``list`` subclasses below, which
render themselves as a table with ``_repr_html_`` (notebooks) and ``__repr__`` (terminals,
logs; IPython's pretty printer uses a list subclass's own ``__repr__``) — still plain lists to
iterate or index.

Everything that comes from the service is escaped before it lands in HTML: model names,
log lines and messages are user-controlled text.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.lib.pretty import RepresentationPrinter

    from model_runtime import BuiltBundle

    from .client import Deployment, LogChunk, ModelDetail, ModelSummary, ModelVersion

#: Phase colours in HTML: green when serving, amber while changing, red when broken.
_PHASE_COLOURS = {
    "ready": "#1a7f37",
    "progressing": "#9a6700",
    "preparing environment": "#9a6700",
    "degraded": "#bc4c00",
    "failed": "#cf222e",
    "stopped": "#57606a",
}
_TABLE_STYLE = "border-collapse: collapse; text-align: left"
_CELL_STYLE = "padding: 2px 10px; text-align: left; vertical-align: top"


# -- small helpers ------------------------------------------------------------------------------


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def text_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """Columns padded to their widest cell, as the ``hubserve`` CLI prints them."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def html_table(rows: Iterable[Sequence[str]], headers: Sequence[str]) -> str:
    """An HTML table; the cells are HTML already (escaped by the caller)."""
    head = "".join(f'<th style="{_CELL_STYLE}">{esc(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td style="{_CELL_STYLE}">{cell}</td>' for cell in row) + "</tr>"
        for row in rows
    )
    return (
        f'<table style="{_TABLE_STYLE}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def link(url: str) -> str:
    """A link to a deployment's endpoint (relative URLs work: the notebook is on the hub)."""
    return f'<a href="{esc(url)}" target="_blank" rel="noopener"><code>{esc(url)}</code></a>'


def phase_html(phase: str) -> str:
    colour = _PHASE_COLOURS.get(phase, "inherit")
    return f'<span style="color: {colour}; font-weight: bold">{esc(phase)}</span>'


def replicas_text(dep: Deployment) -> str:
    return f"{dep.status.ready}/{dep.status.desired}"


def model_ref(dep: Deployment) -> str:
    """``owner/name:selector`` of what a deployment runs, with the version if it differs."""
    ref = f"{dep.model}:{dep.selector}"
    return ref if dep.selector == dep.version else f"{ref} ({dep.version})"


# -- deployments --------------------------------------------------------------------------------


def environment_text(dep: Deployment) -> str | None:
    """The bundle's own environment in a line (None: it runs in the service's as it is)."""
    environment = dep.status.environment
    if environment is None or environment.kind == "runtime":
        return None
    packages = ", ".join(f"{n} {v}" for n, v in sorted(environment.packages.items()))
    label = "overlay" if environment.kind == "overlay" else "separate environment"
    return f"{label} ({environment.reason}): {packages}"


def deployment_text(dep: Deployment) -> str:
    status = dep.status
    lines = [
        f"deployment {dep.key}: {status.phase}, {replicas_text(dep)} replicas ready",
        f"  model:    {model_ref(dep)}",
        f"  endpoint: {dep.url}",
    ]
    if status.message:
        lines.append(f"  message:  {status.message}")
    environment = environment_text(dep)
    if environment:
        lines.append(f"  environment: {environment}")
    for api in dep.apis:
        batch = ", batchable" if api.batchable else ""
        lines.append(f"  api {api.name}: {api.input} -> {api.output}{batch}")
    if status.replicas:
        rows = [[r.id, r.version, r.state, r.restarts] for r in status.replicas]
        table = text_table(rows, ["replica", "version", "state", "restarts"])
        lines.extend("  " + line for line in table.splitlines())
    if dep.revisions:
        history = ", ".join(f"#{r.number} {r.version}" for r in dep.revisions[-5:])
        lines.append(f"  revisions: {history}")
    return "\n".join(lines)


def deployment_html(dep: Deployment) -> str:
    status = dep.status
    facts = [
        ("model", f"<code>{esc(model_ref(dep))}</code>"),
        ("replicas", f"{esc(replicas_text(dep))} ready ({esc(status.updated)} up to date)"),
        ("endpoint", link(dep.url)),
    ]
    if status.message:
        facts.append(("message", esc(status.message)))
    environment = environment_text(dep)
    if environment:
        facts.append(("environment", esc(environment)))
    if dep.apis:
        facts.append(
            (
                "APIs",
                "<br>".join(
                    f"<code>POST {esc(dep.url)}{esc(a.name)}</code> — {esc(a.input)} → "
                    f"{esc(a.output)}{' (batchable)' if a.batchable else ''}"
                    for a in dep.apis
                ),
            )
        )
    if dep.revisions:
        facts.append(
            (
                "revisions",
                ", ".join(f"#{r.number} <code>{esc(r.version)}</code>" for r in dep.revisions[-5:]),
            )
        )
    rows = "".join(
        f'<tr><th style="{_CELL_STYLE}">{esc(k)}</th><td style="{_CELL_STYLE}">{v}</td></tr>'
        for k, v in facts
    )
    replicas = ""
    if status.replicas:
        replicas = html_table(
            (
                [
                    esc(r.id),
                    f"<code>{esc(r.version)}</code>",
                    esc(r.state),
                    esc(r.restarts),
                    esc(r.last_error or ""),
                ]
                for r in status.replicas
            ),
            ["replica", "version", "state", "restarts", "last error"],
        )
    return (
        f"<div><strong>deployment <code>{esc(dep.key)}</code></strong> {phase_html(status.phase)}"
        f'<table style="{_TABLE_STYLE}">{rows}</table>{replicas}</div>'
    )


class DeploymentTable(list["Deployment"]):
    """Deployments, shown as one row each with a link to the endpoint."""

    headers = ("deployment", "model", "ready", "phase", "endpoint")

    def _rows(self) -> list[list[str]]:
        return [[d.key, model_ref(d), replicas_text(d), d.status.phase, d.url] for d in self]

    def __repr__(self) -> str:
        return text_table(self._rows(), self.headers) if self else "no deployments"

    def _repr_html_(self) -> str:
        if not self:
            return "<em>no deployments</em>"
        return html_table(
            (
                [
                    f"<code>{esc(d.key)}</code>",
                    f"<code>{esc(model_ref(d))}</code>",
                    esc(replicas_text(d)),
                    phase_html(d.status.phase),
                    link(d.url),
                ]
                for d in self
            ),
            self.headers,
        )


# -- models -------------------------------------------------------------------------------------


class ModelTable(list["ModelSummary"]):
    """Models, each with the deployments that run it (and links to their endpoints)."""

    headers = ("model", "deployments")

    def __init__(
        self, models: Iterable[ModelSummary], deployments: Iterable[Deployment] = ()
    ) -> None:
        super().__init__(models)
        self.deployments: dict[str, list[Deployment]] = {}
        for dep in deployments:
            self.deployments.setdefault(dep.model, []).append(dep)

    def _deps(self, model: ModelSummary) -> list[Deployment]:
        return self.deployments.get(f"{model.owner}/{model.name}", [])

    def __repr__(self) -> str:
        if not self:
            return "no models"
        rows = [
            [f"{m.owner}/{m.name}", ", ".join(f"{d.key} ({d.url})" for d in self._deps(m))]
            for m in self
        ]
        return text_table(rows, self.headers)

    def _repr_html_(self) -> str:
        if not self:
            return "<em>no models</em>"
        return html_table(
            (
                [
                    f"<code>{esc(m.owner)}/{esc(m.name)}</code>",
                    "<br>".join(
                        f"<code>{esc(d.key)}</code> {phase_html(d.status.phase)} {link(d.url)}"
                        for d in self._deps(m)
                    ),
                ]
                for m in self
            ),
            self.headers,
        )


class VersionTable(list[Any]):
    """The versions of one model, newest first, with the tags naming each."""

    headers = ("version", "created (UTC)", "size", "tags")

    def __init__(self, detail: ModelDetail) -> None:
        super().__init__(detail.versions)
        self.detail = detail

    def _rows(self) -> list[list[str]]:
        return [
            [v.version, when(v.created_at), human_size(v.size), ", ".join(v.tags)] for v in self
        ]

    def __repr__(self) -> str:
        title = f"model {self.detail.owner}/{self.detail.name}"
        if not self:
            return f"{title}: no versions"
        return f"{title}\n{text_table(self._rows(), self.headers)}"

    def _repr_html_(self) -> str:
        key = f"{self.detail.owner}/{self.detail.name}"
        title = f"<strong>model <code>{esc(key)}</code></strong>"
        if not self:
            return f"{title} <em>no versions</em>"
        rows = (
            [f"<code>{esc(c)}</code>" if i == 0 else esc(c) for i, c in enumerate(row)]
            for row in self._rows()
        )
        return f"<div>{title}{html_table(rows, self.headers)}</div>"


def version_text(version: ModelVersion) -> str:
    tags = ", ".join(version.tags)
    apis = ", ".join(
        f"{a.name} ({a.input.get('kind', '?')} -> {a.output.get('kind', '?')})"
        for a in version.manifest.apis
    )
    return (
        f"{version.owner}/{version.name}:{version.version}"
        f" ({human_size(version.archive_size)}, pushed {when(version.pushed_at)} by"
        f" {version.pushed_by}{'; tags: ' + tags if tags else ''})"
        + (f"\n  apis: {apis}" if apis else "")
    )


def version_html(version: ModelVersion) -> str:
    lines = esc(version_text(version)).split("\n")
    return "<div><code>" + "</code><br><code>".join(lines) + "</code></div>"


def bundle_text(built: BuiltBundle) -> str:
    size = human_size(built.archive.stat().st_size) if built.archive.exists() else "removed"
    return f"bundle {built.ref} ({size}) at {built.archive}"


# -- logs ---------------------------------------------------------------------------------------


class LogView(list["LogChunk"]):
    """The tail of each replica's output."""

    def __init__(self, deployment: str, chunks: Iterable[LogChunk]) -> None:
        super().__init__(chunks)
        self.deployment = deployment

    def __repr__(self) -> str:
        if not self:
            return f"no logs for {self.deployment} (no replicas)"
        parts = []
        for chunk in self:
            parts.append(f"--- {self.deployment} replica {chunk.replica} ---")
            parts.extend(chunk.lines)
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        if not self:
            return f"<em>no logs for <code>{esc(self.deployment)}</code> (no replicas)</em>"
        return "".join(
            f"<details open><summary>replica <code>{esc(chunk.replica)}</code>"
            f" ({len(chunk.lines)} lines)</summary>"
            f'<pre style="max-height: 24em; overflow: auto">{esc(chr(10).join(chunk.lines))}</pre>'
            "</details>"
            for chunk in self
        )


# -- registration -------------------------------------------------------------------------------


def _pretty(render: Callable[[Any], str]) -> Callable[[Any, RepresentationPrinter, bool], None]:
    def printer(obj: Any, p: RepresentationPrinter, cycle: bool) -> None:
        p.text(render(obj))  # type: ignore[no-untyped-call]

    return printer


#: Where the displayed classes live (``__module__``, ``__name__``). By name, so that loading
#: the extension imports neither the client nor ``model_runtime``: IPython resolves the names
#: when such an object is first displayed. A test checks these still match the classes.
FORMATTED_TYPES: dict[str, tuple[str, str]] = {
    "Deployment": ("jupyter_extension.client._models", "Deployment"),
    "ModelVersion": ("jupyter_extension.client._models", "ModelVersion"),
    "BuiltBundle": ("model_runtime.bundle._build", "BuiltBundle"),
}


def register_formatters(shell: InteractiveShell) -> list[tuple[str, str]]:
    """Show the client's deployments and versions richly wherever they are displayed.

    Registered by type, so any ``Deployment`` the notebook shows (from a magic or from
    ``hubserve.Client`` directly) looks the same. Returns what was registered, for unloading.
    """
    assert shell.display_formatter is not None
    formatters = shell.display_formatter.formatters
    renderers: list[tuple[str, Callable[[Any], str], Callable[[Any], str] | None]] = [
        ("Deployment", deployment_text, deployment_html),
        ("ModelVersion", version_text, version_html),
        ("BuiltBundle", bundle_text, None),
    ]
    registered: list[tuple[str, str]] = []
    for key, text, rich in renderers:
        module, name = FORMATTED_TYPES[key]
        formatters["text/plain"].for_type_by_name(module, name, _pretty(text))
        registered.append(("text/plain", f"{module}.{name}"))
        if rich is not None:
            formatters["text/html"].for_type_by_name(module, name, rich)
            registered.append(("text/html", f"{module}.{name}"))
    return registered


def unregister_formatters(shell: InteractiveShell, registered: list[tuple[str, str]]) -> None:
    assert shell.display_formatter is not None
    formatters = shell.display_formatter.formatters
    for mime, dotted in registered:
        formatters[mime].pop(dotted, None)
