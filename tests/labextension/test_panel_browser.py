"""The "Model Serving" panel in a real JupyterLab, driven in Chromium like a user would.

Elements are found by the ``data-testid`` attributes of the panel's UI contract; actions are
real clicks and keystrokes (sidebar tab, command palette, forms, Lab's confirmation dialog).
The panel talks to the live hub service through the server extension, so what it shows is
checked against the service's own API as well, and the curl snippet it offers is run for real.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from playwright.sync_api import Locator, expect

from tests.live_hub import free_port

from .conftest import (
    ALICE_TOKEN,
    EXTENSION_NAME,
    UI_TIMEOUT_MS,
    LabFactory,
    LabPage,
    LabServer,
    LiveService,
)

READY_TIMEOUT_MS = 90_000
"""A deployment's replicas import torch and load the model: ready well within this."""
PANEL_TAB = '.jp-SideBar.jp-mod-left .lm-TabBar-tab[title^="Model Serving"]'

expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture(autouse=True)
def no_deployments(hub_service: LiveService) -> Iterator[None]:
    """Every test starts and ends without deployments (the empty state is part of the UI)."""
    hub_service.delete_deployments()
    yield
    hub_service.delete_deployments()


def open_panel(lab_page: LabPage) -> Locator:
    """Click the panel's sidebar tab; the panel, once its first load is over."""
    lab_page.page.locator(PANEL_TAB).click()
    panel = lab_page.page.locator("#hubserve-panel")
    expect(panel).to_be_visible()
    expect(panel.get_by_test_id("hubserve-loading")).to_have_count(0)
    return panel


def deployment_of(panel: Locator, name: str) -> Locator:
    return panel.locator(f'[data-testid="hubserve-deployment"][data-deployment="alice/{name}"]')


def version_of(panel: Locator, version: str) -> Locator:
    model = panel.locator('[data-testid="hubserve-model"][data-model="alice/iris"]')
    return model.locator(f'[data-testid="hubserve-version"][data-version="{version}"]')


def wait_ready(deployment: Locator, replicas: str) -> None:
    expect(deployment.get_by_test_id("hubserve-status")).to_have_text(
        "ready", timeout=READY_TIMEOUT_MS
    )
    expect(deployment.get_by_test_id("hubserve-replicas")).to_have_text(
        replicas, timeout=READY_TIMEOUT_MS
    )


def of_deployment(deployment: Locator, testid: str) -> Locator:
    """The element ``testid`` of an (expanded) deployment."""
    found = deployment.get_by_test_id(testid)
    expect(found).to_have_count(1)
    return found


def snippet(deployment: Locator, kind: str) -> str:
    """The text of the ``kind`` snippet (curl, python, oip) of ``deployment``."""
    return of_deployment(deployment, f"hubserve-snippet-{kind}").inner_text().strip()


def probabilities(answer: Any) -> list[list[float]]:
    """The rows of class probabilities in the answer of iris' ``predict`` (any JSON shape)."""
    if isinstance(answer, dict):
        for key in ("outputs", "predictions", "data"):
            if key in answer:
                return probabilities(answer[key])
        raise AssertionError(f"no prediction in {answer!r}")
    assert isinstance(answer, list), answer
    assert answer, "an empty answer"
    rows = answer if isinstance(answer[0], list) else [answer]
    for row in rows:
        assert len(row) == 3, row
        assert abs(sum(row) - 1) < 1e-3, row
    return rows


def run_snippet(text: str, *command: str) -> str:
    """Run a snippet (``bash -c`` by default) as a user would: alice's token in the
    environment only; its output."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JUPYTERHUB_API_TOKEN": ALICE_TOKEN}
    done = subprocess.run(
        [*(command or ("bash", "-c")), text],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def option_with(select: Locator, version: str) -> str:
    """The value of the ``<option>`` of ``select`` that names ``version``."""
    options = select.locator("option").evaluate_all(
        "options => options.map(o => [o.value, o.textContent])"
    )
    for value, label in options:
        if version in value or version in label:
            return str(value)
    raise AssertionError(f"no option for {version} in {options}")


def test_the_panel_opens_from_its_sidebar_tab(lab_page: LabPage) -> None:
    """The prebuilt extension is loaded, its tab has the caption and an icon, a click opens it."""
    page = lab_page.page
    config = json.loads(page.locator("#jupyter-config-data").text_content() or "{}")
    names = [extension["name"] for extension in config["federated_extensions"]]
    assert EXTENSION_NAME in names
    tab = page.locator(PANEL_TAB)
    expect(tab).to_have_count(1)
    expect(tab.locator("svg")).to_have_count(1)
    expect(page.locator("#hubserve-panel")).to_be_hidden()
    lab_page.shot("sidebar")
    open_panel(lab_page)
    expect(tab).to_have_class(re.compile(r"\blm-mod-current\b"))
    lab_page.shot("panel-open")


def test_the_open_command_is_in_the_palette(lab_page: LabPage) -> None:
    page = lab_page.page
    page.locator("#jp-main-dock-panel").click()
    page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    expect(palette).to_be_visible()
    palette.locator(".lm-CommandPalette-input").fill("Open Model Serving")
    item = palette.locator(".lm-CommandPalette-item", has_text="Open Model Serving")
    expect(item).to_have_count(1)
    expect(palette.locator(".lm-CommandPalette-header", has_text="Model Serving")).to_have_count(1)
    lab_page.shot("palette")
    page.keyboard.press("Enter")
    expect(page.locator("#hubserve-panel")).to_be_visible()
    lab_page.shot("panel-open")


def test_models_and_versions_are_listed(lab_page: LabPage, iris_versions: list[str]) -> None:
    panel = open_panel(lab_page)
    model = panel.locator('[data-testid="hubserve-model"][data-model="alice/iris"]')
    expect(model).to_be_visible()
    old, latest = iris_versions
    expect(version_of(panel, old)).to_have_count(1)
    expect(version_of(panel, latest)).to_contain_text("latest")
    expect(version_of(panel, old)).not_to_contain_text("latest")
    expect(version_of(panel, latest).get_by_test_id("hubserve-deploy-version")).to_be_visible()
    expect(panel.get_by_test_id("hubserve-empty-models")).to_have_count(0)
    expect(panel.get_by_test_id("hubserve-empty-deployments")).to_be_visible()
    expect(panel.get_by_test_id("hubserve-error")).to_have_count(0)
    lab_page.shot("models")


def test_refresh_shows_changes_made_elsewhere(
    lab_page: LabPage, hub_service: LiveService, iris_versions: list[str]
) -> None:
    """A tag set outside the panel (CLI, another tab) shows after a click on refresh."""
    old = iris_versions[0]
    panel = open_panel(lab_page)
    expect(version_of(panel, old)).not_to_contain_text("stable")
    response = hub_service.call("PUT", "api/models/alice/iris/tags/stable", json={"version": old})
    assert response.status_code == 200, response.text
    try:
        panel.get_by_test_id("hubserve-refresh").click()
        expect(version_of(panel, old)).to_contain_text("stable")
        lab_page.shot("tagged")
    finally:
        hub_service.call("DELETE", "api/models/alice/iris/tags/stable")


def test_deploy_call_scale_logs_delete(
    lab_page: LabPage, hub_service: LiveService, iris_versions: list[str]
) -> None:
    """A user's whole round: deploy a version, wait for ready, run the curl snippet, scale to
    two replicas, read the logs, delete (confirmed in Lab's dialog)."""
    page = lab_page.page
    latest = iris_versions[-1]
    panel = open_panel(lab_page)

    # Deploy the latest version from its row.
    version_of(panel, latest).get_by_test_id("hubserve-deploy-version").click()
    form = panel.get_by_test_id("hubserve-deploy-form")
    expect(form).to_be_visible()
    # The form comes with the clicked version chosen ("owner/name:version").
    expect(form.get_by_test_id("hubserve-deploy-model")).to_have_value(
        re.compile(rf"iris:{re.escape(latest)}$")
    )
    form.get_by_test_id("hubserve-deploy-name").fill("iris")
    form.get_by_test_id("hubserve-deploy-replicas").fill("1")
    lab_page.shot("deploy-form")
    form.get_by_test_id("hubserve-deploy-submit").click()

    deployment = deployment_of(panel, "iris")
    expect(deployment).to_be_visible()
    lab_page.shot("deploying")
    wait_ready(deployment, "1/1")
    expect(deployment.get_by_test_id("hubserve-version-label")).to_contain_text(latest)
    expect(deployment.get_by_test_id("hubserve-url")).to_contain_text("/d/alice/iris")
    expect(panel.get_by_test_id("hubserve-empty-deployments")).to_have_count(0)
    served = hub_service.call("GET", "api/deployments/alice/iris").json()
    assert served["status"]["phase"] == "ready", served
    lab_page.shot("ready")

    # The snippets: no token in them, and they work as they are.
    curl, python, oip = (snippet(deployment, kind) for kind in ("curl", "python", "oip"))
    for text in (curl, python, oip):
        assert ALICE_TOKEN not in text
    assert curl.startswith("curl "), curl
    assert "$JUPYTERHUB_API_TOKEN" in curl, curl
    assert hub_service.url.removesuffix("/") in curl, curl  # absolute, as the service is
    assert "hubserve.Client(" in python, python
    assert "/v2/models/" in oip, oip
    lab_page.shot("snippets")
    assert probabilities(json.loads(run_snippet(curl)))
    of_deployment(deployment, "hubserve-copy-curl").click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.strip() == curl
    assert probabilities(json.loads(run_snippet(copied)))
    outputs = json.loads(run_snippet(oip))["outputs"]  # OIP v2 by curl
    assert probabilities(outputs[0]["data"]), outputs
    printed = run_snippet(python, sys.executable, "-c")  # hubserve.Client
    numbers = [float(x) for x in re.findall(r"\d+\.\d*(?:e-?\d+)?", printed)]
    assert probabilities(numbers), printed

    # Scale to two replicas.
    deployment.get_by_test_id("hubserve-scale-input").fill("2")
    deployment.get_by_test_id("hubserve-scale-submit").click()
    expect(deployment.get_by_test_id("hubserve-replicas")).to_have_text(
        "2/2", timeout=READY_TIMEOUT_MS
    )
    expect(deployment.get_by_test_id("hubserve-status")).to_have_text(
        "ready", timeout=READY_TIMEOUT_MS
    )
    served = hub_service.call("GET", "api/deployments/alice/iris").json()
    assert served["replicas"] == 2, served
    lab_page.shot("scaled")

    # Logs.
    deployment.get_by_test_id("hubserve-logs").click()
    logs = panel.get_by_test_id("hubserve-logs-view")
    expect(logs).to_be_visible()
    expect(logs).not_to_be_empty()
    lab_page.shot("logs")

    # Delete, confirmed in Lab's dialog.
    deployment.get_by_test_id("hubserve-delete").click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("iris")
    lab_page.shot("delete-dialog")
    dialog.locator(".jp-mod-accept").click()
    expect(deployment).to_have_count(0)
    expect(panel.get_by_test_id("hubserve-empty-deployments")).to_be_visible()
    assert hub_service.call("GET", "api/deployments/alice/iris").status_code == 404
    lab_page.shot("deleted")


def test_roll_to_another_version_and_back(
    lab_page: LabPage, hub_service: LiveService, iris_versions: list[str]
) -> None:
    """A deployment made elsewhere shows up live; roll it forward, then roll back."""
    old, latest = iris_versions
    panel = open_panel(lab_page)
    response = hub_service.call(
        "POST", "api/deployments", json={"model": f"iris:{old}", "name": "iris-roll"}
    )
    assert response.status_code == 201, response.text
    deployment = deployment_of(panel, "iris-roll")
    expect(deployment).to_be_visible()  # live refresh, no click
    wait_ready(deployment, "1/1")
    expect(deployment.get_by_test_id("hubserve-version-label")).to_contain_text(old)
    lab_page.shot("old-version")

    roll = deployment.get_by_test_id("hubserve-roll-select")
    roll.select_option(option_with(roll, latest))
    deployment.get_by_test_id("hubserve-roll-submit").click()
    expect(deployment.get_by_test_id("hubserve-version-label")).to_contain_text(
        latest, timeout=READY_TIMEOUT_MS
    )
    wait_ready(deployment, "1/1")
    assert hub_service.call("GET", "api/deployments/alice/iris-roll").json()["version"] == latest
    lab_page.shot("rolled")

    deployment.get_by_test_id("hubserve-rollback").click()
    dialog = lab_page.page.locator(".jp-Dialog")
    if dialog.count():  # a confirmation is the panel's choice, not the contract's
        dialog.locator(".jp-mod-accept").click()
    expect(deployment.get_by_test_id("hubserve-version-label")).to_contain_text(
        old, timeout=READY_TIMEOUT_MS
    )
    wait_ready(deployment, "1/1")
    assert hub_service.call("GET", "api/deployments/alice/iris-roll").json()["version"] == old
    lab_page.shot("rolled-back")


# The toolbar item (by its name in the toolbar, its test id, or a command button).
DEPLOY_BUTTON = (
    '[data-jp-item-name="hubserve-deploy"], [data-testid="hubserve-deploy-toolbar"],'
    ' [data-command="hubserve:deploy"]'
)
NOTEBOOK = {
    "cells": [],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


def test_deploy_this_model_from_the_notebook_toolbar(
    lab_page_factory: Callable[[LabServer], LabPage], lab: LabServer, iris_versions: list[str]
) -> None:
    """The notebook toolbar's "Deploy" opens the form on the model named like the notebook."""
    (lab.root / "notebooks" / "iris.ipynb").write_text(json.dumps(NOTEBOOK))
    lab_page = lab_page_factory(lab)
    page = lab_page.page
    page.locator(".jp-DirListing-item", has_text="iris.ipynb").dblclick()
    notebook = page.locator(".jp-NotebookPanel")
    expect(notebook).to_be_visible()
    button = notebook.locator(".jp-NotebookPanel-toolbar").locator(DEPLOY_BUTTON).first
    expect(button).to_be_visible()
    lab_page.shot("notebook")
    button.click()
    form = page.locator("#hubserve-panel").get_by_test_id("hubserve-deploy-form")
    expect(form).to_be_visible()
    expect(form.get_by_test_id("hubserve-deploy-model")).to_have_value(
        re.compile(re.escape(iris_versions[-1]))
    )
    lab_page.shot("deploy-form")
    form.get_by_test_id("hubserve-deploy-cancel").click()
    expect(form).to_be_hidden()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("service-down", "cannot be reached"),
        ("not-configured", "not configured"),
        ("bad-token", "token"),
    ],
)
def test_errors_are_shown_not_swallowed(
    lab_factory: LabFactory,
    lab_page_factory: Callable[[LabServer], LabPage],
    hub_service: LiveService,
    case: str,
    message: str,
) -> None:
    """A Lab whose extension cannot use the service says why, in the panel."""
    settings = {
        "service-down": {
            "service_url": f"http://127.0.0.1:{free_port()}/services/hubserve/",
            "token": ALICE_TOKEN,
        },
        "not-configured": {},
        "bad-token": {"service_url": hub_service.url, "token": "not-a-token-of-anyone"},
    }[case]
    lab_page = lab_page_factory(lab_factory(case, **settings))
    panel = open_panel(lab_page)
    error = panel.get_by_test_id("hubserve-error")
    expect(error).to_be_visible()
    text = error.inner_text()
    assert message.lower() in text.lower(), text
    assert len(text.strip()) > 10, text
    assert "not-a-token-of-anyone" not in text
    expect(panel.get_by_test_id("hubserve-loading")).to_have_count(0)
    lab_page.shot("error")
