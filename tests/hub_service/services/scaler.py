"""A tiny torch service for the deployment tests: multiplies by a factor learnt in its weights.

``FACTOR`` is rewritten by the tests to make versions that answer differently.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_runtime import Service, kinds

FACTOR = 2.0


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


net = Scale()
with torch.no_grad():
    net.linear.weight.fill_(FACTOR)
service = Service("scaler", models={"net": net}, description="x -> FACTOR * x")


@service.api(input=kinds.ndarray("float32", (-1, 1)), output="ndarray", batchable=True)
def scale(x: np.ndarray) -> np.ndarray:
    """Each row times the factor."""
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()
