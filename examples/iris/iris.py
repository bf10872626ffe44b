"""A first hubserve service: a small PyTorch classifier for iris-like flowers.

The data are synthetic (three Gaussian clusters in four dimensions), so the example trains in
well under a second without downloading anything. Package and push it with::

    hubserve push examples/iris/iris.py:service
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_runtime import InvalidInput, Service, kinds

CLASSES = ["setosa", "versicolor", "virginica"]


class IrisNet(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def train(seed: int = 0, steps: int = 200) -> IrisNet:
    rng = np.random.default_rng(seed)
    centres = np.array([[5.0, 3.4, 1.5, 0.2], [5.9, 2.8, 4.3, 1.3], [6.6, 3.0, 5.6, 2.0]])
    labels = rng.integers(0, 3, 600)
    features = centres[labels] + rng.normal(0, 0.3, (600, 4))
    torch.manual_seed(seed)
    net = IrisNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels)
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval()


net = train()
service = Service(
    "iris",
    models={"net": net},
    description="Iris species from sepal and petal sizes (synthetic training data).",
    labels={"example": "quickstart"},
)


@service.api(input=kinds.ndarray("float32", (-1, 4)), output="ndarray", batchable=True)
def predict(x: np.ndarray) -> np.ndarray:
    """Class probabilities, one row per flower."""
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()


@service.api(input="json", output="json")
def classify(rows: list) -> list:
    """Species names for rows of [sepal length, sepal width, petal length, petal width]."""
    expected = "a list of rows of 4 numbers [sepal length, sepal width, petal length, petal width]"
    try:
        with np.errstate(over="ignore"):
            features = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput(f"expected {expected}") from None
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != 4:
        raise InvalidInput(f"expected {expected}; got shape {features.shape}")
    if not np.isfinite(features).all():
        raise InvalidInput("sizes must be finite float32 numbers")
    probabilities = predict(features)
    return [CLASSES[i] for i in probabilities.argmax(axis=1)]
