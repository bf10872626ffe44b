"""Fixtures for the model_runtime tests: notebooks, torch models, stores (local and S3), and
scikit-learn installed aside."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from model_runtime import BuiltBundle, LocalStore, S3Store, Store, build_bundle
from model_runtime.testing.s3server import S3Server
from tests.extra_packages import SKLEARN, extra_site

from .notebook import Notebook

CNN_CELLS = [
    """
import numpy as np
import torch
from torch import nn
from model_runtime import Model, Service
torch.manual_seed(0)
""",
    """
class SmallCNN(nn.Module):
    def __init__(self, channels: int = 4, classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(channels * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.head(self.pool(x).flatten(1))

net = SmallCNN().eval()
SCALE = 2.0

def normalise(x):
    return x / SCALE
""",
    """
svc = Service("cnn", models={"net": net}, description="a small CNN", labels={"team": "astro"})

@svc.api(input="ndarray", output="ndarray", batchable=True, max_batch_size=16)
def predict(x: np.ndarray) -> np.ndarray:
    \"\"\"Class scores for a batch of 1x16x16 images.\"\"\"
    with torch.no_grad():
        return net(torch.from_numpy(normalise(x))).numpy()
""",
]


@pytest.fixture
def notebook() -> Iterator[Notebook]:
    nb = Notebook()
    yield nb
    nb.shell.reset(new_session=True)


@pytest.fixture
def cnn_notebook(notebook: Notebook) -> Notebook:
    """A notebook that defined a small CNN service, as a data scientist would."""
    for cell in CNN_CELLS:
        notebook.run(cell)
    return notebook


@pytest.fixture(scope="session")
def sklearn_site() -> Path:
    """A directory with scikit-learn and skops, for ``PYTHONPATH`` (see tests/extra_packages)."""
    return extra_site(SKLEARN)


@pytest.fixture
def service_dir(tmp_path: Path) -> Path:
    """A hand-written service directory with a sibling module and a weights file."""
    directory = tmp_path / "echo-service"
    directory.mkdir()
    (directory / "helpers.py").write_text("def double(x):\n    return [2 * v for v in x]\n")
    (directory / "weights.json").write_text('{"offset": 1}\n')
    (directory / "service.py").write_text(
        "import json\n"
        "from pathlib import Path\n"
        "from helpers import double\n"
        "from model_runtime import Service\n"
        "OFFSET = json.loads((Path(__file__).parent / 'weights.json').read_text())['offset']\n"
        "service = Service('echo', description='doubles and shifts')\n"
        "@service.api(input='json', output='json')\n"
        "def shift(values: list) -> list:\n"
        "    return [v + OFFSET for v in double(values)]\n"
    )
    (directory / "requirements.txt").write_text("# extras\nrequests>=2\n")
    return directory


# -- stores -------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    """Where S3 tests send traffic: the SeaweedFS of this session, or a real MinIO."""

    endpoint: str
    access_key: str
    secret_key: str
    secure: bool
    external: bool

    def store(self, bucket: str | None = None, **kwargs: Any) -> S3Store:
        return S3Store(
            self.endpoint,
            bucket or f"t-{uuid.uuid4().hex[:12]}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            **kwargs,
        )


def _external_s3() -> S3Target | None:
    endpoint = os.environ.get("HUBSERVE_S3_ENDPOINT")
    if not endpoint:
        return None
    return S3Target(
        endpoint=endpoint.removeprefix("http://").removeprefix("https://"),
        access_key=os.environ.get("HUBSERVE_S3_ACCESS_KEY", ""),
        secret_key=os.environ.get("HUBSERVE_S3_SECRET_KEY", ""),
        secure=endpoint.startswith("https://")
        or os.environ.get("HUBSERVE_S3_SECURE", "").lower() in ("1", "true", "yes"),
        external=True,
    )


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Target]:
    """A real, signature-checking S3 server for the whole session.

    ``HUBSERVE_S3_ENDPOINT``/``_ACCESS_KEY``/``_SECRET_KEY`` point the tests at a real MinIO
    instead; otherwise SeaweedFS (``weed mini``) is started on loopback.
    """
    external = _external_s3()
    if external is not None:
        yield external
        return
    with S3Server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield S3Target(server.endpoint, server.access_key, server.secret_key, False, False)


@pytest.fixture
def private_s3(tmp_path: Path) -> Iterator[S3Server]:
    """A SeaweedFS of this test alone, which the test may kill and restart."""
    with S3Server(tmp_path / "seaweedfs") as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store test runs on both backends: they must behave the same."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    target: S3Target = request.getfixturevalue("s3")
    return target.store()


def make_bundle(tmp_path: Path, name: str = "adder", offset: int = 1, size: int = 0) -> BuiltBundle:
    """Package a tiny service from a .py file; ``size`` adds incompressible weights."""
    source = tmp_path / "sources" / f"{name.replace('-', '_')}_{offset}_{size}.py"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(
        "import numpy as np\n"
        "from model_runtime import Service\n"
        f"OFFSET = {offset}\n"
        f"WEIGHTS = np.random.default_rng({offset}).random({size // 8})\n"
        f"service = Service({name!r})\n"
        "@service.api\n"
        "def add(v: int) -> int:\n"
        "    return v + OFFSET + int(WEIGHTS.size < 0)\n"
    )
    return build_bundle(f"{source}:service", output_dir=tmp_path / "builds")
