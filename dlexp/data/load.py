"""`load_data`: a `data` config's data set, split into train/val/test (and scaled, balanced,
featured as the config says)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlexp.data.balance import rebalance
from dlexp.data.cache import load_raw
from dlexp.data.core import NORMALIZE, Data, DataMeta, Split, scaling
from dlexp.errors import DlexpError
from dlexp.settings import Count, Fraction, OneOf, Range

Pixels = Annotated[int, Range(0, says="a whole number of pixels >= 0")]


@dataclass
class Augment:
    hflip: bool
    shift: Pixels
    noise: Annotated[float, Range(0, says="a number >= 0 (the noise's std)")]
    rotate: Annotated[float, Range(0, 180, says="a number of degrees from 0 to 180")]
    scale: Annotated[float, Range(0, 1, open_high=True, says="a fraction from 0 to below 1")]
    color: Annotated[float, Range(0, 1, says="a fraction from 0 to 1")]


@dataclass
class DataSettings:
    """The `data` keys load_data reads (a data set has some of them): each key's type and
    range stated here once (dlexp.checks refuses a value that does not fit); the values are in
    configs/data/*.yaml. `source` is the loader, checked against its own signature."""

    batch_size: Count
    eval_batch_size: Count
    val_fraction: Fraction
    test_fraction: Fraction
    folds: Annotated[int, Range(2, says="a whole number of folds >= 2")] | None
    fold: Annotated[int, Range(0, says="a fold number from 0 to data.folds - 1")]
    balance: Annotated[str, OneOf("none", "oversample", "undersample", "smote", "class_weight")]
    subset: Annotated[int, Range(1, says="a whole number of samples >= 1")] | None
    subset_first: bool
    double: Annotated[str, OneOf("none", "before_split", "after_split")]
    double_noise: Annotated[float, Range(0, says="a number >= 0 (in [0, 1] pixel units)")]
    repeat: Count | None
    resize: Annotated[int, Range(4, says="a size in pixels >= 4")] | None
    roll: Pixels
    roll_train: bool
    normalize: Annotated[str, OneOf(*NORMALIZE)]
    normalize_test: Annotated[str, OneOf(*NORMALIZE)] | None
    binarize: bool
    scramble: bool
    held_out: int | str | None
    standardize: bool
    ordered: bool
    features: list[Annotated[str, OneOf(*FEATURES)]]
    augment: Augment
    classes: list | None
    download: bool
    cache: bool
    root: str
    name: str
    content: str | None  # (data=style_images: its two pictures, and their size)
    style: str | None
    size: Annotated[int, Range(16, says="a size in pixels >= 16")]


def _split(
    y: torch.Tensor, fraction: float, seed: int, stratify: bool, ordered: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out), round(fraction * n) held out, each class in proportion; or,
    `ordered` (a time series), the last ones held out and the rest kept in order, less the
    windows whose targets (every step of a window: y is (n, steps)) reach into the held-out
    ones' targets."""
    if ordered:
        n_keep = len(y) - round(fraction * len(y))
        overlap = y.shape[1] - 1 if y.dim() == 2 else 0
        return torch.arange(max(n_keep - overlap, 0)), torch.arange(n_keep, len(y))
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


def _class_index(meta: DataMeta, item, key: str) -> int:
    """A class given by name (any case) or by index, as its index."""
    names = [str(n).lower() for n in meta.class_names]
    if isinstance(item, int) and 0 <= item < meta.num_classes:
        return item
    if str(item).lower() in names:
        return names.index(str(item).lower())
    raise DlexpError(
        f"{key}={item!r} is not a class of {meta.name}; its classes are "
        f"{', '.join(map(str, meta.class_names))} (or their indices 0..{meta.num_classes - 1})."
    )


def _keep_classes(train: Split, test: Split | None, meta: DataMeta, wanted: list) -> tuple:
    """Keep only the listed classes (by name, any case, or by index), relabelled 0..k-1."""
    keep = [_class_index(meta, item, "data.classes") for item in wanted]
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


def _check_enough(train: Split, meta: DataMeta, cfg: DictConfig, held_out: bool = False) -> None:
    """A split that leaves too few training samples would train on noise: refuse it as such."""
    classes = meta.num_classes - held_out
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
    raw = load_raw(cfg)
    meta = raw.meta
    train, test = raw.train, raw.test
    if cfg.get("classes"):
        train, test, meta = _keep_classes(train, test, meta, list(cfg.classes))
    if cfg.get("held_out") is not None:
        train, test = _held_out(train, test, meta, cfg.held_out)
    if cfg.get("resize") and meta.kind == "image":
        train, test = (_resized(s, int(cfg.resize)) for s in (train, test))
        meta.input_shape = (meta.input_shape[0], int(cfg.resize), int(cfg.resize))
    classify = meta.num_classes > 0
    ordered = bool(cfg.get("ordered"))  # sequences: hold out the last windows, not random ones
    if test is None:  # tabular sets: hold out a test split first
        _check_fraction("test_fraction", cfg.test_fraction)
        keep, hold = _split(train.y, cfg.test_fraction, seed, classify, ordered)
        train, test = train.take(keep), train.take(hold)
    if cfg.get("fold") and not cfg.get("folds"):  # (a fold sweep would train one split N times)
        raise DlexpError(
            f"data.fold={cfg.fold} picks a validation fold, but data.folds is not set: set it "
            "for k-fold cross-validation (e.g. data.folds=5), or leave data.fold at 0."
        )
    subset, first = cfg.get("subset"), cfg.get("subset_first")
    if subset and first:  # N samples, then the validation split (the course's notebooks)
        train = train.take(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:subset])
    double = cfg.get("double", "none")
    if double == "before_split":  # the copies leak into the validation split
        train = _doubled(train, meta, cfg, seed)
    if cfg.get("folds"):
        keep, hold = _fold(train.y, int(cfg.folds), int(cfg.get("fold", 0)), seed, classify)
    else:
        keep, hold = _split(train.y, cfg.val_fraction, seed + 1, classify, ordered)
    train, val = train.take(keep), train.take(hold)

    if subset and not first:
        gen = torch.Generator().manual_seed(seed)
        train, val, test = (
            s.take(torch.randperm(len(s), generator=gen)[:subset]) for s in (train, val, test)
        )
    if double == "after_split":
        train = _doubled(train, meta, cfg, seed)

    if cfg.get("balance", "none") != "none":  # the training split only
        train = rebalance(train, meta, str(cfg.balance), seed)
    _check_enough(train, meta, cfg, held_out=cfg.get("held_out") is not None)
    if cfg.get("repeat"):  # epochs of several passes (style transfer: N steps per epoch)
        train = train.take(torch.arange(len(train)).repeat(int(cfg.repeat)))
    if cfg.get("roll"):  # the course's shifted MNIST: images rolled sideways, once each
        gen = torch.Generator().manual_seed(seed + 2)
        roll = lambda s: Split(_rolled(s.x, int(cfg.roll), gen), s.y)  # noqa: E731
        test = roll(test)
        if cfg.get("roll_train"):
            train, val = roll(train), roll(val)
    if cfg.get("binarize") or cfg.get("scramble"):
        train, val, test = (_manipulated(s, cfg, seed) for s in (train, val, test))
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
    if normalize not in NORMALIZE:
        raise DlexpError(f"data.normalize={normalize!r} is not known; use {', '.join(NORMALIZE)}.")
    scale_test = cfg.get("normalize_test")
    if scale_test and scale_test != normalize and meta.kind == "image" and not test.x.is_floating_point():
        # The test images scaled their own way (DUDL_FFN_CodeChallenge_normalization): stored
        # as float, which every later step passes through as it is.
        shift, scale = scaling(scale_test, meta, torch.device("cpu"))
        test = Split(torch.addcmul(shift, test.x, scale), test.y)
    return Data(train, val, test, meta, augment, normalize)


def _doubled(s: Split, meta: DataMeta, cfg: DictConfig, seed: int) -> Split:
    """Every sample twice (DUDL_data_oversampling); with double_noise the copies get uniform
    noise in [0, double_noise) on every value (DUDL_data_noiseAugmentation: pixels in [0, 1],
    so images become floats in those units, which data.normalize=unit keeps them in)."""
    noise = float(cfg.get("double_noise") or 0)
    x = s.x
    if noise and meta.kind == "image" and not x.is_floating_point():
        if cfg.get("normalize") != "unit":
            raise DlexpError(
                f"data.double_noise={noise} adds noise in [0, 1] pixel units, so the images are "
                f"used in those units: set data.normalize=unit (it is {cfg.get('normalize')})."
            )
        x = x.float() / 255
    gen = torch.Generator().manual_seed(seed + 4)
    copies = x + noise * torch.rand(x.shape, generator=gen) if noise else x
    return Split(torch.cat([x, copies]), torch.cat([s.y, s.y]))


def _held_out(train: Split, test: Split, meta: DataMeta, which) -> tuple[Split, Split]:
    """One class left out of training (and validation); the test split holds only that class
    (DUDL_FFN_CodeChallenge_missing7). The net keeps an output for it, never trained."""
    k = _class_index(meta, which, "data.held_out")
    return train.take(torch.nonzero(train.y != k).flatten()), test.take(torch.nonzero(test.y == k).flatten())


def _manipulated(s: Split, cfg: DictConfig, seed: int) -> Split:
    """The course's MNIST manipulations, the same for every split: binarize (every pixel > 0
    becomes full white, DUDL_FFN_CodeChallenge_binMNIST) and scramble (one fixed random
    permutation of the pixels, the same for every image, DUDL_FFN_scrambledMNIST)."""
    x = s.x
    if cfg.get("binarize"):
        x = (x > 0).to(x.dtype) * (1 if x.is_floating_point() else 255)
    if cfg.get("scramble"):
        order = torch.randperm(x[0].numel(), generator=torch.Generator().manual_seed(seed + 3))
        x = x.flatten(1)[:, order].view_as(x)
    return Split(x, s.y)
