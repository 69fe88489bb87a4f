"""A model of your own, trained by dlexp like its built-in ones.

The contract: a torch.nn.Module whose constructor takes `input_shape` (one sample's shape:
(4,) for Iris, (1, 28, 28) for MNIST) and `num_outputs` (the classes, or the regression
targets), both given by dlexp from the data, plus the keys of its model config (here `width`
and `blocks`). `forward` maps a batch to (batch, num_outputs) scores; the task (cross-entropy
for classification) does the rest.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """A feed-forward net whose hidden layers add to what they were given (x + f(x))."""

    def __init__(
        self, input_shape: tuple[int, ...], num_outputs: int, width: int = 32, blocks: int = 2
    ) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU())
            for _ in range(blocks)
        )
        self.out = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)
