"""A scikit-learn model from a notebook kernel that has scikit-learn, served by a hub whose
service environment does not: the bundle's environment is built for it.

The kernel runs with scikit-learn and skops on its path (``tests/extra_packages.py``: a
folder beside this virtual environment, which deliberately lacks both), as a user's kernel
environment differs from the service's in a real hub. The notebook trains a classifier,
packages it (saved with skops: no pickle, no ``trust_pickle``), pushes and deploys it, and
compares the deployment's answers with the kernel's. A second model with the same
requirements reuses the environment: no installer runs for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from tests.extra_packages import SKLEARN, extra_site
from tests.jupyter_extension.test_notebook_e2e import as_notebook_user, run_notebook
from tests.live_hub import Hub

CELLS = [
    """\
import json
import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

rng = np.random.default_rng(0)
X = rng.normal(size=(80, 4)).astype("float32")
y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
clf = LogisticRegression().fit(X, y)
""",
    """\
import hubserve
from jupyter_extension._display import deployment_text
from model_runtime import Service

client = hubserve.Client()
results = {}
for name in ("skclf", "skclf-twin"):
    svc = Service(name, models={"clf": clf})

    @svc.api(input="ndarray", output="ndarray")
    def proba(x: np.ndarray) -> np.ndarray:
        return clf.predict_proba(x)

    version = client.push(svc, progress=False)
    deployment = client.deploy(name, wait=True, timeout=400)
    answer = client.predict(deployment, "proba", X[:7])
    logs = {chunk.replica: chunk.lines for chunk in client.logs(deployment)}
    results[name] = {
        "max_diff": float(np.abs(answer - clf.predict_proba(X[:7])).max()),
        "environment": deployment.status.environment.model_dump(),
        "environment_log": logs.get("environment", []),
        "shown": deployment_text(deployment),
        "framework": version.manifest.framework,
        "requirements": version.manifest.requirements,
    }
    client.undeploy(deployment)
print(json.dumps({"sklearn": sklearn.__version__, "results": results}))
""",
]


@pytest.mark.timeout(600)
def test_sklearn_model_from_a_kernel_with_packages_the_service_lacks(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ImportError):
        __import__("sklearn")  # the service's (and this test's) environment lacks it
    as_notebook_user(hub, monkeypatch, "sknb")
    site = extra_site(SKLEARN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.environ["PYTHONPATH"], str(site)]))
    notebook = tmp_path / "sklearn.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nbformat.write(nb, notebook)

    executed = run_notebook(notebook, tmp_path)
    out = "".join(
        o.get("text", "") for o in executed.cells[-1].outputs if o["output_type"] == "stream"
    )
    summary = json.loads(out.strip().splitlines()[-1])
    first, twin = summary["results"]["skclf"], summary["results"]["skclf-twin"]
    for result in (first, twin):
        assert result["max_diff"] < 1e-6
        assert result["framework"] == "sklearn"  # saved with skops, not pickled
        assert f"scikit-learn=={summary['sklearn']}" in result["requirements"]
        assert result["environment"]["kind"] == "overlay"
        assert "scikit-learn" in result["environment"]["packages"]
        assert "  environment: overlay (adds scikit-learn==" in result["shown"]
    assert twin["environment"]["key"] == first["environment"]["key"]
    assert not [line for line in twin["environment_log"] if "installing" in line]
