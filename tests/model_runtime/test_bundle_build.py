"""Packaging services into bundles: from notebooks, files, modules and directories."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from model_runtime import (
    ArtifactError,
    BundleError,
    PackagingError,
    Service,
    api,
    build_bundle,
    load_bundle,
)
from model_runtime.bundle import read_archive_manifest, verify_archive
from model_runtime.naming import VERSION_RE

from .notebook import Notebook


def test_notebook_service_round_trip_is_bit_exact(cnn_notebook: Notebook, tmp_path: Path) -> None:
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path)

    assert built.archive == tmp_path / f"cnn-{built.manifest.version}.tar.gz"
    loaded = load_bundle(built.archive)
    x = np.random.default_rng(0).random((5, 1, 16, 16), dtype=np.float32)
    expected = cnn_notebook["predict"](x)
    assert np.array_equal(loaded.call("predict", x), expected)
    assert loaded.manifest is not None and loaded.manifest.version == built.manifest.version


def test_manifest_records_what_the_runtime_needs(cnn_notebook: Notebook, tmp_path: Path) -> None:
    manifest = build_bundle(cnn_notebook["svc"], output_dir=tmp_path).manifest

    assert VERSION_RE.match(manifest.version)
    assert manifest.framework == "pytorch"
    assert manifest.description == "a small CNN"
    assert manifest.labels == {"team": "astro"}
    assert manifest.environment["python"].count(".") == 2
    assert manifest.environment["torch"].startswith("2.13.0")
    assert "torch==2.13.0" in manifest.requirements
    assert any(r.startswith("numpy==") for r in manifest.requirements)
    (entry,) = manifest.apis
    assert entry.name == "predict"
    assert entry.batchable and entry.batching.max_batch_size == 16
    assert entry.input == {"kind": "ndarray"} and entry.output == {"kind": "ndarray"}
    assert entry.signature == "predict(x: numpy.ndarray) -> numpy.ndarray"
    assert entry.doc == "Class scores for a batch of 1x16x16 images."
    (model,) = manifest.models
    # Constructor arguments are all defaults: the weights travel as safetensors.
    assert (model.name, model.format, model.path) == (
        "net",
        "safetensors",
        "artifacts/net.safetensors",
    )
    assert model.model_extra is not None and model.model_extra["init_kwargs"] == {}
    assert set(manifest.files) == {"service.py", "requirements.txt", "artifacts/net.safetensors"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in manifest.files.values())


def test_generated_service_module_is_readable_python(
    cnn_notebook: Notebook, tmp_path: Path
) -> None:
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path)
    with tarfile.open(built.archive) as tar:
        member = tar.extractfile("service.py")
        assert member is not None
        source = member.read().decode()

    compile(source, "service.py", "exec")
    assert "import numpy as np" in source
    assert "from torch import nn" in source or "import torch.nn as nn" in source
    assert "SCALE = 2.0" in source
    assert "def normalise(x):" in source
    assert "@svc.api" not in source  # decorators are re-applied from the manifest
    assert "class SmallCNN(nn.Module):" in source
    assert "net = load_model('net', __file__, cls=SmallCNN)" in source


def test_archives_put_the_manifest_first_and_verify(cnn_notebook: Notebook, tmp_path: Path) -> None:
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path)
    with tarfile.open(built.archive) as tar:
        names = tar.getnames()
    assert names[0] == "bundle.json"
    assert read_archive_manifest(built.archive) == built.manifest
    assert verify_archive(built.archive) == built.manifest


def test_versions_differ_with_content_and_sort_by_time(
    cnn_notebook: Notebook, tmp_path: Path
) -> None:
    first = build_bundle(cnn_notebook["svc"], output_dir=tmp_path).manifest.version
    cnn_notebook.run("SCALE = 3.0")
    second = build_bundle(cnn_notebook["svc"], output_dir=tmp_path).manifest.version
    third = build_bundle(cnn_notebook["svc"], output_dir=tmp_path).manifest.version

    assert first < second < third
    assert first.split("-")[1] != second.split("-")[1]
    assert second.split("-")[1] == third.split("-")[1]  # same content, same hash


def test_safetensors_module_is_rebuilt_from_its_class(
    cnn_notebook: Notebook, tmp_path: Path
) -> None:
    cnn_notebook.run(
        "svc2 = Service('cnn-st', models={'net': Model(net, format='safetensors',"
        " init_kwargs={'channels': 4, 'classes': 3})})\n"
        "svc2.add_api(predict, batchable=True)"
    )
    built = build_bundle(cnn_notebook["svc2"], output_dir=tmp_path)

    (model,) = built.manifest.models
    assert model.format == "safetensors" and model.path == "artifacts/net.safetensors"
    assert model.model_extra is not None and model.model_extra["init_kwargs"] == {
        "channels": 4,
        "classes": 3,
    }
    loaded = load_bundle(built.archive)
    x = np.ones((2, 1, 16, 16), dtype=np.float32)
    assert np.array_equal(loaded.call("predict", x), cnn_notebook["predict"](x))
    source = (loaded.bundle_dir / "service.py").read_text()  # type: ignore[operator]
    assert "class SmallCNN(nn.Module):" in source
    assert "load_model('net', __file__, cls=SmallCNN)" in source


def test_auto_format_reads_constructor_arguments_back(notebook: Notebook, tmp_path: Path) -> None:
    notebook.run(
        "import torch\nfrom torch import nn\nfrom model_runtime import Service\n"
        "class Mlp(nn.Module):\n"
        "    def __init__(self, width, depth=2):\n"
        "        super().__init__()\n"
        "        self.width = width\n"
        "        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])\n"
        "    def forward(self, x):\n        return self.layers(x)\n"
        "class Opaque(nn.Module):\n"
        "    def __init__(self, n):\n        super().__init__()\n"
        "        self.lin = nn.Linear(n, 1)\n"
        "    def forward(self, x):\n        return self.lin(x)\n"
        "mlp, opaque = Mlp(8, depth=3), Opaque(8)\n"
        "svc = Service('pair')\n"
        "@svc.api(input='tensor', output='tensor')\n"
        "def both(x):\n    with torch.no_grad():\n        return opaque(mlp(x))\n"
        "state = torch.random.get_rng_state()\n"
    )
    built = build_bundle(notebook["svc"], output_dir=tmp_path)

    formats = {
        m.name: (m.format, (m.model_extra or {}).get("init_kwargs")) for m in built.manifest.models
    }
    # depth is not stored on the module, so only its default could be assumed: shapes disagree.
    assert formats == {"mlp": ("torchscript", None), "opaque": ("torchscript", None)}
    # The RNG of the notebook is untouched by the shape check (it runs on the meta device).
    assert torch.equal(notebook["state"], torch.random.get_rng_state())
    x = torch.ones(2, 8)
    assert torch.equal(load_bundle(built.archive).call("both", x), notebook["both"](x))

    notebook.run(
        "mlp2 = Mlp(8)\nsvc2 = Service('single', models={'mlp': mlp2})\n"
        "@svc2.api\ndef one(x):\n    return mlp2(x)\n"
    )
    (entry,) = build_bundle(notebook["svc2"], output_dir=tmp_path).manifest.models
    assert (entry.format, (entry.model_extra or {}).get("init_kwargs")) == (
        "safetensors",
        {"width": 8},
    )


def test_torch_export_format(cnn_notebook: Notebook, tmp_path: Path) -> None:
    cnn_notebook.run(
        "svc3 = Service('cnn-export', models={'net': Model(net, format='export',"
        " example_inputs=(torch.zeros(2, 1, 16, 16),))})\n"
        "svc3.add_api(predict)"
    )
    built = build_bundle(cnn_notebook["svc3"], output_dir=tmp_path)

    assert built.manifest.models[0].path == "artifacts/net.pt2"
    loaded = load_bundle(built.archive)
    x = np.full((2, 1, 16, 16), 0.5, dtype=np.float32)
    np.testing.assert_allclose(loaded.call("predict", x), cnn_notebook["predict"](x), rtol=1e-6)


def test_globals_that_are_tensors_or_arrays_become_artifacts(
    notebook: Notebook, tmp_path: Path
) -> None:
    notebook.run(
        "import numpy as np\nfrom model_runtime import Service\n"
        "MEAN = np.array([1.0, 2.0, 3.0])\n"
        "svc = Service('centre')\n"
        "@svc.api(input='ndarray', output='ndarray')\n"
        "def centre(x):\n    return x - MEAN\n"
    )
    built = build_bundle(notebook["svc"], output_dir=tmp_path)

    assert [(m.name, m.format) for m in built.manifest.models] == [("MEAN", "npy")]
    loaded = load_bundle(built.archive)
    assert loaded.call("centre", np.array([1.0, 2.0, 3.0])).tolist() == [0.0, 0.0, 0.0]


def test_imported_helpers_become_imports(notebook: Notebook, tmp_path: Path) -> None:
    notebook.run(
        "from math import sqrt\nfrom os import path as osp\nfrom model_runtime import Service\n"
        "svc = Service('roots')\n"
        "@svc.api\ndef roots(values: list) -> list:\n"
        "    return [sqrt(v) for v in values if osp.sep]\n"
    )
    built = build_bundle(notebook["svc"], output_dir=tmp_path)
    loaded = load_bundle(built.archive)

    assert loaded.call("roots", [4, 9]) == [2.0, 3.0]
    source = (loaded.bundle_dir / "service.py").read_text()  # type: ignore[operator]
    assert "from math import sqrt" in source
    assert "import posixpath as osp" in source


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("svc.add_api(lambda x: x, name='f')", "lambdas cannot be packaged"),
        (
            "def outer():\n    k = 2\n    def inner(x):\n        return x * k\n    return inner\n"
            "svc.add_api(outer(), name='f')",
            "closure over k",
        ),
        (
            "handle = open(__import__('os').devnull)\n"
            "def f(x):\n    return handle.read()\nsvc.add_api(f)",
            "uses the global 'handle'",
        ),
        (
            "def f(x):\n    return undefined_thing(x)\nsvc.add_api(f)",
            "'undefined_thing', which is not defined",
        ),
    ],
)
def test_code_that_cannot_be_rebuilt_is_refused_clearly(
    notebook: Notebook, tmp_path: Path, cell: str, message: str
) -> None:
    notebook.run("from model_runtime import Service\nsvc = Service('bad')")
    notebook.run(cell)
    with pytest.raises(PackagingError, match=message):
        build_bundle(notebook["svc"], output_dir=tmp_path)
    assert not list(tmp_path.glob("*.tar.gz"))


def test_service_without_apis_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="no API functions"):
        build_bundle(Service("empty"), output_dir=tmp_path)


def test_pickle_needs_trust_on_both_ends(notebook: Notebook, tmp_path: Path) -> None:
    notebook.run(
        "from collections import Counter\nfrom model_runtime import Service\n"
        "counts = Counter('hubserve')\n"
        "svc = Service('counts', models={'counts': counts})\n"
        "@svc.api\ndef top(n: int) -> list:\n    return counts.most_common(n)\n"
    )
    with pytest.raises(ArtifactError, match="trust_pickle=True"):
        build_bundle(notebook["svc"], output_dir=tmp_path)

    built = build_bundle(notebook["svc"], output_dir=tmp_path, trust_pickle=True)
    with pytest.raises(BundleError, match="is a pickle"):
        load_bundle(built.archive)
    assert load_bundle(built.archive, trust_pickle=True).call("top", 1) == [("e", 2)]


def test_directory_service_keeps_its_files(service_dir: Path, tmp_path: Path) -> None:
    built = build_bundle(service_dir, output_dir=tmp_path)
    manifest = built.manifest

    assert manifest.name == "echo"
    assert manifest.source == "directory"
    assert manifest.entrypoint == "service.py:service"
    assert set(manifest.files) == {"service.py", "helpers.py", "weights.json", "requirements.txt"}
    assert "requests>=2" in manifest.requirements
    loaded = load_bundle(built.archive)
    assert loaded.call("shift", [1, 2]) == [3, 5]


def test_directory_with_only_api_functions(tmp_path: Path) -> None:
    directory = tmp_path / "plain_funcs"
    directory.mkdir()
    (directory / "service.py").write_text(
        "from model_runtime import api\n@api\ndef hello(name: str) -> str:\n"
        "    return 'hello ' + name\n"
    )
    built = build_bundle(directory, output_dir=tmp_path / "out")

    assert built.manifest.name == "plain-funcs"
    assert built.manifest.apis[0].input == {"kind": "text"}
    assert load_bundle(built.archive).call("hello", "hub") == "hello hub"


def test_python_file_and_module_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_dir = tmp_path / "src"
    module_dir.mkdir()
    (module_dir / "mysvc.py").write_text(
        "from model_runtime import Service\n"
        "service = Service('adder')\n"
        "def _inc(v):\n    return v + 1\n"
        "@service.api\ndef add_one(v: int) -> int:\n    return _inc(v)\n"
    )
    from_file = build_bundle(f"{module_dir / 'mysvc.py'}:service", output_dir=tmp_path / "a")
    monkeypatch.syspath_prepend(str(module_dir))
    from_module = build_bundle("mysvc:service", output_dir=tmp_path / "b")

    for built in (from_file, from_module):
        assert built.manifest.source == "object"
        assert load_bundle(built.archive).call("add_one", 41) == 42


def test_bad_sources_are_reported(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="neither a service directory"):
        build_bundle(str(tmp_path / "missing"), output_dir=tmp_path)
    with pytest.raises(PackagingError, match=r"has no service\.py"):
        build_bundle(tmp_path, output_dir=tmp_path)
    with pytest.raises(PackagingError, match="cannot import"):
        build_bundle("no_such_module_xyz:svc", output_dir=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "service.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PackagingError, match="failed to run: RuntimeError: boom"):
        build_bundle(broken, output_dir=tmp_path)


def test_tampered_bundle_directory_is_refused(cnn_notebook: Notebook, tmp_path: Path) -> None:
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path)
    loaded = load_bundle(built.archive, cache_dir=tmp_path / "cache")
    assert loaded.bundle_dir is not None
    service_py = loaded.bundle_dir / "service.py"
    service_py.write_text(service_py.read_text() + "\nimport os  # injected\n")

    with pytest.raises(BundleError, match=r"checksum mismatch for 'service\.py'"):
        load_bundle(loaded.bundle_dir)


def test_api_marks_and_kind_inference() -> None:
    @api(batchable=True, max_batch_size=8)
    def scores(x: np.ndarray) -> np.ndarray:
        return x

    def as_tensor(x: torch.Tensor) -> torch.Tensor:
        return x

    svc = Service("kinds", apis=[scores])
    spec = svc.add_api(as_tensor, name="tensor_api")

    assert svc.apis["scores"].batching.max_batch_size == 8
    assert (svc.apis["scores"].input.kind, svc.apis["scores"].output.kind) == ("ndarray", "ndarray")
    assert (spec.input.kind, spec.output.kind) == ("tensor", "tensor")
    with pytest.raises(PackagingError, match="invalid API name"):
        svc.add_api(as_tensor, name="_private")
    with pytest.raises(PackagingError, match="needs an ndarray"):
        svc.add_api(as_tensor, name="files", input="file", batchable=True)
    with pytest.raises(KeyError, match="has no API 'nope'"):
        svc.call("nope")


def test_manifest_is_json_with_sorted_keys(cnn_notebook: Notebook, tmp_path: Path) -> None:
    built = build_bundle(cnn_notebook["svc"], output_dir=tmp_path)
    raw = json.loads(built.manifest.to_json_bytes())
    assert list(raw) == sorted(raw)
    assert raw["format_version"] == 1
