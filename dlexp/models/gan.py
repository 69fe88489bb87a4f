"""GANs: the course's MLP GAN and DCGAN. Each holds a `generator` and a `discriminator`, so one
checkpoint carries both; `sample(n)` draws images in [-1, 1]."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from dlexp.errors import DlexpError
from dlexp.models.layers import require_images


class GAN(nn.Module):
    latent: int
    generator: nn.Module
    discriminator: nn.Module

    def noise(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.latent, device=device, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = next(self.parameters()).device
        return self.generator(self.noise(n, device, generator))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)


class MLPGAN(GAN):
    """Course: generator 64-256-256-784 (leaky ReLU, tanh out), discriminator 784-256-256-1."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        latent: int = 64,
        hidden: list[int] = (256, 256),
        slope: float = 0.01,
    ) -> None:
        super().__init__()
        require_images(input_shape, "gan", "model=ann (a classifier)")
        self.latent, self.shape = latent, tuple(input_shape)
        size = math.prod(input_shape)

        def mlp(sizes: list[int], last: nn.Module | None) -> nn.Sequential:
            layers: list[nn.Module] = []
            for a, b in pairwise(sizes):
                layers += [nn.Linear(a, b), nn.LeakyReLU(slope)]
            layers.pop()
            return nn.Sequential(*layers, *([last] if last else []))

        self.generator = nn.Sequential(
            mlp([latent, *hidden, size], nn.Tanh()), nn.Unflatten(1, self.shape)
        )
        self.discriminator = nn.Sequential(nn.Flatten(), mlp([size, *reversed(hidden), 1], None))


class DCGAN(GAN):
    """DCGAN for 64x64 images: ConvTranspose2d 512-256-128-64-C and Conv2d C-64-128-256-512-1,
    kernel 4, stride 2, padding 1, batch norm, ReLU / leaky ReLU 0.2, tanh out, no biases; or
    other channels and strides (g_stride, d_stride, d_channels) that still make 64x64 images."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        latent: int = 100,
        channels: list[int] = (512, 256, 128, 64),
        g_stride: int | None = None,
        d_stride: int | None = None,
        d_channels: list[int] | None = None,
    ) -> None:
        super().__init__()
        require_images(input_shape, "dcgan", "model=ann (a classifier)")
        c, h, w = input_shape
        if (h, w) != (64, 64):
            raise DlexpError(
                f"model=dcgan makes 64x64 images, but the data are {h}x{w}; set data.resize=64 "
                "(the dcgan model config does, unless it was overridden)."
            )
        self.latent = latent

        # DCGAN's layout (kernel 4; stride 2, padding 1 but the first/last layer), or, with
        # g_stride / d_stride, every layer kernel 4 with that stride and no padding
        # (DUDL_GAN_codeChallengeGaus: strides 4 and 3).
        def g_layer(a: int, b: int, i: int, last: bool) -> nn.ConvTranspose2d:
            if g_stride:
                return nn.ConvTranspose2d(a, b, 4, g_stride, 0, bias=False)
            first = i == 0 and not last
            return nn.ConvTranspose2d(a, b, 4, 1 if first else 2, 0 if first else 1, bias=False)

        g: list[nn.Module] = [nn.Unflatten(1, (latent, 1, 1))]
        sizes = [latent, *channels]
        for i, (a, b) in enumerate(pairwise(sizes)):
            g += [g_layer(a, b, i, False), nn.BatchNorm2d(b), nn.ReLU(True)]
        g += [g_layer(channels[-1], c, len(channels), True), nn.Tanh()]
        self.generator = nn.Sequential(*g)
        d: list[nn.Module] = []
        d_channels = list(d_channels or reversed(channels))
        for i, (a, b) in enumerate(pairwise([c, *d_channels])):
            d += [nn.Conv2d(a, b, 4, d_stride or 2, 0 if d_stride else 1, bias=False)]
            d += [nn.BatchNorm2d(b)] if i else []
            d += [nn.LeakyReLU(0.2, True)]
        d += [nn.Conv2d(d_channels[-1], 1, 4, d_stride or 1, 0, bias=False), nn.Flatten()]
        self.discriminator = nn.Sequential(*d)
        self.eval()  # (a dry run that leaves the batch-norm statistics alone)
        with torch.no_grad():  # the layers must make 64x64 images and judge them with one number
            made = self.generator(torch.zeros(1, latent)).shape[1:]
            judged = self.discriminator(torch.zeros(1, c, h, w)).shape[1:]
        self.train()
        if tuple(made) != (c, h, w) or tuple(judged) != (1,):
            raise DlexpError(
                f"model=dcgan with channels={list(channels)}, d_channels={d_channels}, "
                f"g_stride={g_stride}, d_stride={d_stride} makes {tuple(made)} images and judges "
                f"with {tuple(judged)} outputs; it must make {(c, h, w)} and judge with one. "
                "Use DCGAN's four layers (g_stride and d_stride null), or three layers with "
                "g_stride=4 d_stride=3."
            )
        for m in self.modules():  # the DCGAN paper's initialisation
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
