"""Tensors, metadata and batching shared by every data set (loaders build them; dlexp.data.load
splits them)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F


@dataclass
class DataMeta:
    name: str
    kind: str  # "tabular" or "image"
    input_shape: tuple[int, ...]  # (features,) or (channels, height, width)
    num_classes: int  # 0 for regression
    class_names: list[str] = field(default_factory=list)
    # Per-channel statistics of the training images in [0, 1] units (images only).
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    class_weights: tuple[float, ...] = ()  # data.balance=class_weight: the loss's class weights
    # Targets per sample: regression values (findGauss: x, y and width), or a text's next
    # characters when every step of a window is scored (data.source.every_step).
    num_targets: int = 1
    series: torch.Tensor | None = None  # sequences: the whole series or text, for generation


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W) images or float32 (N, F) features
    y: torch.Tensor  # int64 class indices or float32 (N, 1) targets

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> Split:
        return Split(self.x[idx], self.y[idx])

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True))


@dataclass
class Raw:
    """What a loader returns: the data set's own train (and test, if it has one) split."""

    train: Split
    test: Split | None
    meta: DataMeta


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    meta: DataMeta
    augment: dict = field(default_factory=dict)
    normalize: str = "standard"  # images: one of NORMALIZE (see scaling)
    _norm: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def to(self, device: torch.device) -> Data:
        return replace(
            self,
            train=self.train.to(device),
            val=self.val.to(device),
            test=self.test.to(device),
            _norm=None,
        )

    def batches(
        self,
        split: Split,
        batch_size: int,
        generator: torch.Generator | None = None,
        train: bool = False,
        start: int = 0,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ready-to-use (x, y) batches from sample `start` on; shuffled with a generator.

        The permutation is drawn on the CPU from `generator` so that the data order depends on
        the seed and the epoch alone (and a resumed run sees the same order). `shard=(rank,
        world)` keeps one process's share of that order.
        """
        n = len(split)
        if generator is None and start == 0 and 0 < n <= batch_size:  # the whole split, unsliced
            yield self.prepare(split.x, train), split.y
            return
        order = torch.randperm(n, generator=generator) if generator is not None else None
        if order is not None:
            rank, world = shard  # each process of a distributed run takes every world-th sample
            order = order[rank::world].to(split.x.device)
            n = len(order)
        for i in range(start, n, batch_size):
            if order is None:
                x, y = split.x[i : i + batch_size], split.y[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                x, y = split.x[idx], split.y[idx]
            yield self.prepare(x, train), y

    def prepare(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """uint8 images -> normalised float (plus augmentation when training); features, and
        float images (generated ones, in the model's units already), pass."""
        if self.meta.kind != "image" or x.is_floating_point():
            noise = self.augment.get("noise") if train else 0
            return x + noise * torch.randn_like(x) if noise else x  # (tabular noise)
        shift, scale = self._normaliser(x.device)
        x = torch.addcmul(shift, x, scale)  # (x / 255 - mean) / std in one fused op
        if train and self.augment:
            x = augment(x, **self.augment)
        return x

    def _normaliser(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._norm is None or self._norm[0].device != device:
            self._norm = scaling(self.normalize, self.meta, device)
        return self._norm


NORMALIZE = ("standard", "unit", "symmetric", "raw")


def scaling(normalize: str, meta: DataMeta, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale) that map uint8 pixels x to x * scale + shift: standard ((x/255 - mean) /
    std, the training images' statistics), unit ([0, 1]), symmetric ([-1, 1]) or raw (0..255,
    as stored: the course's unnormalised MNIST)."""
    if normalize == "standard":
        mean = torch.tensor(meta.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(meta.std, device=device).view(1, -1, 1, 1)
    else:
        centre, spread = {"unit": (0.0, 1.0), "symmetric": (0.5, 0.5), "raw": (0.0, 1 / 255)}[normalize]
        mean = torch.full((1, 1, 1, 1), centre, device=device)
        std = torch.full((1, 1, 1, 1), spread, device=device)
    return -mean / std, 1.0 / (255.0 * std)


def augment(
    x: torch.Tensor,
    hflip: bool = False,
    shift: int = 0,
    noise: float = 0.0,
    rotate: float = 0.0,
    scale: float = 0.0,
    color: float = 0.0,
) -> torch.Tensor:
    """Batch-wise augmentation on the device, each image its own draw: random flips, shifts
    (zero padded), rotations by up to `rotate` degrees and zooms by up to `scale` (one affine
    resampling, as torchvision's RandomAffine), brightness and contrast changes by up to
    `color` (as ColorJitter), noise. (torchvision's transforms draw one set of parameters per
    call: per image they would cost a Python call each.)"""
    b = x.shape[0]
    if rotate or scale:
        angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(rotate)
        zoom = 1 + (torch.rand(b, device=x.device) * 2 - 1) * scale
        cos, sin, zero = torch.cos(angle) / zoom, torch.sin(angle) / zoom, torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if color:
        contrast = 1 + (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * color
        brightness = (torch.rand(b, 1, 1, 1, device=x.device) * 2 - 1) * color
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness
    if hflip:
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
        x = torch.where(flip, x.flip(-1), x)
    if shift:
        b, _, h, w = x.shape
        padded = F.pad(x, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (b, 1, 1), device=x.device)
        dx = torch.randint(0, 2 * shift + 1, (b, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + dy
        cols = torch.arange(w, device=x.device).view(1, 1, w) + dx
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        x = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    if noise:
        x = x + noise * torch.randn_like(x)
    return x


def tabular(loader):
    """Marks a loader of feature tables: jobs of a sweep on its data can be stacked
    (dlexp.stacked), each job's (samples, features) tensors along a leading job dimension."""
    loader.why_not_stacked = lambda **settings: None
    return loader
