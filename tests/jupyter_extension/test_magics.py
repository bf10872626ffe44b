"""The ``%hubserve`` magics, run as notebook cells in a real IPython shell.

Cells go through ``InteractiveShell.run_cell`` as in Jupyter (so ``dep = %hubserve ...``,
variable expansion, cell sources in linecache and error display are IPython's own), against
the live JupyterHub of :mod:`tests.live_hub` with the service URL and a user's token in the
environment, where a notebook server would have them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from jupyter_extension._display import (
    FORMATTED_TYPES,
    DeploymentTable,
    LogView,
    ModelTable,
    VersionTable,
)
from jupyter_extension.client import Deployment, ModelVersion
from jupyter_extension.magics import VERBS, HubserveMagicError
from model_runtime import BuiltBundle, Service, load_bundle
from tests.live_hub import REPO, Hub, free_port

MODEL_CELL = """
import numpy as np
import torch
from torch import nn
from model_runtime import Service, kinds

torch.manual_seed(0)


class Tiny(nn.Module):
    def __init__(self, features: int = 4, classes: int = 3):
        super().__init__()
        self.features = features
        self.classes = classes
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=1)


net = Tiny().eval()
x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
"""

SERVICE_CELL = """
svc = Service({name!r}, models={{"net": net}})


@svc.api(input=kinds.ndarray("float32", (-1, 4)), output="ndarray", batchable=True)
def predict(x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()
"""


class Cells:
    """A notebook: cells run in one IPython shell with the hubserve extension loaded."""

    def __init__(self, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]) -> None:
        self.shell = shell
        self.capsys = capsys

    def run(self, cell: str) -> Any:
        """Run a cell that must succeed; its value (the last expression) is returned."""
        result = self.shell.run_cell(cell, store_history=True)
        result.raise_error()
        return result.result

    def fails(self, cell: str) -> str:
        """Run a cell that must fail and return what the notebook showed for it."""
        self.capsys.readouterr()
        result = self.shell.run_cell(cell, store_history=True)
        assert not result.success, f"{cell!r} did not fail"
        captured = self.capsys.readouterr()
        return captured.out + captured.err

    def output(self, cell: str) -> str:
        """Run a cell that must succeed and return what it printed."""
        self.capsys.readouterr()
        self.run(cell)
        captured = self.capsys.readouterr()
        return captured.out + captured.err

    def __getitem__(self, name: str) -> Any:
        return self.shell.user_ns[name]

    def html(self, obj: Any) -> str:
        assert self.shell.display_formatter is not None
        data, _ = self.shell.display_formatter.format(obj)
        return str(data.get("text/html", ""))

    def text(self, obj: Any) -> str:
        assert self.shell.display_formatter is not None
        data, _ = self.shell.display_formatter.format(obj)
        return str(data["text/plain"])


def one_line(shown: str) -> str:
    """The single line a failed magic showed, checked to be alone and traceback-free."""
    lines = [line for line in shown.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert "Traceback" not in shown
    return lines[0]


@pytest.fixture
def nb(capsys: pytest.CaptureFixture[str]) -> Iterator[Cells]:
    shell = InteractiveShell.instance()
    shell.reset(new_session=True)
    shell.run_line_magic("load_ext", "jupyter_extension")
    yield Cells(shell, capsys)
    shell.reset(new_session=True)


@dataclass
class Account:
    name: str
    token: str


@pytest.fixture
def account(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Account:
    """A fresh hub user whose server environment the notebook has."""
    user = hub.create_user("nb")
    token, _ = hub.create_token(user)
    monkeypatch.setenv("HUBSERVE_URL", hub.service_url + "/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    return Account(user, token)


# -- help and usage (no hub needed) -------------------------------------------------------------


def test_question_mark_help_lists_every_verb(nb: Cells) -> None:
    shown = nb.output("%hubserve?")
    for verb in VERBS:
        assert f"%hubserve {verb}" in shown
    assert "JUPYTERHUB_API_TOKEN" in shown


def test_verb_help_shows_its_options(nb: Cells) -> None:
    shown = nb.output("%hubserve deploy --help")
    assert "usage: %hubserve deploy" in shown
    for option in ("--replicas", "--wait", "--public", "--batch", "MODEL"):
        assert option in shown
    assert "usage: %hubserve predict" in nb.output("%hubserve help predict")
    assert "%hubserve push" in nb.output("%hubserve")


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(nb: Cells, verb: str) -> None:
    shown = nb.output(f"%hubserve {verb} --help")
    assert shown.startswith(f"usage: %hubserve {verb}")
    assert "options:" in shown


def test_cell_magic_help_explains_which_functions_become_apis(nb: Cells) -> None:
    shown = nb.output("%%hubserve_service?")
    assert "%%hubserve_service" in shown
    assert "@api" in shown
    assert "--deploy" in shown
    assert "--deploy" in nb.output("%%hubserve_service --help\npass")


def test_usage_errors_are_one_line(nb: Cells) -> None:
    line = one_line(nb.fails("%hubserve frobnicate"))
    assert line.startswith("UsageError: %hubserve: unknown verb 'frobnicate'")
    assert "invalid int value" in one_line(nb.fails("%hubserve scale iris many"))
    assert "MODEL" in one_line(nb.fails("%hubserve deploy"))
    assert "API:SIZE" in one_line(nb.fails("%hubserve deploy iris --batch predict"))
    with pytest.raises(UsageError):
        nb.shell.run_line_magic("hubserve", "predict iris predict")


def test_without_a_service_url_the_magic_says_what_to_set(
    nb: Cells, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("HUBSERVE_URL", "JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    line = one_line(nb.fails("%hubserve status"))
    assert line.startswith("hubserve: ")
    assert "HUBSERVE_URL" in line


def test_unreachable_service_is_one_line(nb: Cells, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "secret-token-never-shown-0123456789"
    monkeypatch.setenv("HUBSERVE_URL", f"http://127.0.0.1:{free_port()}/services/hubserve/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    shown = nb.fails("%hubserve status")
    line = one_line(shown)
    assert line.startswith("hubserve: cannot reach the hubserve service")
    assert token not in shown
    with pytest.raises(HubserveMagicError):
        nb.shell.run_line_magic("hubserve", "list")


def test_formatters_name_the_classes_they_format() -> None:
    for cls in (Deployment, ModelVersion, BuiltBundle):
        assert FORMATTED_TYPES[cls.__name__] == (cls.__module__, cls.__name__)


def test_loading_is_cheap() -> None:
    """Auto-loaded in every kernel: neither the client nor model_runtime on the way."""
    code = (
        "import sys\n"
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "InteractiveShell.instance().run_line_magic('load_ext', 'jupyter_extension')\n"
        "print(sorted(m for m in ('httpx', 'model_runtime', 'torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_unloading_removes_the_magics_and_formatters(nb: Cells) -> None:
    from jupyter_extension import magics

    manager = nb.shell.magics_manager
    assert nb.shell.display_formatter is not None
    html = nb.shell.display_formatter.formatters["text/html"]
    try:
        magics.unload_ipython_extension(nb.shell)
        assert "hubserve" not in manager.magics["line"]
        assert "hubserve_service" not in manager.magics["cell"]
        with pytest.raises(KeyError):
            html.lookup_by_type(Deployment)
    finally:
        magics.load_ipython_extension(nb.shell)
    assert "hubserve" in manager.magics["line"]
    assert html.lookup_by_type(Deployment) is not None


# -- %%hubserve_service without pushing -------------------------------------------------------


def test_service_cell_packages_its_functions_and_binds_the_service(
    nb: Cells, tmp_path: Path
) -> None:
    nb.run(MODEL_CELL)
    built = nb.run(
        "%%hubserve_service tiny-svc --model net --description 'a tiny model' --label team=astro\n"
        "def _prepare(x):\n"
        "    return torch.from_numpy(x)\n"
        "\n"
        "def predict(x: np.ndarray) -> np.ndarray:\n"
        "    with torch.no_grad():\n"
        "        return net(_prepare(x)).numpy()\n"
        "\n"
        "def classes(x: np.ndarray) -> list:\n"
        "    return predict(x).argmax(axis=1).tolist()\n"
    )
    assert isinstance(built, BuiltBundle)
    svc = nb["tiny_svc"]
    assert isinstance(svc, Service)
    assert sorted(svc.apis) == ["classes", "predict"]  # _prepare is a helper
    assert svc.apis["predict"].input.kind == "ndarray"
    assert built.manifest.description == "a tiny model"
    assert built.manifest.labels["team"] == "astro"
    assert "bundle tiny-svc:" in nb.text(built)

    loaded = load_bundle(built.archive)
    x = nb["x"]
    np.testing.assert_array_equal(loaded.call("predict", x), nb.run("predict(x)"))
    assert loaded.call("classes", x) == nb.run("classes(x)")


def test_package_builds_an_archive_of_a_notebook_service(nb: Cells, tmp_path: Path) -> None:
    nb.run(MODEL_CELL)
    nb.run(SERVICE_CELL.format(name="packed"))
    nb.shell.user_ns["out"] = str(tmp_path / "dist")
    shown = nb.output("built = %hubserve package svc -o {out} --label stage=test -r 'scipy>=1'")
    built = nb["built"]
    assert isinstance(built, BuiltBundle)
    assert built.archive.parent == tmp_path / "dist"
    assert built.manifest.labels == {"stage": "test"}
    assert "scipy>=1" in built.manifest.requirements
    assert f"packaged {built.ref} -> {built.archive}" in shown
    line = one_line(nb.fails("%hubserve package nothing_here"))
    assert (
        line == "hubserve: 'nothing_here' is neither a Service variable of this notebook nor a file"
    )


def test_api_marks_choose_the_apis_of_a_service_cell(nb: Cells) -> None:
    nb.run(MODEL_CELL)
    nb.run(
        "%%hubserve_service marked --as marked_svc\n"
        "from model_runtime import api\n"
        "\n"
        "def scale(x):\n"
        "    return x * 2\n"
        "\n"
        "@api(input='json', output='json')\n"
        "def doubled(values: list) -> list:\n"
        "    return [scale(v) for v in values]\n"
    )
    svc = nb["marked_svc"]
    assert list(svc.apis) == ["doubled"]
    assert svc.apis["doubled"].input.kind == "json"


def test_service_cell_errors_are_one_line(nb: Cells) -> None:
    nb.run(MODEL_CELL)
    line = one_line(nb.fails("%%hubserve_service net\ndef predict(x):\n    return x\n"))
    assert line == (
        "hubserve: 'net' already holds a Tiny in this notebook; bind the service to another"
        " variable with --as VAR"
    )
    assert isinstance(nb["net"], torch_module())
    line = one_line(nb.fails("%%hubserve_service empty\nA = 1\n"))
    assert line.startswith("hubserve: the cell defines no API function")
    line = one_line(nb.fails("%%hubserve_service Bad_Name\ndef f(x):\n    return x\n"))
    assert line.startswith("hubserve: invalid model name 'Bad_Name'")
    line = one_line(nb.fails("%%hubserve_service m --model nothing\ndef f(x):\n    return x\n"))
    assert line == "hubserve: --model nothing: no variable 'nothing' in this notebook"


def test_errors_in_the_users_own_code_keep_their_traceback(nb: Cells) -> None:
    shown = nb.fails("%%hubserve_service broken\ndef predict(x):\n    return x\n\n1 / 0\n")
    assert "ZeroDivisionError" in shown
    assert "1 / 0" in shown  # the cell's own line, from the source IPython cached
    assert "broken" not in nb.shell.user_ns


def torch_module() -> type:
    import torch

    return torch.nn.Module


# -- against the hub --------------------------------------------------------------------------


def test_notebook_deploy_flow(nb: Cells, account: Account, hub: Hub) -> None:
    """Push, deploy, call, scale, roll, roll back, read logs, undeploy: all from cells."""
    nb.run(MODEL_CELL)
    nb.run(SERVICE_CELL.format(name="flow"))
    y1 = nb.run("predict(x)")

    # push (two tags) and list
    shown = nb.output("v1 = %hubserve push svc --tag prod --no-progress")
    v1 = nb["v1"]
    assert isinstance(v1, ModelVersion)
    assert v1.owner == account.name
    assert set(v1.tags) >= {"prod", "latest"}
    assert f"pushed {account.name}/flow:{v1.version}" in shown
    assert f"{account.name}/flow:{v1.version}" in nb.text(v1)
    models = nb.run("%hubserve list")
    assert isinstance(models, ModelTable)
    assert [m.name for m in models] == ["flow"]
    versions = nb.run("%hubserve list flow")
    assert isinstance(versions, VersionTable)
    assert [v.version for v in versions] == [v1.version]
    assert "prod" in repr(versions)

    # deploy from the pushed version's variable, and wait
    shown = nb.output("dep = %hubserve deploy v1 --wait --timeout 120")
    dep = nb["dep"]
    assert isinstance(dep, Deployment)
    assert dep.key == f"{account.name}/flow"
    assert dep.status.phase == "ready"
    assert dep.version == v1.version
    assert f"{dep.key} is ready: 1/1 replicas" in shown
    html = nb.html(dep)
    assert f'href="{dep.url}"' in html
    assert "predict" in html
    assert f"deployment {dep.key}: ready, 1/1 replicas ready" in nb.text(dep)
    assert "environment" not in nb.text(dep)  # torch only: the service's own environment

    # status: one deployment, and the table of all of them with links
    assert nb.run("%hubserve status flow").version == v1.version
    table = nb.run("%hubserve status")
    assert isinstance(table, DeploymentTable)
    assert [d.key for d in table] == [dep.key]
    assert f'href="{dep.url}"' in table._repr_html_()
    assert dep.url in repr(table)
    assert dep.url in nb.html(nb.run("%hubserve list"))

    # predict with a variable, an expression and a literal
    np.testing.assert_allclose(nb.run("%hubserve predict flow predict x"), y1, rtol=1e-6)
    np.testing.assert_allclose(nb.run("%hubserve predict dep predict x[:2]"), y1[:2], rtol=1e-6)
    literal = nb.run("%hubserve predict flow predict [[0.5, 0.1, -0.3, 1.0]]")
    assert np.asarray(literal).shape == (1, 3)

    # scale
    shown = nb.output("dep = %hubserve scale flow 2 --wait --timeout 120")
    assert nb["dep"].status.ready == 2
    assert "scaling" in shown

    # a second version, rolled to explicitly, then rolled back
    nb.run("with torch.no_grad():\n    net.linear.weight.mul_(3.0)")
    y2 = nb.run("predict(x)")
    assert not np.allclose(y1, y2)
    v2 = nb.run("v2 = %hubserve push svc --no-progress\nv2")
    assert v2.version > v1.version
    rolled = nb.run("%hubserve rollback flow --to {v2.version} --wait --timeout 120")
    assert rolled.version == v2.version
    np.testing.assert_allclose(nb.run("%hubserve predict flow predict x"), y2, rtol=1e-6)
    shown = nb.output("back = %hubserve rollback flow --wait --timeout 120")
    assert nb["back"].version == v1.version
    assert f"runs {v1.version}" in shown
    np.testing.assert_allclose(nb.run("%hubserve predict flow predict x"), y1, rtol=1e-6)
    assert [r.version for r in nb["back"].revisions][-3:] == [v1.version, v2.version, v1.version]

    # logs
    logs = nb.run("%hubserve logs flow --tail 50")
    assert isinstance(logs, LogView)
    assert len(logs) >= 1
    assert "replica" in repr(logs)
    assert "<details" in logs._repr_html_()

    # undeploy, after which the deployment is gone: one clear line
    assert f"undeployed {account.name}/flow" in nb.output("%hubserve undeploy flow")
    line = one_line(nb.fails("%hubserve status flow"))
    assert line == f"hubserve: deployment {account.name}/flow not found"
    assert account.token not in nb.output("%hubserve status")


def test_service_cell_deploys_and_rolls_on_rerun(nb: Cells, account: Account) -> None:
    nb.run(MODEL_CELL)
    cell = (
        "%%hubserve_service cellsvc --model net --deploy --wait --timeout 120\n"
        "def predict(x: np.ndarray) -> np.ndarray:\n"
        "    with torch.no_grad():\n"
        "        return net(torch.from_numpy(x)).numpy() * {factor}\n"
    )
    dep = nb.run(cell.format(factor=1))
    assert isinstance(dep, Deployment)
    assert dep.status.phase == "ready"
    assert isinstance(nb["cellsvc"], Service)
    y = nb.run("predict(x)")
    np.testing.assert_allclose(nb.run("%hubserve predict cellsvc predict x"), y, rtol=1e-6)

    rerun = nb.run(cell.format(factor=10))  # an edit, shipped by running the cell again
    assert rerun.key == dep.key
    assert rerun.version != dep.version
    assert rerun.status.settled
    np.testing.assert_allclose(nb.run("%hubserve predict cellsvc predict x"), y * 10, rtol=1e-6)
    nb.run("%hubserve undeploy cellsvc")


def test_unknown_deployment_is_one_line(nb: Cells, account: Account) -> None:
    for cell in (
        "%hubserve status nope",
        "%hubserve logs nope",
        "%hubserve scale nope 2",
        "%hubserve rollback nope",
        "%hubserve undeploy nope",
    ):
        line = one_line(nb.fails(cell))
        assert line == f"hubserve: deployment {account.name}/nope not found", cell
    line = one_line(nb.fails("%hubserve deploy nope:latest"))
    assert line.startswith("hubserve: ")
    assert "nope" in line
    line = one_line(nb.fails("%hubserve push no_such_variable"))
    assert "neither a Service variable" in line


def test_token_without_the_hubserve_scope_is_one_line(
    nb: Cells, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = hub.create_user("noscope")
    token, _ = hub.create_token(user, scopes=[f"read:users:name!user={user}"])
    monkeypatch.setenv("HUBSERVE_URL", hub.service_url + "/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", token)
    for cell in ("%hubserve list", "%hubserve status", "%hubserve deploy iris"):
        shown = nb.fails(cell)
        line = one_line(shown)
        assert re.match(r"hubserve: \S", line), line
        assert token not in shown
    nb.run(MODEL_CELL)
    nb.run(SERVICE_CELL.format(name="denied"))
    shown = nb.fails("%hubserve push svc --no-progress")
    one_line(shown)
    assert token not in shown
