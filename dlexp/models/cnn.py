"""Convolutional net: conv blocks from a list, then a fully connected head sized by a dry run."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.layers import init_weights, make_activation, require_images
from dlexp.models.mlp import dense_stack
from dlexp.settings import Positive, Probability


def conv_block(
    in_ch: int, spec: Mapping, activation: str, batch_norm: bool, dropout: float
) -> nn.Sequential:
    """Conv2d -> [max/avg pool] -> [BatchNorm2d] -> activation -> [Dropout2d].

    Pooling before the activation is the course's usual order (relu(max_pool(conv(x)))); it is
    also cheaper, since the activation and batch norm then see a quarter of the values. With
    `pool_last: true` the block pools after the activation, as the Gaussian notebooks'
    nn.Sequential (conv, ReLU, AvgPool2d): for average pooling the two orders differ.
    """
    out_ch = spec["channels"]
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_ch,
            out_ch,
            spec.get("kernel", 3),
            stride=spec.get("stride", 1),
            padding=spec.get("padding", 0),
        )
    ]
    pool = spec.get("pool")
    if pool not in (None, "max", "avg"):
        raise DlexpError(f"model.blocks: pool={pool!r} is not known; use max, avg or null.")
    pooling = []
    if pool:
        size = spec.get("pool_size", 2)
        pooling.append(nn.MaxPool2d(size) if pool == "max" else nn.AvgPool2d(size))
    last = bool(spec.get("pool_last", False))
    if not last:
        layers += pooling
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_ch))
    layers.append(make_activation(activation))
    if last:
        layers += pooling
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        blocks: list[Mapping] = (),
        head: list[int] = (50,),
        activation: str = "relu",
        head_activation: str | None = None,
        batch_norm: bool = False,
        head_batch_norm: bool = False,
        dropout: Probability = 0.0,
        conv_dropout: Probability = 0.0,
        init: str = "default",
        init_std: Positive = 0.01,
    ) -> None:
        super().__init__()
        require_images(input_shape, "cnn", "model=ann")
        convs, ch = [], input_shape[0]
        for spec in blocks:
            convs.append(conv_block(ch, spec, activation, batch_norm, conv_dropout))
            ch = spec["channels"]
        self.features = nn.Sequential(*convs)
        # Size the head by running one dummy image through the conv blocks.
        with torch.no_grad():
            try:
                flat = self.features(torch.zeros(1, *input_shape)).numel()
            except RuntimeError as err:
                raise DlexpError(
                    f"model.blocks shrink the {input_shape[1]}x{input_shape[2]} input to nothing "
                    f"({err}). Use fewer blocks, smaller kernels or pools, or more padding."
                ) from err
        # The course's CNNs normalise after the convs only (EMNIST, the CIFAR milestone).
        hidden, width = dense_stack(
            flat, list(head), head_activation or activation, head_batch_norm, dropout
        )
        self.head = nn.Sequential(*hidden, nn.Linear(width, num_outputs))
        init_weights(self, init, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each conv block's output (N, channels, h, w) for images x: what the course draws as
        feature maps (DUDL_CNN_GaussClassFeatureMaps; task.feature_maps shows them)."""
        maps = []
        for block in self.features:
            x = block(x)
            maps.append(x)
        return maps
