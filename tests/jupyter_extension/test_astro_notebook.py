"""The astronomy example's notebook, ``examples/astro/astro.ipynb``, run against the live hub.

The notebook is the use case the platform was built for, as a data scientist goes through it:
generate a radio sky, package the segmenter, ``%hubserve push`` and ``deploy --wait``, call
``segment`` on one image, run ``segment_folder`` over a folder as a batch job, read the
results, display the ``DeployPanel`` and undeploy. nbclient runs it in an ``ipykernel`` of
this virtual environment whose environment carries the hub's service URL and a user's token
(as a single-user server's kernels do) and the example's directory; it works in a temporary
directory, which the ``local`` backend's replica reads and writes directly.

The assertions read what the notebook shows, cell by cell (found by their tags), and check
the output folder it leaves on disk: masks carrying the input's WCS, previews, the merged
catalogue.
"""

from __future__ import annotations

import csv
import json
import time
from typing import Any

import httpx
import nbformat
import pytest
from astropy.io import fits

from tests.live_hub import REPO, Hub, shared_umask

from .test_notebook_e2e import as_notebook_user, cell, result, run_notebook, stream

EXAMPLE = REPO / "examples" / "astro"
NOTEBOOK = EXAMPLE / "astro.ipynb"
N_IMAGES = 12  # the notebook's default
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def test_committed_without_outputs() -> None:
    """The repository holds the notebook as a reader should first see it: no outputs, no
    execution counts (outputs would hold someone's paths, timings and widget state)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.outputs == [], c.source
            assert c.execution_count is None, c.source
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "TRAIN = False" in code  # the demo loads the shipped weights by default


@pytest.mark.timeout(300)
def test_astro_notebook(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    user, token = as_notebook_user(hub, monkeypatch, "astro")
    monkeypatch.setenv("ASTRO_EXAMPLE_DIR", str(EXAMPLE))
    monkeypatch.setenv("MPLBACKEND", "agg")  # matplotlib, where installed, draws PNGs only

    folder = hub.job_folder(user)  # the hub's job locations: the replicas work there
    started = time.monotonic()
    with shared_umask():
        nb = run_notebook(NOTEBOOK, folder)
    seconds = time.monotonic() - started
    work = folder / "astro-work"
    key = f"{user}/astro-demo"
    print(f"astro notebook ran in {seconds:.1f} s")

    # Nothing failed, and the token shows up nowhere.
    for c in nb.cells:
        if c.cell_type == "code":
            assert not [o for o in c.outputs if o["output_type"] == "error"], c.source
    assert token not in json.dumps(nbformat.from_dict(nb))

    assert f"{N_IMAGES} images in {work / 'sky'}" in stream(cell(nb, "generate"))
    assert "IoU on this field" in stream(cell(nb, "model"))
    package = stream(cell(nb, "package"))
    assert "packaged astro-segmenter:" in package
    assert "segment: ndarray -> ndarray (batchable)" in package
    assert "segment_folder: path -> json" in package
    assert f"pushed {user}/astro-segmenter:" in stream(cell(nb, "push"))
    deploy = cell(nb, "deploy")
    assert f"{key} is ready: 1/1 replicas" in stream(deploy)
    assert f"deployment {key}: ready" in result(deploy, "text/plain")

    # One image: a mask of the image's shape, the same as the notebook's own model gives.
    segment = cell(nb, "segment")
    out = stream(segment)
    assert f"mask from {key}: shape (1, 256, 256), dtype uint8" in out
    agreement = float(out.split("same class as in the notebook for ")[1].split("%")[0])
    assert agreement > 99.0, out
    assert any("image/png" in o.get("data", {}) for o in segment.outputs)

    # The folder: every image segmented by the batch job, with a progress bar.
    job = cell(nb, "job")
    assert f"succeeded, {N_IMAGES}/{N_IMAGES} files (0 failed)" in stream(job)
    assert any(WIDGET_VIEW in o.get("data", {}) for o in job.outputs)  # tqdm's bar

    # The results, as shown and as left on disk.
    results = cell(nb, "results")
    shown = stream(results)
    out_dir = work / "segmented"
    with (out_dir / "catalogue.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert f"{len(rows)} objects in " in shown
    assert {row["class"] for row in rows} <= {"point", "extended", "artefact"}
    assert "point" in {row["class"] for row in rows}
    assert all(row["ra"] and row["dec"] for row in rows)  # FITS inputs: sky positions
    assert "<table" in result(results, "text/html")
    assert any("image/png" in o.get("data", {}) for o in results.outputs)
    for index in range(N_IMAGES):
        name = f"sky_{index:04d}"
        assert (out_dir / name / f"{name}.png").is_file()
        with fits.open(out_dir / name / f"{name}.mask.fits") as masks:
            header = masks[0].header
            assert masks[0].data.shape == (256, 256)
            assert masks[0].data.dtype.name == "uint8"
        with fits.open(work / "sky" / f"{name}.fits") as images:
            source = images[0].header
        for keyword in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CDELT1", "CDELT2"):
            assert header[keyword] == source[keyword], keyword

    # The panel was built and displayed as a widget, set to the notebook's service.
    panel = cell(nb, "panel")
    assert any(WIDGET_VIEW in o.get("data", {}) for o in panel.outputs)

    assert f"undeployed {key}" in stream(cell(nb, "undeploy"))
    assert f"{user}/astro-demo" not in json.dumps(hub_deployments(hub, token))


def hub_deployments(hub: Hub, token: str) -> Any:
    """The user's deployments, as the service lists them."""
    response = httpx.get(
        f"{hub.service_url}/api/deployments",
        headers={"Authorization": f"token {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()
