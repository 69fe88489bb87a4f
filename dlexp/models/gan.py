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
    kernel 4, stride 2, padding 1, batch norm, ReLU / leaky ReLU 0.2, tanh out, no biases."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int | None = None,
        latent: int = 100,
        channels: list[int] = (512, 256, 128, 64),
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
        g: list[nn.Module] = [nn.Unflatten(1, (latent, 1, 1))]
        sizes = [latent, *channels]
        for i, (a, b) in enumerate(pairwise(sizes)):
            g += [
                nn.ConvTranspose2d(a, b, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(True),
            ]
        g += [nn.ConvTranspose2d(channels[-1], c, 4, 2, 1, bias=False), nn.Tanh()]
        self.generator = nn.Sequential(*g)
        d: list[nn.Module] = []
        sizes = [c, *reversed(channels)]
        for i, (a, b) in enumerate(pairwise(sizes)):
            d += [nn.Conv2d(a, b, 4, 2, 1, bias=False)]
            d += [nn.BatchNorm2d(b)] if i else []
            d += [nn.LeakyReLU(0.2, True)]
        d += [nn.Conv2d(channels[0], 1, 4, 1, 0, bias=False), nn.Flatten()]
        self.discriminator = nn.Sequential(*d)
        for m in self.modules():  # the DCGAN paper's initialisation
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
