"""Tensors, metadata, splitting and batching shared by every data set."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlexp.errors import DlexpError


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
    normalize: str = "standard"  # images: standard (mean/std), unit ([0, 1]) or symmetric ([-1, 1])
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
            if self.normalize == "standard":
                mean = torch.tensor(self.meta.mean, device=device).view(1, -1, 1, 1)
                std = torch.tensor(self.meta.std, device=device).view(1, -1, 1, 1)
            else:  # unit: [0, 1]; symmetric: [-1, 1]
                mean = torch.full((1, 1, 1, 1), 0.0 if self.normalize == "unit" else 0.5, device=device)
                std = torch.full((1, 1, 1, 1), 1.0 if self.normalize == "unit" else 0.5, device=device)
            self._norm = (-mean / std, 1.0 / (255.0 * std))
        return self._norm


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


def _split(
    y: torch.Tensor, fraction: float, seed: int, stratify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out), round(fraction * n) held out, each class in proportion."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=gen)
    order = perm
    if stratify:
        # Spread each class evenly over [0, 1) and sort by that position: any prefix of the
        # order then holds every class in proportion (ties broken by the random permutation).
        yp = y[perm]
        position = torch.empty(len(y))
        for c in yp.unique():
            where = torch.nonzero(yp == c).flatten()
            position[where] = torch.arange(len(where)) / len(where)
        order = perm[torch.sort(position, stable=True).indices]
    n_hold = round(fraction * len(y))
    hold, keep = order[:n_hold], order[n_hold:]
    return keep[torch.randperm(len(keep), generator=gen)], hold


def _fold(y: torch.Tensor, folds: int, fold: int, seed: int, stratified: bool):
    """k-fold cross-validation (scikit-learn's splitters, stratified for classes): the
    training indices and those of validation fold `fold`. The folds depend on the seed alone,
    so a sweep over data.fold partitions the same training data."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if not 0 <= fold < folds:
        raise DlexpError(f"data.fold={fold} is not a fold of data.folds={folds}; use 0 to {folds - 1}.")
    kind = StratifiedKFold if stratified else KFold
    splitter = kind(n_splits=folds, shuffle=True, random_state=seed % 2**32)
    labels = y.numpy() if stratified else None
    try:
        keep, hold = list(splitter.split(np.zeros(len(y)), labels))[fold]
    except ValueError as err:  # fewer samples (of a class) than folds
        raise DlexpError(f"data.folds={folds} cannot split this training data: {err}") from err
    return torch.from_numpy(keep), torch.from_numpy(hold)


FEATURES = ("square", "log", "products", "radius")


def with_features(split: Split, names: list[str]) -> Split:
    """The features plus non-linear ones (the course's feature augmentation): each feature
    squared, log(1 + |x|), the products of every pair, the distance from the origin."""
    unknown = [n for n in names if n not in FEATURES]
    if unknown or split.x.dim() != 2:
        raise DlexpError(
            f"data.features={names}: use any of {', '.join(FEATURES)}, on tabular data."
        )
    x, extra = split.x, []
    if "square" in names:
        extra.append(x**2)
    if "log" in names:
        extra.append(torch.log1p(x.abs()))
    if "products" in names:
        i, j = torch.triu_indices(x.shape[1], x.shape[1], offset=1)
        extra.append(x[:, i] * x[:, j])
    if "radius" in names:
        extra.append(x.norm(dim=1, keepdim=True))
    return Split(torch.cat([x, *extra], 1), split.y)


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (float images: as they are),
    in chunks to bound memory."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):
        chunk = chunk.to(torch.float64) if x.is_floating_point() else chunk.double().div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.pow(2).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _keep_classes(train: Split, test: Split | None, meta: DataMeta, wanted: list) -> tuple:
    """Keep only the listed classes (by name, any case, or by index), relabelled 0..k-1."""
    lower = [n.lower() for n in meta.class_names]
    keep = []
    for item in wanted:
        if isinstance(item, int) and 0 <= item < meta.num_classes:
            keep.append(item)
        elif str(item).lower() in lower:
            keep.append(lower.index(str(item).lower()))
        else:
            raise DlexpError(
                f"data.classes: {item!r} is not a class of {meta.name}; its classes are "
                f"{', '.join(meta.class_names)} (or their indices 0..{meta.num_classes - 1})."
            )
    table = torch.full((meta.num_classes,), -1, dtype=torch.long)
    table[torch.tensor(keep)] = torch.arange(len(keep))

    def only(s: Split | None) -> Split | None:
        if s is None:
            return None
        mask = table[s.y] >= 0
        return Split(s.x[mask], table[s.y[mask]])

    names = [meta.class_names[i] for i in keep]
    return only(train), only(test), replace(meta, num_classes=len(keep), class_names=names)


def _resized(s: Split | None, size: int) -> Split | None:
    """Images resized once at load (e.g. to DCGAN's 64x64), still uint8."""
    if s is None:
        return None
    out = [
        F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for chunk in s.x.split(2048)
    ]
    return Split(torch.cat(out), s.y)


def _check_fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise DlexpError(
            f"data.{key}={value} is out of range: it is the fraction of samples held out and "
            f"must be at least 0 and below 1 (e.g. data.{key}=0.1)."
        )


def _check_enough(train: Split, meta: DataMeta, cfg: DictConfig) -> None:
    """A split that leaves too few training samples would train on noise: refuse it as such."""
    classes = meta.num_classes
    present = len(train.y.unique()) if classes and len(train) else 0
    if len(train) >= 2 and (not classes or present == classes):
        return
    need = f"at least one of each of its {classes} classes" if classes else "at least 2"
    held = [f"data.{k}={cfg.get(k)}" for k in ("val_fraction", "test_fraction", "subset")]
    raise DlexpError(
        f"data={meta.name}: the splits leave {len(train)} training sample(s)"
        + (f" covering {present} of {classes} classes" if classes else "")
        + f", and training needs {need}. With {', '.join(h for h in held if not h.endswith('None'))}"
        " too much is held out (or cut); lower data.val_fraction / data.test_fraction, or raise "
        "data.subset."
    )


def _rolled(x: torch.Tensor, most: int, gen: torch.Generator) -> torch.Tensor:
    """Each image rolled (wrapped around) sideways by its own random -most..most pixels."""
    n, width = len(x), x.shape[-1]
    shift = torch.randint(-most, most + 1, (n, 1), generator=gen)
    cols = (torch.arange(width).view(1, width) - shift) % width
    return x.gather(-1, cols.view(n, *[1] * (x.dim() - 2), width).expand_as(x))


def load_data(cfg: DictConfig, seed: int) -> Data:
    """Load the data set named by `cfg` (a `data` config) and split it into train/val/test."""
    _check_fraction("val_fraction", cfg.val_fraction)
    from dlexp.data.cache import load_raw

    raw = load_raw(cfg)
    meta = raw.meta
    train, test = raw.train, raw.test
    if cfg.get("classes"):
        train, test, meta = _keep_classes(train, test, meta, list(cfg.classes))
    if cfg.get("resize") and meta.kind == "image":
        train, test = (_resized(s, int(cfg.resize)) for s in (train, test))
        meta.input_shape = (meta.input_shape[0], int(cfg.resize), int(cfg.resize))
    classify = meta.num_classes > 0
    if test is None:  # tabular sets: hold out a test split first
        _check_fraction("test_fraction", cfg.test_fraction)
        keep, hold = _split(train.y, cfg.test_fraction, seed, classify)
        train, test = train.take(keep), train.take(hold)
    if cfg.get("folds"):
        keep, hold = _fold(train.y, int(cfg.folds), int(cfg.get("fold", 0)), seed, classify)
    else:
        keep, hold = _split(train.y, cfg.val_fraction, seed + 1, classify)
    train, val = train.take(keep), train.take(hold)

    if cfg.get("subset"):
        gen = torch.Generator().manual_seed(seed)
        train, val, test = (
            s.take(torch.randperm(len(s), generator=gen)[: cfg.subset]) for s in (train, val, test)
        )

    if cfg.get("balance", "none") != "none":  # the training split only
        from dlexp.data.balance import rebalance

        train = rebalance(train, meta, str(cfg.balance), seed)
    _check_enough(train, meta, cfg)
    if cfg.get("repeat"):  # epochs of several passes (style transfer: N steps per epoch)
        train = train.take(torch.arange(len(train)).repeat(int(cfg.repeat)))
    if cfg.get("roll"):  # the course's shifted MNIST: images rolled sideways, once each
        gen = torch.Generator().manual_seed(seed + 2)
        roll = lambda s: Split(_rolled(s.x, int(cfg.roll), gen), s.y)  # noqa: E731
        test = roll(test)
        if cfg.get("roll_train"):
            train, val = roll(train), roll(val)
    if cfg.get("features"):  # added non-linear features (tabular), before scaling
        train, val, test = (with_features(s, list(cfg.features)) for s in (train, val, test))
        meta.input_shape = (train.x.shape[1],)
    if meta.kind == "image":
        meta.mean, meta.std = _channel_stats(train.x)
    elif cfg.get("standardize"):
        mu, sigma = train.x.mean(0), train.x.std(0).clamp_min(1e-8)
        train, val, test = (Split((s.x - mu) / sigma, s.y) for s in (train, val, test))
    augment = {k: v for k, v in (cfg.get("augment") or {}).items() if v}
    normalize = cfg.get("normalize", "standard")
    if normalize not in ("standard", "unit", "symmetric"):
        raise DlexpError(f"data.normalize={normalize!r} is not known; use standard, unit or symmetric.")
    return Data(train, val, test, meta, augment, normalize)
