"""What loading a bundle will import, known without loading it.

A replica's start is mostly imports: its service module's, its artifact loader's (``import
skops.io`` alone walks every scikit-learn estimator, a second here) and the classes its
artifacts hold. A launcher that imports them ahead of time (the zygote's warm launcher of an
environment, see :mod:`model_runtime.runtime._zygote`) makes every later replica start with
them done. Only names of modules are read here; the bundle's own code never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ._artifact_scan import artifact_references
from ._load import read_manifest

#: The module each artifact format's loader imports.
_LOADERS = {
    "skops": "skops.io",
    "torchscript": "torch",
    "export": "torch",
    "safetensors": "safetensors.torch",
    "npy": "numpy",
}


def load_time_imports(root: Path) -> list[str]:
    """Modules (full dotted names) that loading the unpacked bundle at ``root`` imports:
    its service file's absolute imports, its artifact loaders and what its artifacts hold."""
    manifest = read_manifest(root)
    found = {_LOADERS[m.format] for m in manifest.models if m.format in _LOADERS}
    for model in manifest.models:
        found |= artifact_references(root / model.path, model.format)
    try:
        tree = ast.parse((root / manifest.service_file).read_text())
    except (OSError, SyntaxError, ValueError):
        tree = ast.Module(body=[], type_ignores=[])
    for node in tree.body:  # module level only: what runs when the service is loaded
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return sorted(found)
