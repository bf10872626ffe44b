"""The "my deployments" part of the panel: one row per deployment, with its controls.

Rows are kept by deployment key across refreshes and updated in place, so a refresh does not
make the front end rebuild every widget (and lose a replica count being typed); rows of
deployments that are gone are closed. The list does no network work itself: the panel
calls the service in the background and hands the result to :meth:`DeploymentsList.show`,
and the row buttons call back into the panel.

Deleting is the one action that cannot be undone, so it takes two clicks: the first turns
the button into "Confirm delete", the second deletes.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets  # type: ignore[import-untyped, unused-ignore]

if TYPE_CHECKING:
    from jupyter_extension.client import Deployment

MAX_REPLICAS = 64
_PHASE_COLOURS = {
    "ready": "#1b7f3b",
    "progressing": "#b26a00",
    "preparing environment": "#b26a00",
    "degraded": "#b26a00",
    "failed": "#b00020",
    "stopped": "#666666",
}


def close_tree(widget: Any) -> None:
    """Close ``widget``, its children, and their layout and style models.

    ``Widget.close`` closes one comm; a panel is a tree of a few hundred (each widget's
    layout and style are widgets too), and the front end keeps each model until closed.
    """
    for child in getattr(widget, "children", ()):
        close_tree(child)
    for attr in ("layout", "style"):
        part = getattr(widget, attr, None)
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()


def status_text(deployment: Deployment) -> str:
    """One line: phase, replicas ready of desired, and the backend's message if any."""
    status = deployment.status
    text = f"{status.phase} · {status.ready}/{status.desired} replicas ready"
    if status.message:
        text += f" · {status.message}"
    return text


@dataclass(frozen=True)
class RowActions:
    """What the row buttons do (the panel's methods, which run in the background)."""

    scale: Callable[[str, int], None]
    rollback: Callable[[str], None]
    delete: Callable[[str], None]
    open: Callable[[str], None]


class DeploymentRow:
    """One deployment: name, version, status, and scale / roll back / delete / open controls."""

    def __init__(self, deployment: Deployment, actions: RowActions) -> None:
        self.key = deployment.key
        self._actions = actions
        self._enabled = True
        self._can_rollback = False
        self._confirming_delete = False
        self._replicas_seen: int | None = None
        self.label = widgets.HTML(layout=widgets.Layout(flex="1 1 auto"))
        self.replicas = widgets.BoundedIntText(
            min=0, max=MAX_REPLICAS, description="Replicas", layout=widgets.Layout(width="150px")
        )
        self.scale_button = widgets.Button(
            description="Scale", tooltip="Run this many replicas", icon="arrows-v"
        )
        self.rollback_button = widgets.Button(
            description="Roll back", tooltip="Back to the previous revision's version", icon="undo"
        )
        self.delete_button = widgets.Button(
            description="Delete", tooltip="Stop every replica and forget the deployment"
        )
        self.open_button = widgets.Button(
            description="Open", tooltip="Show its endpoint, snippets and status above"
        )
        for button in self.buttons:
            button.layout = widgets.Layout(width="auto")
        self.scale_button.on_click(lambda _: self._actions.scale(self.key, self.replicas.value))
        self.rollback_button.on_click(lambda _: self._actions.rollback(self.key))
        self.delete_button.on_click(self._on_delete)
        self.open_button.on_click(lambda _: self._actions.open(self.key))
        self.box = widgets.HBox(
            [
                self.label,
                self.replicas,
                self.scale_button,
                self.rollback_button,
                self.delete_button,
                self.open_button,
            ],
            layout=widgets.Layout(align_items="center"),
        )
        self.update(deployment)

    @property
    def buttons(self) -> list[Any]:
        return [self.scale_button, self.rollback_button, self.delete_button, self.open_button]

    def update(self, deployment: Deployment) -> None:
        status = deployment.status
        colour = _PHASE_COLOURS.get(status.phase, "#333333")
        self.label.value = (
            f"<b>{html.escape(deployment.key)}</b> "
            f"<code>{html.escape(deployment.model)}:{html.escape(deployment.version)}</code> "
            f'<span style="color: {colour}">{html.escape(status_text(deployment))}</span>'
        )
        if deployment.replicas != self._replicas_seen:  # not over a count being typed
            self._replicas_seen = deployment.replicas
            self.replicas.value = min(deployment.replicas, MAX_REPLICAS)
        self._can_rollback = len(deployment.revisions) >= 2
        self.set_enabled(self._enabled)

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        self.scale_button.disabled = not enabled
        self.delete_button.disabled = not enabled
        self.open_button.disabled = not enabled
        self.rollback_button.disabled = not (enabled and self._can_rollback)
        if not enabled:
            self._reset_delete()

    def _on_delete(self, _: Any) -> None:
        if not self._confirming_delete:
            self._confirming_delete = True
            self.delete_button.description = "Confirm delete"
            self.delete_button.button_style = "danger"
            return
        self._reset_delete()
        self._actions.delete(self.key)

    def _reset_delete(self) -> None:
        self._confirming_delete = False
        self.delete_button.description = "Delete"
        self.delete_button.button_style = ""

    def close(self) -> None:
        close_tree(self.box)


class DeploymentsList:
    """The caller's deployments as rows, plus a refresh button."""

    def __init__(self, actions: RowActions) -> None:
        self._actions = actions
        self._enabled = True
        self.rows: dict[str, DeploymentRow] = {}
        self.refresh_button = widgets.Button(
            description="Refresh", tooltip="List my deployments again", icon="refresh"
        )
        self.empty_label = widgets.Label("No deployments yet.")
        self.rows_box = widgets.VBox([self.empty_label])
        self.box = widgets.VBox(
            [
                widgets.HBox(
                    [widgets.HTML("<b>My deployments</b>"), self.refresh_button],
                    layout=widgets.Layout(align_items="center"),
                ),
                self.rows_box,
            ]
        )

    def show(self, deployments: list[Deployment]) -> None:
        """Show exactly ``deployments``, reusing the rows of those already shown."""
        keep: dict[str, DeploymentRow] = {}
        for deployment in sorted(deployments, key=lambda d: d.key):
            row = self.rows.pop(deployment.key, None)
            if row is None:
                row = DeploymentRow(deployment, self._actions)
            else:
                row.update(deployment)
            row.set_enabled(self._enabled)
            keep[deployment.key] = row
        gone, self.rows = self.rows, keep
        self.rows_box.children = [row.box for row in keep.values()] or [self.empty_label]
        for row in gone.values():
            row.close()

    def update(self, deployment: Deployment) -> None:
        """Refresh one row if shown (after an action on it, or a status poll)."""
        row = self.rows.get(deployment.key)
        if row is not None:
            row.update(deployment)

    def remove(self, key: str) -> None:
        row = self.rows.pop(key, None)
        if row is not None:
            self.rows_box.children = [r.box for r in self.rows.values()] or [self.empty_label]
            row.close()

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        self.refresh_button.disabled = not enabled
        for row in self.rows.values():
            row.set_enabled(enabled)

    def close(self) -> None:
        for row in self.rows.values():
            row.close()
        self.rows = {}
        close_tree(self.empty_label)
        close_tree(self.box)
