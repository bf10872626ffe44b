"""A real notebook, run headless in a real kernel, deploys a model with the magics.

``notebooks/deploy_flow.ipynb`` is what a data scientist would write: ``%load_ext
jupyter_extension``, a small torch model, then ``%hubserve push / deploy / predict / scale /
rollback / logs / undeploy`` and a ``%%hubserve_service`` cell. nbclient runs it in an
``ipykernel`` of this virtual environment whose environment carries the hub's service URL and
a user's token, as a JupyterHub single-user server's kernels do. The assertions read the
saved outputs, cell by cell (found by their tags): what the notebook shows is the product.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from tests.live_hub import REPO, Hub

NOTEBOOK = Path(__file__).parent / "notebooks" / "deploy_flow.ipynb"


def run_notebook(path: Path, workdir: Path) -> Any:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def as_notebook_user(hub: Hub, monkeypatch: pytest.MonkeyPatch, prefix: str) -> tuple[str, str]:
    """A new hub user whose token and hubserve URL the notebook's kernel inherits from this
    process's environment, as a single-user server's kernels do: (user, token)."""
    user = hub.create_user(prefix)
    token, _ = hub.create_token(user)
    monkeypatch.setenv("HUBSERVE_URL", hub.service_url + "/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    return user, token


def cell(nb: Any, tag: str) -> Any:
    found = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, tag
    return found[0]


def stream(c: Any, name: str = "stdout") -> str:
    return "".join(
        o["text"] for o in c.outputs if o["output_type"] == "stream" and o["name"] == name
    )


def result(c: Any, mime: str) -> str:
    """The cell's value (``Out[n]``) as ``mime``; progress bars are display data, not this."""
    for o in c.outputs:
        if o["output_type"] == "execute_result" and mime in o["data"]:
            return str(o["data"][mime])
    raise AssertionError(f"no {mime} result in {c.source!r}: {c.outputs}")


@pytest.mark.timeout(600)
def test_deploy_flow_notebook(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = as_notebook_user(hub, monkeypatch, "nbe2e")
    nb = run_notebook(NOTEBOOK, tmp_path)
    key = f"{user}/nbflow"

    assert "usage: %hubserve deploy" in stream(cell(nb, "help"))

    push = cell(nb, "push")
    assert f"pushed {key}:" in stream(push)
    assert "prod" in result(push, "text/plain")

    assert key in result(cell(nb, "list"), "text/html")

    deploy = cell(nb, "deploy")
    assert f"{key} is ready: 1/1 replicas" in stream(deploy)
    html = result(deploy, "text/html")
    assert f'href="/services/hubserve/d/{key}/"' in html
    assert "ready" in html
    assert f"deployment {key}: ready" in result(deploy, "text/plain")

    status = result(cell(nb, "status"), "text/html")
    assert "<table" in status
    assert f'href="/services/hubserve/d/{key}/"' in status

    assert "predict matches the notebook's model: (5, 3)" in stream(cell(nb, "predict"))
    assert f"{key} is ready: 2/2 replicas" in stream(cell(nb, "scale"))
    assert "the deployment runs the second version" in stream(cell(nb, "predict-v2"))
    assert "rolled back to the first version" in stream(cell(nb, "predict-v1"))
    assert "replica" in result(cell(nb, "logs"), "text/html")

    service_cell = cell(nb, "service-cell")
    assert f"pushed {user}/nbcell:" in stream(service_cell)
    assert f"{user}/nbcell is ready" in stream(service_cell)
    assert "classes:" in stream(cell(nb, "call-service-cell"))

    undeploy = stream(cell(nb, "undeploy"))
    assert f"undeployed {key}" in undeploy
    assert f"undeployed {user}/nbcell" in undeploy

    # An error is one line, not a traceback; the token shows up nowhere in the notebook.
    errors = [o for o in cell(nb, "gone").outputs if o["output_type"] == "error"]
    assert len(errors) == 1
    assert errors[0]["traceback"] == [f"hubserve: deployment {key} not found"]
    for c in nb.cells:
        if c.cell_type == "code" and "raises-exception" not in c.metadata.get("tags", []):
            assert not [o for o in c.outputs if o["output_type"] == "error"], c.source
    assert token not in json.dumps(nbformat.from_dict(nb))
