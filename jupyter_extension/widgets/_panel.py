"""``DeployPanel``: deploy a model from a notebook, call it, watch it, scale it, roll it back.

The panel is a form over :class:`~jupyter_extension.client.Client`, top to bottom:

1. **What to deploy** — a :class:`~model_runtime.Service` defined in this notebook (found in
   the shell's namespace; *Refresh* after defining a new one) or a version already pushed
   (models and versions listed by the service).
2. **How** — deployment name, a tag for the pushed version, replicas, batching knobs for the
   batchable APIs (empty: the bundle's own setting), and who may call it.
3. **Deploy** — packages and uploads the service (skipped for a pushed version), creates the
   deployment (or rolls an existing one of that name to the new version) and waits until it
   is ready, with a progress bar through *package → upload → deploy → ready*.
4. **Use it** — the endpoint, copyable curl and Python snippets that read the token from
   ``$JUPYTERHUB_API_TOKEN`` (never embedded), a *try it* box, and the live status,
   refreshed every few seconds once the panel has been displayed, until :meth:`close`.
5. **My deployments** — one row each, to scale, roll back, delete, or open above.

Every call to the service runs on the panel's own worker threads (see :mod:`._background`):
a click returns at once, the kernel stays responsive, the buttons are disabled while the
operation runs, and a failure ends as one line in :attr:`DeployPanel.error_label` — the
service's message, never a traceback or a token.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets  # type: ignore[import-untyped, unused-ignore]

from jupyter_extension.client import Client, Conflict, HubserveClientError, NotFound
from model_runtime.service import Service

from ._background import Background, Cancelled, Poller, Throttle
from ._deployments_list import (
    DeploymentRow,
    DeploymentsList,
    RowActions,
    close_tree,
    status_text,
)
from ._snippets import TOKEN_ENV, Snippets, example_input, make_snippets, snippet_html

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_extension.client import Deployment, ModelVersion

log = logging.getLogger(__name__)

#: The stages of a deploy, each a quarter of the progress bar.
STAGES = ("package", "upload", "deploy", "ready")
SERVICE_SOURCE = "service"
PUSHED_SOURCE = "pushed"
MAX_REPLICAS = 64
#: Longest error line shown; the service's messages are short, anything longer is noise.
_MAX_ERROR_CHARS = 400
_MAX_OUTPUT_CHARS = 20_000
_NAMES = re.compile(r"[\s,]+")
_ERROR_STYLE = {"text_color": "#b00020"}


@dataclass(frozen=True)
class DeployRequest:
    """What the form says, read on the main thread when Deploy is clicked.

    The worker gets this snapshot rather than reading widgets while the user edits them.
    """

    service: Service | None
    model: str | None  # owner/name of a pushed model when ``service`` is None
    selector: str  # version or tag of that model
    name: str | None
    tag: str | None
    replicas: int
    batching: dict[str, dict[str, float]]
    access: dict[str, Any]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


class BatchingControl:
    """Knobs for one batchable API; empty means "the bundle's own setting"."""

    def __init__(self, api: str, max_batch_size: int | None, max_latency_ms: float | None):
        self.api = api
        self.max_batch_size = widgets.Text(
            description="max batch",
            placeholder=f"{max_batch_size}" if max_batch_size is not None else "bundle's",
            tooltip="Largest merged batch (empty: the bundle's setting)",
            layout=widgets.Layout(width="190px"),
        )
        self.max_latency_ms = widgets.Text(
            description="max wait ms",
            placeholder=f"{max_latency_ms:g}" if max_latency_ms is not None else "bundle's",
            tooltip="Longest wait for more requests, in ms (empty: the bundle's setting)",
            layout=widgets.Layout(width="190px"),
        )
        self.box = widgets.HBox(
            [
                widgets.HTML(f"<code>{api}</code>", layout=widgets.Layout(width="120px")),
                self.max_batch_size,
                self.max_latency_ms,
            ]
        )

    def override(self) -> dict[str, float]:
        """The settings typed in; raises ``ValueError`` with a readable message."""
        result: dict[str, float] = {}
        size = self.max_batch_size.value.strip()
        if size:
            if not size.isdigit() or int(size) < 1:
                raise ValueError(f"{self.api}: max batch size must be a whole number >= 1")
            result["max_batch_size"] = int(size)
        wait = self.max_latency_ms.value.strip()
        if wait:
            try:
                value = float(wait)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 60_000:
                raise ValueError(f"{self.api}: max wait must be a number of ms, 0 to 60000")
            result["max_latency_ms"] = value
        return result

    def close(self) -> None:
        close_tree(self.box)


class DeployPanel(widgets.VBox):  # type: ignore[misc]
    """Deploy a model and manage its deployments, from a notebook.

    ``client`` defaults to a :class:`~jupyter_extension.client.Client` created on first use
    (``HUBSERVE_URL`` and ``JUPYTERHUB_API_TOKEN``); ``shell`` to the running IPython shell,
    whose namespace holds the services to offer. ``refresh_interval`` is the period of the
    live status; ``ready_timeout`` how long a deploy waits for its replicas.

    Child widgets are attributes, so code (and tests) can drive the panel as a user would:
    ``panel.service_dropdown.value = "svc"; panel.deploy_button.click(); panel.wait_idle()``.
    """

    def __init__(
        self,
        client: Client | None = None,
        shell: InteractiveShell | None = None,
        *,
        refresh_interval: float = 5.0,
        ready_timeout: float = 300.0,
    ) -> None:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        self._shell = shell
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._me: str | None = None
        self._bg = Background(max_workers=2, name="hubserve-panel")
        self._ui = self._bg.ui
        self._throttle = Throttle(0.1)
        self._poller = Poller(self._poll_status, refresh_interval, name="hubserve-panel-status")
        self.ready_timeout = ready_timeout
        self._busy = False
        self._closed = False
        self._displayed = False
        self._auto_name = ""
        self._example = ""
        self._endpoint: str | None = None
        self._loading_versions = False
        #: The deployment shown in the endpoint, try-it and status sections.
        self.deployment: Deployment | None = None
        #: The input spec (kind, dtype, shape...) of each API of :attr:`deployment`.
        self.api_inputs: dict[str, dict[str, Any]] = {}
        self.snippets: Snippets | None = None
        #: The last value returned by the try-it box.
        self.try_result: Any = None
        self.batching_controls: dict[str, BatchingControl] = {}

        sections = [
            widgets.HTML("<h3 style='margin: 4px 0'>hubserve: deploy a model</h3>"),
            self._build_source(),
            self._build_settings(),
            self._build_deploy(),
            self._build_result(),
            self._build_deployments(),
        ]
        super().__init__(children=sections, layout=widgets.Layout(width="100%"))
        self.refresh_services()
        self._spawn(self._load_deployments, "listing deployments")

    # -- building ---------------------------------------------------------------------------

    def _build_source(self) -> Any:
        self.source_toggle = widgets.ToggleButtons(
            options=[("Service in this notebook", SERVICE_SOURCE), ("Pushed model", PUSHED_SOURCE)],
            value=SERVICE_SOURCE,
            tooltips=["A model_runtime.Service object defined here", "A version in the store"],
        )
        self.service_dropdown = widgets.Dropdown(description="Service", options=[])
        self.refresh_services_button = widgets.Button(
            description="Refresh", icon="refresh", tooltip="Look for Service objects again"
        )
        self.service_box = widgets.HBox([self.service_dropdown, self.refresh_services_button])
        self.model_dropdown = widgets.Dropdown(description="Model", options=[])
        self.version_dropdown = widgets.Dropdown(description="Version", options=[])
        self.refresh_models_button = widgets.Button(
            description="Refresh", icon="refresh", tooltip="List pushed models again"
        )
        self.pushed_box = widgets.HBox(
            [self.model_dropdown, self.version_dropdown, self.refresh_models_button],
            layout=widgets.Layout(display="none"),
        )
        self.source_toggle.observe(self._on_source, names="value")
        self.service_dropdown.observe(self._on_service, names="value")
        self.model_dropdown.observe(self._on_model, names="value")
        self.version_dropdown.observe(self._on_version, names="value")
        self.refresh_services_button.on_click(lambda _: self.refresh_services())
        self.refresh_models_button.on_click(
            lambda _: self._spawn(self._load_models, "listing models")
        )
        return widgets.VBox([self.source_toggle, self.service_box, self.pushed_box])

    def _build_settings(self) -> Any:
        self.name_text = widgets.Text(
            description="Name", placeholder="default: the model's name", continuous_update=False
        )
        self.tag_text = widgets.Text(
            description="Tag", placeholder="optional, e.g. prod", continuous_update=False
        )
        self.replicas_input = widgets.BoundedIntText(
            value=1, min=0, max=MAX_REPLICAS, description="Replicas"
        )
        self.batching_box = widgets.VBox(layout=widgets.Layout(display="none"))
        self._batching_header = widgets.HTML("<b>Batching</b> (empty: the bundle's setting)")
        self.users_text = widgets.Text(
            description="Users", placeholder="hub users who may call it: alice, bob"
        )
        self.groups_text = widgets.Text(description="Groups", placeholder="hub groups: astro")
        self.public_checkbox = widgets.Checkbox(
            description="Public (every hub user may call it)", indent=False
        )
        return widgets.VBox(
            [
                widgets.HBox([self.name_text, self.tag_text, self.replicas_input]),
                self.batching_box,
                widgets.HBox([self.users_text, self.groups_text, self.public_checkbox]),
            ]
        )

    def _build_deploy(self) -> Any:
        self.deploy_button = widgets.Button(
            description="Deploy", button_style="primary", icon="rocket"
        )
        self.progress = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="300px")
        )
        self.stage_label = widgets.Label("")
        self.error_label = widgets.Label("", style=_ERROR_STYLE)
        self.deploy_button.on_click(self._on_deploy)
        return widgets.VBox(
            [
                widgets.HBox(
                    [self.deploy_button, self.progress, self.stage_label],
                    layout=widgets.Layout(align_items="center"),
                ),
                self.error_label,
            ]
        )

    def _build_result(self) -> Any:
        self.endpoint_html = widgets.HTML("")
        self.api_dropdown = widgets.Dropdown(description="API", options=[])
        self.curl_snippet = widgets.HTML("")
        self.python_snippet = widgets.HTML("")
        self.try_input = widgets.Textarea(
            description="Input",
            placeholder="JSON, e.g. [[1.0, 2.0]]",
            layout=widgets.Layout(width="100%", height="70px"),
        )
        self.try_button = widgets.Button(description="Call", icon="play")
        self.try_output = widgets.Textarea(
            description="Output", layout=widgets.Layout(width="100%", height="90px")
        )
        self.status_label = widgets.Label("")
        self.status_refresh_button = widgets.Button(
            description="",
            icon="refresh",
            tooltip="Refresh the status now",
            layout=widgets.Layout(width="40px"),
        )
        self.auto_refresh_checkbox = widgets.Checkbox(
            value=True,
            description="auto refresh",
            indent=False,
            layout=widgets.Layout(width="120px"),
        )
        self.api_dropdown.observe(self._on_api, names="value")
        self.try_button.on_click(self._on_try)
        self.status_refresh_button.on_click(
            lambda _: self._spawn(self._refresh_status, "refreshing the status")
        )
        self.auto_refresh_checkbox.observe(lambda _: self._update_polling(), names="value")
        self.result_box = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.HTML("<b>Status</b>"),
                        self.status_label,
                        self.status_refresh_button,
                        self.auto_refresh_checkbox,
                    ],
                    layout=widgets.Layout(align_items="center"),
                ),
                self.endpoint_html,
                self.api_dropdown,
                self.curl_snippet,
                self.python_snippet,
                widgets.HTML("<b>Try it</b>"),
                self.try_input,
                self.try_button,
                self.try_output,
            ],
            layout=widgets.Layout(display="none", border="1px solid #ddd", padding="4px"),
        )
        return self.result_box

    def _build_deployments(self) -> Any:
        self.deployments = DeploymentsList(
            RowActions(
                scale=self.scale,
                rollback=self.rollback,
                delete=self.delete,
                open=self.open_deployment,
            )
        )
        self.deployments_refresh_button = self.deployments.refresh_button
        self.deployments_refresh_button.on_click(
            lambda _: self._spawn(self._load_deployments, "listing deployments")
        )
        return self.deployments.box

    @property
    def deployment_rows(self) -> dict[str, DeploymentRow]:
        """The rows of "My deployments", by ``owner/name``."""
        return self.deployments.rows

    # -- the client -------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The client, created on first use (in a worker: creating it may fail)."""
        with self._client_lock:
            if self._client is None:
                self._client = Client()
            return self._client

    def _owner(self) -> str:
        if self._me is None:
            self._me = self.client.me().name
        return self._me

    # -- running things ---------------------------------------------------------------------

    def wait_idle(self, timeout: float | None = 60.0) -> bool:
        """Wait for the panel's background work; ``False`` if ``timeout`` passed first."""
        return self._bg.wait_idle(timeout)

    @property
    def busy(self) -> bool:
        """Whether an operation started by a button (deploy, call, scale...) is running."""
        return self._busy

    def _start(self, what: str, work: Callable[[], None], *, progress: bool = True) -> bool:
        """Run a user's operation in the background, with the buttons disabled meanwhile.

        One at a time: a second click while one runs is ignored (its button is disabled in
        the browser anyway). ``what`` prefixes the error line if it fails; ``progress``: the
        operation drives the progress bar, which turns red then.
        """
        with self._ui:
            if self._busy or self._closed:
                return False
            self._busy = True
            self._set_enabled(False)
            self.error_label.value = ""

        def run() -> None:
            try:
                work()
            except Cancelled:
                pass
            except Exception as exc:
                self._fail(what, exc, progress=progress)
            finally:
                with self._ui:
                    self._busy = False
                    if not self._closed:
                        self._set_enabled(True)

        try:
            self._bg.submit(run)
        except Cancelled:
            return False
        return True

    def _spawn(self, work: Callable[[], None], what: str) -> None:
        """Background work that does not block the buttons (listings, status)."""

        def run() -> None:
            try:
                work()
            except Cancelled:
                pass
            except Exception as exc:
                self._fail(what, exc, progress=False)

        with contextlib.suppress(Cancelled):  # closing: nothing more to start
            self._bg.submit(run)

    def _set_enabled(self, enabled: bool) -> None:
        for button in (
            self.deploy_button,
            self.try_button,
            self.refresh_models_button,
        ):
            button.disabled = not enabled
        self.deployments.set_enabled(enabled)

    def _fail(self, what: str, exc: BaseException, *, progress: bool = True) -> None:
        if not isinstance(exc, HubserveClientError | ValueError):
            log.debug("hubserve panel: %s failed", what, exc_info=exc)
        with self._ui:
            self.error_label.value = self._clean(f"{what} failed: {_error_text(exc)}")
            if progress:
                self.progress.bar_style = "danger"

    def _clean(self, text: str) -> str:
        """One line, short, and without the token whatever the message carried."""
        line = " ".join(text.split())
        # The client's errors are redacted already; this also covers any other exception.
        for secret in (os.environ.get(TOKEN_ENV), getattr(self._client, "_token", None)):
            if isinstance(secret, str) and len(secret) >= 8:
                line = line.replace(secret, "***")
        if len(line) > _MAX_ERROR_CHARS:
            line = line[: _MAX_ERROR_CHARS - 1] + "…"
        return line

    # -- choosing what to deploy ------------------------------------------------------------

    def services(self) -> dict[str, Service]:
        """The :class:`Service` objects in the notebook's namespace, by variable name.

        Names starting with ``_`` are IPython's output history (``_3``), not the user's.
        An object bound to several names is listed once, under its first.
        """
        found: dict[str, Service] = {}
        seen: set[int] = set()
        namespace = self._shell.user_ns if self._shell is not None else {}
        for name, value in list(namespace.items()):
            if isinstance(value, Service) and not name.startswith("_") and id(value) not in seen:
                seen.add(id(value))
                found[name] = value
        return found

    def refresh_services(self) -> None:
        """List the notebook's services again (cheap: runs on the calling thread)."""
        found = self.services()
        options = [
            (f"{var}: {svc.name} ({', '.join(svc.apis) or 'no APIs'})", var)
            for var, svc in found.items()
        ]
        with self._ui:
            current = self.service_dropdown.value
            self.service_dropdown.options = options
            if current in found:
                self.service_dropdown.value = current
            elif options:
                self.service_dropdown.value = options[0][1]
            self._on_service(None)

    def _on_source(self, _: Any) -> None:
        pushed = self.source_toggle.value == PUSHED_SOURCE
        with self._ui:
            self.service_box.layout.display = "none" if pushed else ""
            self.pushed_box.layout.display = "" if pushed else "none"
        if pushed:
            if not self.model_dropdown.options:
                self._spawn(self._load_models, "listing models")
            else:
                self._on_model(None)
        else:
            self._on_service(None)

    def _on_service(self, _: Any) -> None:
        if self.source_toggle.value != SERVICE_SOURCE:
            return
        svc = self.services().get(self.service_dropdown.value or "")
        if svc is None:
            self._show_batching([])
            return
        self._set_default_name(svc.name)
        self._show_batching(
            [
                (spec.name, spec.batching.max_batch_size, spec.batching.max_latency_ms)
                for spec in svc.apis.values()
                if spec.batchable
            ]
        )

    def _on_model(self, _: Any) -> None:
        model = self.model_dropdown.value
        if self.source_toggle.value != PUSHED_SOURCE or not model:
            return
        self._set_default_name(model.split("/")[-1])
        self._spawn(lambda: self._load_versions(model), "listing versions")

    def _set_default_name(self, name: str) -> None:
        """Follow the chosen model's name, unless the user typed a name of their own."""
        with self._ui:
            if self.name_text.value.strip() in ("", self._auto_name):
                self.name_text.value = name
            self._auto_name = name

    def _show_batching(self, apis: list[tuple[str, int | None, float | None]]) -> None:
        with self._ui:
            old, self.batching_controls = self.batching_controls, {}
            for api, size, wait in apis:
                self.batching_controls[api] = BatchingControl(api, size, wait)
            self.batching_box.children = [
                self._batching_header,
                *(c.box for c in self.batching_controls.values()),
            ]
            self.batching_box.layout.display = "" if apis else "none"
            for control in old.values():
                control.close()

    def _load_models(self) -> None:
        models = self.client.models()
        options = sorted(m.key for m in models)
        with self._ui:
            current = self.model_dropdown.value
            self.model_dropdown.options = options
            if options:
                self.model_dropdown.value = current if current in options else options[0]
        # a changed value loaded its versions already (observer); an unchanged one may be stale
        if self.model_dropdown.value is not None and self.model_dropdown.value == current:
            self._on_model(None)

    def _load_versions(self, model: str) -> None:
        detail = self.client.model(model)
        tagged = sorted(detail.tags.items(), key=lambda item: (item[0] != "latest", item[0]))
        options = [(f"{tag} → {version}", tag) for tag, version in tagged]
        options += [(v.version, v.version) for v in detail.versions]
        with self._ui:
            if self.model_dropdown.value != model:
                return  # the user moved on meanwhile
            self._loading_versions = True  # no batching lookup per intermediate value
            try:
                self.version_dropdown.options = options
                if options:
                    self.version_dropdown.value = options[0][1]
            finally:
                self._loading_versions = False
        if options:
            self._load_batching(model, options[0][1])

    def _on_version(self, _: Any) -> None:
        model, selector = self.model_dropdown.value, self.version_dropdown.value
        if self._loading_versions or not model or not selector:
            return
        self._spawn(lambda: self._load_batching(model, selector), "reading the version")

    def _load_batching(self, model: str, selector: str) -> None:
        version = self.client.version(f"{model}:{selector}")
        with self._ui:
            if (self.model_dropdown.value, self.version_dropdown.value) == (model, selector):
                self._show_batching(_batching_of(version))

    def _read_request(self) -> DeployRequest:
        """The form as a :class:`DeployRequest`; ``ValueError`` with what to fix."""
        service: Service | None = None
        model: str | None = None
        selector = "latest"
        inputs: dict[str, dict[str, Any]] = {}
        if self.source_toggle.value == SERVICE_SOURCE:
            var = self.service_dropdown.value
            if not var:
                raise ValueError(
                    "no service chosen: define a model_runtime.Service in the notebook,"
                    " then Refresh"
                )
            service = self.services().get(var)
            if service is None:
                raise ValueError(f"{var!r} is no longer a Service in the notebook: Refresh")
            inputs = {name: spec.input.to_json() for name, spec in service.apis.items()}
        else:
            model = self.model_dropdown.value
            if not model:
                raise ValueError("no pushed model chosen: push one first, or Refresh")
            selector = self.version_dropdown.value or "latest"
        batching = {}
        for api, control in self.batching_controls.items():
            override = control.override()
            if override:
                batching[api] = override
        return DeployRequest(
            service=service,
            model=model,
            selector=selector,
            name=self.name_text.value.strip() or None,
            tag=self.tag_text.value.strip() or None,
            replicas=int(self.replicas_input.value),
            batching=batching,
            access={
                "users": _names(self.users_text.value),
                "groups": _names(self.groups_text.value),
                "public": bool(self.public_checkbox.value),
            },
            inputs=inputs,
        )

    # -- deploying --------------------------------------------------------------------------

    def _on_deploy(self, _: Any) -> None:
        if self._busy:
            return
        try:
            request = self._read_request()
        except ValueError as exc:
            with self._ui:
                self.error_label.value = self._clean(f"cannot deploy: {exc}")
            return
        with self._ui:
            self.progress.value = 0.0
            self.progress.bar_style = "info"
            self.stage_label.value = "starting"
        self._start("deploy", lambda: self._deploy(request))

    def _deploy(self, request: DeployRequest) -> None:
        """Package and push (a notebook service), then create the deployment, or roll the
        existing one of that name to the new version, and wait until it is ready.

        The name is checked first: a deployment of that name serving another model is an
        error found before minutes of packaging and uploading, not after.
        """
        client = self.client
        if request.service is not None:
            model = f"{self._owner()}/{request.service.name}"
        else:
            assert request.model is not None
            model = request.model
        name = request.name or model.split("/")[-1]
        existing = self._existing(name, model)
        if request.service is not None:
            self._stage("package", 0.0)
            pushed = client.push(
                request.service,
                tags=[request.tag] if request.tag else (),
                progress=self._push_progress,
            )
            model, selector, ref = pushed.key, pushed.version, pushed.ref
        else:
            self._stage("package", 0.5, "skipped: a pushed version")
            selector = request.selector
            ref = f"{model}:{selector}"
            if request.tag:
                client.tag(ref, request.tag)
        self._bg.check_open()
        self._stage("deploy", 0.0)
        deployment: Deployment | None = None
        if existing is None:
            try:
                deployment = client.deploy(
                    ref,
                    name=name,
                    replicas=request.replicas,
                    batching=request.batching or None,
                    access=request.access,
                )
            except Conflict:  # created meanwhile (another tab, the magic...)
                self._existing(name, model)
        if deployment is None:
            # A rolling update to this version, with the form's settings (batching: exactly
            # the overrides typed in, so an empty form goes back to the bundle's own).
            self._stage("deploy", 0.5, f"rolling {name} to {selector}")
            deployment = client.update(
                name,
                version=selector,
                replicas=request.replicas,
                batching=request.batching,
                access=request.access,
            )
        self._stage("deploy", 1.0, "replicas starting")
        self._show(deployment, request.inputs or None)
        self._watch(deployment.key, deployment.key)
        self._load_deployments()

    def _existing(self, name: str, model: str) -> Deployment | None:
        """My deployment ``name``, if any; ``ValueError`` if it serves another model."""
        try:
            existing = self.client.deployment(name)
        except NotFound:
            return None
        if existing.model != model:
            raise ValueError(
                f"deployment {existing.key} already serves {existing.model}: choose another name"
            )
        return existing

    def _push_progress(self, stage: str, done: int, total: int) -> None:
        """``Client.push``'s callback: map package/upload progress onto the bar."""
        self._bg.check_open()
        fraction = done / total if total > 0 else 0.0
        finished = total > 0 and done >= total
        if not (finished or self._throttle.ready()):
            return
        if stage == "upload" and total > 0:
            detail = f"{done / 1e6:.1f} of {total / 1e6:.1f} MB"
        else:
            detail = f"{done} of {total}" if total > 0 else ""
        self._stage(stage if stage in STAGES else "package", fraction, detail)

    def _stage(self, stage: str, fraction: float, detail: str = "") -> None:
        """Show ``fraction`` (0-1) of ``stage`` done: each stage is a quarter of the bar."""
        index = STAGES.index(stage)
        with self._ui:
            self.progress.value = min(1.0, (index + max(0.0, min(1.0, fraction))) / len(STAGES))
            text = f"{index + 1}/{len(STAGES)} {stage}"
            self.stage_label.value = f"{text}: {detail}" if detail else text

    def _watch(self, key: str, what: str, *, show: bool = True) -> Deployment:
        """Wait until ``key`` is settled, its replicas on the bar (and the status line when
        ``show``: it is, or becomes, the deployment shown)."""
        throttle = Throttle(0.25)

        def progress(deployment: Deployment) -> None:
            self._bg.check_open()
            if throttle.ready():
                status = deployment.status
                done = status.updated / status.desired if status.desired else 1.0
                self._stage("ready", min(done, 0.99), f"{what}: {status_text(deployment)}")
                if show:
                    self._show_status(deployment)

        deployment = self.client.wait_ready(key, timeout=self.ready_timeout, progress=progress)
        with self._ui:
            self._stage("ready", 1.0, f"{what}: {status_text(deployment)}")
            self.progress.bar_style = "success"
            self.deployments.update(deployment)
        if show:
            self._show(deployment)
        return deployment

    # -- the current deployment: endpoint, snippets, try it, status -------------------------

    def _show(
        self, deployment: Deployment, inputs: dict[str, dict[str, Any]] | None = None
    ) -> None:
        """Make ``deployment`` the one shown (worker thread: may call the service)."""
        same = self.deployment is not None and self.deployment.key == deployment.key
        if inputs is None and (
            not same
            or self.deployment is None
            or self.deployment.version != deployment.version
            or not self.api_inputs
        ):
            inputs = self._api_inputs(deployment)
        endpoint = _endpoint_of(deployment, self.client)
        with self._ui:
            self.deployment = deployment
            if inputs is not None:
                self.api_inputs = inputs
            names = [api.name for api in deployment.apis] or list(self.api_inputs)
            self.endpoint_html.value = (
                f"<b>Endpoint</b> <code>{html.escape(endpoint)}</code>&lt;api&gt; "
                f"(owner <code>{html.escape(deployment.owner)}</code>, "
                f"version <code>{html.escape(deployment.version)}</code>)"
            )
            self._endpoint = endpoint
            current = self.api_dropdown.value
            if list(self.api_dropdown.options) != names:
                self.api_dropdown.options = names
            if names:  # a new options list selects nothing by itself
                self.api_dropdown.value = current if current in names else names[0]
            self._render_api()
            self._show_status(deployment)
            self.result_box.layout.display = ""
            self.deployments.update(deployment)
        self._update_polling()

    def _api_inputs(self, deployment: Deployment) -> dict[str, dict[str, Any]]:
        """Input specs of the deployed version's APIs (dtype and shape make better examples)."""
        fallback = {api.name: {"kind": api.input} for api in deployment.apis}
        try:
            version = self.client.version(f"{deployment.model}:{deployment.version}")
        except HubserveClientError:
            return fallback
        return {api.name: dict(api.input) for api in version.manifest.apis} or fallback

    def _on_api(self, _: Any) -> None:
        with self._ui:
            self._render_api()

    def _render_api(self) -> None:
        """Snippets and the try-it example for the chosen API (under the UI lock)."""
        api = self.api_dropdown.value
        endpoint = self._endpoint
        if not api or endpoint is None:
            self.snippets = None
            self.curl_snippet.value = self.python_snippet.value = ""
            return
        spec = self.api_inputs.get(api, {"kind": "json"})
        self.snippets = make_snippets(endpoint, api, spec)
        self.curl_snippet.value = snippet_html("curl", self.snippets.curl)
        self.python_snippet.value = snippet_html("Python", self.snippets.python)
        kind = spec.get("kind", "json")
        if kind in ("image", "file"):
            example, hint = "", "path of a file in the notebook's server"
        elif kind == "text":
            example, hint = "hello", "text"
        else:
            example, hint = json.dumps(example_input(spec)), "JSON"
        self.try_input.placeholder = hint
        if self.try_input.value.strip() in ("", self._example):
            self.try_input.value = example
        self._example = example

    def _show_status(self, deployment: Deployment) -> None:
        with self._ui:
            self.status_label.value = status_text(deployment)

    def _refresh_status(self) -> None:
        deployment = self.deployment
        if deployment is None:
            return
        try:
            fresh = self.client.deployment(deployment.key)
        except NotFound:
            self._forget(deployment.key, "deleted")
            return
        current = self.deployment
        if current is not None and current.key == fresh.key:
            self._show(fresh)

    def _poll_status(self) -> None:
        """The poller's refresh: failures show in the status line, not as errors."""
        try:
            self._refresh_status()
        except Cancelled:
            pass
        except Exception as exc:
            with self._ui:
                self.status_label.value = self._clean(f"status unavailable: {_error_text(exc)}")

    def _update_polling(self) -> None:
        """Poll the status while there is something to show, the panel has been displayed,
        and auto refresh is on; the kernel cannot tell whether the output is scrolled into
        view, so "visible" means displayed and not closed."""
        wanted = (
            self._displayed
            and not self._closed
            and self.deployment is not None
            and bool(self.auto_refresh_checkbox.value)
        )
        if wanted:
            self._poller.start()
        else:
            self._poller.stop()

    @property
    def polling(self) -> bool:
        """Whether the live status is being refreshed now."""
        return self._poller.running

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        self._displayed = True
        self._update_polling()
        return super()._repr_mimebundle_(**kwargs)

    def _forget(self, key: str, why: str) -> None:
        with self._ui:
            self.deployments.remove(key)
            if self.deployment is not None and self.deployment.key == key:
                self.deployment = None
                self.api_inputs = {}
                self.snippets = None
                self.status_label.value = f"{key} {why}"
                self.result_box.layout.display = "none"
        self._update_polling()

    def _on_try(self, _: Any) -> None:
        deployment, api = self.deployment, self.api_dropdown.value
        if deployment is None or not api:
            with self._ui:
                self.error_label.value = "call failed: deploy or open a deployment first"
            return
        text = self.try_input.value
        kind = self.api_inputs.get(api, {}).get("kind", "json")
        self._start("call", lambda: self._call(deployment.key, api, kind, text), progress=False)

    def _call(self, key: str, api: str, kind: str, text: str) -> None:
        with self._ui:
            self.try_output.value = "calling…"
            self.try_result = None
        try:
            result = self.client.predict(key, api, _parse_input(text, kind))
        except Exception:
            with self._ui:
                self.try_output.value = ""
            raise
        with self._ui:
            self.try_result = result
            self.try_output.value = _format_result(result)

    # -- managing deployments ---------------------------------------------------------------

    def _load_deployments(self) -> None:
        deployments = self.client.deployments(owner=self._owner())
        with self._ui:
            self.deployments.show(deployments)

    def open_deployment(self, key: str) -> None:
        """Show deployment ``[owner/]name`` in the endpoint, try-it and status sections."""

        def work() -> None:
            self._show(self.client.deployment(key))

        self._start(f"open {key}", work, progress=False)

    def scale(self, key: str, replicas: int) -> None:
        """Run ``replicas`` replicas of ``key`` (background; waits until they are ready)."""

        def work() -> None:
            self._after_change(self.client.scale(key, replicas), f"scaled to {replicas}")

        self._start(f"scale {key}", work)

    def rollback(self, key: str) -> None:
        """Roll ``key`` back to its previous revision's version (background)."""

        def work() -> None:
            self._after_change(self.client.rollback(key), "rolled back")

        self._start(f"roll back {key}", work)

    def delete(self, key: str) -> None:
        """Delete deployment ``key`` (background); its model versions stay in the store."""

        def work() -> None:
            self.client.undeploy(key)
            self._forget(key, "deleted")
            with self._ui:
                self.stage_label.value = f"{key} deleted"
            self._load_deployments()

        self._start(f"delete {key}", work)

    def _after_change(self, deployment: Deployment, what: str) -> None:
        """Follow a change until it is settled; the view switches to it only if it was shown
        already, or nothing was (acting on a row should not hide what the user looks at)."""
        with self._ui:
            self.deployments.update(deployment)
            self.progress.value = 0.75
            self.progress.bar_style = "info"
        shown = self.deployment
        show = shown is None or shown.key == deployment.key
        if show:
            self._show(deployment)
        self._watch(deployment.key, f"{deployment.key} {what}", show=show)
        self._load_deployments()

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the status refresh and the workers, close every widget of the panel.

        Work in flight stops at its next progress check (a deploy stops waiting; what the
        service already does goes on there). Safe to call twice.
        """
        if getattr(self, "_closed", True):  # closed already, or never fully built
            super().close()
            return
        self._closed = True
        self._poller.stop()
        self._bg.close()
        with self._ui:
            for control in self.batching_controls.values():
                control.close()
            self.deployments.close()
            for child in list(self.children):
                close_tree(child)
            for attr in ("layout", "style"):
                part = getattr(self, attr, None)
                if isinstance(part, widgets.Widget):
                    part.close()
        if self._owns_client and self._client is not None:
            self._client.close()
        super().close()


# -- helpers -------------------------------------------------------------------------------


def _endpoint_of(deployment: Deployment, client: Client) -> str:
    """Where callers reach ``deployment``: the URL the service gives when it is absolute (it
    knows the hub's public origin), else one built on the client's URL. ``$HUBSERVE_URL``
    may be an internal address, which a colleague's script could not reach."""
    if deployment.url.startswith(("https://", "http://")):
        return deployment.url if deployment.url.endswith("/") else deployment.url + "/"
    return client.endpoint(deployment)


def _names(text: str) -> list[str]:
    return [name for name in _NAMES.split(text) if name]


def _batching_of(version: ModelVersion) -> list[tuple[str, int | None, float | None]]:
    """Batchable APIs of a pushed version, with the bundle's settings when the client has
    them (the client's manifest model may not carry them: the knobs then say "bundle's")."""
    result = []
    for api in version.manifest.apis:
        if not api.batchable:
            continue
        settings = getattr(api, "batching", None)
        size = wait = None
        if isinstance(settings, Mapping):
            size, wait = settings.get("max_batch_size"), settings.get("max_latency_ms")
        result.append((api.name, size, wait))
    return result


def _parse_input(text: str, kind: str) -> Any:
    """The try-it box's text as what :meth:`Client.predict` sends for ``kind``."""
    if kind == "text":
        return text
    if kind in ("image", "file"):
        path = Path(text.strip()).expanduser()
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the input is not valid JSON ({exc})") from None


def _format_result(value: Any) -> str:
    """A prediction as text: JSON where it has a JSON form."""
    import numpy as np

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, bytes | bytearray):
        text = f"<{len(value)} bytes>"
    elif type(value).__module__.startswith("pandas"):
        text = str(value)
    else:
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            text = repr(value)
    if len(text) > _MAX_OUTPUT_CHARS:
        text = text[:_MAX_OUTPUT_CHARS] + "…"
    return text


def _error_text(exc: BaseException) -> str:
    """The message of ``exc``: the service's own for client errors, else ``Type: text``."""
    if isinstance(exc, HubserveClientError | ValueError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
