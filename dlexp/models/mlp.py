"""Feed-forward net: a body of Linear -> [BatchNorm] -> activation -> [Dropout] layers, then a Linear head."""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from dlexp.models.layers import init_weights, make_activation
from dlexp.settings import Positive, Probability, Range


class MLP(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden: list[int] = (64, 64),
        activation: str = "relu",
        dropout: Probability = 0.0,
        batch_norm: bool = False,
        init: str = "default",
        init_std: Positive = 0.01,
        width: Annotated[int, Range(1, says="a whole number of units >= 1")] | None = None,
        depth: Annotated[int, Range(1, says="a whole number of layers >= 1")] | None = None,
    ) -> None:
        super().__init__()
        if width is not None or depth is not None:  # the course's breadth x depth sweeps
            hidden = [width or 64] * (1 if depth is None else depth)
        self.body, width = dense_stack(
            math.prod(input_shape), hidden, activation, batch_norm, dropout
        )
        self.head = nn.Linear(width, num_outputs)
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    @staticmethod
    def why_not_stacked(dropout: float = 0.0, batch_norm: bool = False, **settings) -> str | None:
        """Jobs of MLPs with the same sizes train as one stacked model (dlexp.stacked: Linear
        layers and element-wise activations) unless a layer is random or keeps statistics."""
        if dropout:
            return "dropout masks are random per step"
        if batch_norm:
            return "batch norm keeps running statistics"
        return None


def dense_stack(
    width: int, hidden: list[int], activation: str, batch_norm: bool = False, dropout: float = 0.0
) -> tuple[nn.Sequential, int]:
    """Flatten, then Linear -> [BatchNorm] -> activation -> [Dropout] per hidden size.

    The MLP's body and the dense autoencoder's encoder are both this stack, so their
    parameter names match and a classifier can start from a trained encoder (init_from).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(make_activation(activation))
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    return nn.Sequential(*layers), width
