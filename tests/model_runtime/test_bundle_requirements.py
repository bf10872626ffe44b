"""A bundle's requirements are complete: what its code imports (inside functions too), what its
artifacts hold (the classes in a pickle or skops file), and the user's own modules, which travel
inside the bundle. scikit-learn and skops are not in this environment on purpose (the service's
environment must lack them), so the tests that need them run in a subprocess with
``PYTHONPATH`` at :func:`tests.extra_packages.extra_site`.
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from model_runtime import (
    ArtifactError,
    Model,
    PackagingError,
    PackagingWarning,
    Service,
    build_bundle,
)
from model_runtime.bundle._artifact_scan import artifact_modules, pickle_globals

from .notebook import Notebook


def run_python(script: Path, *args: str, pythonpath: Path | None = None) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter from its own directory; it prints JSON last."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, script.name, *args],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def write(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def bundle_files(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        return set(tar.getnames())


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A notebook's directory on ``sys.path``; its modules are forgotten afterwards."""
    directory = tmp_path / "src"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    yield directory
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(directory)):
            del sys.modules[name]


# -- what artifacts hold ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_stream_names_the_modules_of_its_classes(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "model.pkl"
    table = pd.DataFrame({"a": [1.0, 2.0]})
    # Two classes of one module: from protocol 4 on, the second STACK_GLOBAL takes the module
    # name back from the memo instead of writing it again.
    data = {"table": table, "counts": collections.Counter("ab"), "order": collections.deque()}
    path.write_bytes(pickle.dumps(data, protocol=protocol))

    found = pickle_globals(path)

    assert {("collections", "Counter"), ("collections", "deque")} <= found
    assert any(module.startswith("pandas.") for module, _ in found)
    # Python 2 names of old protocols (__builtin__, copy_reg) are read as Python 3 loads them.
    assert artifact_modules(path, "pickle") <= {
        "pandas",
        "numpy",
        "collections",
        "builtins",
        "copyreg",
        "_codecs",
    }
    assert {"pandas", "numpy"} <= artifact_modules(path, "pickle")


def test_torch_save_archive_is_read_without_loading(tmp_path: Path) -> None:
    path = tmp_path / "net.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 3)), str(path))

    assert ("torch.nn.modules.linear", "Linear") in pickle_globals(path)
    assert "torch" in artifact_modules(path, "pickle")


def test_pickled_model_requires_the_package_of_its_class(
    notebook: Notebook, tmp_path: Path
) -> None:
    notebook.run(
        "import pandas\nfrom model_runtime import Service\n"
        "table = pandas.DataFrame({'a': [1, 2, 3]})\n"
        "svc = Service('table', models={'table': table})\n"
        "@svc.api\ndef rows(n: int) -> int:\n    return min(n, len(table))\n"
    )
    # The API's code never mentions pandas: only the pickle does.
    built = build_bundle(notebook["svc"], output_dir=tmp_path, trust_pickle=True)

    assert f"pandas=={importlib.metadata.version('pandas')}" in built.manifest.requirements


# -- what code imports ------------------------------------------------------------------------


def test_imports_inside_functions_are_requirements(notebook: Notebook, tmp_path: Path) -> None:
    notebook.run(
        "import orjson\nfrom model_runtime import Service\nsvc = Service('inner')\n"
        "def dump(value):\n    import yaml\n    return yaml.safe_dump(value) + str(orjson)\n"
        "@svc.api\ndef to_yaml(value: dict) -> str:\n"
        "    from PIL import Image  # noqa: F401\n    return dump(value)\n"
    )
    reqs = build_bundle(notebook["svc"], output_dir=tmp_path).manifest.requirements

    # Inside the API, inside a helper it calls, and a module global of that helper.
    for dist in ("pillow", "pyyaml", "orjson"):
        assert f"{dist}=={importlib.metadata.version(dist)}" in reqs


def test_import_nothing_provides_is_a_warning(notebook: Notebook, tmp_path: Path) -> None:
    notebook.run(
        "from model_runtime import Service\nsvc = Service('ghost')\n"
        "@svc.api\ndef call(v: int) -> int:\n    import ghost_module_xyz\n"
        "    return ghost_module_xyz.f(v)\n"
    )
    with pytest.warns(PackagingWarning, match="needs ghost_module_xyz, which no installed"):
        built = build_bundle(notebook["svc"], output_dir=tmp_path / "a")
    assert not any("ghost" in r for r in built.manifest.requirements)

    # Listed by the user, it is theirs to provide: no warning (warnings are errors here).
    reqs = ["ghost-module-xyz==1.0"]
    built = build_bundle(notebook["svc"], output_dir=tmp_path / "b", requirements=reqs)
    assert "ghost-module-xyz==1.0" in built.manifest.requirements


# -- the user's own modules -------------------------------------------------------------------


def test_local_modules_travel_inside_the_bundle(src: Path, tmp_path: Path) -> None:
    write(src / "hs_basics.py", "OFFSET = 10\n")
    write(
        src / "hs_mylib.py",
        """
        import hs_basics

        class Thing:
            def __init__(self, factor):
                self.factor = factor

        def shift(v):
            return v + hs_basics.OFFSET
        """,
    )
    write(src / "hs_mypkg" / "__init__.py", "")
    write(src / "hs_mypkg" / "consts.py", "FACTOR = 3\n")
    write(
        src / "hs_mypkg" / "sub.py",
        """
        import yaml
        from hs_mypkg import consts

        def scale(v):
            return v * consts.FACTOR
        """,
    )
    write(
        src / "hs_thinglib.py", "class Weights:\n    def __init__(self, w):\n        self.w = w\n"
    )
    write(
        src / "app.py",
        """
        import hs_mylib
        import hs_thinglib
        from hs_mypkg.sub import scale
        from model_runtime import Service

        weights = hs_thinglib.Weights(2)
        service = Service("local-mods", models={"weights": weights})

        @service.api
        def run(values: list) -> list:
            return [scale(hs_mylib.shift(v)) * weights.w for v in values]
        """,
    )
    write(src / "hs_mypkg" / "__pycache__" / "sub.cpython-311.pyc", "stale")  # must not travel
    # hs_thinglib is not in the API's code: only the pickled model's class comes from it.
    built = build_bundle(f"{src / 'app.py'}:service", output_dir=tmp_path, trust_pickle=True)

    files = set(built.manifest.files)
    assert {"hs_mylib.py", "hs_basics.py", "hs_thinglib.py"} <= files
    assert {"hs_mypkg/__init__.py", "hs_mypkg/consts.py", "hs_mypkg/sub.py"} <= files
    assert not any("__pycache__" in f for f in bundle_files(built.archive))
    reqs = built.manifest.requirements
    assert not any(r.startswith("hs") for r in reqs)
    assert f"pyyaml=={importlib.metadata.version('pyyaml')}" in reqs  # imported by hs_mypkg

    runner = write(
        tmp_path / "runner" / "load.py",
        """
        import json, sys
        from model_runtime import load_bundle
        svc = load_bundle(sys.argv[1], trust_pickle=True)
        origins = {m: sys.modules[m].__file__ for m in ("hs_mylib", "hs_mypkg", "hs_thinglib")}
        print(json.dumps({"run": svc.call("run", [1, 2]), "origins": origins,
                          "bundle": str(svc.bundle_dir)}))
        """,
    )
    result = run_python(runner, str(built.archive))

    assert result["run"] == [66, 72]
    assert all(Path(f).is_relative_to(result["bundle"]) for f in result["origins"].values())


def test_local_module_named_like_a_bundle_file_is_refused(src: Path, tmp_path: Path) -> None:
    write(src / "service.py", "def f(v):\n    return v\n")
    write(
        src / "app.py",
        "import service\nfrom model_runtime import Service\nsvc = Service('clash')\n"
        "@svc.api\ndef call(v: int) -> int:\n    return service.f(v)\n",
    )
    with pytest.raises(PackagingError, match=r"has the name of a bundle file, service\.py"):
        build_bundle(f"{src / 'app.py'}:svc", output_dir=tmp_path)


# -- scikit-learn, through skops ---------------------------------------------------------------

TRAIN = """
import importlib.metadata, json, sys, warnings
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from model_runtime import BundleError, Model, PackagingWarning, Service, build_bundle, load_bundle

warnings.simplefilter("error", PackagingWarning)
rng = np.random.default_rng(0)
X = rng.normal(size=(90, 4))
y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
"""


def test_sklearn_estimator_travels_as_skops(sklearn_site: Path, tmp_path: Path) -> None:
    script = write(
        tmp_path / "work" / "train.py",
        TRAIN
        + """
clf = LogisticRegression(max_iter=500).fit(X, y)
svc = Service("iris-skops", models={"clf": clf})

@svc.api(input="ndarray", output="ndarray")
def predict(x: np.ndarray) -> np.ndarray:
    return clf.predict_proba(x)

built = build_bundle(svc, output_dir="out")
loaded = load_bundle(built.archive)
(entry,) = built.manifest.models
print(json.dumps({
    "format": entry.format, "path": entry.path, "framework": built.manifest.framework,
    "trusted_types": (entry.model_extra or {}).get("trusted_types"),
    "requirements": built.manifest.requirements,
    "expected": [f"scikit-learn=={sklearn.__version__}",
                 f"skops=={importlib.metadata.version('skops')}"],
    "equal": bool((loaded.call("predict", X) == clf.predict_proba(X)).all()),
}))
""",
    )
    result = run_python(script, pythonpath=sklearn_site)

    assert (result["format"], result["path"]) == ("skops", "artifacts/clf.skops")
    assert result["framework"] == "sklearn"
    assert result["trusted_types"] is None
    assert set(result["expected"]) <= set(result["requirements"])
    assert result["equal"]


def test_skops_types_beyond_the_defaults_need_trust(sklearn_site: Path, tmp_path: Path) -> None:
    write(
        tmp_path / "work" / "hs_doubler.py",
        """
        from sklearn.base import BaseEstimator, TransformerMixin

        class Doubler(TransformerMixin, BaseEstimator):
            def fit(self, X, y=None):
                return self

            def transform(self, X):
                return X * 2
        """,
    )
    script = write(
        tmp_path / "work" / "train.py",
        TRAIN
        + """
from sklearn.pipeline import make_pipeline
from hs_doubler import Doubler
from model_runtime import ArtifactError

pipe = make_pipeline(Doubler(), LogisticRegression(max_iter=500)).fit(X, y)
svc = Service("doubled", models={"pipe": pipe})

@svc.api(input="ndarray", output="ndarray")
def predict(x: np.ndarray) -> np.ndarray:
    return pipe.predict(x)

try:
    build_bundle(svc, output_dir="out")
    refused = ""
except ArtifactError as exc:
    refused = str(exc)
built = build_bundle(svc, output_dir="out", trust_pickle=True)
try:
    load_bundle(built.archive)
    untrusted_load = ""
except BundleError as exc:
    untrusted_load = str(exc)
loaded = load_bundle(built.archive, trust_pickle=True)
print(json.dumps({
    "refused": refused, "untrusted_load": untrusted_load,
    "trusted_types": built.manifest.models[0].model_extra["trusted_types"],
    "files": sorted(built.manifest.files),
    "equal": bool((loaded.call("predict", X) == pipe.predict(X)).all()),
}))
""",
    )
    result = run_python(script, pythonpath=sklearn_site)

    assert "hs_doubler.Doubler" in result["refused"]
    assert "trust_pickle=True" in result["refused"]
    assert result["trusted_types"] == ["hs_doubler.Doubler"]
    assert "trust_pickle=True" in result["untrusted_load"]
    assert "hs_doubler.py" in result["files"]
    assert result["equal"]


def test_pickled_estimator_requires_scikit_learn(sklearn_site: Path, tmp_path: Path) -> None:
    script = write(
        tmp_path / "work" / "train.py",
        TRAIN
        + """
clf = LogisticRegression(max_iter=500).fit(X, y)
svc = Service("iris-pickle", models={"clf": Model(clf, format="pickle")})

@svc.api(input="ndarray", output="ndarray")
def predict(x: np.ndarray) -> np.ndarray:
    return clf.predict(x)

built = build_bundle(svc, output_dir="out", trust_pickle=True)
loaded = load_bundle(built.archive, trust_pickle=True)
print(json.dumps({
    "format": built.manifest.models[0].format,
    "requirements": built.manifest.requirements,
    "expected": f"scikit-learn=={sklearn.__version__}",
    "equal": bool((loaded.call("predict", X) == clf.predict(X)).all()),
}))
""",
    )
    result = run_python(script, pythonpath=sklearn_site)

    assert result["format"] == "pickle"
    assert result["expected"] in result["requirements"]
    assert not any(r.startswith("skops") for r in result["requirements"])
    assert result["equal"]


def echo(v: int) -> int:
    return v


def test_skops_format_without_skops_is_a_clear_error(tmp_path: Path) -> None:
    svc = Service("no-skops", models={"m": Model({"a": 1}, format="skops")}, apis=[echo])
    with pytest.raises(ArtifactError, match="needs the skops package"):
        build_bundle(svc, output_dir=tmp_path)


class _NotebookScaler:
    """Stands for a class defined in a notebook cell (its module is ``__main__``)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor


def test_a_pickle_of_a_notebook_class_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unpickling ``__main__.X`` fails in any runtime: say so at packaging, not at deploy."""
    monkeypatch.setattr(_NotebookScaler, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "_NotebookScaler", _NotebookScaler, raising=False)
    svc = Service("scaler", models={"scaler": Model(_NotebookScaler(2.0), format="pickle")})

    @svc.api(input="json", output="json")
    def scale(x: float) -> float:
        return x

    with pytest.raises(PackagingError, match="_NotebookScaler, defined in the notebook itself"):
        build_bundle(svc, output_dir=tmp_path, trust_pickle=True)
