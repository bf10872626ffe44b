"""DeployPanel, driven as a user drives it: in a real IPython shell, against a live hub.

The service is defined in notebook cells (a one-weight torch model, x -> FACTOR * x), the
panel finds it in the shell's namespace, and the test clicks the panel's buttons and waits
for its background work (``panel.wait_idle``), then checks what the user would see: the
progress bar and stage, the status line, the snippets, the try-it output, the list of
deployments, and the error line when things go wrong. Every panel is closed at the end and
no thread of it may survive.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from jupyter_extension.client import Client, NotFound
from jupyter_extension.widgets import DeployPanel
from jupyter_extension.widgets._background import Background, Poller
from jupyter_extension.widgets._snippets import example_input, make_snippets
from tests.live_hub import REPO, Hub, free_port
from tests.model_runtime.notebook import Notebook

READY_TIMEOUT = 120.0
THREAD_PREFIX = "hubserve-panel"

SERVICE_CELLS = [
    """
import numpy as np
import torch
from torch import nn

from model_runtime import Service, kinds

FACTOR = 2.0
""",
    '''
class Scale(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1, bias=False)

    def forward(self, x):
        return self.linear(x)


net = Scale()
with torch.no_grad():
    net.linear.weight.fill_(FACTOR)
svc = Service("scaler", models={"net": net}, description="x -> FACTOR * x")


@svc.api(input=kinds.ndarray("float32", (-1, 1)), output="ndarray", batchable=True)
def scale(x: np.ndarray) -> np.ndarray:
    """Each row times the factor."""
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()
''',
]


@dataclass(frozen=True)
class HubUser:
    name: str
    token: str
    url: str


@pytest.fixture
def hub_user(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> HubUser:
    """A fresh hub user whose server environment the panel's default client reads."""
    name = hub.create_user("panel")
    token, _ = hub.create_token(name)
    url = f"{hub.service_url}/"
    monkeypatch.setenv("HUBSERVE_URL", url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    return HubUser(name, token, url)


@pytest.fixture
def notebook() -> Iterator[Notebook]:
    nb = Notebook()
    yield nb
    nb.shell.reset(new_session=True)


@pytest.fixture
def scaler_notebook(notebook: Notebook) -> Notebook:
    for cell in SERVICE_CELLS:
        notebook.run(cell)
    return notebook


def panel_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


@pytest.fixture
def make_panel(notebook: Notebook) -> Iterator[Callable[..., DeployPanel]]:
    """Panels on the notebook's shell; all closed afterwards, and none may leave a thread."""
    panels: list[DeployPanel] = []

    def make(**kwargs: Any) -> DeployPanel:
        panel = DeployPanel(shell=notebook.shell, **kwargs)
        panels.append(panel)
        return panel

    yield make
    for panel in panels:
        panel.close()
    assert not panel_threads()


def idle(panel: DeployPanel, timeout: float = READY_TIMEOUT) -> None:
    assert panel.wait_idle(timeout), "the panel's background work did not finish"


def assert_clean_line(text: str, token: str) -> None:
    assert text
    assert "\n" not in text
    assert "Traceback" not in text
    assert token not in text


def actions_enabled(panel: DeployPanel) -> bool:
    return not (panel.deploy_button.disabled or panel.try_button.disabled)


def call(panel: DeployPanel, text: str) -> str:
    panel.try_input.value = text
    panel.try_button.click()
    idle(panel)
    assert panel.error_label.value == ""
    return str(panel.try_output.value)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {timeout} s")
        time.sleep(0.05)


# -- the whole life of a deployment --------------------------------------------------------


@pytest.mark.slow
def test_deploy_a_notebook_service_call_it_scale_roll_back_and_delete(
    hub: Hub,
    hub_user: HubUser,
    scaler_notebook: Notebook,
    make_panel: Callable[..., DeployPanel],
) -> None:
    panel = make_panel()
    idle(panel)
    assert panel.error_label.value == ""
    assert panel.service_dropdown.value == "svc"
    assert panel.name_text.value == "scaler"  # follows the chosen service
    assert list(panel.batching_controls) == ["scale"]  # its batchable API
    assert panel.batching_controls["scale"].max_batch_size.placeholder == "32"

    panel.name_text.value = "panel-scaler"
    panel.replicas_input.value = 1
    panel.batching_controls["scale"].max_batch_size.value = "16"
    panel.batching_controls["scale"].max_latency_ms.value = "2.5"
    panel.deploy_button.click()
    idle(panel)

    assert panel.error_label.value == ""
    assert panel.progress.value == pytest.approx(panel.progress.max)
    assert panel.progress.bar_style == "success"
    assert panel.stage_label.value.startswith("4/4 ready")
    assert panel.status_label.value.startswith("ready · 1/1 replicas ready")
    deployment = panel.deployment
    assert deployment is not None
    key = f"{hub_user.name}/panel-scaler"
    assert deployment.key == key
    assert deployment.batching["scale"].max_batch_size == 16
    assert deployment.batching["scale"].max_latency_ms == 2.5
    first_version = deployment.version

    # the endpoint and the snippets: the URL, and the token only by name
    endpoint = f"{hub.service_url}/d/{key}/scale"
    assert panel.snippets is not None
    assert panel.snippets.url == endpoint
    assert endpoint in panel.snippets.curl
    assert endpoint in panel.snippets.python
    assert "$JUPYTERHUB_API_TOKEN" in panel.snippets.curl
    assert "JUPYTERHUB_API_TOKEN" in panel.snippets.python
    assert "[[0.0]]" in panel.snippets.curl  # an example input of the API's shape
    for text in (
        panel.snippets.curl,
        panel.snippets.python,
        panel.curl_snippet.value,
        panel.python_snippet.value,
        panel.endpoint_html.value,
    ):
        assert hub_user.token not in text
    assert f"{hub.service_url}/d/{key}/" in panel.endpoint_html.value

    # try it
    assert panel.api_dropdown.value == "scale"
    assert panel.try_input.value == "[[0.0]]"  # prefilled with the example
    assert call(panel, "[[1.5], [2.0]]") == "[[3.0], [4.0]]"
    assert panel.try_result == [[3.0], [4.0]]

    # my deployments
    assert key in panel.deployment_rows
    row = panel.deployment_rows[key]
    assert row.rollback_button.disabled  # one revision: nothing to roll back to
    assert "ready" in row.label.value

    # scale through the row
    row.replicas.value = 2
    row.scale_button.click()
    assert not actions_enabled(panel)
    idle(panel)
    assert panel.error_label.value == ""
    assert actions_enabled(panel)
    assert panel.deployment is not None
    assert panel.deployment.status.ready == 2
    assert panel.status_label.value.startswith("ready · 2/2 replicas ready")
    assert panel.deployment_rows[key].replicas.value == 2

    # a second version, deployed from the panel under the same name: a rolling update
    scaler_notebook.run("with torch.no_grad():\n    net.linear.weight.fill_(3.0)")
    panel.replicas_input.value = 1
    panel.tag_text.value = "v2"
    panel.deploy_button.click()
    idle(panel)
    assert panel.error_label.value == ""
    assert panel.deployment is not None
    second_version = panel.deployment.version
    assert second_version != first_version
    assert panel.deployment.status.ready == 1
    assert call(panel, "[[1.5], [2.0]]") == "[[4.5], [6.0]]"
    with Client() as client:
        assert client.version(f"{hub_user.name}/scaler:v2").version == second_version

    # roll back through the row
    row = panel.deployment_rows[key]
    assert not row.rollback_button.disabled
    row.rollback_button.click()
    idle(panel)
    assert panel.error_label.value == ""
    assert panel.deployment is not None
    assert panel.deployment.version == first_version
    assert call(panel, "[[1.5]]") == "[[3.0]]"

    # a bad input: one clean line, the call's output cleared, the buttons back
    panel.try_input.value = "[[1.5], oops"
    panel.try_button.click()
    idle(panel)
    assert panel.error_label.value.startswith("call failed: the input is not valid JSON")
    assert_clean_line(panel.error_label.value, hub_user.token)
    assert actions_enabled(panel)

    # delete: two clicks (the first asks for confirmation)
    row = panel.deployment_rows[key]
    row.delete_button.click()
    assert row.delete_button.description == "Confirm delete"
    assert panel.wait_idle(0)  # nothing started yet
    row.delete_button.click()
    idle(panel)
    assert panel.error_label.value == ""
    assert key not in panel.deployment_rows
    assert panel.deployment is None
    assert panel.result_box.layout.display == "none"
    with Client() as client, pytest.raises(NotFound):
        client.deployment(key)


@pytest.mark.slow
def test_a_click_returns_at_once_while_the_deploy_goes_on(
    hub_user: HubUser, scaler_notebook: Notebook, make_panel: Callable[..., DeployPanel]
) -> None:
    panel = make_panel()
    idle(panel)
    panel.name_text.value = "quick-click"

    started = time.perf_counter()
    panel.deploy_button.click()
    elapsed = time.perf_counter() - started

    print(f"the deploy click returned in {elapsed:.3f} s")
    # A click that did the work would take the whole deploy (packaging, upload, replicas
    # starting: many seconds); the bound only leaves a busy CI machine room. What shows the
    # work goes on in the background are the checks below.
    assert elapsed < 1.0, f"the click took {elapsed:.3f} s"
    assert panel.busy
    assert panel.deploy_button.disabled
    assert not panel.wait_idle(0)  # still packaging, uploading, deploying
    # the kernel is free meanwhile: cells run while the deploy goes on
    assert scaler_notebook.run("1 + 1") == 2
    idle(panel)
    assert panel.error_label.value == ""
    assert not panel.busy
    assert not panel.deploy_button.disabled
    assert panel.status_label.value.startswith("ready")
    assert panel.stage_label.value.startswith("4/4 ready")


# -- a pushed version, live status, closing ------------------------------------------------


@pytest.mark.slow
def test_deploy_a_pushed_version_watch_its_status_and_close(
    hub_user: HubUser,
    scaler_notebook: Notebook,
    make_panel: Callable[..., DeployPanel],
) -> None:
    with Client() as client:
        pushed = client.push(scaler_notebook["svc"], progress=False)
        panel = make_panel(refresh_interval=0.2)
        idle(panel)
        panel.source_toggle.value = "pushed"
        idle(panel)
        assert panel.model_dropdown.value == pushed.key
        assert panel.version_dropdown.value == "latest"
        assert pushed.version in [value for _, value in panel.version_dropdown.options]
        assert panel.name_text.value == "scaler"
        assert list(panel.batching_controls) == ["scale"]
        panel.tag_text.value = "prod"
        panel.users_text.value = "someone-else, another"
        panel.public_checkbox.value = True
        panel.deploy_button.click()
        idle(panel)

        assert panel.error_label.value == "", panel.error_label.value
        assert panel.progress.value == pytest.approx(1.0)
        deployment = panel.deployment
        assert deployment is not None
        assert deployment.version == pushed.version
        assert deployment.access.public
        assert deployment.access.users == ["another", "someone-else"]
        assert "prod" in client.model(pushed.key).tags

        # the list shows deployments made elsewhere after a refresh
        other = client.deploy(pushed.ref, name="made-elsewhere", replicas=0)
        assert other.key not in panel.deployment_rows
        panel.deployments_refresh_button.click()
        idle(panel)
        assert other.key in panel.deployment_rows
        assert deployment.key in panel.deployment_rows

        # a name taken by a deployment of another model is not rolled to this one
        scaler_notebook.run('other = Service("other-model", apis=[scale])')
        panel.source_toggle.value = "service"
        panel.refresh_services_button.click()
        panel.service_dropdown.value = "other"
        panel.name_text.value = "scaler"
        panel.deploy_button.click()
        idle(panel)
        assert panel.error_label.value == (
            f"deploy failed: deployment {deployment.key} already serves {pushed.key}:"
            " choose another name"
        )
        with pytest.raises(NotFound):  # found out before packaging and pushing
            client.model("other-model")
        assert panel.deployment is not None
        assert panel.deployment.key == deployment.key  # still shown

        # the live status refreshes once the panel is displayed
        assert not panel.polling
        scaler_notebook.ns["panel"] = panel
        scaler_notebook.run("from IPython.display import display\ndisplay(panel)")
        assert panel.polling
        client.scale(deployment.key, 2)
        wait_until(
            lambda: panel.status_label.value.startswith("ready · 2/2"), "the status shows 2/2"
        )
        assert panel_threads()

        # closing stops the refresh and every thread of the panel
        panel.close()
        assert not panel.polling
        assert not panel_threads()
        panel.close()  # twice is fine
        client.undeploy(deployment.key)
        client.undeploy(other.key)


# -- a real kernel ------------------------------------------------------------------------


@pytest.mark.slow
def test_in_a_real_kernel_updates_from_worker_threads_reach_the_front_end(
    hub_user: HubUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ipykernel, not a bare shell: what the workers set arrives as comm messages.

    nbclient plays the front end and records every widget state it is sent; the deploy's
    widget updates happen on the panel's threads while the cell waits, so the final
    progress, stage and status seen by the front end prove they crossed the comm.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    cells = [
        *SERVICE_CELLS,
        "from jupyter_extension import DeployPanel\n"
        "panel = DeployPanel(refresh_interval=0.2)\n"
        "panel.name_text.value = 'kernel-scaler'\n"
        "panel",
        "panel.deploy_button.click()\nassert panel.wait_idle(120)\nprint(panel.error_label.value)",
        "panel.close()\n"
        "import threading\n"
        "print([t.name for t in threading.enumerate() if t.name.startswith('hubserve')])",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=180, kernel_name="python3").execute()

    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "Traceback" not in stderr and "Exception" not in stderr, stderr
    assert notebook.cells[-2].outputs[0]["text"] == "\n"  # no error line
    assert notebook.cells[-1].outputs[0]["text"] == "[]\n"  # no thread left
    states = [
        model["state"]
        for model in notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"][
            "state"
        ].values()
    ]
    progress = [s for s in states if s.get("_model_name") == "FloatProgressModel"]
    assert [(s["value"], s["bar_style"]) for s in progress] == [(1.0, "success")]
    labels = [s.get("value", "") for s in states if s.get("_model_name") == "LabelModel"]
    assert any(label.startswith("4/4 ready") for label in labels)
    assert any(label.startswith("ready · 1/1 replicas ready") for label in labels)
    with Client() as client:
        client.undeploy(f"{hub_user.name}/kernel-scaler")


# -- errors --------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unreachable_service_is_one_clean_line_and_the_buttons_come_back(
    hub_user: HubUser,
    scaler_notebook: Notebook,
    make_panel: Callable[..., DeployPanel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/services/hubserve/"
    monkeypatch.setenv("HUBSERVE_URL", dead)
    panel = make_panel()
    idle(panel)
    assert panel.error_label.value.startswith("listing deployments failed: cannot reach")

    panel.deploy_button.click()
    idle(panel)
    error = panel.error_label.value
    assert error.startswith("deploy failed: cannot reach the hubserve service")
    assert_clean_line(error, hub_user.token)
    assert panel.progress.bar_style == "danger"
    assert actions_enabled(panel)
    assert not panel.busy
    assert panel.deployment is None


@pytest.mark.slow
def test_unknown_models_and_deployments(
    hub_user: HubUser,
    scaler_notebook: Notebook,
    make_panel: Callable[..., DeployPanel],
) -> None:
    with Client() as client:
        pushed = client.push(scaler_notebook["svc"], progress=False)
        panel = make_panel()
        panel.source_toggle.value = "pushed"
        idle(panel)
        assert panel.model_dropdown.value == pushed.key
        client.delete_model(pushed.key, force=True)  # gone before the user clicks

        panel.deploy_button.click()
        idle(panel)
        error = panel.error_label.value
        assert error.startswith("deploy failed:")
        assert "not found" in error
        assert_clean_line(error, hub_user.token)
        assert actions_enabled(panel)

        panel.open_deployment(f"{hub_user.name}/no-such-deployment")
        idle(panel)
        error = panel.error_label.value
        assert error.startswith(f"open {hub_user.name}/no-such-deployment failed:")
        assert "not found" in error
        assert_clean_line(error, hub_user.token)


@pytest.mark.slow
def test_form_mistakes_are_reported_before_anything_starts(
    hub_user: HubUser, notebook: Notebook, make_panel: Callable[..., DeployPanel]
) -> None:
    panel = make_panel()
    idle(panel)
    assert panel.service_dropdown.options == ()
    panel.deploy_button.click()
    assert panel.error_label.value.startswith("cannot deploy: no service chosen")
    assert not panel.busy

    for cell in SERVICE_CELLS:
        notebook.run(cell)
    panel.refresh_services_button.click()
    assert panel.service_dropdown.value == "svc"
    panel.batching_controls["scale"].max_batch_size.value = "many"
    panel.deploy_button.click()
    assert panel.error_label.value == (
        "cannot deploy: scale: max batch size must be a whole number >= 1"
    )
    assert not panel.busy
    assert panel.wait_idle(0)


# -- the parts, without a hub --------------------------------------------------------------


def test_snippets_never_hold_a_token_and_fit_the_input_kind() -> None:
    endpoint = "https://hub.example.org/services/hubserve/d/alice/iris/"
    array = make_snippets(endpoint, "predict", {"kind": "ndarray", "shape": [-1, 4]})
    assert array.url == endpoint + "predict"
    assert "-d '[[0.0, 0.0, 0.0, 0.0]]'" in array.curl
    assert 'os.environ["JUPYTERHUB_API_TOKEN"]' in array.python or (
        "os.environ['JUPYTERHUB_API_TOKEN']" in array.python
    )
    compile(array.python, "<snippet>", "exec")
    image = make_snippets(endpoint, "classify", {"kind": "image"})
    assert "-F file=@image.png" in image.curl
    text = make_snippets(endpoint, "echo", {"kind": "text"})
    assert "text/plain" in text.curl
    compile(text.python, "<snippet>", "exec")
    jobs = make_snippets(endpoint, "convert", {"kind": "path"})
    assert jobs.url == endpoint + "jobs/convert"
    assert example_input({"kind": "ndarray", "dtype": "int64", "shape": [2, 2]}) == [[0, 0], [0, 0]]
    assert example_input({"kind": "ndarray", "shape": [-1, 3, 224, 224]}) == [[[[0.0]]]]
    assert example_input({"kind": "dataframe", "columns": ["a", "b"]}) == [{"a": 0, "b": 0}]


def test_background_work_can_be_awaited_and_closing_ends_its_threads() -> None:
    background = Background(name=f"{THREAD_PREFIX}-unit")
    release = threading.Event()
    done: list[str] = []

    def slow() -> None:
        release.wait(5)
        done.append("slow")
        background.submit(lambda: done.append("follow-up"))

    background.submit(slow)
    assert background.busy
    assert not background.wait_idle(0.05)
    release.set()
    assert background.wait_idle(5)
    assert done == ["slow", "follow-up"]

    ticks = threading.Event()
    poller = Poller(ticks.set, 0.01, name=f"{THREAD_PREFIX}-unit-poll")
    poller.start()
    assert ticks.wait(5)
    poller.stop()
    background.close()
    assert not poller.running
    assert not panel_threads()
