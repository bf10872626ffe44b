"""``pip install hubserve`` is the model runtime; the hub service and the notebook side are extras.

The runtime (``model_runtime``, the ``hubserve`` CLI, ``hubserve serve``) and the Python client
(``hubserve.Client``) must run on the core dependencies alone, so they must never import
JupyterHub, JupyterLab, jupyter_server, ipywidgets, IPython, SQLAlchemy or Alembic; and the
core dependencies in ``pyproject.toml`` must not bring them. Checked in fresh interpreters
(``sys.modules``, ``python -X importtime``) and against the installed metadata.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from model_runtime import build_bundle

from .runtime.test_serve import Server

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

#: Top-level modules of the hub service's and the notebook side's stacks.
NOT_IN_RUNTIME = {
    "jupyterhub",
    "jupyterlab",
    "jupyter_server",
    "jupyter_client",
    "ipywidgets",
    "IPython",
    "ipykernel",
    "sqlalchemy",
    "alembic",
    "traitlets",
    "tornado",
    "cryptography",
    "aiohttp",
    "kubernetes",
    "hub_service",
}
#: Their distributions, which the core dependencies must not bring, even indirectly.
NOT_IN_CORE = {
    "jupyterhub",
    "jupyterlab",
    "jupyter-server",
    "jupyter-client",
    "ipywidgets",
    "ipython",
    "ipykernel",
    "sqlalchemy",
    "alembic",
    "traitlets",
    "tornado",
    "kubernetes",
    "torch",
}
#: Named in the core dependencies now, but only the hub service imports them.
HUB_ONLY = {"cryptography", "aiohttp"}


def loaded_after(code: str) -> set[str]:
    """Top-level names of the modules a fresh interpreter loads by running ``code``."""
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        f"{code}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(proc.stdout.splitlines()[-1]))


def imported_by_importtime(stderr: str) -> set[str]:
    """Top-level names of the modules in ``python -X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if match:
            names.add(match.group(1).split(".")[0])
    return names


# -- what the runtime imports ------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import model_runtime",
        "import model_runtime, model_runtime.cli, model_runtime.runtime",
        "import model_runtime.runtime._zygote, model_runtime.k8s",
        "import hubserve; hubserve.Client",
    ],
)
def test_runtime_and_client_import_nothing_of_the_hub_or_notebook_side(code: str) -> None:
    loaded = loaded_after(code)
    assert "model_runtime" in loaded
    assert not loaded & NOT_IN_RUNTIME, sorted(loaded & NOT_IN_RUNTIME)
    if "hubserve" not in code:
        assert "jupyter_extension" not in loaded


def test_cli_help_imports_nothing_of_the_hub_or_notebook_side() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "model_runtime.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "serve" in proc.stdout
    imported = imported_by_importtime(proc.stderr)
    assert "click" in imported
    assert not imported & (NOT_IN_RUNTIME | {"jupyter_extension"})


def test_serve_imports_nothing_of_the_hub_or_notebook_side(tmp_path: Path) -> None:
    """``hubserve serve`` up to ready and one call: the modules it loaded, by importtime."""
    source = tmp_path / "echo.py"
    source.write_text(
        "from model_runtime import Service\n"
        "service = Service('echo')\n"
        "@service.api(input='json', output='json')\n"
        "def echo(values: list) -> list:\n"
        "    return values\n"
    )
    bundle = build_bundle(f"{source}:service", output_dir=tmp_path / "out")
    launcher = [sys.executable, "-X", "importtime", "-m", "model_runtime.cli"]
    server = Server(bundle.archive, tmp_path, launcher=launcher)
    try:
        server.wait_ready()
        answer = httpx.post(f"{server.url}/echo", json=[1, 2], timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        server.stop()
    log = server.log
    imported = imported_by_importtime(log.read_text())
    assert {"model_runtime", "uvicorn", "fastapi"} <= imported
    assert not imported & (NOT_IN_RUNTIME | {"jupyter_extension"})


# -- what pyproject.toml declares --------------------------------------------------------------


def _expand(requirements: list[str]) -> set[str]:
    """Requirement strings, with ``hubserve[...]`` self-references replaced by their extras."""
    out: set[str] = set()
    for text in requirements:
        req = Requirement(text)
        if canonicalize_name(req.name) == "hubserve":
            for extra in req.extras:
                out |= _expand(EXTRAS[extra])
        else:
            out.add(str(req))
    return out


def _names(requirements: list[str] | set[str]) -> set[str]:
    return {canonicalize_name(Requirement(text).name) for text in requirements}


def _installed_closure(requirements: list[str]) -> set[str]:
    """The distributions ``requirements`` bring, transitively, read from what is installed."""
    seen: set[tuple[str, frozenset[str]]] = set()
    names: set[str] = set()
    todo = [Requirement(text) for text in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform or Python
        for text in dist.requires or []:
            sub = Requirement(text)
            extras = {"", *req.extras}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return names


def test_core_dependencies_leave_out_the_hub_and_notebook_stacks() -> None:
    core = _names(PROJECT["dependencies"])
    assert not core & (NOT_IN_CORE | HUB_ONLY), sorted(core & (NOT_IN_CORE | HUB_ONLY))
    brought = _installed_closure(PROJECT["dependencies"])
    assert not brought & NOT_IN_CORE, sorted(brought & NOT_IN_CORE)
    assert "uv" in core
    assert Requirement(next(d for d in PROJECT["dependencies"] if d.startswith("uv"))).specifier


def test_core_dependencies_cover_what_model_runtime_imports() -> None:
    """Every third-party module model_runtime imports comes with the core install (torch is
    the ``torch`` extra: model_runtime imports it only when a bundle needs it)."""
    imported: set[str] = set()
    for path in (ROOT / "model_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "model_runtime"}
    third_party -= {"torch"}
    assert not third_party & NOT_IN_RUNTIME
    brought = _installed_closure(PROJECT["dependencies"])
    owners = importlib.metadata.packages_distributions()
    missing = {
        module
        for module in third_party
        if not {canonicalize_name(d) for d in owners.get(module, [])} & brought
    }
    assert not missing, f"model_runtime imports {sorted(missing)}, not in the core dependencies"


def test_extras_hub_jupyter_all() -> None:
    assert {"jupyterhub", "sqlalchemy", "alembic", "cryptography", "aiohttp"} <= _names(
        EXTRAS["hub"]
    )
    assert {"jupyterlab", "jupyter-server", "ipywidgets", "ipython"} <= _names(EXTRAS["jupyter"])
    everything = _expand(EXTRAS["all"])
    for extra in ("hub", "jupyter", "kubernetes"):
        assert _expand(EXTRAS[extra]) <= everything, extra
    assert "torch" not in _names(everything)
    # `make test` installs .[dev]: it must bring the whole stack, and torch pinned exactly.
    for extra in ("test", "dev"):
        assert everything <= _expand(EXTRAS[extra]), extra
        assert "torch==2.13.0" in _expand(EXTRAS[extra])
    assert EXTRAS["torch"] == ["torch==2.13.0"]


# -- without the extras --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "hidden", "extra"),
    [
        ("hub_service", "sqlalchemy", "hub"),
        ("hub_service", "traitlets", "hub"),
        ("jupyter_extension.widgets", "ipywidgets", "jupyter"),
        ("jupyter_extension.serverext", "jupyter_server", "jupyter"),
    ],
)
def test_a_missing_extra_is_a_clear_import_error(module: str, hidden: str, extra: str) -> None:
    # sys.modules[name] = None is how Python marks a module as not importable.
    code = (
        f"import sys\nsys.modules[{hidden!r}] = None\n"
        f"try:\n    import {module}\n"
        "except ModuleNotFoundError as exc:\n    print(exc)\n"
        "else:\n    print('imported')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert hidden in proc.stdout
    assert f"pip install 'hubserve[{extra}]'" in proc.stdout


def test_the_client_needs_no_extra() -> None:
    hidden = ["jupyter_server", "ipywidgets", "IPython", "traitlets", "tornado", "sqlalchemy"]
    code = (
        f"import sys\nfor name in {hidden!r}:\n    sys.modules[name] = None\n"
        "import hubserve\n"
        "client = hubserve.Client('http://127.0.0.1:9/services/hubserve/', token='t')\n"
        "print(type(client).__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Client"
