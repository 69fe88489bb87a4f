"""Autoencoders: dense (optionally with tied weights) and convolutional, sized from the data.

Both name their encoder like the classifiers name their feature extractor (`body` for the
dense one, like MLP; `features` for the convolutional one, like CNN), so `model.init_from` can
start a classifier from a trained encoder by matching parameter names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.cnn import conv_block
from dlexp.models.layers import init_weights, make_activation, require_images
from dlexp.models.mlp import dense_stack
from dlexp.settings import Positive, Range, Test

Units = Annotated[int, Range(1, says="a whole number of units >= 1")]
# false, "latent" (the latent layer and its mirror share a matrix) or "all" (true: every layer)
Tied = Annotated[
    bool | str,
    Test(
        lambda v: isinstance(v, bool) or v in ("latent", "all"),
        "false, latent (the latent layer and its mirror share a matrix) or all (true)",
    ),
]


class DenseAutoencoder(nn.Module):
    """The course's 784-250-50-250-784 autoencoder: ReLU inside, sigmoid out.

    `tied="latent"` (DUDL_autoenc_tiedWeights) makes the decoder's first layer reuse the latent
    layer's matrix, transposed; `tied=true` ("all") ties every decoder layer to its mirror, so
    the decoder keeps only its biases.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        hidden: list[int] = (250,),
        latent: Units = 50,
        activation: str = "relu",
        tied: Tied = False,
        init: str = "default",
        init_std: Positive = 0.01,
        units: Units | None = None,
    ) -> None:
        super().__init__()
        require_images(input_shape, "autoencoder", "model=ann")
        if units is not None:  # one hidden layer each side (the course's units x bottleneck sweep)
            hidden = [units]
        self.input_shape = tuple(input_shape)
        size = math.prod(input_shape)
        self.body, _ = dense_stack(size, [*hidden, latent], activation)
        widths = [size, *hidden, latent]
        mirrors = list(zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True))
        # Decoder layer i mirrors encoder layer -1-i; tied ones borrow its matrix transposed.
        n_tied = {False: 0, "latent": 1}.get(tied, len(mirrors))
        self.tied_bias = nn.ParameterList(nn.Parameter(torch.zeros(b)) for _, b in mirrors[:n_tied])
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in mirrors[n_tied:])
        self.activation = make_activation(activation)
        init_weights(self, init, init_std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        encoders = [m for m in self.body if isinstance(m, nn.Linear)][::-1]
        for i, layer in enumerate(encoders):
            if i < len(self.tied_bias):
                z = F.linear(z, layer.weight.t(), self.tied_bias[i])
            else:
                z = self.decoder[i - len(self.tied_bias)](z)
            z = torch.sigmoid(z) if i == len(encoders) - 1 else self.activation(z)
        return z.view(-1, *self.input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class ConvAutoencoder(nn.Module):
    """Conv encoder blocks, then ConvTranspose2d layers that retrace them back to the input size.

    Course default (CIFAR-10): 3-16-32-64 channels, kernel 4, stride 2, padding 1, and back.
    Blocks may pool instead of striding (pool: max or avg), as the course's Gaussian one does.
    Each transposed layer's output_padding is chosen so that it restores the exact size its
    mirror image had (28 -> 14 -> 7 -> 3 comes back as 3 -> 7 -> 14 -> 28).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        blocks: list[Mapping] = (),
        activation: str = "relu",
        batch_norm: bool = False,
        init: str = "default",
        init_std: Positive = 0.01,
        output: str = "linear",
    ) -> None:
        super().__init__()
        require_images(input_shape, "cnn_autoencoder", "model=autoencoder")
        convs, ch, sizes = [], input_shape[0], [tuple(input_shape)]
        for spec in blocks:
            convs.append(conv_block(ch, spec, activation, batch_norm, 0.0))
            ch = spec["channels"]
        self.features = nn.Sequential(*convs)
        with torch.no_grad():
            x = torch.zeros(1, *input_shape)
            for block in self.features:
                x = block(x)
                sizes.append(tuple(x.shape[1:]))
        if min(sizes[-1][1:]) < 1:
            raise DlexpError(
                f"model.blocks shrink the {input_shape[1]}x{input_shape[2]} images to nothing."
            )
        layers: list[nn.Module] = []
        for i, spec in reversed(list(enumerate(blocks))):
            (c_out, *out_hw), (c_in, *in_hw) = sizes[i], sizes[i + 1]
            k, s, p = spec.get("kernel", 4), spec.get("stride", 2), spec.get("padding", 1)
            if spec.get("pool"):
                # A pooled block (the course's Gaussian autoencoder: conv, ReLU, max-pool) is
                # undone by a transposed convolution with the pool's stride and the kernel that
                # restores its size exactly (22 -> 45: kernel 3, stride 2).
                s = spec.get("pool_size", 2)
                k, p = out_hw[0] - (in_hw[0] - 1) * s, 0
                if out_hw[1] - (in_hw[1] - 1) * s != k or not s <= k <= 2 * s:
                    raise DlexpError(
                        f"model.blocks[{i}] pools {out_hw[0]}x{out_hw[1]} to {in_hw[0]}x{in_hw[1]}, "
                        "which one transposed convolution cannot undo; keep the conv's padding "
                        "at kernel // 2 (same size) and use square images."
                    )
            extra = tuple(o - ((n - 1) * s - 2 * p + k) for o, n in zip(out_hw, in_hw, strict=True))
            if not all(0 <= e < max(s, 1) for e in extra):
                raise DlexpError(
                    f"model.blocks[{i}] (kernel {k}, stride {s}, padding {p}) cannot be undone by a "
                    f"transposed convolution back to {out_hw[0]}x{out_hw[1]}; use kernel 4, stride 2, "
                    "padding 1."
                )
            layers.append(
                nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=p, output_padding=extra)
            )
            last = i == 0
            layers.append(
                make_activation(output, "model.output") if last else make_activation(activation)
            )
        self.decoder = nn.Sequential(*layers)
        init_weights(self, init, init_std)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(x))
